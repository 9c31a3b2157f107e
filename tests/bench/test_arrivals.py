"""``meshenc bench arrivals`` runs the encoder's real UDP receiver against a sender process in
every condition and both ways of stamping, and accounts for every picture (no timing is
asserted: the figures are the benchmark's business)."""

from __future__ import annotations

import json
import math

from rich.console import Console

from meshenc.bench.arrivals import CONDITIONS, STAMPINGS, run_arrivals_bench


def test_every_condition_runs_both_ways_of_stamping_and_every_picture_is_stamped() -> None:
    result = run_arrivals_bench(60, 1)
    assert [(r.condition, r.stamping) for r in result.runs] == [
        (c, s) for c in CONDITIONS for s in STAMPINGS
    ]
    for run in result.runs:
        assert len(run.lateness_ms) >= 54  # the benchmark's own floor, 90 % of 60 pictures
        assert all(math.isfinite(v) for v in run.lateness_ms)
    payload = json.loads(json.dumps(result.payload()))
    assert set(payload["summary"]) == {f"{c}/{s}" for c in CONDITIONS for s in STAMPINGS}
    console = Console(record=True, width=200)
    console.print(result.table())
    assert "kernel receive time" in console.export_text()
