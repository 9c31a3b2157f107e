"""The DHT simulator on small networks: stored records are found, with and without churn.

The simulator runs the real Kademlia core; only the network (delays, nodes that stop
answering) and the clock are simulated. Runs are a function of their configuration and seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshenc.sim.dht import DhtSimConfig, DhtSimResult, percentile, run_dht

SMALL = DhtSimConfig(
    nodes=300, lookups=300, records=30, k=8, duration=200.0, publish_window=10.0, seed=3
)


def _run(**changes: Any) -> DhtSimResult:
    return run_dht(replace(SMALL, **changes))


def test_without_churn_every_stored_record_is_found() -> None:
    result = _run(churn=0.0)
    assert result.lookups == SMALL.lookups
    assert result.found == result.lookups
    assert result.leaves == result.joins == 0
    assert result.timeouts == 0
    # Each record sits on its k closest nodes, nowhere else.
    assert result.replicas_at_end == pytest.approx(SMALL.k)


def test_with_a_fifth_of_the_nodes_replaced_every_stored_record_is_found() -> None:
    result = _run(churn=0.2)
    assert result.leaves == result.joins == round(0.2 * SMALL.nodes)
    assert result.timeouts > 0, "departed nodes must have cost some timeouts"
    assert result.found == result.lookups
    # Republication keeps about k live replicas despite the departures.
    assert result.replicas_at_end >= SMALL.k - 1


def test_a_network_built_by_joins_finds_every_record() -> None:
    result = _run(nodes=80, bootstrap="join", churn=0.2)
    assert result.found == result.lookups
    assert max(result.hops) >= 1


def test_a_run_is_a_function_of_its_seed() -> None:
    first, again = _run(churn=0.2), _run(churn=0.2)
    other = _run(churn=0.2, seed=SMALL.seed + 1)

    def figures(r: DhtSimResult) -> tuple[object, ...]:
        return (r.hops, r.requests, r.latencies, r.timeouts, r.events, r.replicas_at_end)

    assert figures(first) == figures(again)
    assert figures(first) != figures(other)


def test_hops_grow_with_the_network() -> None:
    small = _run(nodes=40, churn=0.0)
    large = _run(nodes=600, churn=0.0)
    assert small.hops_median is not None and large.hops_median is not None
    assert sum(large.hops) / len(large.hops) > sum(small.hops) / len(small.hops)


def test_percentile_is_a_value_that_occurred() -> None:
    assert percentile((), 0.99) is None
    assert percentile((5, 1, 3), 0.5) == 3.0
    assert percentile(tuple(range(1, 101)), 0.99) == 99.0
    assert percentile((1, 2), 1.0) == 2.0


@pytest.mark.parametrize(
    "changes",
    [
        {"nodes": 1},
        {"churn": 1.5},
        {"records": 0},
        {"delay_ms": (600.0, 600.0)},
        {"publish_window": 700.0},
        {"k": 0},
    ],
)
def test_bad_configurations_are_refused(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"nodes": 10}
    fields.update(changes)
    with pytest.raises(ValueError):
        DhtSimConfig(**fields)  # type: ignore[arg-type]
