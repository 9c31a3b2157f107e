"""HLS segments on disk: one MPEG-TS file per GOP, written atomically, and a live playlist.

Theory of operation: segment ``s`` holds the frames whose timecodes lie in it (the params'
``SegmentLayout``: ``s × gop`` to ``(s + 1) × gop - 1``). The writer collects a segment's
access units as they arrive and muxes the segment once the next segment begins, so a segment
file is a pure function of its EncodedFrames and the params: fresh muxer state per file, packet
timestamps derived from the timecode alone, and bit-exact muxing (no version strings, no random
ids). Encoders that agree on timecodes therefore write byte-identical files under the same
names, which a packager can switch between freely.

A segment is written only if it is *whole*: it holds its GOP's first frame (the IDR picture that
opens every GOP) and it was not cut short, i.e. it reached its last slot or the very next
segment followed it. The first segment after a start or a forward jump is partial on every
encoder that joined mid-GOP and would differ from the others' bytes, so it is discarded; so is
the segment in progress at ``finish()`` unless its last slot has arrived.

Files appear atomically (temp file in the same directory, fsync, ``os.replace``, fsync of the
directory): a reader sees a whole segment or none, and a crash leaves at most a temp file,
which ``cleanup()`` (called on construction and by ``finish()``) removes.

Audio is passed through, re-timed onto the shared timeline. Every video frame comes with its
source timestamp; a segment's first frame anchors the segment on the source's clock (the
mesh agreed which picture opens the segment, so every encoder anchors alike), and the source's
audio packets whose re-timed timestamps fall into the segment's span go into it, untouched.
Audio of a moment can reach the encoder a little after the video of that moment, so a whole
segment waits until audio has been seen past its end (or until ``audio_wait`` of source time
has passed: the input lost its audio), then it is muxed. Encoders fed the same stream
therefore write the same audio into the same segments, byte for byte.

Invariants: timecodes never go back to an earlier segment; the playlist lists a run of
consecutive segment numbers (at most ``window``), its media sequence number is the first one's
segment number and each segment's EXT-X-PROGRAM-DATE-TIME is its start on the shared timeline,
so every encoder's playlist numbers and dates a segment alike; each audio packet lands in
at most one segment.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from services.encoder.media.gop import EncodedFrame, EncoderParams

__all__ = ["PLAYLIST_NAME", "AudioPacket", "SegmentWriter", "segment_name", "segment_number"]

PLAYLIST_NAME = "index.m3u8"
TEMP_PREFIX = ".tmp-"
DEFAULT_WINDOW = 10
#: Timestamps in the segments' audio, and source times handed to the writer: MPEG-TS's 90 kHz.
TICKS = 90_000
#: Audio packets kept while their segments are being collected (about 20 s of AAC).
MAX_AUDIO_PACKETS = 1000
#: An audio timestamp this far (or more) behind the newest is a restart of the source's clock.
MAX_AUDIO_STEP_BACK = 5 * TICKS

_Writer = Callable[[BinaryIO], object]


def segment_name(segment: int) -> str:
    """The file name of segment ``segment``: the same on every encoder."""
    return f"seg-{segment:012d}.ts"


def segment_number(name: str) -> int | None:
    """The segment number a file name of :func:`segment_name` carries; None for any other."""
    digits = name.removeprefix("seg-").removesuffix(".ts")
    if not digits.isdigit() or not digits.isascii():
        return None
    number = int(digits)
    return number if segment_name(number) == name else None


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One compressed audio packet of the source, at ``source_time`` (90 kHz ticks)."""

    codec: str
    sample_rate: int
    source_time: int
    data: bytes


@dataclass(slots=True)
class _Pending:
    """The access units of the segment being collected."""

    segment: int
    frames: list[EncodedFrame] = field(default_factory=list)
    has_start: bool = False
    #: Source time (90 kHz) of the segment's first frame; None: no audio goes into it.
    anchor: int | None = None


class SegmentWriter:
    """Collects EncodedFrames into per-GOP MPEG-TS segments and keeps ``index.m3u8`` current."""

    def __init__(
        self,
        out_dir: Path,
        params: EncoderParams,
        *,
        window: int = DEFAULT_WINDOW,
        audio_wait: float = 1.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"the playlist window must hold at least one segment, got {window}")
        self.out_dir = Path(out_dir)
        self.params = params
        self.window = window
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._audio_wait = round(audio_wait * TICKS)
        self._audio: deque[AudioPacket] = deque(maxlen=MAX_AUDIO_PACKETS)
        #: Whole segments waiting for their audio, oldest first.
        self._held: deque[_Pending] = deque()
        #: The newest source time seen, of video and of audio.
        self._video_time: int | None = None
        self._audio_time: int | None = None
        self._pending: _Pending | None = None
        self._last_segment: int | None = None
        self._listed: list[int] = []
        self.cleanup()

    @property
    def playlist_path(self) -> Path:
        return self.out_dir / PLAYLIST_NAME

    @property
    def listed(self) -> tuple[int, ...]:
        """The segment numbers the playlist lists, oldest first."""
        return tuple(self._listed)

    @property
    def segment_duration(self) -> Fraction:
        """Seconds per segment: GOP length times the frame period, exact."""
        return self.params.segments.duration(self.params.time_base)

    def add(self, frame: EncodedFrame, source_time: int | None = None) -> list[Path]:
        """Take one access unit; return the segments this call wrote, oldest first.

        ``source_time`` is the source timestamp (90 kHz) of the picture the frame encodes; the
        audio of a segment is placed relative to its first frame's (none: no audio in it).

        If writing a finished segment fails, the exception propagates, no file remains (neither
        under the final name nor as a temp file) and the segment is lost; the arriving frame has
        already been taken into the next segment, so the writer can carry on.

        Raises:
            ValueError: the frame's timecode goes back (to an earlier segment, or not after the
                previous frame of this one).
        """
        segments = self.params.segments
        segment = segments.segment_of(frame.timecode)
        if source_time is not None:
            self._video_time = source_time
        pending = self._pending
        if pending is not None and segment == pending.segment:
            if frame.timecode <= pending.frames[-1].timecode:
                raise ValueError(
                    f"timecode {frame.timecode} does not follow {pending.frames[-1].timecode}"
                )
            pending.frames.append(frame)
            return self._release()
        if self._last_segment is not None and segment < self._last_segment:
            raise ValueError(f"segment {segment} is before segment {self._last_segment}")

        self._last_segment = segment
        starts = segments.is_first(frame.timecode) and frame.keyframe
        self._pending = _Pending(
            segment, [frame], has_start=starts, anchor=source_time if starts else None
        )
        if pending is not None and pending.has_start:
            reached_end = segments.is_last(pending.frames[-1].timecode)
            if reached_end or segment == pending.segment + 1:
                self._held.append(pending)  # else cut short by a jump: others have it whole
        return self._release()

    def add_audio(self, packet: AudioPacket) -> list[Path]:
        """Take one audio packet of the source; return the segments this call wrote.

        A packet not later than the previous one (a source that restarted or looped its audio
        over itself) is dropped: a segment's audio must run forward.
        """
        audio = self._audio
        if self._audio_time is not None and packet.source_time <= self._audio_time:
            if self._audio_time - packet.source_time < MAX_AUDIO_STEP_BACK:
                return self._release()
            audio.clear()  # a real restart of the source's clock: start the audio afresh
        if audio and (audio[-1].codec, audio[-1].sample_rate) != (
            packet.codec,
            packet.sample_rate,
        ):
            audio.clear()  # the source changed its audio: what came before cannot be muxed with it
        audio.append(packet)
        self._audio_time = packet.source_time
        return self._release()

    def finish(self) -> list[Path]:
        """At shutdown: write the held segments and the one in progress if it is whole.

        Leaves no temp files behind. Returns the paths written, oldest first.
        """
        pending, self._pending = self._pending, None
        try:
            if (
                pending is not None
                and pending.has_start
                and self.params.segments.is_last(pending.frames[-1].timecode)
            ):
                self._held.append(pending)
            return self._release(flush=True)
        finally:
            self.cleanup()

    def _release(self, *, flush: bool = False) -> list[Path]:
        """Write the held segments whose audio has arrived (all of them when flushing)."""
        written = []
        while self._held and (flush or self._audio_complete(self._held[0])):
            written.append(self._write(self._held.popleft()))
        return written

    def _audio_complete(self, pending: _Pending) -> bool:
        """Whether audio has been seen past the segment's end, or can no longer be expected."""
        if pending.anchor is None or not self._audio:
            return True
        end = pending.anchor + self._source_span(pending.segment)
        if self._audio_time is not None and self._audio_time >= end:
            return True
        return self._video_time is not None and self._video_time - end >= self._audio_wait

    def _source_span(self, segment: int) -> int:
        """The span of ``segment`` in 90 kHz ticks (exact boundaries, rounded alike)."""
        return self._boundary(segment + 1) - self._boundary(segment)

    def _boundary(self, segment: int) -> int:
        """Where ``segment`` starts on the output timeline, in 90 kHz ticks."""
        return round(self._start(segment) * TICKS)

    def _start(self, segment: int) -> Fraction:
        """Where ``segment`` starts on the shared timeline: its first slot, in exact seconds
        since the Unix epoch."""
        return self.params.segments.first_timecode(segment) * self.params.time_base

    def _segment_audio(self, pending: _Pending) -> list[tuple[int, AudioPacket]]:
        """The source's audio packets that fall into the segment, with their output times."""
        if pending.anchor is None:
            return []
        start = self._boundary(pending.segment)
        end = self._boundary(pending.segment + 1)
        offset = start - pending.anchor
        chosen = [
            (packet.source_time + offset, packet)
            for packet in self._audio
            if start <= packet.source_time + offset < end
        ]
        # Audio older than this segment can go in no later one.
        while self._audio and self._audio[0].source_time + offset < end:
            self._audio.popleft()
        return chosen

    def cleanup(self) -> None:
        """Remove temp files a crashed write left behind (ours are all ``.tmp-*``)."""
        for leftover in self.out_dir.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _write(self, pending: _Pending) -> Path:
        path = self.out_dir / segment_name(pending.segment)
        audio = self._segment_audio(pending)
        self._atomic_write(path, lambda out: self._mux(out, pending.frames, audio))
        self._extend_window(pending.segment)
        self._atomic_write(self.playlist_path, lambda out: out.write(self._playlist().encode()))
        return path

    def _extend_window(self, newest: int) -> None:
        """Append ``newest`` to the listed run; a gap starts the run afresh.

        HLS numbers segments by position (media sequence + offset), so a gap inside the list
        would misnumber every segment after it; a run of consecutive numbers keeps each
        segment's sequence number equal to its segment number on every encoder.
        """
        if self._listed and newest != self._listed[-1] + 1:
            self._listed.clear()
        self._listed.append(newest)
        del self._listed[: -self.window]

    def _mux(
        self,
        out: BinaryIO,
        frames: Sequence[EncodedFrame],
        audio: Sequence[tuple[int, AudioPacket]] = (),
    ) -> None:
        """Mux one segment's access units (and its audio) into MPEG-TS, bit-exactly."""
        params = self.params
        rate = Fraction(params.frame_rate.num, params.frame_rate.den)
        with av.open(
            out, "w", format="mpegts", container_options={"fflags": "+bitexact"}
        ) as container:
            stream = container.add_mux_stream(
                "h264", rate=rate, width=params.width, height=params.height
            )
            if audio:
                first = audio[0][1]
                sound = container.add_mux_stream(first.codec, rate=first.sample_rate)
                for at, sample in audio:
                    packet = av.Packet(sample.data)
                    packet.stream = sound
                    packet.time_base = Fraction(1, TICKS)
                    packet.pts = at
                    packet.dts = at
                    container.mux(packet)
            for frame in frames:
                packet = av.Packet(frame.data)
                packet.stream = stream
                packet.time_base = params.time_base
                # Absolute timecodes: continuous across segments and equal on every encoder.
                packet.pts = frame.timecode
                packet.dts = frame.timecode
                packet.duration = 1
                packet.is_keyframe = frame.keyframe
                container.mux(packet)

    def _playlist(self) -> str:
        duration = self.segment_duration
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{math.ceil(duration)}",
            f"#EXT-X-MEDIA-SEQUENCE:{self._listed[0]}",
        ]
        for segment in self._listed:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{self.program_date_time(segment)}")
            lines.append(f"#EXTINF:{float(duration):.3f},")
            lines.append(segment_name(segment))
        return "\n".join(lines) + "\n"

    def program_date_time(self, segment: int) -> str:
        """When ``segment`` starts on the shared timeline, as HLS's EXT-X-PROGRAM-DATE-TIME.

        Timecodes count frame slots since the Unix epoch, so the segment's first slot *is* a
        wall-clock instant, the same on every encoder; rounded down to the millisecond.
        """
        start = self._start(segment)
        millis = start.numerator * 1000 // start.denominator
        stamp = datetime.fromtimestamp(millis // 1000, tz=UTC)
        return f"{stamp:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"

    def _atomic_write(self, path: Path, write: _Writer) -> None:
        """Write ``path`` so that it appears whole or not at all."""
        fd, temp = tempfile.mkstemp(dir=self.out_dir, prefix=f"{TEMP_PREFIX}{path.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            # mkstemp creates 0600; segments are served by packagers and web servers.
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(self.out_dir)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry is data of the directory."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
