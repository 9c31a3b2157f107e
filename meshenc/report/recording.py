"""Does what the origin received play as one continuous stream? Checked by decoding it.

Theory of operation
-------------------
A local run's origin keeps every object it received (``OUT/origin/``): the segment files and
the newest media playlist. A viewer who watched the whole run got those segments in number
order, so the recording is judged as that viewer's stream:

- **no missing segment**: the segment numbers on the origin form one run, first to last;
- **video**: every segment demuxes and decodes (PyAV), and the decoded pictures' PTS, taken
  across the files in number order, grow by exactly one frame each time (90 kHz ticks, modulo
  MPEG-TS's 33-bit wrap). One frame is ``90000 / rate`` ticks, the rate read from the H.264
  stream; a rate whose frame is not a whole number of ticks (24000/1001) rounds each PTS, so a
  step within one tick of it counts as one frame;
- **audio**: the decoded audio frames follow each other with neither gap nor overlap: each
  frame's PTS is the previous one's plus its samples' duration, within
  :data:`AUDIO_TOLERANCE_TICKS`. The encoders re-time the source's audio packets by whole
  ticks (a segment's offset from the source clock), so a continuous source stays continuous to
  the tick; only a duration that is not a whole number of ticks (1024 samples at 44.1 kHz is
  2089.8 ticks) rounds, by under one tick per frame. A lost or repeated audio frame is a
  thousand ticks or more;
- **the served playlist**: no ``EXT-X-DISCONTINUITY`` tag (nor a discontinuity sequence other
  than 0), its media sequence is its first segment's number, and it lists consecutive segments
  that are all on the origin.

Nothing the encoders or the run logged enters the verdict: only the files.
:func:`decode_segment` reads one file (IO), :func:`judge` is a pure function of what was
decoded, :func:`check_recording` does both for a folder.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from meshenc.report.verify import output_units, parse_playlist, rendition_folder, segment_source
from services.encoder.media.containers import TICKS
from services.encoder.media.ladder import CHANNEL
from services.encoder.media.segments import (
    PLAYLIST_NAME,
    SegmentFormat,
    segment_format,
    segment_name,
    segment_number,
)

__all__ = [
    "AUDIO_TOLERANCE_TICKS",
    "DecodedSegment",
    "Jump",
    "RecordingCheck",
    "check_recording",
    "check_unit_recordings",
    "decode_segment",
    "judge",
    "playlist_problems",
]

WRAP = 1 << 33
"""MPEG-TS timestamps wrap at 2**33 ticks (26.5 hours)."""
AUDIO_TOLERANCE_TICKS = 2
"""Largest audio gap or overlap, in ticks (22 µs), still continuous: rounding only."""


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    """What decoding one segment file gave: PTS in 90 kHz ticks, in presentation order."""

    number: int
    video_pts: tuple[int, ...]
    #: (PTS, duration in ticks) of every decoded audio frame.
    audio: tuple[tuple[int, float], ...] = ()
    #: The video frame rate the stream declares (None: unknown).
    frame_rate: Fraction | None = None
    error: str | None = None
    #: The file's format (its name's suffix), so that the verdict names the file as it is.
    format: SegmentFormat = SegmentFormat.TS

    @property
    def name(self) -> str:
        return segment_name(self.number, self.format)


@dataclass(frozen=True, slots=True)
class Jump:
    """Where the stream is not continuous: in ``segment``, a frame ``ticks`` off where
    continuity expects it (positive: a gap, negative: an overlap or a step back)."""

    segment: int
    expected: int
    found: int

    @property
    def ticks(self) -> int:
        return _signed(self.found - self.expected)

    def to_json(self) -> dict[str, int]:
        return {
            "segment": self.segment,
            "expected": self.expected,
            "found": self.found,
            "ticks": self.ticks,
        }


@dataclass(frozen=True, slots=True)
class RecordingCheck:
    """The verdict on a recording (see the module docstring)."""

    segments: tuple[int, ...]
    missing: tuple[int, ...]
    undecodable: tuple[str, ...]
    video_frames: int
    frame_ticks: float | None
    video_jumps: tuple[Jump, ...]
    audio_frames: int
    audio_jumps: tuple[Jump, ...]
    #: The largest |gap or overlap| between audio frames, jumps included (ticks).
    worst_audio_ticks: float
    playlist_problems: tuple[str, ...]

    @property
    def continuous(self) -> bool:
        """One continuous stream: every check above passed, and there was video."""
        return (
            bool(self.segments)
            and self.video_frames > 0
            and not (self.missing or self.undecodable or self.video_jumps or self.audio_jumps)
            and not self.playlist_problems
        )

    @property
    def seconds(self) -> float:
        """The recording's length by its frames."""
        return 0.0 if self.frame_ticks is None else self.video_frames * self.frame_ticks / TICKS

    @property
    def line(self) -> str:
        """One line, e.g. ``recording: 20 segments, 1200 frames (40.0 s), continuous``."""
        head = (
            f"recording: {len(self.segments)} segments, {self.video_frames} frames "
            f"({self.seconds:.1f} s), {self.audio_frames} audio frames"
        )
        return f"{head}, {self.verdict}"

    @property
    def verdict(self) -> str:
        """``continuous``, or ``NOT continuous:`` and what is wrong."""
        if self.continuous:
            return "continuous"
        problems = []
        if not self.segments or not self.video_frames:
            problems.append("no video")
        if self.missing:
            problems.append(f"{len(self.missing)} segments missing")
        if self.undecodable:
            problems.append(f"{len(self.undecodable)} undecodable")
        if self.video_jumps:
            problems.append(f"{len(self.video_jumps)} video PTS jumps")
        if self.audio_jumps:
            problems.append(f"{len(self.audio_jumps)} audio gaps/overlaps")
        problems += self.playlist_problems
        return "NOT continuous: " + "; ".join(problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "continuous": self.continuous,
            "segments": len(self.segments),
            "first_segment": self.segments[0] if self.segments else None,
            "last_segment": self.segments[-1] if self.segments else None,
            "missing": list(self.missing),
            "undecodable": list(self.undecodable),
            "video_frames": self.video_frames,
            "frame_ticks": self.frame_ticks,
            "seconds": self.seconds,
            "video_jumps": [j.to_json() for j in self.video_jumps],
            "audio_frames": self.audio_frames,
            "audio_jumps": [j.to_json() for j in self.audio_jumps],
            "worst_audio_ticks": self.worst_audio_ticks,
            "audio_tolerance_ticks": AUDIO_TOLERANCE_TICKS,
            "playlist_problems": list(self.playlist_problems),
        }


def _signed(ticks: int) -> int:
    """A difference of 33-bit timestamps, as the shortest signed distance."""
    ticks %= WRAP
    return ticks - WRAP if ticks >= WRAP // 2 else ticks


def _ticks(pts: int, time_base: Fraction) -> int:
    return round(pts * time_base * TICKS)


def decode_segment(path: Path) -> DecodedSegment:
    """Demux and decode every picture and audio frame of one segment file."""
    number, fmt = segment_number(path.name), segment_format(path.name)
    if number is None or fmt is None:
        raise ValueError(f"{path.name} is not a segment file")
    video: list[int] = []
    audio: list[tuple[int, float]] = []
    rate: Fraction | None = None
    try:
        with av.open(segment_source(path), "r") as container:
            streams = [*container.streams.video[:1], *container.streams.audio[:1]]
            if container.streams.video:
                declared = container.streams.video[0].guessed_rate
                rate = Fraction(declared) if declared else None
            for packet in container.demux(streams):
                for frame in packet.decode():
                    if not isinstance(frame, av.AudioFrame | av.VideoFrame):
                        continue
                    if frame.pts is None or frame.time_base is None:
                        continue
                    at = _ticks(frame.pts, frame.time_base)
                    if isinstance(frame, av.AudioFrame):
                        audio.append((at, frame.samples * TICKS / frame.sample_rate))
                    else:
                        video.append(at)
    except (av.FFmpegError, OSError) as exc:
        return DecodedSegment(number, tuple(video), tuple(audio), rate, f"{exc}", fmt)
    return DecodedSegment(number, tuple(sorted(video)), tuple(sorted(audio)), rate, format=fmt)


def playlist_problems(text: str, present: set[int]) -> tuple[str, ...]:
    """What is wrong with a served media playlist for a continuous stream."""
    try:
        playlist = parse_playlist(text)
    except ValueError as exc:
        return (f"the playlist has a {exc}",)
    problems = []
    if playlist.discontinuities:
        problems.append("EXT-X-DISCONTINUITY in the playlist")
    if playlist.discontinuity_sequence not in (None, "0"):
        problems.append(
            f"playlist has EXT-X-DISCONTINUITY-SEQUENCE:{playlist.discontinuity_sequence}"
        )
    listed: list[tuple[int, str]] = []
    for uri in playlist.uris:
        number = segment_number(uri)
        if number is None:
            problems.append(f"playlist lists {uri!r}, not a segment of the origin")
        else:
            listed.append((number, uri))
    if not listed:
        problems.append("the playlist lists no segment")
        return tuple(problems)
    first = listed[0][0]
    sequence = playlist.media_sequence
    if sequence is not None and sequence != first:
        problems.append(f"media sequence {sequence} is not its first segment {first}")
    if [n for n, _ in listed] != list(range(first, first + len(listed))):
        problems.append("the playlist's segments are not consecutive")
    absent = [name for n, name in listed if n not in present]
    if absent:
        problems.append(
            f"the playlist lists {len(absent)} segments the origin does not hold"
            f" (first {absent[0]})"
        )
    return tuple(problems)


def _frame_ticks(segments: Sequence[DecodedSegment]) -> float | None:
    """One frame in ticks: from the declared rate, else the most common PTS step."""
    rates = Counter(s.frame_rate for s in segments if s.frame_rate)
    if rates:
        rate = rates.most_common(1)[0][0]
        return float(TICKS / rate)
    steps = Counter(_signed(b - a) for s in segments for a, b in itertools.pairwise(s.video_pts))
    return float(steps.most_common(1)[0][0]) if steps else None


def judge(segments: Sequence[DecodedSegment], playlist: str | None) -> RecordingCheck:
    """The verdict on decoded segments (any order) and the served playlist's text.

    Args:
        segments: every segment file the origin holds, decoded.
        playlist: the served media playlist (None: the origin holds none, which is a problem).
    """
    ordered = sorted(segments, key=lambda s: s.number)
    numbers = tuple(s.number for s in ordered)
    present = set(numbers)
    missing = (
        tuple(n for n in range(numbers[0], numbers[-1] + 1) if n not in present) if numbers else ()
    )
    frame = _frame_ticks(ordered)
    video_jumps: list[Jump] = []
    audio_jumps: list[Jump] = []
    worst_audio = 0.0
    previous_video: int | None = None
    previous_audio: tuple[int, float] | None = None
    for segment in ordered:
        for pts in segment.video_pts:
            if previous_video is not None and frame is not None:
                step = _signed(pts - previous_video)
                if abs(step - frame) >= 1:
                    expected = round(previous_video + frame) % WRAP
                    video_jumps.append(Jump(segment.number, expected, pts))
            previous_video = pts
        for pts, duration in segment.audio:
            if previous_audio is not None:
                off = _signed(pts - previous_audio[0]) - previous_audio[1]
                worst_audio = max(worst_audio, abs(off))
                if abs(off) > AUDIO_TOLERANCE_TICKS:
                    expected = round(previous_audio[0] + previous_audio[1]) % WRAP
                    audio_jumps.append(Jump(segment.number, expected, pts))
            previous_audio = (pts, duration)
    problems = (
        ("the origin holds no playlist",)
        if playlist is None
        else playlist_problems(playlist, present)
    )
    return RecordingCheck(
        segments=numbers,
        missing=missing,
        undecodable=tuple(f"{s.name}: {s.error}" for s in ordered if s.error is not None),
        video_frames=sum(len(s.video_pts) for s in ordered),
        frame_ticks=frame,
        video_jumps=tuple(video_jumps),
        audio_frames=sum(len(s.audio) for s in ordered),
        audio_jumps=tuple(audio_jumps),
        worst_audio_ticks=worst_audio,
        playlist_problems=problems,
    )


def check_unit_recordings(origin_dir: Path) -> dict[str, RecordingCheck]:
    """Every work unit's recording at the origin (a placed ladder's rungs, several channels'
    outputs or rungs; see ``verify.unit_folders``), each judged as :func:`check_recording`
    judges one; empty where the origin holds one output."""
    if not Path(origin_dir).is_dir():
        return {}
    return {
        unit: check
        for unit, folder in output_units(Path(origin_dir)).items()
        if (check := _judge_folder(folder)) is not None
    }


def check_recording(origin_dir: Path) -> RecordingCheck | None:
    """Decode every segment the origin holds, in number order, and judge the recording.

    Returns None when the folder holds no segment file (no origin, or nothing published). An
    ABR ladder's recording (a master playlist above the rungs) is judged by its first rung; a
    recording of several channels (a folder per channel) by channel ``0``'s.
    """
    origin_dir = Path(origin_dir)
    if not origin_dir.is_dir():
        return None
    if (origin_dir / CHANNEL).is_dir():
        origin_dir = origin_dir / CHANNEL
    return _judge_folder(rendition_folder(origin_dir))  # a ladder's recording: its first rung


def _judge_folder(folder: Path) -> RecordingCheck | None:
    """The verdict on the segments of one folder and its playlist; None without segments."""
    paths = [p for p in folder.iterdir() if segment_number(p.name) is not None]
    if not paths:
        return None
    playlist_path = folder / PLAYLIST_NAME
    playlist = playlist_path.read_text(errors="replace") if playlist_path.is_file() else None
    return judge([decode_segment(p) for p in paths], playlist)
