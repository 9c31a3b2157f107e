"""Leader ranking for a segment: who is the best timing reference, by the same rule everywhere.

Theory of operation
-------------------
Each member of a segment is a :class:`Candidate` with its self-assessed confidence (see
:mod:`meshenc.core.confidence`) and its latency as the ranking encoder measures it. A single
number orders them::

    score = confidence - latency / latency_scale

so ``latency_scale`` seconds of latency cost as much as the whole confidence range: with the
default 0.100 s, 10 ms of latency weighs as much as 0.1 of confidence. A leader is the
segment's timing reference, and a reference far away sees desynchronisation late, so latency
matters about as much as health.

:func:`rank` sorts by score, best first, breaking ties by ``node_id`` (lexicographic), and
:func:`choose_leader` adds hysteresis: the incumbent stays while it is a candidate unless the
best challenger beats it by *more* than ``hysteresis``. Leadership changes cost a resync of
the whole segment onto a new reference, so small score changes must not move it.

Invariants:

1. Deterministic: the result depends only on the set of candidates and the parameters, never
   on their order, so every encoder that sees the same inputs picks the same order and leader.
2. No flapping: :func:`choose_leader` is idempotent for fixed inputs; re-running it with its
   own answer as incumbent returns the same answer. In particular when all scores lie within
   ``hysteresis`` of each other, a candidate incumbent is never replaced.
3. A leader is always one of the candidates; there is none only when there are no candidates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HYSTERESIS",
    "DEFAULT_LATENCY_SCALE",
    "Candidate",
    "choose_leader",
    "rank",
    "score",
]

DEFAULT_LATENCY_SCALE = 0.100
"""Seconds of latency that cost as much as the whole confidence range."""

DEFAULT_HYSTERESIS = 0.15
"""Score margin a challenger must exceed to take leadership from a live incumbent: 15 ms of
latency or 0.15 of confidence. Live encoders on a loaded host swing by about a tenth in
confidence from second to second; a smaller margin let leadership change every few seconds."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One segment member as a leadership candidate.

    Attributes:
        node_id: the encoder's id; also the tie-breaker, so it must be unique in a ranking.
        confidence: the encoder's self-assessed confidence, in [0, 1].
        latency: seconds, >= 0; the link latency to this candidate as the ranker sees it.

    Raises:
        ValueError: on an empty id, a confidence outside [0, 1] (NaN included) or a negative
            or non-finite latency.
    """

    node_id: str
    confidence: float
    latency: float

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("candidate node_id must not be empty")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(
                f"candidate {self.node_id!r}: confidence must be in [0, 1], got {self.confidence!r}"
            )
        if not (math.isfinite(self.latency) and self.latency >= 0.0):
            raise ValueError(
                f"candidate {self.node_id!r}: latency must be finite and >= 0, got {self.latency!r}"
            )


def _check_latency_scale(latency_scale: float) -> None:
    if not (math.isfinite(latency_scale) and latency_scale > 0.0):
        raise ValueError(f"latency_scale must be positive and finite, got {latency_scale!r}")


def score(c: Candidate, latency_scale: float = DEFAULT_LATENCY_SCALE) -> float:
    """A candidate's fitness to lead: ``confidence - latency / latency_scale``; higher is better.

    Args:
        c: the candidate.
        latency_scale: seconds of latency that cost as much as a confidence of 1.0.

    Raises:
        ValueError: if ``latency_scale`` is not positive and finite.
    """
    _check_latency_scale(latency_scale)
    return c.confidence - c.latency / latency_scale


def rank(
    candidates: Iterable[Candidate], *, latency_scale: float = DEFAULT_LATENCY_SCALE
) -> list[Candidate]:
    """Candidates best first; equal scores ordered by ``node_id``.

    The tie-break makes the order a function of the candidate set alone, so encoders that
    see the same inputs agree without talking.

    Raises:
        ValueError: on duplicate node ids (the order would depend on which one came first) or
            a bad ``latency_scale``.
    """
    _check_latency_scale(latency_scale)
    pool = list(candidates)
    seen: set[str] = set()
    for c in pool:
        if c.node_id in seen:
            raise ValueError(f"duplicate candidate node_id {c.node_id!r}")
        seen.add(c.node_id)
    return sorted(pool, key=lambda c: (-score(c, latency_scale), c.node_id))


def choose_leader(
    candidates: Iterable[Candidate],
    incumbent: str | None,
    *,
    hysteresis: float = DEFAULT_HYSTERESIS,
    latency_scale: float = DEFAULT_LATENCY_SCALE,
) -> str | None:
    """The segment's leader: the incumbent unless a challenger is clearly better.

    Args:
        candidates: the segment's live members.
        incumbent: the current leader's id, or None. An incumbent that is no longer a
            candidate (dead, fenced, left the segment) has no claim.
        hysteresis: score margin, >= 0, that the best challenger must *exceed* to take over.
        latency_scale: see :func:`score`.

    Returns:
        The leader's node id, or None when there are no candidates.

    Raises:
        ValueError: as :func:`rank`, or on a negative or non-finite ``hysteresis``.
    """
    if not (math.isfinite(hysteresis) and hysteresis >= 0.0):
        raise ValueError(f"hysteresis must be finite and >= 0, got {hysteresis!r}")
    ranked = rank(candidates, latency_scale=latency_scale)
    if not ranked:
        return None
    best = ranked[0]
    current = next((c for c in ranked if c.node_id == incumbent), None)
    if current is None or current is best:
        return best.node_id
    if score(best, latency_scale) - score(current, latency_scale) > hysteresis:
        return best.node_id
    return current.node_id
