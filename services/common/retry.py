"""The one retry policy of the services' control planes: exponential backoff with jitter.

Etcd requests and watches, Kubernetes API calls and their watches all fail the same ways
(a connection lost, a timeout, a server restarting, a lost race) and are retried the same way:
tenacity's exponential backoff with jitter, only for what the caller calls transient, for a
number of attempts (writes, which then report the failure) or for ever (watch loops, which
must not end). A permission error or a bad request is never transient: it is raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

__all__ = ["DEFAULT_ATTEMPTS", "retrying"]

log = logging.getLogger("meshenc.retry")

DEFAULT_ATTEMPTS: Final = 6
"""Tries per write before a transient failure is reported to the caller."""


def retrying(
    what: str,
    transient: Callable[[BaseException], bool],
    *,
    attempts: int | None = DEFAULT_ATTEMPTS,
    initial: float = 0.05,
    maximum: float = 5.0,
    logger: logging.Logger = log,
) -> AsyncRetrying:
    """tenacity's exponential backoff with jitter for ``what``, retrying only what
    ``transient`` accepts; ``attempts=None`` retries for ever (watch loops).

    The first two failures are logged as warnings on ``logger``, later ones at debug level, so
    a long outage does not flood the log.
    """

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.log(
            logging.WARNING if state.attempt_number <= 2 else logging.DEBUG,
            "%s failed (attempt %d: %r); retrying in %.2f s",
            what,
            state.attempt_number,
            error,
            delay,
        )

    return AsyncRetrying(
        retry=retry_if_exception(transient),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial),
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        before_sleep=before_sleep,
        reraise=True,
    )
