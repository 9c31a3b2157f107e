"""The encoder's timeline line: one per change, at most one a second, never a stale last word."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from meshenc.core.messages import EncodingStatePacket
from services.encoder.timeline_log import TimelineLog

from .test_mesh import esp


def _esp(sequence: int, *, anchor: str = "e0", timeline: str = "") -> EncodingStatePacket:
    return dataclasses.replace(esp("e1", sequence), anchor=anchor, anchor_hops=1, timeline=timeline)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _feed(log: TimelineLog, clock: _Clock, anchors: list[str], *, period: float = 1 / 30) -> None:
    for sequence, anchor in enumerate(anchors, start=1):
        log.sent(_esp(sequence, anchor=anchor))
        clock.now += period


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.timeline"]


def test_a_steady_state_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = _Clock()
    _feed(TimelineLog(logging.getLogger("test.timeline"), clock=clock), clock, ["e0"] * 90)
    assert _lines(caplog) == ["timeline: not locked (anchor e0, 1 links away)"]


def test_a_flapping_anchor_is_logged_at_most_once_a_second_and_its_last_state_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = _Clock()
    log = TimelineLog(logging.getLogger("test.timeline"), clock=clock)
    # 3 s of an anchor that changes at every ESP, then 2 s on e2 alone.
    _feed(log, clock, ["e0", "e2"] * 45 + ["e2"] * 60)
    lines = _lines(caplog)
    assert 3 <= len(lines) <= 5, lines  # 90 changes, one line a second
    assert lines[0] == "timeline: not locked (anchor e0, 1 links away)"
    assert "changes in the last" in lines[1]
    assert lines[-1].startswith("timeline: not locked (anchor e2, 1 links away)"), lines


def test_a_change_and_its_undoing_within_a_second_still_get_a_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = _Clock()
    log = TimelineLog(logging.getLogger("test.timeline"), clock=clock)
    _feed(log, clock, ["e0"] * 3 + ["e2"] + ["e0"] * 60)
    # e2 came and went within a second of the first line: the next says e0 again, after two.
    assert _lines(caplog) == [
        "timeline: not locked (anchor e0, 1 links away)",
        "timeline: not locked (anchor e0, 1 links away); 2 changes in the last 1.0 s",
    ]


def test_locking_is_logged_with_the_timeline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = _Clock()
    log = TimelineLog(logging.getLogger("test.timeline"), clock=clock)
    log.sent(_esp(1))
    clock.now += 2.0
    log.sent(_esp(2, timeline="e0"))
    assert _lines(caplog)[-1] == "timeline: locked on e0 (anchor e0 +0.0 ms, 1 links away)"
