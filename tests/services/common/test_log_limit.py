"""Log lines about bad input, at most one per kind per interval."""

from __future__ import annotations

import logging

import pytest

from services.common.log_limit import LimitedLog


def test_one_line_per_kind_per_interval_saying_how_many_were_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limited = LimitedLog(logging.getLogger("test.limited"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        assert limited.warning("invalid", "refused %s", "x")
        for _ in range(500):  # a flood
            assert not limited.warning("invalid", "refused %s", "x")
        assert limited.warning("stranger", "stranger %s", "y")  # another kind is not held
        now[0] += 10.0
        assert limited.warning("invalid", "refused %s", "z")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused x",
        "stranger y",
        "refused z (and 500 more like it in the last 10 s)",
    ]


def test_memory_stays_bounded_whatever_the_keys() -> None:
    limited = LimitedLog(logging.getLogger("test.limited"), 10.0, clock=lambda: 0.0, max_keys=4)
    for k in range(100):
        limited.warning(f"kind-{k}", "line")
    assert len(limited._seen) == 4
