"""The encoder's control plane when it stops: every step is bounded, so a peer or a stream that
never answers cannot hold the stop past the grace its launcher gives after SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from meshenc.v1 import manager_pb2
from services.encoder import control
from services.encoder.control import ControlPlane
from services.encoder.settings import EncoderSettings


async def _never() -> None:
    """A close whose peer never answers (a stand-in for a stuck stream or channel)."""
    await asyncio.Event().wait()


def test_a_close_step_that_never_ends_is_given_up_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "CLOSE_STEP_TIMEOUT", 0.2)
    settings = EncoderSettings.model_validate(
        {"id": "e", "out": tmp_path, "manager": "127.0.0.1:9"}
    )
    plane = ControlPlane(settings, lambda document: None, manager_pb2.HealthReport)
    assert plane.link is not None
    closed: list[str] = []

    async def link_closes_never() -> None:
        closed.append("link")
        await _never()

    monkeypatch.setattr(plane.link, "close", link_closes_never)

    async def scenario() -> float:
        started = time.monotonic()
        await plane.close()
        return time.monotonic() - started

    caplog.set_level(logging.WARNING, logger="meshenc.encoder.control")
    took = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert closed == ["link"] and took < 2.0
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["stopping: closing the manager link took over 0.2 s, left behind"]
