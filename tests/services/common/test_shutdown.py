"""Bounded stop steps: a step that overruns is left behind with one warning naming it, even
one that does not end when cancelled, and the stop goes on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from services.common.shutdown import bounded_step

log = logging.getLogger("test.shutdown")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_a_step_that_ends_in_time_is_awaited_quietly(caplog: pytest.LogCaptureFixture) -> None:
    ended: list[str] = []

    async def step() -> None:
        await asyncio.sleep(0.01)
        ended.append("step")

    asyncio.run(bounded_step("closing a thing", step(), 1.0, log))
    assert ended == ["step"] and _warnings(caplog) == []


def test_a_step_that_ignores_its_cancellation_still_gives_the_stop_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``asyncio.wait_for`` would wait for the cancelled step to end: here, for ever."""
    caplog.set_level(logging.WARNING, logger=log.name)

    async def scenario() -> tuple[float, int]:
        release = asyncio.Event()
        cancelled = 0

        async def stubborn() -> None:
            nonlocal cancelled
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    cancelled += 1  # swallowed: the step carries on

        started = time.monotonic()
        await bounded_step("closing a stuck stream", stubborn(), 0.2, log)
        took = time.monotonic() - started
        await asyncio.sleep(0)  # the cancellation reaches the step
        release.set()  # let it end, so the loop can close
        await asyncio.sleep(0)
        return took, cancelled

    # In a thread of its own: a bound that waits for the step would hold the loop for ever,
    # and cancelling from outside would not help; the test must fail, not hang.
    results: list[tuple[float, int]] = []
    runner = threading.Thread(target=lambda: results.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(10.0)
    assert results, "the stop waited for a step that does not end when cancelled"
    took, cancelled = results[0]
    assert took < 1.0 and cancelled == 1
    assert _warnings(caplog) == ["stopping: closing a stuck stream took over 0.2 s, left behind"]


def test_a_step_that_fails_is_logged_and_the_stop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)

    async def failing() -> None:
        raise OSError("connection reset")

    asyncio.run(bounded_step("closing a client", failing(), 1.0, log))
    assert _warnings(caplog) == ["stopping: closing a client failed: connection reset"]
