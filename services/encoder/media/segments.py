"""HLS segments on disk: one MPEG-TS file per GOP, written atomically, and a live playlist.

Theory of operation: segment ``s`` holds the frames with ``timecode // gop == s``. The writer
collects a segment's access units as they arrive and muxes the segment once the next segment
begins, so a segment file is a pure function of its EncodedFrames and the params: fresh muxer
state per file, packet timestamps derived from the timecode alone, and bit-exact muxing (no
version strings, no random ids). Encoders that agree on timecodes therefore write
byte-identical files under the same names, which a packager can switch between freely.

A segment is written only if it is *whole*: it holds its GOP's first frame (the IDR picture that
opens every GOP) and it was not cut short, i.e. it reached its last slot or the very next
segment followed it. The first segment after a start or a forward jump is partial on every
encoder that joined mid-GOP and would differ from the others' bytes, so it is discarded; so is
the segment in progress at ``finish()`` unless its last slot has arrived.

Files appear atomically (temp file in the same directory, fsync, ``os.replace``, fsync of the
directory): a reader sees a whole segment or none, and a crash leaves at most a temp file,
which ``cleanup()`` (called on construction and by ``finish()``) removes.

Invariants: timecodes never go back to an earlier segment; the playlist lists a run of
consecutive segment numbers (at most ``window``), its media sequence number is the first one's
segment number, so every encoder's playlist numbers a segment alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from services.encoder.media.gop import EncodedFrame, EncoderParams

__all__ = ["PLAYLIST_NAME", "SegmentWriter", "segment_name"]

PLAYLIST_NAME = "index.m3u8"
TEMP_PREFIX = ".tmp-"
DEFAULT_WINDOW = 10

_Writer = Callable[[BinaryIO], object]


def segment_name(segment: int) -> str:
    """The file name of segment ``segment``: the same on every encoder."""
    return f"seg-{segment:012d}.ts"


@dataclass(slots=True)
class _Pending:
    """The access units of the segment being collected."""

    segment: int
    frames: list[EncodedFrame] = field(default_factory=list)
    has_start: bool = False


class SegmentWriter:
    """Collects EncodedFrames into per-GOP MPEG-TS segments and keeps ``index.m3u8`` current."""

    def __init__(
        self, out_dir: Path, params: EncoderParams, *, window: int = DEFAULT_WINDOW
    ) -> None:
        if window < 1:
            raise ValueError(f"the playlist window must hold at least one segment, got {window}")
        self.out_dir = Path(out_dir)
        self.params = params
        self.window = window
        self.out_dir.mkdir(parents=True, exist_ok=True)
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
        return self.params.gop * self.params.time_base

    def add(self, frame: EncodedFrame) -> Path | None:
        """Take one access unit; return the path of a segment this completed, if any.

        If writing the finished segment fails, the exception propagates, no file remains (neither
        under the final name nor as a temp file) and the segment is lost; the arriving frame has
        already been taken into the next segment, so the writer can carry on.

        Raises:
            ValueError: the frame's timecode goes back (to an earlier segment, or not after the
                previous frame of this one).
        """
        gop = self.params.gop
        segment = frame.timecode // gop
        pending = self._pending
        if pending is not None and segment == pending.segment:
            if frame.timecode <= pending.frames[-1].timecode:
                raise ValueError(
                    f"timecode {frame.timecode} does not follow {pending.frames[-1].timecode}"
                )
            pending.frames.append(frame)
            return None
        if self._last_segment is not None and segment < self._last_segment:
            raise ValueError(f"segment {segment} is before segment {self._last_segment}")

        self._last_segment = segment
        self._pending = _Pending(
            segment, [frame], has_start=frame.timecode == segment * gop and frame.keyframe
        )
        if pending is None or not pending.has_start:
            return None
        reached_end = pending.frames[-1].timecode == (pending.segment + 1) * gop - 1
        if not reached_end and segment != pending.segment + 1:
            return None  # cut short by a jump: other encoders have the whole GOP
        return self._write(pending)

    def finish(self) -> Path | None:
        """At shutdown: write the segment in progress if it is whole, discard it otherwise.

        Leaves no temp files behind. Returns the path written, if any.
        """
        pending, self._pending = self._pending, None
        try:
            if pending is None or not pending.has_start:
                return None
            if pending.frames[-1].timecode != (pending.segment + 1) * self.params.gop - 1:
                return None
            return self._write(pending)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Remove temp files a crashed write left behind (ours are all ``.tmp-*``)."""
        for leftover in self.out_dir.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _write(self, pending: _Pending) -> Path:
        path = self.out_dir / segment_name(pending.segment)
        self._atomic_write(path, lambda out: self._mux(out, pending.frames))
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

    def _mux(self, out: BinaryIO, frames: Sequence[EncodedFrame]) -> None:
        """Mux one segment's access units into MPEG-TS, bit-exactly."""
        params = self.params
        rate = Fraction(params.frame_rate.num, params.frame_rate.den)
        with av.open(
            out, "w", format="mpegts", container_options={"fflags": "+bitexact"}
        ) as container:
            stream = container.add_mux_stream(
                "h264", rate=rate, width=params.width, height=params.height
            )
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
            lines.append(f"#EXTINF:{float(duration):.3f},")
            lines.append(segment_name(segment))
        return "\n".join(lines) + "\n"

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
