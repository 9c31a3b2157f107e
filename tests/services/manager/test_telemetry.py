"""``services.manager.telemetry``: every planning step timed and counted."""

from __future__ import annotations

import pytest

from services.common.telemetry import REGISTRY
from services.manager.telemetry import planning


def test_a_plan_that_decides_something_is_a_span_and_every_plan_is_timed() -> None:
    count = REGISTRY.get_sample_value
    before = count("meshenc_manager_plan_seconds_count") or 0.0
    errors = count("meshenc_manager_plans_total", {"outcome": "error"}) or 0.0
    with planning("tick") as plan:
        assert plan.record([]) == []
    with planning("tick") as plan:
        plan.record([object(), object()])
    with pytest.raises(ZeroDivisionError), planning("tick"):
        _ = 1 / 0
    assert count("meshenc_manager_plan_seconds_count") == before + 3
    assert count("meshenc_manager_plans_total", {"outcome": "error"}) == errors + 1
    assert (count("meshenc_manager_decisions_total", {"kind": "object"}) or 0.0) >= 2
