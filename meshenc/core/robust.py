"""Robust aggregation of neighbours' estimates.

``consensus`` averages the estimates of the densest group — those within ``outlier`` of the
best-supported estimate — and sets the rest aside.

Averaging, rather than a median or a trimmed mean, is what makes repeated local corrections
converge to one value on any connected mesh: a median, or a trimmed mean that always drops the
extremes, lets a group of encoders ignore its one dissenting neighbour, so a mesh can freeze
into two camps a frame apart. Setting aside only what is far from the densest group is what
keeps a lying neighbour (one reporting labels frames away from everyone else) out.

Invariant: the result lies between the smallest and largest kept value, and at least one
value is always kept.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Consensus", "consensus", "median"]


@dataclass(frozen=True, slots=True)
class Consensus:
    mean: float
    #: Largest distance of a kept value from zero (the caller's own value is 0).
    spread: float
    kept: int
    set_aside: int
    #: The smallest and largest kept value: a value v was kept iff low <= v <= high.
    low: float
    high: float

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(
        self, mean: float, spread: float, kept: int, set_aside: int, low: float, high: float
    ) -> None:
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "spread", spread)
        object.__setattr__(self, "kept", kept)
        object.__setattr__(self, "set_aside", set_aside)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)


def consensus(values: Sequence[float], outlier: float) -> Consensus:
    """Mean of the densest group of ``values``: those within ``outlier`` of the value that has
    the most others within ``outlier`` (ties: the one nearest the middle of the sorted list)."""
    if not values:
        raise ValueError("consensus of nothing")
    if outlier <= 0:
        raise ValueError("outlier distance must be positive")
    ordered = sorted(values)
    middle = (len(ordered) - 1) / 2
    window, best_key = (0, 1), (-1, 0.0)
    for i, v in enumerate(ordered):
        low = bisect_left(ordered, v - outlier)
        high = bisect_right(ordered, v + outlier)
        key = (high - low, -abs(i - middle))
        if key > best_key:
            window, best_key = (low, high), key
    kept = ordered[window[0] : window[1]]
    mean = min(max(math.fsum(kept) / len(kept), kept[0]), kept[-1])
    return Consensus(
        mean=mean,
        spread=max(abs(v) for v in kept),
        kept=len(kept),
        set_aside=len(ordered) - len(kept),
        low=kept[0],
        high=kept[-1],
    )


def median(values: Sequence[float]) -> float:
    """The median of ``values``, as ``statistics.median`` computes it (the mean of the middle
    two of an even count), compiled with the core: the mesh takes one of a few offsets, often
    one, several times a frame, and the standard library's costs a call into the interpreter.

    Raises:
        ValueError: no values.
    """
    count = len(values)
    if count == 1:
        return values[0]
    if not count:
        raise ValueError("median of nothing")
    ordered = sorted(values)
    middle = count // 2
    if count % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
