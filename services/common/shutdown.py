"""Stopping a service in bounded steps.

A service stops after SIGTERM within the grace its launcher gives (a Kubernetes pod's
termination grace, ``meshenc up``'s ten seconds), however its peers behave: a stream whose
peer never answers, a channel that never closes, a thread that never joins. Each step of a stop
is given a bound; a step that overruns is logged once, by name, asked to stop (cancelled) and
left behind, and the stop goes on with the next. ``asyncio.wait_for`` is not enough for this:
after its timeout it waits for the cancelled step to end, so a step that is slow to cancel
holds the stop anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

__all__ = ["bounded_step"]


async def bounded_step(
    what: str, closing: Awaitable[Any], seconds: float, log: logging.Logger
) -> None:
    """Await one step of a stop for at most ``seconds``.

    A step that overruns is cancelled and not waited for, with one warning ``stopping: <what>
    took over <seconds> s, left behind``; one that fails is logged with its error. Neither
    stops the caller.
    """
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        # Retrieved later by nobody: say so now, so asyncio does not log it at exit.
        task.add_done_callback(_forget)
        log.warning("stopping: %s took over %g s, left behind", what, seconds)
    elif task.cancelled():
        log.warning("stopping: %s was cancelled", what)
    elif (exc := task.exception()) is not None:
        log.warning("stopping: %s failed: %s", what, exc)


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
