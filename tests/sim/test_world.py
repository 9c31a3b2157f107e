"""The simulator's world of regions: who neighbours whom, and which links are long-haul."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from meshenc.sim.scenario import Scenario, ScenarioError
from meshenc.sim.world import build_world, regional_topology, regions_of


def _connected(neighbours: tuple[tuple[int, ...], ...], dead: set[tuple[int, int]]) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        node = frontier.pop()
        for other in neighbours[node]:
            if (min(node, other), max(node, other)) not in dead and other not in seen:
                seen.add(other)
                frontier.append(other)
    return len(seen) == len(neighbours)


def test_regions_are_blocks_of_consecutive_encoders() -> None:
    assert regions_of(7, 3) == (0, 0, 0, 1, 1, 2, 2)
    assert regions_of(4, 1) == (0, 0, 0, 0)


@pytest.mark.parametrize(("n", "regions", "bridges", "seed"), [(30, 3, 2, 1), (40, 4, 3, 7)])
def test_every_two_regions_are_bridged_independently(
    n: int, regions: int, bridges: int, seed: int
) -> None:
    region = regions_of(n, regions)
    neighbours = regional_topology(region, 4, bridges, np.random.default_rng(seed))
    links = {(a, b) for a in range(n) for b in neighbours[a] if a < b}
    assert all(a in neighbours[b] for a, b in links)  # symmetric
    for r, s in itertools.combinations(range(regions), 2):
        across = [(a, b) for a, b in links if {region[a], region[b]} == {r, s}]
        assert len(across) == bridges
        # Each bridge has its own encoder on either side: no single encoder carries two.
        assert len({a for a, _ in across}) == len({b for _, b in across}) == bridges
    inside = sum(1 for a, b in links if region[a] == region[b])
    assert inside > len(links) - inside
    # The mesh stays connected without any one of its links.
    assert _connected(neighbours, set())
    assert all(_connected(neighbours, {link}) for link in links)


def test_links_between_regions_are_the_long_haul_ones() -> None:
    scenario = Scenario.from_mapping(
        {
            "mesh": {"encoders": 20, "neighbors": 4},
            "network": {"delay_ms": [1, 5], "regions": 2, "between_delay_ms": [40, 150]},
        }
    )
    world = build_world(scenario)
    for (a, b), delay in world.link_delay.items():
        low, high = (0.001, 0.005) if world.region[a] == world.region[b] else (0.040, 0.150)
        assert low <= delay <= high, (a, b, delay)


@pytest.mark.parametrize(
    "network",
    [
        {"regions": 6},  # 10 encoders in 6 regions: some region would have one
        {"regions": 2, "bridges": 6},  # 5 encoders a region cannot end 6 independent bridges
        {"regions": 2, "cuts": [{"region": 2, "at_s": 1, "duration_s": 1}]},
        {"between_delay_ms": [150, 40]},
    ],
)
def test_impossible_networks_are_refused(network: dict[str, object]) -> None:
    with pytest.raises(ScenarioError):
        Scenario.from_mapping({"mesh": {"encoders": 10, "neighbors": 4}, "network": network})
