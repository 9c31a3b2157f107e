"""Property tests of the topology planner (hypothesis) and of its survivability check.

The planner runs on synthetic meshes: encoders in latency clusters (``helpers.coordinates``).
Every property is checked by code independent of the planner: degrees are counted from the
published adjacency, survivability by removing each encoder in turn and searching the rest
(small meshes) or by the linear-time check that is itself compared with that brute force.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshenc.core.planner.manager import MeshPlan, PlannerConfig, plan_mesh
from meshenc.core.planner.topology import (
    Topology,
    TopologyConfig,
    articulation_points,
    edge_changes,
    pair,
    survives_any_single_failure,
)
from meshenc.core.planner.vivaldi import Coordinate

from .helpers import encoder_ids, view

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _connected_without(adjacency: Mapping[str, Sequence[str]], gone: str | None) -> bool:
    nodes = [n for n in adjacency if n != gone]
    if not nodes:
        return True
    seen = {nodes[0]}
    frontier = [nodes[0]]
    while frontier:
        for m in adjacency[frontier.pop()]:
            if m != gone and m not in seen:
                seen.add(m)
                frontier.append(m)
    return len(seen) == len(nodes)


def _brute_force_survives(adjacency: Mapping[str, Sequence[str]]) -> bool:
    """The reference: connected, and connected after removing each node in turn."""
    return _connected_without(adjacency, None) and all(
        _connected_without(adjacency, n) for n in adjacency
    )


def _check_links(topology: Topology, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    adjacency = topology.adjacency()
    assert sorted(adjacency) == sorted(ids)
    for node, neighbours in adjacency.items():
        assert node not in neighbours
        for m in neighbours:
            assert node in adjacency[m], "links must be symmetric"
    return adjacency


configs = st.builds(
    lambda lo, extra_target, extra_max, churn: TopologyConfig(
        min_degree=lo,
        target_degree=lo + extra_target,
        max_degree=lo + extra_target + extra_max,
        churn_limit=churn,
        candidates=max(12, lo + extra_target + extra_max),
    ),
    st.integers(2, 4),
    st.integers(0, 2),
    st.integers(1, 3),
    st.integers(0, 12),
)


@PROPERTY
@given(n=st.integers(1, 70), seed=st.integers(0, 2**32 - 1), config=configs)
def test_cold_plan_bounds_degrees_and_survives_any_single_failure(
    n: int, seed: int, config: TopologyConfig
) -> None:
    ids = encoder_ids(n)
    plan = plan_mesh(view(ids, seed), None, PlannerConfig(topology=config), epoch=1)
    adjacency = _check_links(plan.topology, ids)
    degrees = [len(v) for v in adjacency.values()]
    assert min(degrees) >= min(config.min_degree, n - 1)
    assert max(degrees) <= config.max_degree
    if n >= 3:
        assert _brute_force_survives(adjacency)
    else:
        assert _connected_without(adjacency, None)


@PROPERTY
@given(n=st.integers(4, 60), seed=st.integers(0, 2**32 - 1))
def test_plans_are_deterministic(n: int, seed: int) -> None:
    ids = encoder_ids(n)
    first = plan_mesh(view(ids, seed, units=n), None, PlannerConfig(), epoch=1)
    # The same inputs, handed over in a different order.
    shuffled = view(ids, seed, units=n)
    reordered = type(shuffled)(
        hosts=tuple(reversed(shuffled.hosts)),
        coordinates=dict(reversed(list(shuffled.coordinates.items()))),
        confidence=shuffled.confidence,
        units=tuple(reversed(shuffled.units)),
    )
    second = plan_mesh(reordered, None, PlannerConfig(), epoch=1)
    assert first == second
    leaver = ids[n // 2]
    rest = [i for i in ids if i != leaver]
    again = [plan_mesh(view(rest, seed, units=n), first, PlannerConfig(), epoch=2) for _ in "ab"]
    assert again[0] == again[1]


def _jitter(plan_view_seed: int, ids: list[str], scale: float) -> dict[str, Coordinate]:
    """The coordinates of ``view(ids, seed)`` moved by noise, as a new round of samples would."""
    base = view(ids, plan_view_seed).coordinates
    rng = np.random.default_rng(plan_view_seed ^ 0x5EED)
    return {
        node: Coordinate(
            tuple(float(x + rng.normal(0.0, scale)) for x in c.position),
            c.height,
        )
        for node, c in base.items()
    }


@PROPERTY
@given(
    n=st.integers(6, 60),
    seed=st.integers(0, 2**32 - 1),
    churn=st.integers(0, 10),
    noise=st.sampled_from([0.001, 0.01, 0.05]),
)
def test_churn_limit_holds_when_only_latencies_change(
    n: int, seed: int, churn: int, noise: float
) -> None:
    config = PlannerConfig(topology=TopologyConfig(churn_limit=churn))
    ids = encoder_ids(n)
    base = view(ids, seed)
    first = plan_mesh(base, None, config, epoch=1)
    moved = type(base)(hosts=base.hosts, coordinates=_jitter(seed, ids, noise))
    second = plan_mesh(moved, first, config, epoch=2)
    assert edge_changes(first.topology, second.topology).total <= churn
    adjacency = _check_links(second.topology, ids)
    assert _brute_force_survives(adjacency)
    # Hysteresis: planning again on the same inputs changes nothing more.
    third = plan_mesh(moved, second, config, epoch=3)
    assert edge_changes(second.topology, third.topology).total <= churn


def _replan_without(plan: MeshPlan, ids: list[str], gone: str, seed: int, churn: int) -> MeshPlan:
    rest = [i for i in ids if i != gone]
    config = PlannerConfig(topology=TopologyConfig(churn_limit=churn))
    return plan_mesh(view(rest, seed), plan, config, epoch=2)


@PROPERTY
@given(
    n=st.integers(8, 60),
    seed=st.integers(0, 2**32 - 1),
    churn=st.integers(0, 8),
    data=st.data(),
)
def test_a_leave_is_repaired_with_bounded_churn(
    n: int, seed: int, churn: int, data: st.DataObject
) -> None:
    config = PlannerConfig(topology=TopologyConfig(churn_limit=churn))
    ids = encoder_ids(n)
    first = plan_mesh(view(ids, seed), None, config, epoch=1)
    gone = data.draw(st.sampled_from(ids))
    lost_degree = len(first.topology.adjacency()[gone])
    second = _replan_without(first, ids, gone, seed, churn)
    adjacency = _check_links(second.topology, [i for i in ids if i != gone])
    assert min(len(v) for v in adjacency.values()) >= 3
    assert max(len(v) for v in adjacency.values()) <= 7
    assert _brute_force_survives(adjacency)
    # Forced repairs: one ring patch, at most two links dropped at the degree cap around it,
    # and one refill for each encoder that lost a link (the leaver's neighbours and those two).
    bound = churn + 1 + 2 + (lost_degree + 2)
    assert edge_changes(first.topology, second.topology).total <= bound


@PROPERTY
@given(n=st.integers(8, 50), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_a_join_changes_few_links_between_the_others(
    n: int, seed: int, data: st.DataObject
) -> None:
    churn = data.draw(st.integers(0, 8))
    config = PlannerConfig(topology=TopologyConfig(churn_limit=churn))
    ids = encoder_ids(n)
    newcomer = data.draw(st.sampled_from(ids))
    before = [i for i in ids if i != newcomer]
    first = plan_mesh(view(before, seed), None, config, epoch=1)
    second = plan_mesh(view(ids, seed), first, config, epoch=2)
    adjacency = _check_links(second.topology, ids)
    assert len(adjacency[newcomer]) >= 3
    assert _brute_force_survives(adjacency)
    # The ring insertion may push its two neighbours over the cap (two links dropped) and
    # those links' other ends get refilled (two more).
    assert edge_changes(first.topology, second.topology).total <= churn + 4


@PROPERTY
@given(n=st.integers(6, 50), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_avoided_links_are_routed_around(n: int, seed: int, data: st.DataObject) -> None:
    ids = encoder_ids(n)
    first = plan_mesh(view(ids, seed), None, PlannerConfig(), epoch=1)
    bad = data.draw(st.sampled_from(sorted(first.topology.edges)))
    second = plan_mesh(view(ids, seed, avoid=frozenset({bad})), first, PlannerConfig(), epoch=2)
    assert bad not in second.topology.edges
    adjacency = _check_links(second.topology, ids)
    assert min(len(v) for v in adjacency.values()) >= 3
    assert _brute_force_survives(adjacency)


# --- the survivability check against a brute-force reference ---------------------------------


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    edges=st.sets(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=30),
)
def test_articulation_points_match_brute_force(n: int, edges: set[tuple[int, int]]) -> None:
    names = [f"n{i:02d}" for i in range(n)]
    adjacency: dict[str, set[str]] = {name: set() for name in names}
    for a, b in edges:
        if a < n and b < n and a != b:
            adjacency[names[a]].add(names[b])
            adjacency[names[b]].add(names[a])
    frozen = {k: sorted(v) for k, v in adjacency.items()}
    # Brute force, per component: a cut vertex splits the component it is in.
    expected = set()
    for node in names:
        component = _component(frozen, node)
        rest = [m for m in component if m != node]
        if rest and len(_component(frozen, rest[0], gone=node)) < len(rest):
            expected.add(node)
    assert articulation_points(frozen) == expected
    assert survives_any_single_failure(frozen) == (
        _connected_without(frozen, None) and not expected
    )


def _component(adjacency: Mapping[str, Sequence[str]], start: str, gone: str = "") -> set[str]:
    seen = {start}
    frontier = [start]
    while frontier:
        for m in adjacency[frontier.pop()]:
            if m != gone and m not in seen:
                seen.add(m)
                frontier.append(m)
    return seen


def test_a_ring_has_no_articulation_point_and_a_path_has_them() -> None:
    ring = {f"n{i}": [f"n{(i - 1) % 5}", f"n{(i + 1) % 5}"] for i in range(5)}
    path = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    assert articulation_points(ring) == set()
    assert articulation_points(path) == {"b"}
    assert survives_any_single_failure(ring)
    assert not survives_any_single_failure(path)


def test_pair_is_sorted() -> None:
    assert pair("b", "a") == ("a", "b") == pair("a", "b")


@pytest.mark.parametrize(("lo", "target", "hi"), [(1, 2, 3), (3, 2, 4), (3, 4, 3)])
def test_config_rejects_inconsistent_degrees(lo: int, target: int, hi: int) -> None:
    with pytest.raises(ValueError, match="degree"):
        TopologyConfig(min_degree=lo, target_degree=target, max_degree=hi)


def test_all_pairs_small_mesh_is_complete() -> None:
    ids = encoder_ids(4)
    plan = plan_mesh(view(ids, 1), None, PlannerConfig(), epoch=1)
    assert plan.topology.edges == {pair(a, b) for a, b in itertools.combinations(ids, 2)}


@pytest.mark.parametrize(
    ("low", "high", "target", "candidates"),
    [(3, 7, 4, 12), (3, 3, 3, 12), (2, 2, 2, 12), (5, 20, 5, 20), (2, 3, 3, 12)],
)
def test_operator_bounds_move_the_target_inside_them(
    low: int, high: int, target: int, candidates: int
) -> None:
    config = TopologyConfig.within(low, high)
    assert (config.min_degree, config.max_degree) == (low, high)
    assert (config.target_degree, config.candidates) == (target, candidates)
    assert config.churn_limit == TopologyConfig().churn_limit


def test_operator_bounds_upside_down_are_refused() -> None:
    with pytest.raises(ValueError, match="degrees must satisfy"):
        TopologyConfig.within(4, 3)
