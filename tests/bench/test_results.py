"""What the benchmarks share: summaries of repeated measurements and table cells."""

from __future__ import annotations

import math

from meshenc.bench.failover import _stats as failover_stats
from meshenc.bench.results import Spread, cell, percentile, results_table, timed


def test_a_spread_is_the_median_and_the_range() -> None:
    assert Spread.of([3.0, 1.0, 2.0, 10.0]) == Spread(2.5, 1.0, 10.0)
    assert Spread.of([4.0]).as_dict() == {"median": 4.0, "min": 4.0, "max": 4.0}
    empty = Spread.of([])
    assert math.isnan(empty.median) and math.isnan(empty.low) and math.isnan(empty.high)


def test_a_percentile_is_a_value_that_occurred() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0, 1.0], 0) == 1.0
    assert percentile([0.5, 1.5, 2.5], 60) == 1.5


def test_the_failover_bench_reports_the_same_nearest_rank_p95() -> None:
    # 20 trials and one without a new leader: p95 is the 19th fastest, not 19.05 (interpolated).
    stats = failover_stats([*(float(ms) for ms in range(20, 0, -1)), None])
    assert stats == {"median_ms": 10.5, "p95_ms": 19.0, "max_ms": 20.0, "failed": 1}


def test_timed_gives_the_median_of_the_runs_and_the_last_result() -> None:
    calls: list[int] = []

    def run() -> int:
        calls.append(len(calls))
        return len(calls)

    seconds, last = timed(3, run)
    assert calls == [0, 1, 2]
    assert last == 3
    assert 0.0 <= seconds < 1.0


def test_cells_show_nothing_as_a_dash_and_group_thousands() -> None:
    assert cell(None) == "—"
    assert cell(1234.56) == "1,234.6"
    assert cell(1234.56, 0) == "1,235"
    assert cell(12345) == "12,345"
    assert cell("predictive") == "predictive"


def test_tables_align_right_but_for_the_columns_asked() -> None:
    table = results_table("title", ("name", "value"), left={"name"})
    assert [c.justify for c in table.columns] == ["left", "right"]
    assert table.title == "title"
