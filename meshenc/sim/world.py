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

__all__ = ["IngestPath", "World", "build_world", "mesh_topology"]

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
        value = self.mean + self.swing * math.sin(2 * math.pi * since_start / self.period + self.phase)
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


def mesh_topology(n: int, degree: int, rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """A connected mesh of about ``degree`` neighbours each: a ring plus random chords.

    The ring keeps it connected; random perfect matchings on top make it an expander, so
    corrections spread across a thousand encoders in a few hops rather than hundreds (a ring
    lattice would take ~n/degree). Degree is exact except where a matching cannot avoid
    repeating an edge.
    """
    edges: set[tuple[int, int]] = set()

    def link(a: int, b: int) -> bool:
        key = (min(a, b), max(a, b))
        if a == b or key in edges:
            return False
        edges.add(key)
        return True

    order = rng.permutation(n).tolist()
    for i in range(n):
        if degree >= 2 or i % 2 == 0:
            link(order[i], order[(i + 1) % n])
    for _ in range(max(0, degree - 2)):
        perm = rng.permutation(n).tolist()
        for j in range(0, n - 1, 2):
            link(perm[j], perm[j + 1])
    adjacency: list[list[int]] = [[] for _ in range(n)]
    for a, b in sorted(edges):
        adjacency[a].append(b)
        adjacency[b].append(a)
    return tuple(tuple(sorted(row)) for row in adjacency)


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
    neighbours = mesh_topology(n, scenario.mesh.neighbors, rng)
    net_low, net_high = (d / 1000.0 for d in scenario.network.delay_ms)
    link_delay = {
        (a, b): float(rng.uniform(net_low, net_high)) for a in range(n) for b in neighbours[a]
    }
    liars = frozenset(rng.choice(n, size=scenario.liars.count, replace=False).tolist())
    return World(clocks, ingest, neighbours, link_delay, liars, start)
