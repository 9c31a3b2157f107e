"""A run's figures (``summary.json``), computed from its segment files and its recorded events.

Theory of operation
-------------------
Nothing here reads the run's settings: what the encoders wrote (the folders, judged by
:mod:`meshenc.report.verify`) and what was recorded while they ran (``events.jsonl``, see
:mod:`meshenc.report.recorder`) are the only inputs, so a figure cannot claim more than the run
shows.

A run folder holds one subfolder per encoder (named by encoder id, with its segment files) and
``events.jsonl``. From them:

- encoders, segments, judged/agreed segments, locked fraction, locked-after, misaligned frames
  and gaps: from the files, as defined in :mod:`meshenc.report.verify`;
- corrections: the ``correction`` events, by kind;
- failover time, per ``killed`` event of an encoder that was its group's leader at that
  moment: from the ``killed`` event to the next leader of that group. Leaders come from the
  ``leader`` events; a run without any takes them from the encoders' own GetState answers (the
  first answer naming a new leader; resolution: the polling interval);
- playback, when the run kept a player's log (``player/log.jsonl``): the figures of
  :mod:`meshenc.report.playback`, and for each ``killed`` and ``joined`` event whether the
  browser was playing at that moment (the fault happened while a viewer watched); when the
  page also played the master playlist of redundant encoders, that player's figures and its
  failover through the kill of the encoder it played from
  (:func:`meshenc.report.playback.evaluate_failover`); and, with ``--format cmaf``, the figures
  of its dash.js player of the origin's DASH manifest; with placed rungs, the figures of its
  player of channel ``0``'s master (which switches rungs: the rungs played and the switches);
- the recording, when the run had an origin (``origin/``): the verdict of
  :mod:`meshenc.report.recording`, from decoding what the origin received;
- per work unit (``rungs``, :func:`meshenc.report.verify.verify_units`: an ABR ladder's rung,
  and with several channels each channel's output or each of its rungs, ``<channel>/<rung>``):
  the encoders that wrote it and how many segments each, the segments written, the fewest
  copies of a segment (first and last segment left out: encoders start and stop at different
  moments), whether its holders' copies agree, and its recording at the origin judged as the
  headline recording is (``origin``); where the units were placed on different
  encoders (or the encoders' folders hold channels), the headline figures are those of the
  unit most encoders wrote (the encoders counted are every encoder of any unit), and the run
  is locked only if every unit is;
- size switches, per ``parameters`` event that asked for a picture size: for each encoder of
  the headline unit that wrote the segment the change was proposed for and the one before,
  whether its pictures (decoded from its files) took the new size exactly at that segment;
- join time, per ``joined`` event: from the event to the start of the joined encoder's first
  segment that holds its segment's reference bytes (the majority's; of any unit it wrote,
  where units were placed), the start of segment
  ``s`` being ``s × gop / fps`` Unix seconds (timecodes count frames since the Unix epoch) with
  ``gop`` and ``fps`` as the encoders reported them in GetState.

Times are differences of the recorder's clock (and, for joins, of timecodes on the mesh's
timeline), in milliseconds.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshenc.core.parameters import size_name
from meshenc.report.playback import (
    ABR_PLAYER,
    CHANNEL_PLAYER,
    DASH_PLAYER,
    PLAYER_DIR,
    PLAYER_LOG,
    REDUNDANT_PLAYER,
    PlaybackResult,
    PlayerFailover,
    evaluate_failover,
    load_playback,
    read_log,
)
from meshenc.report.recorder import EVENTS_NAME, EventLog, StateEvent, read_events
from meshenc.report.recording import RecordingCheck, check_recording, check_unit_recordings
from meshenc.report.verify import (
    DEFAULT_LOCK_IN,
    ORIGIN_DIR,
    FrameCounter,
    Verification,
    count_frames,
    find_outputs,
    picture_size,
    rung_pixels,
    scan_output,
    verify_units,
)
from meshenc.report.verify import compare as compare_outputs

__all__ = [
    "SUMMARY_NAME",
    "Failover",
    "Join",
    "LeaderChange",
    "RunRecord",
    "RungSummary",
    "SizeSwitch",
    "Summary",
    "Watched",
    "leader_timeline",
    "load_run",
    "summarize",
    "summarize_rung",
]

SUMMARY_NAME = "summary.json"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything a finished run left: the verdict on its files and its events."""

    out_dir: Path
    verification: Verification
    events: EventLog
    #: What a browser's player saw (None: the run kept no player log).
    playback: PlaybackResult | None = None
    #: The verdict on what the origin received (None: no origin, or it received no segment).
    recording: RecordingCheck | None = None
    #: What the browser's player of the redundant master playlist saw (None: it did not run),
    #: and how it went through the kill of the encoder it played from.
    redundant: PlaybackResult | None = None
    player_failover: PlayerFailover | None = None
    #: What the browser's dash.js player of the origin's DASH manifest saw (None: none ran).
    dash: PlaybackResult | None = None
    #: What the browser's hls.js player of a placed ladder's channel master saw (None: none),
    #: and its player of the same master over a constrained link, on its own ABR.
    channel: PlaybackResult | None = None
    abr: PlaybackResult | None = None
    #: An ABR ladder's rungs, each judged among the encoders that wrote it (empty: no ladder).
    rungs: Mapping[str, Verification] = field(default_factory=dict)
    #: Each of those units' recording at the origin, where it has one.
    unit_recordings: Mapping[str, RecordingCheck] = field(default_factory=dict)
    #: The picture sizes asked of the mesh, and where each encoder switched.
    size_switches: tuple[SizeSwitch, ...] = ()

    @property
    def segment_seconds(self) -> float | None:
        """Seconds per segment (gop / fps) as the encoders reported it; None if unknown."""
        timing = Counter((e["gop"], e["fps"]) for e in self.events.states() if e["fps"] > 0)
        if not timing:
            return None
        (gop, fps), _ = timing.most_common(1)[0]
        return gop / fps if gop > 0 else None


def load_run(
    out_dir: Path,
    *,
    lock_in: int = DEFAULT_LOCK_IN,
    frames: FrameCounter | int = count_frames,
) -> RunRecord:
    """Scan a run folder's encoder subfolders and read its events.

    Raises:
        NotADirectoryError: ``out_dir`` is not a folder.
    """
    out_dir = Path(out_dir)
    outputs = [scan_output(folder) for folder in find_outputs([out_dir])]
    verification = compare_outputs(outputs, lock_in=lock_in, frames=frames)
    rungs = verify_units(out_dir, lock_in=lock_in, frames=frames)
    names = {o.name for o in outputs}
    if any({e.name for e in v.encoders} != names for v in rungs.values()):
        # Placed rungs or channels: each encoder's first rung is not the same unit; the
        # headline is the unit most encoders wrote (the larger picture between equals, the
        # first in order, so the first channel, between those).
        unit = max(rungs, key=lambda u: (len(rungs[u].encoders), rung_pixels(u.split("/")[-1])))
        verification = rungs[unit]
    events = read_events(out_dir / EVENTS_NAME)
    redundant = load_playback(out_dir, REDUNDANT_PLAYER)
    failover = None
    if redundant is not None:
        kills = [(e["t"], e["encoder"]) for e in events.lifecycle() if e["kind"] == "killed"]
        failover = evaluate_failover(
            read_log(out_dir / PLAYER_DIR / PLAYER_LOG),
            kills,
            holds_reference=functools.partial(_holds_reference, verification),
        )
    return RunRecord(
        out_dir=out_dir,
        verification=verification,
        events=events,
        size_switches=tuple(size_switches(events, verification)),
        playback=load_playback(out_dir),
        recording=check_recording(out_dir / ORIGIN_DIR),
        redundant=redundant,
        player_failover=failover,
        dash=load_playback(out_dir, DASH_PLAYER),
        channel=load_playback(out_dir, CHANNEL_PLAYER),
        abr=load_playback(out_dir, ABR_PLAYER),
        rungs=rungs,
        unit_recordings=check_unit_recordings(out_dir / ORIGIN_DIR) if rungs else {},
    )


@dataclass(frozen=True, slots=True)
class SizeSwitch:
    """A picture size asked of the mesh (``SetParameters``) and what the encoders did with it:
    for each encoder that wrote segment ``segment - 1`` and ``segment``, whether its pictures
    took ``size`` exactly at ``segment`` (the one the change was proposed for)."""

    encoder: str
    asked_at: float
    segment: int
    size: tuple[int, int]
    on_time: Mapping[str, bool]

    @property
    def line(self) -> str:
        """E.g. ``size 192x108 from segment 42 on 3 of 3 encoders``."""
        switched = sum(self.on_time.values())
        return (
            f"size {size_name(self.size)} from segment {self.segment} on"
            f" {switched} of {len(self.on_time)} encoders"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "encoder": self.encoder,
            "asked_at": self.asked_at,
            "segment": self.segment,
            "size": list(self.size),
            "on_time": dict(self.on_time),
        }


def size_switches(events: EventLog, verification: Verification) -> Iterable[SizeSwitch]:
    """Every size asked for, judged on the files of ``verification``'s encoders."""
    for asked in events.parameter_changes():
        if not asked["width"]:
            continue  # the bitrate alone
        size, segment = (asked["width"], asked["height"]), asked["segment"]
        on_time = {}
        for output in verification.encoders:
            if segment - 1 in output.digests and segment in output.digests:
                before = picture_size(output.path(segment - 1))
                after = picture_size(output.path(segment))
                on_time[output.name] = before != size and after == size
        yield SizeSwitch(asked["encoder"], asked["t"], segment, size, on_time)


def _holds_reference(verification: Verification, segment: int, encoder: str) -> bool | None:
    """Whether the encoder's copy of the segment is its reference (None: no such copy, or no
    reference)."""
    check = verification.segment(segment)
    if check is None or check.reference is None:
        return None
    return next((c.digest == check.reference for c in check.copies if c.encoder == encoder), None)


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """From ``t`` on, ``leader`` leads encoder group ``group`` (as recorded by ``source``)."""

    t: float
    group: str
    leader: str
    source: str
    """``"leader"`` (the launcher's events) or ``"state"`` (the encoders' GetState answers)."""


def leader_timeline(events: EventLog) -> list[LeaderChange]:
    """Leader changes in time order: the leader events, or if none, from GetState answers."""
    recorded = events.leaders()
    if recorded:
        return sorted(
            (LeaderChange(e["t"], e["segment"], e["leader"], "leader") for e in recorded),
            key=lambda c: c.t,
        )
    current: dict[str, str] = {}
    changes = []
    for state in sorted(events.states(), key=lambda e: e["t"]):
        group, leader = state["segment"], state["leader"]
        if leader and current.get(group) != leader:
            current[group] = leader
            changes.append(LeaderChange(state["t"], group, leader, "state"))
    return changes


@dataclass(frozen=True, slots=True)
class Failover:
    """A killed group leader and how long its group was without one."""

    group: str
    killed: str
    killed_at: float
    new_leader: str | None
    ms: float | None


@dataclass(frozen=True, slots=True)
class Watched:
    """A kill or a join, and whether the browser was playing the origin's stream then."""

    kind: str
    encoder: str
    t: float
    during_playback: bool


@dataclass(frozen=True, slots=True)
class Join:
    """A joined encoder and how long until its output held the majority's bytes."""

    encoder: str
    joined_at: float
    first_agreed_segment: int | None
    ms: float | None


def _failovers(events: EventLog, timeline: Sequence[LeaderChange]) -> list[Failover]:
    found = []
    for kill in (e for e in events.lifecycle() if e["kind"] == "killed"):
        t, victim = kill["t"], kill["encoder"]
        leading: dict[str, str] = {}
        for change in timeline:
            if change.t > t:
                break
            leading[change.group] = change.leader
        for group in sorted(g for g, leader in leading.items() if leader == victim):
            successor = next(
                (c for c in timeline if c.t > t and c.group == group and c.leader != victim), None
            )
            found.append(
                Failover(
                    group=group,
                    killed=victim,
                    killed_at=t,
                    new_leader=successor.leader if successor else None,
                    ms=(successor.t - t) * 1000.0 if successor else None,
                )
            )
    return found


def _joins(run: RunRecord) -> list[Join]:
    seconds = run.segment_seconds
    # Placed units: a joiner may write none of the headline unit, so every unit is searched.
    verifications = [run.verification, *run.rungs.values()]
    found = []
    for join in (e for e in run.events.lifecycle() if e["kind"] == "joined"):
        encoder, t = join["encoder"], join["t"]
        first: int | None = None
        if seconds is not None:
            agreed = (_first_agreed(v, encoder, t, seconds) for v in verifications)
            first = min((s for s in agreed if s is not None), default=None)
        found.append(
            Join(
                encoder=encoder,
                joined_at=t,
                first_agreed_segment=first,
                ms=None if first is None or seconds is None else (first * seconds - t) * 1000.0,
            )
        )
    return found


def _first_agreed(
    verification: Verification, encoder: str, joined_at: float, seconds: float
) -> int | None:
    """The first segment after ``joined_at`` of which ``encoder``'s copy holds the majority's
    bytes, beside at least one other copy."""
    for check in verification.segments:
        # A whole segment cannot start before the encoder existed; allow one segment of clock
        # offset between the recorder and the mesh's timeline.
        if (check.segment + 1) * seconds < joined_at:
            continue
        copy = next((c for c in check.copies if c.encoder == encoder), None)
        if copy is not None and copy.matches and len(check.copies) >= 2:
            return check.segment
    return None


def _worst(values: Iterable[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return max(measured) if measured else None


@dataclass(frozen=True, slots=True)
class RungSummary:
    """One rung of an ABR ladder among the encoders that wrote it."""

    rung: str
    #: Encoder → segments it wrote of this rung.
    holders: Mapping[str, int]
    segments: int
    #: The fewest copies of a segment, first and last segment left out (None: fewer than
    #: three segments).
    min_copies: int | None
    #: Segments with two or more copies, and of those the ones whose copies are identical.
    shared: int
    identical: int
    locked: bool
    #: The unit's recording at the origin (None: the run had no origin, or it holds none).
    origin: RecordingCheck | None = None

    @property
    def line(self) -> str:
        """e.g. ``640x360: enc-0 (12), enc-3 (7), enc-4 (5); 19 segments, at least 2 copies,
        17/17 shared segments identical; origin: 18 segments, continuous``."""
        holders = ", ".join(f"{e} ({n})" for e, n in self.holders.items())
        copies = "—" if self.min_copies is None else str(self.min_copies)
        line = (
            f"{self.rung}: {holders}; {self.segments} segments, at least {copies} copies, "
            f"{self.identical}/{self.shared} shared segments identical"
        )
        if self.origin is not None:
            line += f"; origin: {len(self.origin.segments)} segments, {self.origin.verdict}"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "holders": dict(self.holders),
            "segments": self.segments,
            "min_copies": self.min_copies,
            "shared": self.shared,
            "identical": self.identical,
            "locked": self.locked,
            "origin": None if self.origin is None else self.origin.to_json(),
        }


def summarize_rung(
    rung: str, verification: Verification, origin: RecordingCheck | None = None
) -> RungSummary:
    """The figures of one rung's comparison, with its recording at the origin if any (see
    :class:`RungSummary`)."""
    checks = verification.segments
    inner = checks[1:-1]
    shared = [c for c in checks if len(c.copies) >= 2]
    return RungSummary(
        rung=rung,
        holders={e.name: len(e.digests) for e in verification.encoders},
        segments=len(checks),
        min_copies=min(len(c.copies) for c in inner) if inner else None,
        shared=len(shared),
        identical=sum(1 for c in shared if c.identical),
        locked=verification.locked,
        origin=origin,
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """The run's figures; ``to_json`` is the content of ``summary.json``."""

    encoders: tuple[str, ...]
    segments: int
    judged_segments: int
    agreed_segments: int
    locked: bool
    locked_fraction: float | None
    lock_in: int
    locked_after: int | None
    misaligned_frames: int
    lock_in_misaligned_frames: int
    uncounted_segments: tuple[int, ...]
    gaps: dict[str, list[list[int]]]
    corrections: dict[str, int]
    failovers: tuple[Failover, ...]
    joins: tuple[Join, ...]
    events: int
    skipped_event_lines: int
    playback: PlaybackResult | None = None
    recording: RecordingCheck | None = None
    watched: tuple[Watched, ...] = ()
    redundant: PlaybackResult | None = None
    player_failover: PlayerFailover | None = None
    dash: PlaybackResult | None = None
    channel: PlaybackResult | None = None
    abr: PlaybackResult | None = None
    rungs: tuple[RungSummary, ...] = ()
    size_switches: tuple[SizeSwitch, ...] = ()

    @property
    def failover_ms(self) -> float | None:
        """The longest measured failover."""
        return _worst(f.ms for f in self.failovers)

    @property
    def join_ms(self) -> float | None:
        """The longest measured join."""
        return _worst(j.ms for j in self.joins)

    @property
    def line(self) -> str:
        """The one-line verdict, e.g. ``6 encoders, 45 segments, 100 % locked after segment 2,
        0 misaligned frames, failover 180 ms``."""
        parts = [f"{len(self.encoders)} encoders", f"{self.segments} segments"]
        if self.locked_fraction is None:
            parts.append("nothing to compare")
        else:
            percent = f"{self.locked_fraction * 100:.0f} % locked"
            if self.locked_after is None:
                parts.append(f"{percent}, never settled")
            else:
                parts.append(f"{percent} after segment {self.locked_after}")
        misaligned = f"{self.misaligned_frames} misaligned frames"
        if self.uncounted_segments:
            misaligned += f" (+{len(self.uncounted_segments)} segments uncounted)"
        parts.append(misaligned)
        if self.failovers:
            worst = self.failover_ms
            parts.append("failover —" if worst is None else f"failover {worst:.0f} ms")
        if self.joins:
            worst = self.join_ms
            parts.append("join —" if worst is None else f"join {worst:.0f} ms")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "encoders": list(self.encoders),
            "encoder_count": len(self.encoders),
            "segments": self.segments,
            "judged_segments": self.judged_segments,
            "agreed_segments": self.agreed_segments,
            "locked": self.locked,
            "locked_fraction": self.locked_fraction,
            "lock_in": self.lock_in,
            "locked_after": self.locked_after,
            "misaligned_frames": self.misaligned_frames,
            "lock_in_misaligned_frames": self.lock_in_misaligned_frames,
            "uncounted_segments": list(self.uncounted_segments),
            "gaps": self.gaps,
            "corrections": self.corrections,
            "failover_ms": self.failover_ms,
            "failovers": [
                {
                    "group": f.group,
                    "killed": f.killed,
                    "killed_at": f.killed_at,
                    "new_leader": f.new_leader,
                    "ms": f.ms,
                }
                for f in self.failovers
            ],
            "join_ms": self.join_ms,
            "joins": [
                {
                    "encoder": j.encoder,
                    "joined_at": j.joined_at,
                    "first_agreed_segment": j.first_agreed_segment,
                    "ms": j.ms,
                }
                for j in self.joins
            ],
            "events": self.events,
            "skipped_event_lines": self.skipped_event_lines,
            "playback": None if self.playback is None else self.playback.to_json(),
            "watched": [
                {
                    "kind": w.kind,
                    "encoder": w.encoder,
                    "t": w.t,
                    "during_playback": w.during_playback,
                }
                for w in self.watched
            ],
            "recording": None if self.recording is None else self.recording.to_json(),
            "redundant": None
            if self.redundant is None
            else {
                **self.redundant.to_json(),
                "failover": None
                if self.player_failover is None
                else self.player_failover.to_json(),
            },
            "dash": None if self.dash is None else self.dash.to_json(),
            "channel": None if self.channel is None else self.channel.to_json(),
            "abr": None if self.abr is None else self.abr.to_json(),
            "rungs": [r.to_json() for r in self.rungs],
            "size_switches": [s.to_json() for s in self.size_switches],
        }

    def write(self, out_dir: Path) -> Path:
        """Write ``out_dir/summary.json``; return its path."""
        path = Path(out_dir) / SUMMARY_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def summarize(run: RunRecord) -> Summary:
    """The figures of a loaded run (see the module docstring for each definition)."""
    result, events = run.verification, run.events
    # Every encoder that wrote any unit: with placed units, some write none of the headline's.
    verifications = [result, *run.rungs.values()]
    encoders = sorted({e.name for v in verifications for e in v.encoders})
    return Summary(
        encoders=tuple(encoders),
        segments=len(result.segments),
        judged_segments=result.judged,
        agreed_segments=result.agreed,
        locked=result.locked and all(v.locked for v in run.rungs.values()),
        locked_fraction=result.locked_fraction,
        lock_in=result.lock_in,
        locked_after=result.locked_after,
        misaligned_frames=result.misaligned_frames,
        lock_in_misaligned_frames=result.lock_in_misaligned_frames,
        uncounted_segments=result.uncounted,
        gaps={name: [list(g) for g in gaps] for name, gaps in result.gaps.items()},
        corrections=dict(sorted(Counter(c["correction"] for c in events.corrections()).items())),
        failovers=tuple(_failovers(events, leader_timeline(events))),
        joins=tuple(_joins(run)),
        events=len(events.events),
        skipped_event_lines=events.skipped_lines,
        playback=run.playback,
        recording=run.recording,
        watched=_watched(events, run.playback),
        redundant=run.redundant,
        player_failover=run.player_failover,
        dash=run.dash,
        channel=run.channel,
        abr=run.abr,
        rungs=tuple(
            summarize_rung(rung, v, run.unit_recordings.get(rung)) for rung, v in run.rungs.items()
        ),
        size_switches=run.size_switches,
    )


def _watched(events: EventLog, playback: PlaybackResult | None) -> tuple[Watched, ...]:
    if playback is None or playback.skipped is not None:
        return ()
    return tuple(
        Watched(e["kind"], e["encoder"], e["t"], playback.playing_at(e["t"]))
        for e in events.lifecycle()
        if e["kind"] in ("killed", "joined")
    )


def median_error_ms(states: Iterable[StateEvent]) -> float | None:
    """Median |error| of the given answers, ms (for the report's per-encoder table)."""
    errors = [abs(s["error_ns"]) / 1e6 for s in states]
    return statistics.median(errors) if errors else None


def arrival_figures(
    states: Mapping[str, Sequence[StateEvent]],
) -> dict[str, tuple[float | None, float | None]]:
    """Per encoder: the median measured arrival jitter (ms), and its ingest delay relative to
    the encoder with the shortest (ms) — the difference of the encoders' median arrival offsets,
    which share one host clock in a local run. None where an encoder reported nothing live."""
    jitter: dict[str, float | None] = {}
    offset: dict[str, float] = {}
    for name, seen in states.items():
        live = [s for s in seen if s.get("input_state") == "live"]
        jitter[name] = (
            statistics.median(s.get("arrival_jitter_us", 0) / 1000.0 for s in live)
            if live
            else None
        )
        offsets = [s["arrival_offset_ns"] / 1e6 for s in live if s.get("arrival_offset_ns")]
        if offsets:
            offset[name] = statistics.median(offsets)
    earliest = min(offset.values(), default=0.0)
    return {n: (jitter[n], offset[n] - earliest if n in offset else None) for n in states}
