"""``meshenc bench plan`` end to end on small meshes: the JSON it promises, and sane plans."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from meshenc.bench.plan import CAPACITY
from meshenc.cli.main import cli


def test_bench_plan_writes_the_promised_fields(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        cli,
        ["bench", "plan", "--encoders", "30,120", "--repeats", "1", "--json", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert json.loads(out.read_text()) == printed
    sizes = [r["encoders"] for r in printed["results"]]
    assert sizes == [30, 120]
    for r in printed["results"]:
        assert r["plan_s"] > 0 and r["replan_s"] > 0
        assert 3 <= r["min_degree"] <= r["max_degree"] <= 7
        assert r["survives_any_single_failure"] is True
        assert r["replan_survives_any_single_failure"] is True
        assert 5 <= r["segment_size_min"] <= r["segment_size_max"] <= 10
        assert r["placement_moves_on_leave"] == r["copies_on_failed_encoder"]
        assert r["work_units"] == r["channels"] * r["rungs"] == r["channels"] * 3
        assert r["under_replicated"] == 0
        assert r["place_s"] > 0 and r["join_replan_s"] > 0 and r["scale_out_replan_s"] > 0
        # A join moves copies onto the joiner only, a scale-out onto the joiners only.
        assert r["placement_moves_on_join"] <= CAPACITY
        assert r["placement_moves_on_scale_out"] <= CAPACITY * r["scale_out_encoders"]
        for event in ("", "_after_join", "_after_scale_out"):
            assert 0 <= r[f"units_per_encoder_spread{event}"] <= CAPACITY
        assert r["mean_link_rtt_ms"] < r["mean_random_pair_rtt_ms"]  # latency-aware


def test_bench_plan_refuses_bad_sizes() -> None:
    result = CliRunner().invoke(cli, ["bench", "plan", "--encoders", "1,x"])
    assert result.exit_code != 0
    assert "comma-separated" in result.output
