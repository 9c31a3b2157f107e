"""Bridges between regions: the links a mesh of regions must have, whatever else it has.

Encoders are placed in different zones or regions on purpose, so that one failure cannot take
them all; the mesh then has fast links inside a region and slow ones between regions. A
latency-ordered ring with nearest-neighbour chords (``meshenc.core.planner.topology``) already
keeps most links inside a region, but it may join two regions by a single link, or by two
that share an encoder: one failed link or encoder would cut the regions apart, and each side
would carry on alone (and a region that locked apart from the rest merges back only when two
different encoders of the other side are seen: ``meshenc.core.timeline``). So the planner asks
for ``bridges`` links between every two regions, each from a different encoder on either side
(independent), the shortest such pairs by estimated latency. Regions are the zones the
encoders report; encoders of unknown zone belong to none.

Pure and deterministic: the answer is a function of the zones, the latency space and the
count; ties break by sorted id.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np

from meshenc.core.planner.space import LatencySpace

__all__ = ["DEFAULT_BRIDGES", "region_bridges"]

#: Independent links wanted between every two regions: one failure leaves one.
DEFAULT_BRIDGES = 2
_ROWS = 256
"""Rows of the latency block computed at once."""


def region_bridges(
    zones: Mapping[str, str], space: LatencySpace, bridges: int = DEFAULT_BRIDGES
) -> list[tuple[str, str]]:
    """Up to ``bridges`` links (sorted pairs) between every two zones, no two of one pair of
    zones sharing an encoder, shortest first; fewer where a zone has fewer encoders."""
    members: dict[str, list[int]] = {}
    for node in space.ids:
        zone = zones.get(node, "")
        if zone:
            members.setdefault(zone, []).append(space.index[node])
    links: list[tuple[str, str]] = []
    for a, b in itertools.combinations(sorted(members), 2):
        links.extend(_independent_pairs(members[a], members[b], space, bridges))
    return links


def _independent_pairs(
    left: list[int], right: list[int], space: LatencySpace, count: int
) -> Iterable[tuple[str, str]]:
    """Greedy over the pairs of ``left`` x ``right`` by latency (ties: row-major order): each
    pair whose ends are both unused is taken, until ``count``.

    Only the ``count x (1 + |left| + |right|)`` shortest pairs can matter (each pair taken
    rules out one row and one column), so they are kept while the latencies are computed a
    block of rows at a time: memory and sorting stay linear in the zones' sizes, not quadratic.
    """
    if count <= 0 or not left or not right:
        return
    rows, cols = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    keep = count * (1 + len(rows) + len(cols))
    best_lat = np.empty(0, dtype=np.float64)
    best_pair = np.empty(0, dtype=np.int64)  # row-major index into left x right
    for start in range(0, len(rows), _ROWS):
        block = rows[start : start + _ROWS]
        lat = np.concatenate([best_lat, space.latencies(block[:, None], cols[None, :]).ravel()])
        pair_index = np.concatenate(
            [best_pair, np.arange(start * len(cols), (start + len(block)) * len(cols))]
        )
        if len(lat) > keep:
            kept = np.argpartition(lat, keep - 1)[:keep]
            lat, pair_index = lat[kept], pair_index[kept]
        best_lat, best_pair = lat, pair_index
    used_left: set[int] = set()
    used_right: set[int] = set()
    chosen = 0
    for t in np.lexsort((best_pair, best_lat)).tolist():
        row, col = divmod(int(best_pair[t]), len(cols))
        i, j = int(rows[row]), int(cols[col])
        if i in used_left or j in used_right:
            continue
        used_left.add(i)
        used_right.add(j)
        a, b = space.ids[i], space.ids[j]
        yield (a, b) if a < b else (b, a)
        chosen += 1
        if chosen == count:
            return
