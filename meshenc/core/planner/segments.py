"""Segments: groups of 5–10 nearby encoders, each with a timing reference, linked in a cycle.

Theory of operation
-------------------
A segment is a **contiguous arc of the backbone ring** (:mod:`.topology`). The ring is ordered
for short links, so an arc is a group of encoders close to each other in latency; and since
consecutive arcs meet on a ring link, every segment is linked to the next one around the ring
by construction: the segments themselves form a cycle, which survives the loss of any single
encoder just as the ring does.

Replanning keeps segments stable. Each encoder keeps its previous segment if it still can:

1. a joiner takes the segment of its nearest labelled predecessor on the ring;
2. a segment whose members ended up in several arcs (after a 2-opt repair or a splice) keeps
   its id on its longest arc; the other arcs become new segments;
3. arcs longer than ``max_size`` split into equal parts (the first keeps the id); arcs shorter
   than ``min_size`` merge into the smaller of their two ring neighbours (the larger part's id
   survives), splitting again if the union is too long.

A mesh smaller than ``min_size`` is a single segment; otherwise every segment has between
``min_size`` and ``max_size`` members (this needs ``max_size >= 2 * min_size - 1``, checked).

Leaders are elected in etcd, not here. The planner predicts the **likely leader** of each
segment with the same ranking the election uses (:func:`meshenc.core.leader.choose_leader`:
confidence against mean latency to the other members, with hysteresis, the incumbent being
the elected leader where one is known) and asks the topology for one **leader link** between
the likely leaders of every two consecutive segments. So the timing references of neighbouring
segments usually talk directly, while the ring links between the arcs guarantee the segments
are linked even when a leader link cannot be had (degree cap, churn budget) or the election
picked someone else.

Invariants:

1. Every live encoder is in exactly one segment; members are listed in ring order.
2. Sizes within ``[min_size, max_size]`` once the mesh has ``min_size`` encoders.
3. Deterministic; new segment ids are ``seg-<n>`` from a counter carried in the plan, so an id
   is never reused for a different group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from meshenc.core.leader import DEFAULT_HYSTERESIS, DEFAULT_LATENCY_SCALE, Candidate, choose_leader
from meshenc.core.planner.space import LatencySpace

__all__ = [
    "Segment",
    "SegmentConfig",
    "choose_likely_leaders",
    "leader_links",
    "plan_segments",
]


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """Segment sizes and the leader prediction.

    Attributes:
        min_size, max_size: member bounds; ``max_size >= 2 * min_size - 1`` so any arc can be
            cut into allowed sizes.
        target_size: the size a long arc is cut into, within the bounds.
        leader_hysteresis, leader_latency_scale: as :func:`meshenc.core.leader.choose_leader`.
    """

    min_size: int = 5
    max_size: int = 10
    target_size: int = 8
    leader_hysteresis: float = DEFAULT_HYSTERESIS
    leader_latency_scale: float = DEFAULT_LATENCY_SCALE

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.target_size <= self.max_size:
            raise ValueError(
                "sizes must satisfy 1 <= min_size <= target_size <= max_size, got "
                f"{self.min_size}, {self.target_size}, {self.max_size}"
            )
        if self.max_size < 2 * self.min_size - 1:
            raise ValueError(
                f"max_size ({self.max_size}) must be >= 2 * min_size - 1 "
                f"({2 * self.min_size - 1}) so that every long arc can be cut"
            )


@dataclass(frozen=True, slots=True)
class Segment:
    """One group of encoders; ``likely_leader`` is the planner's prediction, not the lease."""

    segment_id: str
    members: tuple[str, ...]
    likely_leader: str


@dataclass(slots=True)
class _Run:
    label: str | None  # None: a new segment
    members: list[int]


def _pieces(size: int, config: SegmentConfig) -> list[int]:
    """How to cut an arc of ``size`` encoders: as near ``target_size`` as the bounds allow."""
    lo = math.ceil(size / config.max_size)
    hi = max(lo, size // config.min_size)
    count = min(max(round(size / config.target_size), lo), hi)
    base, extra = divmod(size, count)
    return [base + 1] * extra + [base] * (count - extra)


def _split(run: _Run, config: SegmentConfig) -> list[_Run]:
    if len(run.members) <= config.max_size:
        return [run]
    parts: list[_Run] = []
    start = 0
    for k, size in enumerate(_pieces(len(run.members), config)):
        parts.append(_Run(run.label if k == 0 else None, run.members[start : start + size]))
        start += size
    return parts


def _runs(labels: Sequence[str | None]) -> list[_Run]:
    """Maximal arcs of equal labels around the ring (the ring is rotated to start an arc)."""
    n = len(labels)
    start = next((k for k in range(n) if labels[k] != labels[k - 1]), 0)
    runs: list[_Run] = []
    for step in range(n):
        k = (start + step) % n
        if runs and runs[-1].label == labels[k]:
            runs[-1].members.append(k)
        else:
            runs.append(_Run(labels[k], [k]))
    return runs


def plan_segments(
    ring: Sequence[str],
    previous: Sequence[Segment],
    next_number: int,
    config: SegmentConfig,
) -> tuple[list[tuple[str, tuple[str, ...]]], int]:
    """Cut the ring into segments, keeping the previous grouping where it still fits.

    Args:
        ring: the new ring, ids in ring order.
        previous: the last plan's segments.
        next_number: the number of the next new segment id.
        config: sizes.

    Returns:
        ``(segments, next_number)``: (id, members in ring order) per segment, in ring order,
        and the updated counter.
    """
    n = len(ring)
    if n == 0:
        return [], next_number
    was = {member: s.segment_id for s in previous for member in s.members}
    labels: list[str | None] = [was.get(node) for node in ring]
    if any(label is not None for label in labels):
        # 1. Joiners inherit from the nearest labelled predecessor.
        last = next(labels[k] for k in range(n - 1, -1, -1) if labels[k] is not None)
        for k in range(n):
            if labels[k] is None:
                labels[k] = last
            else:
                last = labels[k]
    runs = _runs(labels)
    # 2. A label split over several arcs stays on its longest (the first of equals).
    longest: dict[str, int] = {}
    for t, run in enumerate(runs):
        if run.label is not None and (
            run.label not in longest or len(run.members) > len(runs[longest[run.label]].members)
        ):
            longest[run.label] = t
    for t, run in enumerate(runs):
        if run.label is not None and longest[run.label] != t:
            run.label = None
    # 3. Split the long, then merge the short into their smaller neighbour.
    runs = [part for run in runs for part in _split(run, config)]
    while len(runs) > 1:
        short = [t for t, run in enumerate(runs) if len(run.members) < config.min_size]
        if not short:
            break
        t = min(short, key=lambda t: (len(runs[t].members), t))
        before, after = (t - 1) % len(runs), (t + 1) % len(runs)
        other = before if len(runs[before].members) <= len(runs[after].members) else after
        first, second = (other, t) if other == before else (t, other)
        a, b = runs[first], runs[second]
        keep = (
            a
            if (len(a.members), a.label is not None) >= (len(b.members), b.label is not None)
            else b
        )
        merged = _Run(keep.label, a.members + b.members)
        replacement = _split(merged, config)
        if len(runs) == 2:
            runs = replacement
        elif first < second:
            runs[first : second + 1] = replacement
        else:  # the pair wraps around the end of the list
            runs = replacement + runs[second + 1 : first]
    segments: list[tuple[str, tuple[str, ...]]] = []
    for run in runs:
        label = run.label
        if label is None:
            label = f"seg-{next_number}"
            next_number += 1
        segments.append((label, tuple(ring[k] for k in run.members)))
    return segments, next_number


def choose_likely_leaders(
    segments: Sequence[tuple[str, tuple[str, ...]]],
    space: LatencySpace,
    confidence: Mapping[str, float],
    incumbents: Mapping[str, str],
    config: SegmentConfig,
) -> list[Segment]:
    """Predict each segment's leader with the election's own ranking.

    Args:
        segments: (id, members) from :func:`plan_segments`.
        space: latencies between members.
        confidence: each encoder's reported confidence (missing: 0).
        incumbents: per segment id, the elected leader if known, else the previous prediction.
        config: the ranking's hysteresis and latency scale.
    """
    if not segments:
        return []
    # Mean latency from each member to the others, for all segments at once (padded).
    width = max(len(members) for _, members in segments)
    idx = np.full((len(segments), width), -1, dtype=np.int64)
    for t, (_, members) in enumerate(segments):
        idx[t, : len(members)] = [space.index[m] for m in members]
    valid = idx >= 0
    safe = np.maximum(idx, 0)
    pairwise = space.latencies(safe[:, :, None], safe[:, None, :])
    pairwise = np.where(valid[:, :, None] & valid[:, None, :], pairwise, 0.0)
    sizes = valid.sum(axis=1)
    mean_latency = (pairwise.sum(axis=2) / np.maximum(sizes - 1, 1)[:, None]).tolist()
    result: list[Segment] = []
    for t, (segment_id, members) in enumerate(segments):
        candidates = [
            Candidate(m, min(1.0, max(0.0, confidence.get(m, 0.0))), mean_latency[t][k])
            for k, m in enumerate(members)
        ]
        leader = choose_leader(
            candidates,
            incumbents.get(segment_id),
            hysteresis=config.leader_hysteresis,
            latency_scale=config.leader_latency_scale,
        )
        assert leader is not None  # members is never empty
        result.append(Segment(segment_id, members, leader))
    return result


def leader_links(segments: Sequence[Segment]) -> list[tuple[str, str]]:
    """One link between the likely leaders of each two consecutive segments around the ring."""
    k = len(segments)
    if k < 2:
        return []
    pairs = range(k) if k > 2 else range(1)
    links = []
    for t in pairs:
        a, b = segments[t].likely_leader, segments[(t + 1) % k].likely_leader
        links.append((a, b) if a < b else (b, a))
    return links
