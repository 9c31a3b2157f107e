"""The chaos run's verdict: what faults cost, from the files and etcd's history alone.

Theory of operation
-------------------
A chaos run (``meshenc chaos``, :mod:`meshenc.local.chaos`) injects faults into a live mesh
and records each one as a :class:`FaultRecord`: what, on whom, from when to when (Unix
seconds). :func:`check` then judges the run from what it left behind, never from what the
encoders say about themselves:

- the encoders' segment files under their shared names (digests,
  :func:`meshenc.report.verify.scan_output`; a segment an encoder wrote aside, unable to vouch
  for it, is no copy: nobody could be served it), and the origin's copies where the run had
  one (what a viewer was served);
- per segment group, the audit of the leader key's history in etcd
  (:mod:`services.encoder.leadership_audit`): tenures and dual-leader intervals.

A segment number ``n`` covers the Unix seconds ``[n × gop / fps, (n+1) × gop / fps)`` (the
timecode is the label's frame slot on the epoch; labels sit within a fraction of a second of
the wall clock), so a fault maps onto segment numbers.

Definitions:

disturbed copies
    A fault on an encoder (killed, paused, its input cut) disturbs its copies from the segment
    in progress when the fault began up to its **re-lock**: the first segment after the fault
    ended whose copy holds the reference (before its next fault; segments without a copy or
    without a reference aside). Identical bytes are no accident: from that segment the
    encoder is on the mesh's timeline again. The re-lock takes ``relock`` segments, counted
    from the first segment that began after the fault ended. Disturbed copies are exempt from
    the verdict below; the re-lock is measured. A copy that differs after the re-lock is
    judged like any other: whatever made it differ, the fault is over.
reference
    The digest held by most undisturbed copies of a segment (by most copies when there is no
    undisturbed one); no reference on a tie. Re-locks are measured against the reference with
    only the faults themselves exempt, then the reference is taken again with the re-locks'
    windows exempt.
mismatched segment
    An undisturbed copy differs from the reference, or the origin's copy does (a viewer got
    bytes the mesh did not agree on), or the segment has no reference.
lost segment
    Fewer than ``min_copies`` undisturbed copies hold the reference, or, with an origin, the
    origin does not have it.

Only segments in ``[first, last]`` are judged: the run after its warm-up, up to a couple of
segments before its end (the last ones may still be on their way to the origin).

Invariants: :func:`check` is a pure function of its arguments; a segment is counted at most
once in each list; a fault that disturbs no encoder (etcd, the registry, the manager)
exempts nothing.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from meshenc.report.verify import EncoderOutput

__all__ = [
    "ChaosReport",
    "FaultKind",
    "FaultRecord",
    "GroupLeadership",
    "Relock",
    "check",
    "segment_at",
]


class FaultKind(enum.Enum):
    """What a chaos run does to one process (or link)."""

    KILL_ENCODER = "kill-encoder"
    PAUSE_ENCODER = "pause-encoder"
    KILL_LEADER = "kill-leader"
    PAUSE_LEADER = "pause-leader"
    KILL_REGISTRY = "kill-registry"
    PAUSE_REGISTRY = "pause-registry"
    KILL_MANAGER = "kill-manager"
    PAUSE_MANAGER = "pause-manager"
    STOP_ETCD = "stop-etcd"
    CUT_INPUT = "cut-input"

    @property
    def disturbs_encoder(self) -> bool:
        """Whether the fault's target is an encoder whose output it interrupts."""
        return self in _ENCODER_FAULTS


_ENCODER_FAULTS = frozenset(
    {
        FaultKind.KILL_ENCODER,
        FaultKind.PAUSE_ENCODER,
        FaultKind.KILL_LEADER,
        FaultKind.PAUSE_LEADER,
        FaultKind.CUT_INPUT,
    }
)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault as carried out: ``target`` (a process name) from ``start`` to ``end``
    (Unix seconds: the kill and the restart's readiness, the SIGSTOP and the SIGCONT...)."""

    kind: FaultKind
    target: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if not self.end >= self.start:
            raise ValueError(f"a fault ends after it starts: {self}")

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> FaultRecord:
        """A fault as ``to_json`` wrote it (``chaos.json``'s ``fault_list``).

        Raises:
            ValueError / KeyError / TypeError: not such a document.
        """
        return cls(
            FaultKind(document["kind"]),
            str(document["target"]),
            float(document["start"]),
            float(document["end"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "target": self.target,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
        }


@dataclass(frozen=True, slots=True)
class GroupLeadership:
    """A segment group's leadership as etcd's history tells it (the audit's figures)."""

    group: str
    tenures: int
    dual_leader_intervals: int
    acts_outside_tenure: int


@dataclass(frozen=True, slots=True)
class Relock:
    """How many segments an encoder took to be identical again after one fault; ``None``
    when it never was before the judged span ended (``segments`` then counts up to there)."""

    fault: FaultRecord
    first_good: int | None
    segments: int

    @property
    def recovered(self) -> bool:
        return self.first_good is not None


@dataclass(frozen=True, slots=True)
class ChaosReport:
    """The verdict (see the module docstring for the definitions)."""

    faults: tuple[FaultRecord, ...]
    first: int
    last: int
    lost_segments: tuple[int, ...]
    mismatched_segments: tuple[int, ...]
    origin_mismatched: tuple[int, ...]
    relocks: tuple[Relock, ...]
    groups: tuple[GroupLeadership, ...]
    crashes: tuple[str, ...]
    judged: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def dual_leader_intervals(self) -> int:
        return sum(g.dual_leader_intervals for g in self.groups)

    @property
    def max_relock_segments(self) -> int:
        return max((r.segments for r in self.relocks), default=0)

    @property
    def clean(self) -> bool:
        """No loss, no mismatch, no dual leader, no crash, every disturbed encoder re-locked."""
        return not (
            self.lost_segments
            or self.mismatched_segments
            or self.dual_leader_intervals
            or self.crashes
            or any(not r.recovered for r in self.relocks)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": len(self.faults),
            "fault_list": [f.to_json() for f in self.faults],
            "judged_segments": [self.first, self.last],
            "judged": self.judged,
            "lost_segments": list(self.lost_segments),
            "mismatched_segments": list(self.mismatched_segments),
            "origin_mismatched_segments": list(self.origin_mismatched),
            "dual_leader_intervals": self.dual_leader_intervals,
            "leader_tenures": {g.group: g.tenures for g in self.groups},
            "acts_outside_tenure": sum(g.acts_outside_tenure for g in self.groups),
            "max_relock_segments": self.max_relock_segments,
            "relocks": [
                {
                    "encoder": r.fault.target,
                    "kind": r.fault.kind.value,
                    "segments": r.segments,
                    "recovered": r.recovered,
                }
                for r in self.relocks
            ],
            "crashes": list(self.crashes),
            "notes": list(self.notes),
            "clean": self.clean,
        }


def segment_at(t: float, fps: Fraction, gop: int) -> int:
    """The segment number in progress at Unix second ``t``."""
    return math.floor(Fraction(t) * fps / gop)


def check(
    outputs: Sequence[EncoderOutput],
    faults: Sequence[FaultRecord],
    *,
    fps: Fraction,
    gop: int,
    first: int,
    last: int,
    origin: EncoderOutput | None = None,
    groups: Sequence[GroupLeadership] = (),
    crashes: Sequence[str] = (),
    min_copies: int = 2,
    notes: Sequence[str] = (),
) -> ChaosReport:
    """Judge segments ``first`` .. ``last`` of a chaos run (see the module docstring).

    Args:
        outputs: every encoder's folder, digested (names are the fault targets' names).
        faults: the faults carried out, in any order.
        fps, gop: the mesh's frame rate and GOP length (frames per segment).
        first, last: the judged segment numbers.
        origin: what the origin received, when the run had one.
        groups: each segment group's leadership audit.
        crashes: processes that exited when nobody stopped them, or not cleanly.
        min_copies: undisturbed identical copies a segment needs not to count as lost.
        notes: what the reader should know about the run (passed through).
    """
    by_name = {o.name: o.served for o in outputs}
    served = [(o.name, o.served) for o in outputs]
    ordered = sorted(faults, key=lambda f: f.start)
    windows: dict[str, list[tuple[int, int, FaultRecord]]] = {}
    for fault in ordered:
        if fault.kind.disturbs_encoder and fault.target in by_name:
            begin = segment_at(fault.start, fps, gop)
            recovered = segment_at(fault.end, fps, gop) + 1
            windows.setdefault(fault.target, []).append((begin, recovered, fault))

    def references(exempt: Mapping[str, set[int]]) -> dict[int, str | None]:
        refs: dict[int, str | None] = {}
        for n in range(first, last + 1):
            kept = Counter(d[n] for name, d in served if n in d and n not in exempt.get(name, ()))
            pool = kept or Counter(d[n] for _, d in served if n in d)
            ranked = pool.most_common(2)
            unique = ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1])
            refs[n] = ranked[0][0] if unique else None
        return refs

    # The reference with the faults themselves exempt first, then the re-locks against it,
    # then the reference again with the re-lock windows exempt.
    during = {
        name: {n for begin, recovered, _ in spans for n in range(begin, recovered)}
        for name, spans in windows.items()
    }
    rough = references(during)
    relocks: list[Relock] = []
    exempt: dict[str, set[int]] = {}
    for name, spans in windows.items():
        digests = by_name[name]
        for i, (begin, recovered, fault) in enumerate(spans):
            until = spans[i + 1][0] - 1 if i + 1 < len(spans) else last
            first_good = _first_good(digests, rough, recovered, until)
            end = until if first_good is None else first_good - 1
            exempt.setdefault(name, set()).update(range(begin, end + 1))
            segments = (until + 1 if first_good is None else first_good) - recovered
            relocks.append(Relock(fault, first_good, max(0, segments)))
    refs = references(exempt)

    lost: list[int] = []
    mismatched: list[int] = []
    origin_bad: list[int] = []
    for n in range(first, last + 1):
        ref = refs[n]
        judged = [d[n] for name, d in served if n in d and n not in exempt.get(name, ())]
        agreeing = sum(d == ref for d in judged)
        bad = any(d != ref for d in judged)
        if origin is not None and n in origin.digests and origin.digests[n] != ref:
            origin_bad.append(n)
            bad = True
        if bad:
            mismatched.append(n)
        if agreeing < min_copies or (origin is not None and n not in origin.digests):
            lost.append(n)
    return ChaosReport(
        faults=tuple(ordered),
        first=first,
        last=last,
        lost_segments=tuple(lost),
        mismatched_segments=tuple(mismatched),
        origin_mismatched=tuple(origin_bad),
        relocks=tuple(relocks),
        groups=tuple(groups),
        crashes=tuple(crashes),
        judged=max(0, last - first + 1),
        notes=tuple(notes),
    )


def _first_good(
    digests: Mapping[int, str], refs: Mapping[int, str | None], start: int, until: int
) -> int | None:
    """The first segment from ``start`` to ``until`` whose copy holds the reference, if any
    does (a segment with no copy, or with no reference because no two encoders agree on it,
    proves nothing: it is mismatched anyway)."""
    for n in range(start, until + 1):
        ref = refs.get(n)
        if ref is not None and digests.get(n) == ref:
            return n
    return None
