"""The latency space the planner works in: encoders as indices, latencies from coordinates.

Theory of operation
-------------------
A :class:`LatencySpace` freezes one moment of the health model for planning: the live
encoders in sorted id order (so index ``i`` means the same encoder on every run with the same
inputs) and their Vivaldi coordinates as numpy arrays. Latency between ``i`` and ``j`` is the
Vivaldi estimate ``|p_i - p_j| + h_i + h_j``; the planner compares estimates with estimates
only, so a measured link and an unmeasured candidate are judged by one yardstick (measured
RTTs reach the planner through the coordinates they shaped).

Two locality tools make planning near-linear instead of quadratic:

- :meth:`LatencySpace.curve_order` sorts encoders along a Hilbert curve over the two principal
  axes of their positions. Encoders close on the curve are close in latency, so walking the
  curve gives a short tour (the ring's cold start).
- :meth:`LatencySpace.near` returns, per encoder, its nearest encoders found among the
  neighbours on several shifted Hilbert curves (the shifting trick of approximate nearest-
  neighbour search: a pair that a cell boundary separates on one curve is adjacent on another).
  The result is approximate: it may miss a true nearest neighbour, never invent a far one.

Invariants:

1. Deterministic: every result is a function of the ids and coordinates alone (stable sorts,
   fixed shifts, no randomness).
2. ``near()[i]`` never contains ``i``, lists distinct indices, nearest first, padded with -1
   when the mesh is smaller than asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import numpy as np
import numpy.typing as npt

from meshenc.core.planner.vivaldi import Coordinate

__all__ = ["CURVE_BITS", "LatencySpace", "hilbert_index"]

CURVE_BITS = 12
"""Hilbert curve resolution per axis: a 4096 x 4096 grid, ample for 10^5 encoders."""

_SHIFTS = ((0.0, 0.0), (0.37, 0.61), (0.71, 0.23))
"""Offsets, as fractions of the extent, of the curves :meth:`LatencySpace.near` searches."""

_WINDOW = 6
"""Curve neighbours taken on each side, per curve."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def hilbert_index(x: IntArray, y: IntArray, bits: int = CURVE_BITS) -> IntArray:
    """Position of grid cells ``(x, y)`` along a Hilbert curve of ``2**bits`` cells a side.

    The classic iterative conversion, vectorised over all points at once.
    """
    side = 1 << bits
    x = x.astype(np.int64, copy=True)
    y = y.astype(np.int64, copy=True)
    index = np.zeros(x.shape, dtype=np.int64)
    s = side >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        index += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, side - 1 - x, x)
        y = np.where(flip, side - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return index


class LatencySpace:
    """Live encoders as indices ``0..n-1`` (sorted ids) with their latency geometry.

    Args:
        coordinates: every live encoder's coordinate, by id; all of one dimension.

    Raises:
        ValueError: on mixed dimensions.
    """

    def __init__(self, coordinates: Mapping[str, Coordinate]) -> None:
        self.ids: tuple[str, ...] = tuple(sorted(coordinates))
        self.index: dict[str, int] = {node: i for i, node in enumerate(self.ids)}
        dims = {len(c.position) for c in coordinates.values()}
        if len(dims) > 1:
            raise ValueError(f"coordinates of mixed dimensions: {sorted(dims)}")
        dim = dims.pop() if dims else 2
        self.positions: FloatArray = np.array(
            [coordinates[node].position for node in self.ids], dtype=np.float64
        ).reshape(len(self.ids), dim)
        self.heights: FloatArray = np.array(
            [coordinates[node].height for node in self.ids], dtype=np.float64
        )

    def __len__(self) -> int:
        return len(self.ids)

    def latency(self, i: int, j: int) -> float:
        """Estimated RTT between encoders ``i`` and ``j``, seconds."""
        d = self.positions[i] - self.positions[j]
        return float(np.sqrt(d @ d) + self.heights[i] + self.heights[j])

    def latencies(self, i: int | IntArray, j: IntArray) -> FloatArray:
        """Estimated RTTs between ``i`` and each of ``j`` (broadcasting), seconds."""
        d = self.positions[i] - self.positions[j]
        result: FloatArray = (
            np.sqrt(np.einsum("...k,...k->...", d, d)) + self.heights[i] + self.heights[j]
        )
        return result

    @cached_property
    def _plane(self) -> FloatArray:
        """Positions projected on their two principal axes (padded when 1-dimensional)."""
        n, dim = self.positions.shape
        if n == 0:
            return np.zeros((0, 2))
        centred = self.positions - self.positions.mean(axis=0)
        if dim > 2:
            # Principal axes by SVD; the sign of each axis is fixed so the result is stable.
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            axes = vt[:2]
            axes *= np.where(axes[np.arange(2), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[
                :, None
            ]
            plane: FloatArray = centred @ axes.T
            return plane
        if dim == 1:
            padded: FloatArray = np.hstack([centred, np.zeros((n, 1))])
            return padded
        flat: FloatArray = centred
        return flat

    def _curve(self, shift: tuple[float, float]) -> IntArray:
        """Encoder indices in the order of a Hilbert curve shifted by ``shift`` of the extent."""
        plane = self._plane
        if len(plane) == 0:
            return np.zeros(0, dtype=np.int64)
        low = plane.min(axis=0)
        extent = float(max((plane.max(axis=0) - low).max(), 1e-12))
        # The grid covers twice the extent, so every shifted copy still fits.
        scale = ((1 << CURVE_BITS) - 1) / (2.0 * extent)
        cells = ((plane - low) / extent + np.array(shift)) * extent * scale
        cells = np.clip(cells, 0, (1 << CURVE_BITS) - 1).astype(np.int64)
        keys = hilbert_index(cells[:, 0], cells[:, 1])
        # Ties (same cell) broken by index: a stable sort of keys.
        order: IntArray = np.argsort(keys, kind="stable")
        return order

    def curve_order(self) -> list[int]:
        """All encoders along the unshifted Hilbert curve: a short tour to start a ring from."""
        return [int(i) for i in self._curve(_SHIFTS[0])]

    def near(self, count: int) -> IntArray:
        """Each encoder's ``count`` nearest others (approximately), nearest first.

        Returns:
            An ``n x count`` array of indices, -1 where fewer candidates exist.
        """
        n = len(self)
        result = np.full((n, count), -1, dtype=np.int64)
        if n <= 1 or count <= 0:
            return result
        if n - 1 <= 2 * _WINDOW * len(_SHIFTS):
            # Small mesh: every other encoder is a candidate.
            candidates = np.tile(np.arange(n), (n, 1))
        else:
            columns = []
            for shift in _SHIFTS:
                order = self._curve(shift)
                rank = np.empty(n, dtype=np.int64)
                rank[order] = np.arange(n)
                for offset in range(-_WINDOW, _WINDOW + 1):
                    if offset:
                        columns.append(order[np.clip(rank + offset, 0, n - 1)])
            candidates = np.stack(columns, axis=1)
        own = np.arange(n)[:, None]
        candidates = np.sort(candidates, axis=1)
        dist = self.latencies(own, candidates)
        duplicate = np.zeros(candidates.shape, dtype=bool)
        duplicate[:, 1:] = candidates[:, 1:] == candidates[:, :-1]
        dist[duplicate | (candidates == own)] = np.inf
        # Nearest first; equal latencies by index (candidates are sorted, the sort is stable).
        best = np.argsort(dist, axis=1, kind="stable")[:, :count]
        chosen = np.take_along_axis(candidates, best, axis=1)
        valid = np.isfinite(np.take_along_axis(dist, best, axis=1))
        width = chosen.shape[1]
        result[:, :width] = np.where(valid, chosen, -1)
        return result
