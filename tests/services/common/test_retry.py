"""The services' one retry policy: its delays, and what ``retrying`` retries, for how long.

Nothing waits for real: ``retrying`` gets a sleep that only records the delays it was asked for.
"""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.retry import DEFAULT_BACKOFF, Backoff, retrying


class _TransientError(Exception):
    pass


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TransientError)


@given(
    st.integers(min_value=1, max_value=200),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.integers(min_value=0, max_value=2**32),
)
def test_delays_lie_between_the_spread_and_the_jitter_and_never_above_the_cap(
    retry: int, spread: float, seed: int
) -> None:
    backoff = Backoff(initial=0.1, maximum=2.0, jitter=0.05, spread=spread)
    ceiling = min(2.0, 0.1 * 2 ** (retry - 1))
    delay = backoff.delay(retry, random.Random(seed))
    assert (1 - spread) * ceiling <= delay <= min(2.0, ceiling + 0.05)


def test_the_ceiling_doubles_up_to_the_cap() -> None:
    fixed = Backoff(initial=1.0, maximum=30.0, jitter=0.0)
    rng = random.Random(1)
    assert [fixed.delay(n, rng) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_equal_jitter_draws_between_half_and_all_of_the_ceiling() -> None:
    """spread=0.5 is uniform in [ceiling/2, ceiling]: the same draw as rng.uniform there."""
    backoff = Backoff(initial=0.1, maximum=2.0, jitter=0.0, spread=0.5)
    ours, theirs = random.Random(7), random.Random(7)
    for retry in range(1, 10):
        ceiling = min(2.0, 0.1 * 2 ** (retry - 1))
        assert backoff.delay(retry, ours) == pytest.approx(theirs.uniform(ceiling / 2, ceiling))


@pytest.mark.parametrize(
    "fields",
    [
        {"initial": -0.1},
        {"maximum": float("inf")},
        {"jitter": float("nan")},
        {"initial": 2.0, "maximum": 1.0},
        {"spread": 1.5},
    ],
)
def test_backoffs_that_make_no_sense_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**fields)


class _Calls:
    """A call that fails transiently ``failures`` times, then answers; and a recording sleep."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or _TransientError("down")
        self.calls = 0
        self.slept: list[float] = []

    async def call(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def _run(calls: _Calls, **options: object) -> str:
    async for attempt in retrying("the test call", _is_transient, sleep=calls.sleep, **options):  # type: ignore[arg-type]
        with attempt:
            return await calls.call()
    raise AssertionError("unreachable: reraise=True")


@pytest.mark.asyncio
async def test_transient_failures_are_retried_after_the_backoff() -> None:
    calls = _Calls(failures=3)
    backoff = Backoff(initial=1.0, maximum=3.0, jitter=0.0)
    assert await _run(calls, backoff=backoff) == "ok"
    assert calls.calls == 4 and calls.slept == [1.0, 2.0, 3.0]


@pytest.mark.asyncio
async def test_other_failures_are_raised_at_once() -> None:
    calls = _Calls(failures=1, error=PermissionError("no"))
    with pytest.raises(PermissionError):
        await _run(calls)
    assert calls.calls == 1 and not calls.slept


@pytest.mark.asyncio
async def test_the_last_failure_is_raised_after_the_attempts() -> None:
    calls = _Calls(failures=10)
    with pytest.raises(_TransientError):
        await _run(calls, attempts=3)
    assert calls.calls == 3


@pytest.mark.asyncio
async def test_none_attempts_retries_for_ever() -> None:
    calls = _Calls(failures=200)
    assert await _run(calls, attempts=None, backoff=DEFAULT_BACKOFF) == "ok"
    assert calls.calls == 201 and max(calls.slept) <= DEFAULT_BACKOFF.maximum


@pytest.mark.asyncio
async def test_a_time_limit_ends_the_retries() -> None:
    calls = _Calls(failures=10)
    with pytest.raises(_TransientError):
        await _run(calls, attempts=None, give_up_after=0.0)
    assert calls.calls == 1


@pytest.mark.asyncio
async def test_an_outside_signal_ends_the_retries() -> None:
    calls = _Calls(failures=10)
    with pytest.raises(_TransientError):
        await _run(calls, attempts=None, stop_when=lambda: calls.calls >= 2)
    assert calls.calls == 2


@pytest.mark.asyncio
async def test_a_seeded_rng_gives_the_same_delays() -> None:
    runs = []
    for _ in range(2):
        calls = _Calls(failures=5)
        await _run(calls, backoff=Backoff(spread=0.5), rng=random.Random(3))
        runs.append(calls.slept)
    assert runs[0] == runs[1] and len(set(runs[0])) == 5


@pytest.mark.asyncio
async def test_the_first_two_failures_are_logged_at_the_given_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.retry")
    with caplog.at_level(logging.DEBUG, logger="test.retry"):
        await _run(_Calls(failures=4), logger=logger, level=logging.INFO)
    levels = [r.levelno for r in caplog.records if r.name == "test.retry"]
    assert levels == [logging.INFO, logging.INFO, logging.DEBUG, logging.DEBUG]
    assert "the test call failed (attempt 1: _TransientError('down'))" in caplog.records[0].message
