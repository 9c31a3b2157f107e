"""Segments on disk: one file per GOP (MPEG-TS or CMAF), written atomically, and live manifests.

Theory of operation: segment ``s`` holds the frames whose timecodes lie in it (the params'
``SegmentLayout``: ``s × gop`` to ``(s + 1) × gop - 1``). The writer collects a segment's
access units as they arrive and muxes the segment once the next segment begins, so a segment
file is a pure function of its EncodedFrames and the params: the container
(``services.encoder.media.containers``: MPEG-TS, or CMAF with its init segment) muxes each
segment afresh, with timestamps derived from the timecode alone, bit-exactly. Encoders that
agree on timecodes therefore write byte-identical files under the same names, which a packager
can switch between freely.

A segment is written only if it is *whole*: it holds its GOP's first frame (the IDR picture that
opens every GOP) and it was not cut short, i.e. it reached its last slot or the very next
segment followed it. The first segment after a start or a forward jump is partial on every
encoder that joined mid-GOP and would differ from the others' bytes, so it is discarded; so is
the segment in progress at ``finish()`` unless its last slot has arrived.

Files appear atomically (temp file in the same directory, ``os.replace``): a reader sees a
whole segment or none, and a crash of the process leaves at most a temp file, which
``cleanup()`` (called on construction and by ``finish()``) removes. They are not fsynced
(``atomic_write`` says why). CMAF's init segment
(``init.mp4``) is written before the first media segment and again only when it changes (the
stream's parameters did), before the segment that needs it.

Audio is passed through, re-timed onto the shared timeline. Every video frame comes with its
source timestamp; a segment's first frame anchors the segment on the source's clock (the
mesh agreed which picture opens the segment, so every encoder anchors alike), and the source's
audio packets whose re-timed timestamps fall into the segment's span go into it, untouched.
Audio of a moment can reach the encoder a little after the video of that moment, so a whole
segment waits until audio has been seen past its end (or until ``audio_wait`` of source time
has passed: the input lost its audio), then it is muxed. Encoders fed the same stream
therefore write the same audio into the same segments, byte for byte.

Manifests: the HLS playlist (``index.m3u8``) always, and for CMAF the DASH MPD
(``manifest.mpd``, ``services.encoder.media.dash``), rewritten after every segment.

Invariants: timecodes never go back to an earlier segment; the playlist lists a run of
consecutive segment numbers (at most ``window``) that share one init segment, its media
sequence number is the first one's segment number and each segment's EXT-X-PROGRAM-DATE-TIME
is its start on the shared timeline, so every encoder's playlist numbers and dates a segment
alike; each audio packet lands in at most one segment.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from services.encoder.media.containers import (
    INIT_NAME,
    TICKS,
    AudioPacket,
    SegmentFormat,
    container_for,
    picture_size,
)
from services.encoder.media.dash import MPD_NAME, render_mpd
from services.encoder.media.gop import EncodedFrame, EncoderParams

__all__ = [
    "ASIDE_PREFIX",
    "INIT_NAME",
    "MPD_NAME",
    "PLAYLIST_NAME",
    "AudioPacket",
    "SegmentFormat",
    "SegmentWriter",
    "aside_name",
    "atomic_write",
    "segment_format",
    "segment_name",
    "segment_number",
    "segment_template",
    "utc_instant",
]

PLAYLIST_NAME = "index.m3u8"
TEMP_PREFIX = ".tmp-"
DEFAULT_WINDOW = 10
#: Segments whose digest a writer keeps (``SegmentWriter.digest``).
DIGESTS_KEPT = 8
#: Audio packets kept while their segments are being collected (about 20 s of AAC).
MAX_AUDIO_PACKETS = 1000
#: An audio timestamp this far (or more) behind the newest is a restart of the source's clock.
MAX_AUDIO_STEP_BACK = 5 * TICKS

_DIGITS = 12


def segment_name(segment: int, fmt: SegmentFormat = SegmentFormat.TS) -> str:
    """The file name of segment ``segment`` in ``fmt``: the same on every encoder."""
    return f"seg-{segment:0{_DIGITS}d}{fmt.suffix}"


#: The prefix of a segment written aside: its encoder could not vouch for it (still locking
#: in, resuming, filling in for a lost input...), so it never carries the shared name, which
#: every encoder's copy of that segment must be able to hold byte for byte.
ASIDE_PREFIX = "aside-"


def aside_name(segment: int, fmt: SegmentFormat = SegmentFormat.TS) -> str:
    """Where segment ``segment`` goes when its encoder cannot vouch for it."""
    return ASIDE_PREFIX + segment_name(segment, fmt)


def segment_template(fmt: SegmentFormat) -> str:
    """:func:`segment_name` as a DASH ``SegmentTemplate@media`` (``$Number$`` = the number)."""
    return f"seg-$Number%0{_DIGITS}d${fmt.suffix}"


def segment_format(name: str) -> SegmentFormat | None:
    """The format of a file name of :func:`segment_name`; None for any other name."""
    for fmt in SegmentFormat:
        digits = name.removeprefix("seg-").removesuffix(fmt.suffix)
        if digits.isdigit() and digits.isascii() and segment_name(int(digits), fmt) == name:
            return fmt
    return None


def segment_number(name: str) -> int | None:
    """The segment number a file name of :func:`segment_name` (any format) carries; None for
    any other name."""
    fmt = segment_format(name)
    return None if fmt is None else int(name.removeprefix("seg-").removesuffix(fmt.suffix))


def utc_instant(seconds: Fraction) -> str:
    """An instant in exact seconds since the Unix epoch as ISO 8601 UTC, rounded down to the
    millisecond (``2027-01-01T00:00:02.002Z``): HLS's and DASH's dates alike."""
    millis = seconds.numerator * 1000 // seconds.denominator
    stamp = datetime.fromtimestamp(millis // 1000, tz=UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"


@dataclass(slots=True)
class _Pending:
    """The access units of the segment being collected."""

    segment: int
    frames: list[EncodedFrame] = field(default_factory=list)
    has_start: bool = False
    #: Source time (90 kHz) of the segment's first frame; None: no audio goes into it.
    anchor: int | None = None


class SegmentWriter:
    """Collects EncodedFrames into per-GOP segments (MPEG-TS or CMAF) and keeps the manifests
    (``index.m3u8``, and ``manifest.mpd`` for CMAF) current.

    ``aside(segment)``, asked as each segment is written, says whether its encoder cannot
    vouch for it: it is then written under :func:`aside_name`, and the shared name stays
    free. The playlist lists it all the same (segment numbers are positions in HLS) with an
    ``EXT-X-GAP`` tag, so that a player does not load it, except at the top of the list,
    where it is left out (the playlist then starts after it); a segment moved aside later
    (``move_aside``) is tagged when it moves, and a segment never written (shed, or while the
    writer was stopped) is listed as a gap too. The MPD cannot say so: a DASH player asking
    for it gets a 404.
    """

    def __init__(
        self,
        out_dir: Path,
        params: EncoderParams,
        *,
        fmt: SegmentFormat = SegmentFormat.TS,
        window: int = DEFAULT_WINDOW,
        audio_wait: float = 1.0,
        aside: Callable[[int], bool] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"the playlist window must hold at least one segment, got {window}")
        self.out_dir = Path(out_dir)
        self.params = params
        self._segments = params.segments  # built once: add() reads it every frame
        self.format = fmt
        self.window = window
        self._aside = aside
        self._container = container_for(fmt, params)
        #: The init segment on disk (CMAF), as last written by this writer.
        self._init: bytes | None = None
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
        #: Listed segments written aside (or moved aside since): tagged EXT-X-GAP.
        self._gaps: set[int] = set()
        #: SHA-256 of the newest segments written (``digest``).
        self._digests: dict[int, bytes] = {}
        #: The highest bit rate of a media segment written so far (bits per second).
        self.peak_bitrate = 0
        self.cleanup()

    def digest(self, segment: int) -> bytes | None:
        """The SHA-256 of ``segment``'s media bytes as written (aside or not), while it is
        among the newest ``DIGESTS_KEPT``; None otherwise."""
        return self._digests.get(segment)

    @property
    def playlist_path(self) -> Path:
        return self.out_dir / PLAYLIST_NAME

    @property
    def manifest_paths(self) -> tuple[Path, ...]:
        """The manifests rewritten after every segment: the HLS playlist, then the MPD."""
        if self.format is SegmentFormat.CMAF:
            return (self.playlist_path, self.out_dir / MPD_NAME)
        return (self.playlist_path,)

    @property
    def init_path(self) -> Path | None:
        """CMAF's init segment, once written; None for MPEG-TS (and before the first)."""
        return None if self._init is None else self.out_dir / INIT_NAME

    @property
    def listed(self) -> tuple[int, ...]:
        """The segment numbers the playlist lists, oldest first."""
        return tuple(self._listed)

    @property
    def codecs(self) -> tuple[str, ...]:
        """RFC 6381 codecs of the newest segment written, from its SPS and its audio's header
        (empty before the first)."""
        return self._container.codecs

    def segment_end(self, segment: int) -> Fraction:
        """Where ``segment`` ends on the shared timeline, in exact seconds since the epoch."""
        return self._start(segment + 1)

    @property
    def segment_duration(self) -> Fraction:
        """Seconds per segment: GOP length times the frame period, exact."""
        return self._segments.duration(self.params.time_base)

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
        segments = self._segments
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

    def stop(self, next_segment: int) -> list[Path]:
        """No more video for now (its rung was handed to another encoder): the segment in
        progress is written if it is whole — it reached its last slot, or ``next_segment``,
        where the video stops, follows it — once its audio has arrived (``add_audio``), as
        if the next segment's first frame had come. A later :meth:`add` starts afresh at a
        later segment. Returns the segments this call wrote."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.has_start:
            reached_end = self._segments.is_last(pending.frames[-1].timecode)
            if reached_end or next_segment == pending.segment + 1:
                self._held.append(pending)
        return self._release()

    @property
    def waiting(self) -> bool:
        """Whether whole segments wait for their audio (a stopped writer still needs it)."""
        return bool(self._held)

    def finish(self) -> list[Path]:
        """At shutdown: write the held segments and the one in progress if it is whole.

        Leaves no temp files behind. Returns the paths written, oldest first.
        """
        pending, self._pending = self._pending, None
        try:
            if (
                pending is not None
                and pending.has_start
                and self._segments.is_last(pending.frames[-1].timecode)
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
        return self._segments.first_timecode(segment) * self.params.time_base

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
        # Audio older than this segment can go in no later one. This segment's own audio stays
        # until the next: if this segment's first picture was not the mesh's (its encoder a
        # frame off, resuming), the next one's anchor differs and its span starts elsewhere
        # in the source; a segment's audio depends on its own anchor alone, not on history.
        while self._audio and self._audio[0].source_time + offset < start:
            self._audio.popleft()
        return chosen

    def cleanup(self) -> None:
        """Remove temp files a crashed write left behind (ours are all ``.tmp-*``)."""
        for leftover in self.out_dir.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _write(self, pending: _Pending) -> Path:
        aside = self._aside is not None and self._aside(pending.segment)
        name = (aside_name if aside else segment_name)(pending.segment, self.format)
        path = self.out_dir / name
        if aside:
            self._gaps.add(pending.segment)
        muxed = self._container.mux(pending.segment, pending.frames, self._segment_audio(pending))
        size = picture_size(self.params, pending.frames)
        if size != (self.params.width, self.params.height):  # a size the mesh agreed: the MPD's
            self.params = replace(self.params, width=size[0], height=size[1])
        if muxed.init is not None and muxed.init != self._init:
            atomic_write(self.out_dir / INIT_NAME, muxed.init)
            if self._init is not None:
                self._listed.clear()  # listed segments need the old init: list afresh
            self._init = muxed.init
        atomic_write(path, muxed.media)
        self._digests[pending.segment] = hashlib.sha256(muxed.media).digest()
        if len(self._digests) > DIGESTS_KEPT:
            del self._digests[min(self._digests)]
        self.peak_bitrate = max(
            self.peak_bitrate, math.ceil(len(muxed.media) * 8 / self.segment_duration)
        )
        self._extend_window(pending.segment)
        if self._listed:  # not while every segment so far went aside
            atomic_write(self.playlist_path, self._playlist().encode())
            if self.format is SegmentFormat.CMAF:
                atomic_write(self.out_dir / MPD_NAME, self._mpd().encode())
        return path

    def _extend_window(self, newest: int) -> None:
        """Append ``newest`` to the listed run, the segments this writer skipped before it
        (an encoder that shed a segment, or held its rung again) listed as gaps.

        HLS numbers segments by position (media sequence + offset), so the list must be a run
        of consecutive numbers for each segment's sequence number to be its segment number on
        every encoder. A skipped segment listed as a gap keeps the window every other encoder
        lists: starting the run afresh at ``newest`` would move the playlist's media sequence
        forward past segments that other encoders wrote, which a player that had not loaded
        them would find missing.
        """
        if self._listed:
            # Only those the window can still hold: a longer hole leaves nothing older.
            skipped = range(max(self._listed[-1] + 1, newest - self.window + 1), newest)
            self._listed.extend(skipped)
            self._gaps.update(skipped)
        self._listed.append(newest)
        del self._listed[: -self.window]
        self._trim_gaps()

    def _trim_gaps(self) -> None:
        """A playlist starts with a segment there is: a player starts at the top, and hls.js
        never started on a gap (an encoder's first segment, written aside while it locked
        in)."""
        while self._listed and self._listed[0] in self._gaps:
            del self._listed[0]
        self._gaps.intersection_update(self._listed)

    def move_aside(self, segment: int) -> None:
        """Move a segment written under its shared name aside (its encoder found it was not
        the mesh's after all), and mark it a gap in the playlist."""
        path = self.out_dir / segment_name(segment, self.format)
        with contextlib.suppress(FileNotFoundError):  # gone already (a restart's cleanup)
            path.rename(self.out_dir / aside_name(segment, self.format))
        if segment in self._listed and segment not in self._gaps:
            self._gaps.add(segment)
            self._trim_gaps()
            if self._listed:
                atomic_write(self.playlist_path, self._playlist().encode())

    def restore(self, segment: int) -> Path | None:
        """Give a segment written aside its shared name (a neighbour that vouched for it
        wrote the same bytes: ``SyncEngine.confirmed``) and untag it in the playlist; the
        path under the shared name, or None when the aside copy is gone."""
        path = self.out_dir / segment_name(segment, self.format)
        try:
            (self.out_dir / aside_name(segment, self.format)).rename(path)
        except FileNotFoundError:
            return None
        if segment in self._gaps:
            self._gaps.discard(segment)
            if self._listed:
                atomic_write(self.playlist_path, self._playlist().encode())
        return path

    def _playlist(self) -> str:
        duration = self.segment_duration
        cmaf = self.format is SegmentFormat.CMAF
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7" if cmaf else "#EXT-X-VERSION:3",  # 7: fMP4 segments
            f"#EXT-X-TARGETDURATION:{math.ceil(duration)}",
            f"#EXT-X-MEDIA-SEQUENCE:{self._listed[0]}",
        ]
        if cmaf:
            lines.append(f'#EXT-X-MAP:URI="{INIT_NAME}"')
        for segment in self._listed:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{self.program_date_time(segment)}")
            lines.append(f"#EXTINF:{float(duration):.3f},")
            if segment in self._gaps:
                lines.append("#EXT-X-GAP")  # written aside: not to be loaded
            lines.append(segment_name(segment, self.format))
        return "\n".join(lines) + "\n"

    def _mpd(self) -> str:
        """The DASH MPD; its publishTime is the newest listed segment's end, as every encoder
        that wrote it would say."""
        return render_mpd(
            self.params,
            codecs=self.codecs,
            window=self.window,
            publish_time=utc_instant(self._start(self._listed[-1] + 1)),
            media_template=segment_template(self.format),
        )

    def program_date_time(self, segment: int) -> str:
        """When ``segment`` starts on the shared timeline, as HLS's EXT-X-PROGRAM-DATE-TIME.

        Timecodes count frame slots since the Unix epoch, so the segment's first slot *is* a
        wall-clock instant, the same on every encoder; rounded down to the millisecond.
        """
        return utc_instant(self._start(segment))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees it whole or not at all (a ``.tmp-*`` file beside
    it, renamed over it).

    Not fsynced: this runs on the encoding loop, and an fsync waits for the disk to write back
    whatever the whole machine has dirtied; every encoder ends its segment at the same moment,
    so they all waited at once (under another process's writeback, each encoder's longest
    hold-up rose from about 0.14 s to 0.27 s). A live segment is worth nothing after the
    machine itself went down; a crash of the process leaves at most a temp file.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        # mkstemp creates 0600; segments are served by packagers and web servers.
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
