"""``meshenc bench tls`` runs both modes on real gRPC and reports what it measured (no timing
is asserted: the figures are the benchmark's business)."""

from __future__ import annotations

import json

from rich.console import Console

from meshenc.bench.tls import MODES, run_tls_bench


def test_both_modes_run_interleaved_and_every_esp_is_accounted_for() -> None:
    result = run_tls_bench(2, 10, 0.3)
    assert [(r.repeat, r.mode) for r in result.runs] == [
        (0, "off"),
        (0, "on"),
        (1, "on"),
        (1, "off"),
    ]
    for run in result.runs:
        assert run.sent == 20 and len(run.delays_ms) == 20  # loopback loses nothing
        assert all(delay > 0 for delay in run.delays_ms)
        assert 0 < run.delivered_per_s <= run.offered_per_s
    payload = json.loads(json.dumps(result.payload()))
    assert set(payload["summary"]) == {*MODES, "ratio_on_off"}
    on, off = payload["summary"]["on"], payload["summary"]["off"]
    assert payload["summary"]["ratio_on_off"]["p50_ms"] == on["p50_ms"] / off["p50_ms"]
    console = Console(record=True, width=200)
    console.print(result.table())
    assert "on / off" in console.export_text()
