"""The chaos run's fault plan (a pure function of the seed) and its reading of logs; no
process is started."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from meshenc.local.chaos import ChaosConfig, count_tracebacks, plan_faults
from meshenc.report.chaos import FaultKind


def test_the_plan_is_the_seeds_and_deals_every_kind() -> None:
    plan = plan_faults(7, 600.0, warmup=12.0, spacing=15.0, holds=(2.0, 5.0))
    assert plan == plan_faults(7, 600.0, warmup=12.0, spacing=15.0, holds=(2.0, 5.0))
    assert plan != plan_faults(8, 600.0, warmup=12.0, spacing=15.0, holds=(2.0, 5.0))
    assert len(plan) == 39  # 12, 27, ... 582: each over a spacing before the end
    kinds = Counter(f.kind for f in plan)
    assert set(kinds) == set(FaultKind)
    assert max(kinds.values()) - min(kinds.values()) <= 1  # dealt from decks
    assert all(2.0 <= f.hold <= 5.0 for f in plan)
    starts = [f.at for f in plan]
    assert starts == sorted(starts) and starts[0] == 12.0
    assert all(b - a == pytest.approx(15.0) for a, b in itertools.pairwise(starts))


def test_a_plan_of_chosen_kinds_uses_only_them() -> None:
    chosen = (FaultKind.PAUSE_ENCODER, FaultKind.STOP_ETCD)
    plan = plan_faults(1, 100.0, warmup=10.0, spacing=10.0, holds=(1.0, 2.0), kinds=chosen)
    assert {f.kind for f in plan} == set(chosen)


@pytest.mark.parametrize(
    "bad",
    [
        {"encoders": 2},
        {"duration": 10.0, "warmup": 12.0},
        {"min_hold": 5.0, "max_hold": 4.0},
        {"max_hold": 20.0, "spacing": 15.0},
        {"kinds": ()},
    ],
)
def test_impossible_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ChaosConfig(out=Path("unused"), **bad)  # type: ignore[arg-type]


def test_tracebacks_count_but_opentelemetrys_detach_noise_does_not() -> None:
    log = "\n".join(
        [
            "2026-12-03 09:00:25,112 e2 ERROR opentelemetry.context: Failed to detach context",
            "Traceback (most recent call last):",
            "GeneratorExit",
            "During handling of the above exception, another exception occurred:",
            "Traceback (most recent call last):",
            "ValueError: <Token ...> was created in a different Context",
            "2026-12-03 09:00:26,000 e2 ERROR meshenc.encoder: boom",
            "Traceback (most recent call last):",
            "RuntimeError: a real one",
            "Traceback (most recent call last):",  # an uncaught one, printed without a record
        ]
    )
    assert count_tracebacks(log) == 2
