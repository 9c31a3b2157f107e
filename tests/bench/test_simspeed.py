"""``meshenc bench simspeed`` on tiny worlds: each run in its own interpreter reports the same
events as a run in this process, the reference row comes first, repeats are kept, and a run no
longer than its warm-up is refused before any process starts, and each run says whether its
engine was compiled, as this process's is. No timing is judged."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

import meshenc.core.engine
from meshenc.bench.simspeed import measure_speed
from meshenc.cli.main import cli
from meshenc.core.policy import Strategy
from meshenc.sim.runner import run
from meshenc.sim.scenario import packaged_scenario


def _compiled_here() -> bool:
    """Whether this process runs a compiled engine (tests run against build/compiled do)."""
    return Path(meshenc.core.engine.__file__).suffix != ".py"


def _events_here(encoders: int, duration_s: float) -> int:
    scenario = packaged_scenario("standard").with_overrides(
        **{"mesh.encoders": encoders, "mesh.duration_s": duration_s, "seed": 1}
    )
    return run(scenario, Strategy.PREDICTIVE).events


def test_each_world_is_run_in_its_own_process_and_reported_with_the_reference_first() -> None:
    result = measure_speed([12], 11.0, 2, reference=(10, 11.0))
    reference, sized = result.rows
    assert (reference.encoders, reference.duration_s, reference.reference) == (10, 11.0, True)
    assert (sized.encoders, sized.duration_s, sized.reference) == (12, 11.0, False)
    assert reference.events == _events_here(10, 11.0)
    assert sized.events == _events_here(12, 11.0)
    for row in result.rows:
        assert len(row.runs) == 2
        assert all(r.events == row.events and r.wall_s > 0 and r.cpu_s > 0 for r in row.runs)
        assert row.peak_rss_mb > 10  # an interpreter with numpy loaded, at the least
        assert row.compiled is _compiled_here()
    payload = json.loads(json.dumps(result.payload()))
    assert payload["benchmark"] == "simspeed"
    assert [r["encoders"] for r in payload["results"]] == [10, 12]
    console = Console(width=200, record=True)
    console.print(result.table())
    text = console.export_text()
    assert "reference" in text and "peak RSS MB" in text and "1.00" in text
    assert ("compiled" if _compiled_here() else "pure Python") in text


def test_a_run_no_longer_than_its_warm_up_is_refused_before_any_run(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(
        cli, ["bench", "simspeed", "--sizes", "10", "--duration", "5", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "warmup_s must be shorter than duration_s" in result.output
    assert not out.exists()
