"""``meshenc bench sim`` and ``lockin --rates`` end to end on small worlds: the JSON they
promise, the same figures on every run (the simulator is deterministic), refused options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from meshenc.cli.main import cli
from meshenc.core.policy import Strategy

RATES = ["bench", "lockin", "--rates", "25,30000/1001", "--worlds", "1", "--duration", "10"]


def _without_wall_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_wall_times(v)
            for k, v in value.items()
            if k not in ("wall_s", "events_per_s")
        }
    if isinstance(value, list):
        return [_without_wall_times(v) for v in value]
    return value


def test_lockin_at_rates_gives_a_row_per_world_with_every_compared_strategy(
    tmp_path: Path,
) -> None:
    out = tmp_path / "lockin.json"
    result = CliRunner().invoke(cli, [*RATES, "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    assert printed["benchmark"] == "lockin-rates"
    rows = printed["results"]
    assert [(r["fps"], r["seed"]) for r in rows] == [("25", 1), ("30000/1001", 1)]
    for row in rows:
        assert row["jitter_frames"] == 0.25
        for strategy in ("predictive", "reactive", "epoch"):
            assert row[strategy]["strategy"] == strategy
            assert row[strategy]["encoders"] == 10
    again = json.loads(CliRunner().invoke(cli, [*RATES, "--json"]).stdout)
    assert _without_wall_times(again) == _without_wall_times(printed)


def test_lockin_at_rates_prints_a_table_with_its_verdict() -> None:
    result = CliRunner().invoke(cli, RATES)
    assert result.exit_code == 0, result.output
    assert "Lock-in at broadcast frame rates" in result.stdout
    assert "worlds locked within 2 segments" in result.stdout
    assert "predictive" in result.stdout and "epoch" in result.stdout


def test_bench_sim_runs_every_strategy_at_each_size(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    arguments = ["bench", "sim", "--sizes", "10", "--duration", "15", "--json", "--out", str(out)]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    assert printed["benchmark"] == "sim"
    assert [r["strategy"] for r in printed["results"]] == [s.value for s in Strategy]
    assert all(r["encoders"] == 10 for r in printed["results"])


def test_bad_sizes_and_rates_are_refused() -> None:
    sizes = CliRunner().invoke(cli, ["bench", "sim", "--sizes", "1"])
    assert sizes.exit_code == 2
    assert "sizes must be at least 2" in sizes.output
    for command in ("lockin", "live"):
        rates = CliRunner().invoke(cli, ["bench", command, "--rates", ","])
        assert rates.exit_code == 2
        assert "comma-separated list of frame rates" in rates.output
        bad = CliRunner().invoke(cli, ["bench", command, "--rates", "25,fast"])
        assert bad.exit_code == 2
        assert "not a frame rate: 'fast'" in bad.output


def test_a_run_no_longer_than_its_warm_up_is_a_usage_error() -> None:
    # The standard scenario leaves out its first 10 s.
    result = CliRunner().invoke(cli, ["bench", "sim", "--sizes", "10", "--duration", "5"])
    assert result.exit_code == 2, result.output
    assert "warmup_s must be shorter than duration_s" in result.output
    assert isinstance(result.exception, SystemExit)  # a usage error, no traceback
