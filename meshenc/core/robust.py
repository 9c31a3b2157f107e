"""Robust aggregation of neighbours' estimates.

``consensus`` averages the estimates of the densest group (those within ``outlier`` of the
best-supported estimate) and sets the rest aside. Averaging (rather than a median or a trimmed mean) is what makes repeated local
corrections converge to one value on any connected mesh: a median, or a trimmed mean that
always drops the extremes, lets a group of encoders ignore its one dissenting neighbour, so a
mesh can freeze into two camps a frame apart. Setting aside only what is far from the densest group is
what keeps a lying neighbour (one reporting labels frames away from everyone else) out.

Invariant: the result lies between the smallest and largest kept value, and at least one
value is always kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Consensus", "consensus"]


@dataclass(frozen=True, slots=True)
class Consensus:
    mean: float
    #: Largest distance of a kept value from zero (the caller's own value is 0).
    spread: float
    kept: int
    set_aside: int


def consensus(values: Sequence[float], outlier: float) -> Consensus:
    """Mean of the densest group of ``values``: those within ``outlier`` of the value that has
    the most others within ``outlier`` (ties: the one nearest the middle of the sorted list)."""
    if not values:
        raise ValueError("consensus of nothing")
    if outlier <= 0:
        raise ValueError("outlier distance must be positive")
    ordered = sorted(values)
    middle = (len(ordered) - 1) / 2
    best = max(
        range(len(ordered)),
        key=lambda i: (
            sum(1 for v in ordered if abs(v - ordered[i]) <= outlier),
            -abs(i - middle),
        ),
    )
    kept = [v for v in ordered if abs(v - ordered[best]) <= outlier]
    return Consensus(
        mean=sum(kept) / len(kept),
        spread=max(abs(v) for v in kept),
        kept=len(kept),
        set_aside=len(ordered) - len(kept),
    )
