"""The one retry policy of the services: exponential backoff with jitter.

Etcd requests and watches, Kubernetes API calls and their watches, the encoders' links to
their neighbours and to the manager, the registry's joins and publishes and the media
publisher's uploads all fail the same ways (a connection lost, a timeout, a server restarting,
a lost race) and are retried the same way: after the n-th failure in a row, wait a
:class:`Backoff` delay, only for what the caller calls transient, for a number of attempts
(writes, which then report the failure), for a time, or for ever (watch loops and links, which
must not end). A permission error or a bad request is never transient: it is raised at once.

:func:`retrying` drives a call through tenacity with that policy. A loop that needs its own
control flow (the publisher's uploads, a tick-driven greeting) takes the delays from
:meth:`Backoff.delay`. A loop that keeps a session up for ever starts a fresh
:func:`retrying` after each session that ended well, so that its backoff starts again from
``initial``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

__all__ = ["DEFAULT_ATTEMPTS", "DEFAULT_BACKOFF", "Backoff", "retrying"]

log = logging.getLogger("meshenc.retry")

DEFAULT_ATTEMPTS: Final = 6
"""Tries per write before a transient failure is reported to the caller."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before the n-th retry (n = 1 after the first failure).

    The ceiling doubles from ``initial`` up to ``maximum``; the delay is drawn uniformly from
    ``[(1 - spread) * ceiling, ceiling + jitter]`` and is never above ``maximum``. With
    ``spread=0`` that is a fixed doubling plus up to ``jitter`` seconds (tenacity's exponential
    jitter); with ``spread=0.5`` it is between half and all of the ceiling, which keeps many
    clients of one server apart even at the cap.

    Raises:
        ValueError: on construction, for a negative or non-finite value, ``maximum`` below
            ``initial`` or ``spread`` outside [0, 1].
    """

    initial: float = 0.05
    maximum: float = 5.0
    jitter: float = 0.05
    spread: float = 0.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum {self.maximum} is below initial {self.initial}")
        if not 0.0 <= self.spread <= 1.0:
            raise ValueError(f"spread must be within [0, 1], got {self.spread!r}")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (>= 1)."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(max(retry, 1) - 1, 64))
        low = (1.0 - self.spread) * ceiling
        return min(self.maximum, low + rng.uniform(0.0, ceiling + self.jitter - low))


DEFAULT_BACKOFF: Final = Backoff()
"""50 ms, doubling to 5 s, plus up to 50 ms: the control planes' writes and watches."""


def retrying(
    what: str,
    transient: Callable[[BaseException], bool],
    *,
    attempts: int | None = DEFAULT_ATTEMPTS,
    give_up_after: float | None = None,
    stop_when: Callable[[], bool] | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    logger: logging.Logger = log,
    level: int = logging.WARNING,
) -> AsyncRetrying:
    """``backoff`` between tries of ``what``, retrying only what ``transient`` accepts.

    Args:
        attempts: tries before the failure is raised; None retries for ever (watch loops).
        give_up_after: seconds after the first try after which the failure is raised.
        stop_when: raise the failure instead of retrying once this says so (closing).
        backoff: the delays.
        rng: the jitter's source (a fresh one by default; tests inject a seeded one).
        sleep: how to wait (one that wakes early when closing, say).
        logger, level: the first two failures are logged at ``level``, later ones at debug
            level, so a long outage does not flood the log.
    """
    source = rng if rng is not None else random.Random()

    def wait(state: RetryCallState) -> float:
        return backoff.delay(state.attempt_number, source)

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.log(
            level if state.attempt_number <= 2 else logging.DEBUG,
            "%s failed (attempt %d: %r); retrying in %.2f s",
            what,
            state.attempt_number,
            error,
            delay,
        )

    stops: list[Callable[[RetryCallState], bool]] = []
    if attempts is not None:
        stops.append(stop_after_attempt(attempts))
    if give_up_after is not None:
        stops.append(stop_after_delay(give_up_after))
    if stop_when is not None:
        stops.append(lambda _state: stop_when())
    return AsyncRetrying(
        retry=retry_if_exception(transient),
        wait=wait,
        stop=lambda state: any(stop(state) for stop in stops),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
