"""``meshenc bench esp`` runs real mesh nodes, each in its own process, for this tree and a
baseline revision, and accounts for every ESP (no timing is asserted: the figures are the
benchmark's business)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from meshenc.bench.esp import CURRENT, run_esp_bench
from meshenc.bench.results import BenchError


def test_this_tree_and_a_baseline_run_interleaved_and_every_esp_arrives() -> None:
    result = run_esp_bench(1, 20, nodes=3, baseline="HEAD")
    ours, baseline = result.codes
    assert ours == CURRENT and baseline.startswith("baseline ")
    assert [r.code for r in result.runs] == [ours, baseline]
    for run in result.runs:
        assert run.sent == 3 * 2 * 20  # every node to each of its 2 neighbours, every frame
        assert run.received == run.sent == len(run.delays_ms)  # loopback loses nothing
        assert all(delay > 0 for delay in run.delays_ms)
        assert len(run.cpu_per_frame_s) == 3 and all(cpu > 0 for cpu in run.cpu_per_frame_s)
    payload = json.loads(json.dumps(result.payload()))
    assert payload["settings"]["neighbours_each"] == 2
    assert set(payload["summary"]) == {ours, baseline, "ratio"}
    console = Console(record=True, width=200)
    console.print(result.table())
    assert f"{ours} / {baseline}" in console.export_text()


def test_a_star_links_the_first_node_to_each_other_and_no_other_pair() -> None:
    result = run_esp_bench(1, 20, nodes=4, topology="star", baseline=None)
    (run,) = result.runs
    # The first node hears its 3 neighbours and each of them the first alone, every frame
    # (a full mesh of 4 would deliver twice as many).
    assert run.received == (3 + 3) * 20 == len(run.delays_ms)
    assert len(run.cpu_per_frame_s) == 4
    console = Console(record=True, width=200)
    console.print(result.table())
    assert "a star of 4 nodes" in console.export_text()


def test_an_unknown_topology_is_refused() -> None:
    with pytest.raises(BenchError, match="no topology 'ring'"):
        run_esp_bench(1, 20, nodes=3, topology="ring", baseline=None)
