"""The simulated world: who neighbours whom, each encoder's clock and ingest path, the network.

Everything here is drawn once from the scenario's seed, from random streams that do not depend
on the strategy, so every strategy runs in exactly the same world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meshenc.core.clock import ClockStep, VirtualOscillator
from meshenc.sim.scenario import Scenario

__all__ = ["IngestPath", "World", "build_world", "mesh_topology", "regional_topology", "regions_of"]

#: Simulated runs start at this Unix time, so labels have realistic magnitudes (2027-01-15).
START_UNIX = 1_800_000_000.0


@dataclass(frozen=True, slots=True)
class IngestPath:
    """Delay (s) from the source to one encoder: a mean plus a slow swing, kept in range."""

    mean: float
    swing: float
    period: float
    phase: float
    low: float
    high: float

    def delay(self, since_start: float) -> float:
        value = self.mean + self.swing * math.sin(
            2 * math.pi * since_start / self.period + self.phase
        )
        return min(max(value, self.low), self.high)


@dataclass(frozen=True, slots=True)
class World:
    clocks: tuple[VirtualOscillator, ...]
    ingest: tuple[IngestPath, ...]
    neighbours: tuple[tuple[int, ...], ...]
    #: Base one-way delay (s) of each directed link, keyed (sender, receiver).
    link_delay: dict[tuple[int, int], float]
    liars: frozenset[int]
    start: float
    #: The region of each encoder (all 0 in a world of one region).
    region: tuple[int, ...] = ()


def mesh_topology(n: int, degree: int, rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """A connected random ``degree``-regular mesh (one encoder one short when n×degree is odd).

    Random regular graphs are expanders: corrections spread across a thousand encoders in a
    few hops, where a ring lattice would need ~n/degree. Drawn with the pairing model, retried
    until simple and connected; a ring with random chords is the fallback for tiny meshes where
    that keeps failing (it is connected by construction, though a few degrees may fall short).
    """
    degree = min(degree, n - 1)
    for _ in range(100):
        stubs = np.repeat(np.arange(n), degree)
        if stubs.size % 2:
            stubs = stubs[:-1]
        rng.shuffle(stubs)
        pairs = stubs.reshape(-1, 2)
        edges = {(int(min(a, b)), int(max(a, b))) for a, b in pairs if a != b}
        if len(edges) == len(pairs) and _connected(n, edges):
            return _adjacency(n, edges)
    return _adjacency(n, _ring_with_chords(n, degree, rng))


def regions_of(n: int, regions: int) -> tuple[int, ...]:
    """The region of each of ``n`` encoders: ``regions`` blocks of consecutive indices."""
    return tuple(i * regions // n for i in range(n))


def regional_topology(
    region: tuple[int, ...], degree: int, bridges: int, rng: np.random.Generator
) -> tuple[tuple[int, ...], ...]:
    """A random regular mesh inside each region, and ``bridges`` links between every two
    regions, each from a different encoder on either side: a region stays connected to every
    other through any single failed link or encoder (as the manager plans meshes of regions)."""
    n = len(region)
    members = [[i for i in range(n) if region[i] == r] for r in range(max(region) + 1)]
    edges: set[tuple[int, int]] = set()
    for group in members:
        local = mesh_topology(len(group), degree, rng)
        for a, row in enumerate(local):
            edges.update((group[a], group[b]) for b in row if a < b)
    for r, group in enumerate(members):
        for other in members[r + 1 :]:
            ends = zip(
                rng.choice(group, size=bridges, replace=False).tolist(),
                rng.choice(other, size=bridges, replace=False).tolist(),
                strict=True,
            )
            edges.update((int(a), int(b)) for a, b in ends)
    return _adjacency(n, edges)


def _ring_with_chords(n: int, degree: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    order = rng.permutation(n).tolist()
    edges = {tuple(sorted((order[i], order[(i + 1) % n]))) for i in range(n)}
    count = [2] * n
    for a in rng.permutation(n).tolist():
        for b in rng.permutation(n).tolist():
            if count[a] >= degree:
                break
            key = (min(a, b), max(a, b))
            if a != b and count[b] < degree and key not in edges:
                edges.add(key)
                count[a] += 1
                count[b] += 1
    return {(int(a), int(b)) for a, b in edges}


def _connected(n: int, edges: set[tuple[int, int]]) -> bool:
    adjacency = _adjacency(n, edges)
    seen = {0}
    frontier = [0]
    while frontier:
        node = frontier.pop()
        for other in adjacency[node]:
            if other not in seen:
                seen.add(other)
                frontier.append(other)
    return len(seen) == n


def _adjacency(n: int, edges: set[tuple[int, int]]) -> tuple[tuple[int, ...], ...]:
    rows: list[list[int]] = [[] for _ in range(n)]
    for a, b in sorted(edges):
        rows[a].append(b)
        rows[b].append(a)
    return tuple(tuple(sorted(row)) for row in rows)


def build_world(scenario: Scenario) -> World:
    rng = np.random.default_rng([scenario.seed, 0])
    n = scenario.mesh.encoders
    clocks_cfg = scenario.clocks
    start = START_UNIX + float(rng.uniform(0.0, 1.0))
    drift = rng.uniform(-clocks_cfg.drift_ppm, clocks_cfg.drift_ppm, n)
    offset = rng.uniform(-clocks_cfg.offset_ms, clocks_cfg.offset_ms, n) / 1000.0
    steps: list[list[ClockStep]] = [[] for _ in range(n)]
    for fault in clocks_cfg.steps:
        steps[fault.encoder].append(ClockStep(start + fault.at_s, fault.step_ms / 1000.0))
    clocks = tuple(
        VirtualOscillator(float(offset[i]), float(drift[i]), start, tuple(steps[i]))
        for i in range(n)
    )
    ing = scenario.ingest
    low, high = ing.delay_ms[0] / 1000.0, ing.delay_ms[1] / 1000.0
    means = rng.uniform(low, high, n)
    periods = rng.uniform(ing.period_s[0], ing.period_s[1], n)
    phases = rng.uniform(0.0, 2 * math.pi, n)
    ingest = tuple(
        IngestPath(
            float(means[i]), ing.swing_ms / 1000.0, float(periods[i]), float(phases[i]), low, high
        )
        for i in range(n)
    )
    net = scenario.network
    region = regions_of(n, net.regions)
    if net.regions == 1:
        neighbours = mesh_topology(n, scenario.mesh.neighbors, rng)
    else:
        neighbours = regional_topology(region, scenario.mesh.neighbors, net.bridges, rng)
    inside = (net.delay_ms[0] / 1000.0, net.delay_ms[1] / 1000.0)
    between = (net.between_delay_ms[0] / 1000.0, net.between_delay_ms[1] / 1000.0)
    link_delay = {}
    for a in range(n):
        for b in neighbours[a]:
            low, high = inside if region[a] == region[b] else between
            link_delay[a, b] = float(rng.uniform(low, high))
    liars = frozenset(rng.choice(n, size=scenario.liars.count, replace=False).tolist())
    return World(clocks, ingest, neighbours, link_delay, liars, start, region)
