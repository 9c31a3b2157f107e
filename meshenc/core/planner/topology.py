"""Topology planning: who exchanges ESPs with whom, degree-bounded, latency-aware, 2-connected.

Theory of operation
-------------------
A plan is a **backbone ring** plus **chords**.

- The ring is a Hamiltonian cycle through every live encoder, ordered for short links: on a
  cold start it follows a Hilbert curve over the encoders' network coordinates; afterwards it
  is *maintained*, never rebuilt: a leaver's two ring neighbours are joined, a joiner is
  inserted where it lengthens the ring least (many joiners at once are chained along the curve
  and spliced in at the cheapest place), and a ring link that must be avoided (a bad link) is
  replaced by a 2-opt move. Any graph that contains a Hamiltonian cycle stays connected after
  removing any single vertex: that is how 2-connectivity holds by construction rather than by
  search-and-repair.
- Chords bring every encoder to ``target_degree`` with its nearest encoders by estimated
  latency (approximate nearest neighbours from :mod:`meshenc.core.planner.space`), never above
  ``max_degree`` on either end, plus the *preferred links* the caller asks for (the
  inter-segment links between likely segment leaders, see :mod:`.segments`).

Replanning starts from the previous plan: its links among surviving encoders are kept (the
shortest first, while degrees allow) and only what must change changes. Changes between
surviving encoders are of two kinds:

- **forced**: ring maintenance (joins, leaves, avoided links), links dropped because a ring
  change pushed an encoder over ``max_degree``, refills of encoders that lost links this round
  (up to their old degree, at most the target), and repairs of encoders below ``min_degree``;
- **optional**: everything else — new preferred links, fills of encoders that were already
  short, and improvement *swaps* (drop an encoder's worst chord for a clearly nearer one). They
  draw on a budget of ``churn_limit`` link changes per plan. A swap needs the new link to be
  shorter by ``improvement_ratio`` and ``improvement_floor`` seconds: that hysteresis keeps
  noisy coordinates from flipping links back and forth.

Invariants (checked by the property tests):

1. Degrees lie in ``[min(min_degree, n - 1), max_degree]``; the graph is connected and, from
   three encoders up, has no articulation point (the ring; a ring link on an avoided pair is
   kept only if no 2-opt move can replace it).
2. With the same encoders and avoided pairs as the previous plan, at most ``churn_limit`` links
   between them change, whatever the coordinates did.
3. Deterministic: the plan is a function of (ids, coordinates, previous plan, avoided pairs,
   preferred links, configuration); ties break by index, i.e. by sorted id.
4. Links are symmetric and simple: no self-links, no duplicates, never an avoided pair except
   invariant 1's last-resort ring link.

:func:`articulation_points` (iterative Hopcroft–Tarjan, linear time) checks survivability
independently of how the plan was built, for tests, the benchmark and the manager's sanity
check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from meshenc.core.planner.space import IntArray, LatencySpace

__all__ = [
    "MAX_DEGREE",
    "EdgeChanges",
    "Topology",
    "TopologyConfig",
    "articulation_points",
    "edge_changes",
    "pair",
    "plan_edges",
    "plan_ring",
    "survives_any_single_failure",
]

Pair = tuple[str, str]
IndexPair = tuple[int, int]

MAX_DEGREE: Final = 64
"""The most neighbours an operator may allow an encoder (``--degree-max``)."""
_MAX_INSERTIONS = 64
"""Joiners inserted one by one; more than this are chained along the curve and spliced."""


def pair(a: str, b: str) -> Pair:
    """An undirected link as a sorted tuple, the form every set of links here uses."""
    return (a, b) if a < b else (b, a)


def _ipair(i: int, j: int) -> IndexPair:
    return (i, j) if i < j else (j, i)


@dataclass(frozen=True, slots=True)
class TopologyConfig:
    """Planner settings.

    Attributes:
        min_degree, max_degree: bounds on every encoder's neighbour count; 2 <= min <= max.
        target_degree: the degree chords fill up to, within the bounds.
        churn_limit: optional link changes between surviving encoders per plan, >= 0.
        improvement_ratio: fraction by which a swap must shorten a link, in [0, 1).
        improvement_floor: seconds by which a swap must shorten a link, >= 0.
        candidates: nearest encoders considered per encoder, >= max_degree.

    Raises:
        ValueError: on settings outside those ranges.
    """

    min_degree: int = 3
    max_degree: int = 7
    target_degree: int = 4
    churn_limit: int = 8
    improvement_ratio: float = 0.25
    improvement_floor: float = 0.002
    candidates: int = 12

    def __post_init__(self) -> None:
        if not 2 <= self.min_degree <= self.target_degree <= self.max_degree:
            raise ValueError(
                "degrees must satisfy 2 <= min_degree <= target_degree <= max_degree, got "
                f"{self.min_degree}, {self.target_degree}, {self.max_degree}"
            )
        if self.churn_limit < 0:
            raise ValueError(f"churn_limit must be >= 0, got {self.churn_limit}")
        if not 0.0 <= self.improvement_ratio < 1.0:
            raise ValueError(f"improvement_ratio must be in [0, 1), got {self.improvement_ratio}")
        if not (math.isfinite(self.improvement_floor) and self.improvement_floor >= 0.0):
            raise ValueError(f"improvement_floor must be >= 0, got {self.improvement_floor}")
        if self.candidates < self.max_degree:
            raise ValueError(
                f"candidates ({self.candidates}) must be >= max_degree ({self.max_degree})"
            )

    @classmethod
    def within(cls, min_degree: int, max_degree: int) -> TopologyConfig:
        """The default settings with every degree held to [``min_degree``, ``max_degree``]
        (an operator's bounds): the target moved inside them, enough candidates considered.

        Raises:
            ValueError: the bounds are not 2 <= min_degree <= max_degree.
        """
        default = cls()
        return cls(
            min_degree=min_degree,
            max_degree=max_degree,
            target_degree=min(max(default.target_degree, min_degree), max_degree),
            candidates=max(default.candidates, max_degree),
        )


@dataclass(frozen=True, slots=True)
class Topology:
    """One planned mesh: the backbone ring and all links (ring links included).

    ``epoch`` increases with every change the manager publishes; 0 means "nothing planned".
    """

    epoch: int
    ring: tuple[str, ...]
    edges: frozenset[Pair]

    @property
    def nodes(self) -> frozenset[str]:
        """The encoders in the mesh."""
        return frozenset(self.ring)

    def adjacency(self) -> dict[str, tuple[str, ...]]:
        """Every encoder's neighbours, sorted; encoders without links map to ``()``."""
        neighbours: dict[str, list[str]] = {node: [] for node in self.ring}
        for a, b in self.edges:
            neighbours[a].append(b)
            neighbours[b].append(a)
        return {node: tuple(sorted(ns)) for node, ns in sorted(neighbours.items())}

    def degrees(self) -> list[int]:
        """The degree of every encoder (in sorted id order)."""
        return [len(ns) for ns in self.adjacency().values()]


@dataclass(frozen=True, slots=True)
class EdgeChanges:
    """How two plans differ on the links between encoders present in both."""

    added: frozenset[Pair]
    removed: frozenset[Pair]

    @property
    def total(self) -> int:
        """Links added plus links removed."""
        return len(self.added) + len(self.removed)


def edge_changes(before: Topology, after: Topology) -> EdgeChanges:
    """Links that changed between encoders in both plans (joins and leaves do not count)."""
    common = before.nodes & after.nodes

    def among(edges: frozenset[Pair]) -> frozenset[Pair]:
        return frozenset(e for e in edges if e[0] in common and e[1] in common)

    old, new = among(before.edges), among(after.edges)
    return EdgeChanges(added=new - old, removed=old - new)


# --- the ring -------------------------------------------------------------------------------


def _ring_costs(space: LatencySpace, ring: IntArray) -> np.ndarray:
    """Latency of each ring link ``ring[k] -> ring[k+1]`` (cyclic)."""
    return space.latencies(ring, np.roll(ring, -1))


def _insert(space: LatencySpace, ring: list[int], node: int, avoid: set[IndexPair]) -> None:
    """Insert ``node`` where it lengthens the ring least (avoided links excluded)."""
    if len(ring) < 2:
        ring.append(node)
        return
    here = np.array(ring, dtype=np.int64)
    after = np.roll(here, -1)
    cost = space.latencies(node, here) + space.latencies(node, after) - space.latencies(here, after)
    for k in np.argsort(cost, kind="stable"):
        a, b = ring[int(k)], ring[(int(k) + 1) % len(ring)]
        if _ipair(a, node) not in avoid and _ipair(node, b) not in avoid:
            ring.insert(int(k) + 1, node)
            return
    ring.append(node)  # every place touches an avoided link; the repair pass tries again


def _splice(space: LatencySpace, ring: list[int], chain: list[int], near: IntArray) -> list[int]:
    """Join two rings at the pair of links whose exchange costs least.

    Ring ``A = ring`` and ring ``B = chain``: for each link ``a -> a'`` of A and each encoder
    ``c`` of B among ``a``'s nearest, try both ways of opening B next to ``c``.
    """
    if not ring:
        return chain
    if not chain:
        return ring
    a = np.array(ring, dtype=np.int64)
    b = np.array(chain, dtype=np.int64)
    a_next = np.roll(a, -1)
    position_in_b = np.full(len(space), -1, dtype=np.int64)
    position_in_b[b] = np.arange(len(b))
    cands = near[a]  # |A| x K
    jb = np.where(cands >= 0, position_in_b[np.maximum(cands, 0)], -1)
    valid = jb >= 0
    if not valid.any():
        # No joiner among any survivor's nearest: splice at the survivor nearest to B's start.
        nearest = int(np.argmin(space.latencies(b[0], a)))
        return ring[: nearest + 1] + chain + ring[nearest + 1 :]
    jb0 = np.maximum(jb, 0)
    c = b[jb0]
    c_prev = b[(jb0 - 1) % len(b)]
    c_next = b[(jb0 + 1) % len(b)]
    base = space.latencies(a, a_next)[:, None]
    # Way 1: a -> c -> (B forward) -> c_prev -> a'.
    cost1 = (
        space.latencies(a[:, None], c)
        + space.latencies(c_prev, a_next[:, None])
        - base
        - space.latencies(c_prev, c)
    )
    # Way 2: a -> c -> (B backward) -> c_next -> a'.
    cost2 = (
        space.latencies(a[:, None], c)
        + space.latencies(c_next, a_next[:, None])
        - base
        - space.latencies(c, c_next)
    )
    cost1[~valid] = np.inf
    cost2[~valid] = np.inf
    best1, best2 = int(np.argmin(cost1)), int(np.argmin(cost2))
    use_forward = cost1.flat[best1] <= cost2.flat[best2]
    i, k = np.unravel_index(best1 if use_forward else best2, cost1.shape)
    start = int(jb[i, k])
    if use_forward:
        opened = chain[start:] + chain[:start]
    else:
        opened = [chain[(start - t) % len(chain)] for t in range(len(chain))]
    return ring[: int(i) + 1] + opened + ring[int(i) + 1 :]


def _repair_avoided(space: LatencySpace, ring: list[int], avoid: set[IndexPair]) -> list[int]:
    """Replace ring links on avoided pairs by 2-opt moves, as far as possible."""
    n = len(ring)
    if n < 4 or not avoid:
        return ring
    for _ in range(2 * len(avoid) + 1):
        bad = [k for k in range(n) if _ipair(ring[k], ring[(k + 1) % n]) in avoid]
        if not bad:
            break
        progressed = False
        for k in bad:
            # Rotate so the bad link is (last -> first): u = ring[-1], v = ring[0].
            rotated = ring[k + 1 :] + ring[: k + 1]
            if _ipair(rotated[-1], rotated[0]) not in avoid:
                continue  # an earlier move in this pass already fixed it
            u, v = rotated[-1], rotated[0]
            arr = np.array(rotated, dtype=np.int64)
            js = np.arange(1, n - 2)  # a = arr[j], b = arr[j + 1]; a != v, b != u
            if js.size == 0:
                break
            cost = (
                space.latencies(u, arr[js])
                + space.latencies(v, arr[js + 1])
                - space.latencies(arr[js], arr[js + 1])
            )
            for t in np.argsort(cost, kind="stable"):
                j = int(js[t])
                if _ipair(u, rotated[j]) in avoid or _ipair(v, rotated[j + 1]) in avoid:
                    continue
                ring = rotated[: j + 1][::-1] + rotated[j + 1 :]
                progressed = True
                break
        if not progressed:
            break
    return ring


def plan_ring(
    space: LatencySpace,
    previous_ring: Sequence[str],
    avoid: Iterable[Pair],
    near: IntArray,
) -> list[int]:
    """The backbone ring over every encoder of ``space``, as indices in ring order.

    Args:
        space: the live encoders and their coordinates.
        previous_ring: the last plan's ring (ids; the dead are skipped), or empty.
        avoid: links that must not be used (bad links), as sorted id pairs.
        near: ``space.near(...)``, the nearest-encoder lists.
    """
    avoid_idx = _index_pairs(space, avoid)
    ring = [space.index[node] for node in previous_ring if node in space.index]
    present = set(ring)
    joiners = [i for i in space.curve_order() if i not in present]
    if not ring:
        ring = joiners
    elif len(joiners) <= _MAX_INSERTIONS:
        for node in joiners:
            _insert(space, ring, node, avoid_idx)
    else:
        ring = _splice(space, ring, joiners, near)
    return _repair_avoided(space, ring, avoid_idx)


def _index_pairs(space: LatencySpace, links: Iterable[Pair]) -> set[IndexPair]:
    index = space.index
    return {_ipair(index[a], index[b]) for a, b in links if a in index and b in index and a != b}


# --- the links ------------------------------------------------------------------------------


class _Builder:
    """The mutable working state of :func:`plan_edges` (private)."""

    def __init__(
        self,
        space: LatencySpace,
        config: TopologyConfig,
        near: IntArray,
        avoid: set[IndexPair],
        survivors: set[int],
        previous: set[IndexPair],
    ) -> None:
        self.space = space
        self.config = config
        self.near = near
        self.avoid = avoid
        self.survivors = survivors
        self.previous = previous
        self.near_lists: list[list[int]] = near.tolist()
        self.adj: list[set[int]] = [set() for _ in range(len(space))]
        self.budget = config.churn_limit

    def degree(self, i: int) -> int:
        return len(self.adj[i])

    def add(self, i: int, j: int) -> None:
        self.adj[i].add(j)
        self.adj[j].add(i)

    def remove(self, i: int, j: int) -> None:
        self.adj[i].discard(j)
        self.adj[j].discard(i)

    def changes(self, i: int, j: int) -> bool:
        """Whether adding link (i, j) would be a change between surviving encoders."""
        return i in self.survivors and j in self.survivors and _ipair(i, j) not in self.previous

    def can_link(self, i: int, j: int, ceiling: int) -> bool:
        return (
            i != j
            and j not in self.adj[i]
            and _ipair(i, j) not in self.avoid
            and self.degree(i) < ceiling
            and self.degree(j) < ceiling
        )

    def nearest_free(self, i: int, ceiling: int, *, scan_all: bool) -> int | None:
        """``i``'s nearest encoder it may link to with both degrees below ``ceiling``."""
        for j in self.near_lists[i]:
            if j < 0:
                break
            if self.can_link(i, j, ceiling):
                return j
        if not scan_all:
            return None
        everyone = np.arange(len(self.space), dtype=np.int64)
        for j in np.argsort(self.space.latencies(i, everyone), kind="stable"):
            if self.can_link(i, int(j), ceiling):
                return int(j)
        return None


def plan_edges(
    space: LatencySpace,
    ring: Sequence[int],
    previous: Topology | None,
    *,
    avoid: Iterable[Pair] = (),
    preferred: Sequence[Pair] = (),
    near: IntArray,
    config: TopologyConfig,
) -> frozenset[Pair]:
    """All links of the new plan: the ring, kept links, preferred links, fills and swaps.

    Args:
        space: the live encoders and their coordinates.
        ring: :func:`plan_ring`'s answer.
        previous: the last plan, or None on a cold start.
        avoid: links that must not be used.
        preferred: links to have where degrees and the churn budget allow (inter-segment
            links); ignored when they name an unknown encoder or an avoided pair.
        near: ``space.near(config.candidates)``.
        config: the planner settings.

    Returns:
        The links as sorted id pairs.
    """
    n = len(space)
    ids, index = space.ids, space.index
    avoid_idx = _index_pairs(space, avoid)
    survivors: set[int] = set()
    previous_links: set[IndexPair] = set()
    previous_degree = [0] * n
    if previous is not None:
        survivors = {index[node] for node in previous.ring if node in index}
        for a, b in previous.edges:
            if a in index:
                previous_degree[index[a]] += 1
            if b in index:
                previous_degree[index[b]] += 1
            if a in index and b in index:
                previous_links.add(_ipair(index[a], index[b]))
    build = _Builder(space, config, near, avoid_idx, survivors, previous_links)
    lo, target, hi = config.min_degree, config.target_degree, config.max_degree

    # 1. The ring (forced).
    if n == 2:
        build.add(0, 1)
    elif n >= 3:
        for k in range(n):
            build.add(ring[k], ring[(k + 1) % n])

    # 2. Links kept from the previous plan: preferred ones first, then the shortest.
    preferred_idx = [
        _ipair(index[a], index[b]) for a, b in preferred if a in index and b in index and a != b
    ]
    preferred_set = set(preferred_idx)
    kept = sorted(previous_links - avoid_idx)
    kept_latency = space.latencies(
        np.array([i for i, _ in kept], dtype=np.int64),
        np.array([j for _, j in kept], dtype=np.int64),
    )
    not_preferred = np.array([link not in preferred_set for link in kept], dtype=bool)
    for t in np.lexsort((kept_latency, not_preferred)).tolist():
        i, j = kept[t]
        if build.can_link(i, j, hi):
            build.add(i, j)

    # Encoders that lost links this round are refilled as a forced change.
    wounded = {i for i in survivors if build.degree(i) < previous_degree[i]}

    # 3. New preferred links, paid from the budget when they change links between survivors.
    for i, j in preferred_idx:
        if not build.can_link(i, j, hi):
            continue
        if build.changes(i, j):
            if build.budget < 1:
                continue
            build.budget -= 1
        build.add(i, j)

    # 4. Repairs below min_degree (forced), nearest first.
    for i in range(n):
        while build.degree(i) < min(lo, n - 1):
            partner = build.nearest_free(i, hi, scan_all=True)
            if partner is None:
                break
            build.add(i, partner)

    # 5. Fill to the target: joiners and the wounded are forced, anyone else pays.
    for i in range(n):
        goal = min(target, n - 1)
        if i in wounded:
            goal = max(build.degree(i), min(goal, previous_degree[i]))
            forced = True
        else:
            forced = i not in survivors
        while build.degree(i) < goal:
            partner = build.nearest_free(i, target, scan_all=False)
            if partner is None:
                partner = build.nearest_free(i, hi, scan_all=False)
            if partner is None:
                break
            if not forced and build.changes(i, partner):
                if build.budget < 1:
                    break
                build.budget -= 1
            build.add(i, partner)

    # 6. Improvement swaps, best first, while the budget lasts (each costs two changes).
    if previous is not None and build.budget >= 2:
        ring_links = {_ipair(ring[k], ring[(k + 1) % n]) for k in range(n)} if n >= 3 else set()
        _swap(build, ring_links | preferred_set)

    # Indices follow sorted ids, so (ids[i], ids[j]) with i < j is already a sorted pair.
    return frozenset((ids[i], ids[j]) for i in range(n) for j in build.adj[i] if i < j)


def _swap(build: _Builder, pinned: set[IndexPair]) -> None:
    """Replace long chords by clearly shorter ones, best gain first, within the budget."""
    space, config = build.space, build.config
    ratio, floor = config.improvement_ratio, config.improvement_floor
    n = len(space)
    xs: list[int] = []
    ys: list[int] = []
    for x in range(n):
        for y in build.adj[x]:
            if ((x, y) if x < y else (y, x)) not in pinned:
                xs.append(x)
                ys.append(y)
    if not xs:
        return
    x_arr, y_arr = np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64)
    chord_latency = space.latencies(x_arr, y_arr)
    worst = np.full(n, -np.inf)
    np.maximum.at(worst, x_arr, chord_latency)
    # The best any swap could do is the nearest candidate; only those who could gain look.
    nearest = np.where(
        build.near[:, 0] >= 0,
        space.latencies(np.arange(n), np.maximum(build.near[:, 0], 0)),
        np.inf,
    )
    hopeful = np.flatnonzero(nearest < worst * (1.0 - ratio) - floor).tolist()
    chords: dict[int, list[tuple[float, int]]] = {x: [] for x in hopeful}
    for x, y, lat in zip(xs, ys, chord_latency.tolist(), strict=True):
        if x in chords:
            chords[x].append((lat, y))
    proposals: list[tuple[float, int, int, int]] = []
    for x in hopeful:
        z = build.nearest_free(x, config.max_degree, scan_all=False)
        if z is None:
            continue
        new = space.latency(x, z)
        for old, y in sorted(chords[x], reverse=True):
            if new >= old * (1.0 - ratio) - floor:
                break
            if build.degree(y) > config.min_degree:
                proposals.append((old - new, x, y, z))
                break
    proposals.sort(key=lambda p: (-p[0], p[1], p[2], p[3]))
    for _, x, y, z in proposals:
        if build.budget < 2:
            break
        if y not in build.adj[x] or build.degree(y) <= config.min_degree:
            continue
        if not build.can_link(x, z, config.max_degree + 1) or build.degree(z) >= config.max_degree:
            continue
        cost = int(build.changes(x, z)) + int(
            x in build.survivors and y in build.survivors and _ipair(x, y) in build.previous
        )
        if cost > build.budget:
            continue
        build.budget -= cost
        build.remove(x, y)
        build.add(x, z)


# --- survivability --------------------------------------------------------------------------


def articulation_points(adjacency: Mapping[str, Iterable[str]]) -> set[str]:
    """Encoders whose loss would disconnect the mesh (iterative Hopcroft–Tarjan, O(V + E)).

    Args:
        adjacency: every encoder's neighbours; must be symmetric.
    """
    ids = sorted(adjacency)
    index = {node: i for i, node in enumerate(ids)}
    neighbours = [[index[m] for m in adjacency[node]] for node in ids]
    n = len(ids)
    order = [-1] * n  # discovery time
    low = [0] * n
    cut: set[int] = set()
    clock = 0
    for root in range(n):
        if order[root] >= 0:
            continue
        order[root] = low[root] = clock
        clock += 1
        root_children = 0
        stack: list[tuple[int, int, int]] = [(root, -1, 0)]  # (vertex, parent, next neighbour)
        while stack:
            v, parent, k = stack[-1]
            if k < len(neighbours[v]):
                stack[-1] = (v, parent, k + 1)
                w = neighbours[v][k]
                if order[w] < 0:
                    order[w] = low[w] = clock
                    clock += 1
                    stack.append((w, v, 0))
                    if v == root:
                        root_children += 1
                elif w != parent:
                    low[v] = min(low[v], order[w])
                continue
            stack.pop()
            if parent >= 0:
                low[parent] = min(low[parent], low[v])
                if parent != root and low[v] >= order[parent]:
                    cut.add(parent)
        if root_children > 1:
            cut.add(root)
    return {ids[i] for i in cut}


def _connected(adjacency: Mapping[str, Iterable[str]]) -> bool:
    if not adjacency:
        return True
    start = min(adjacency)
    seen = {start}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for m in adjacency[node]:
            if m not in seen:
                seen.add(m)
                frontier.append(m)
    return len(seen) == len(adjacency)


def survives_any_single_failure(adjacency: Mapping[str, Iterable[str]]) -> bool:
    """Whether the mesh is connected and stays connected after losing any one encoder."""
    return _connected(adjacency) and not articulation_points(adjacency)
