"""``meshenc bench rungs`` on a small ladder: the runs of every thread count write the same files
(the benchmark checks it, and refuses a run that does not) and each is measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshenc.bench import rungs
from meshenc.bench.encoder import GOP
from meshenc.bench.results import BenchError
from meshenc.cli.bench import bench
from services.encoder.media.ladder import parse_ladder

LADDER = parse_ladder("160x96@300,96x64@150,64x32@80")


def test_every_thread_count_is_measured_in_every_round() -> None:
    result = rungs.run_rungs_bench(LADDER, [3], GOP + 10, 2)
    assert [r.threads for r in result.results] == [1, 3]  # one thread always runs
    for r in result.results:
        assert len(r.wall_ms) == len(r.cpu_ms) == len(r.wall_ratios) == 2
        assert all(ms > 0.0 for ms in (*r.wall_ms, *r.cpu_ms, *r.encode_ms))
    json.dumps(result.payload())  # what --json prints
    assert result.payload()["settings"]["ladder"] == ["160x96@300", "96x64@150", "64x32@80"]


def test_a_run_that_writes_other_files_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the check stands on: a stand-in digest that tells the runs apart by folder name."""
    monkeypatch.setattr(rungs, "_digest", lambda folder: Path(folder).name.split("-")[-1])
    with pytest.raises(BenchError, match="2 rung threads wrote other files"):
        rungs.run_rungs_bench(LADDER, [2], 30, 1)


def test_the_command_refuses_thread_counts_out_of_range() -> None:
    for bad in ("0", "9", "two"):
        done = CliRunner().invoke(bench, ["rungs", "--threads", bad, "--ladder", "160x96@300"])
        assert done.exit_code == 2 and "--threads" in done.output, done.output
