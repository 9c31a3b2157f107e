"""Waiting for an event with a time limit, in a loop that must end when its task is cancelled.

``asyncio.wait_for`` is not used for this. On Python 3.11 it waits in a task of its own; when
the event is set and the waiting task is cancelled in the same turn of the loop, that inner
task is already done by the time the cancellation is handled, and ``wait_for`` returns as if
never cancelled. A loop around it then runs on, and whoever awaits the cancelled task waits for
ever: the manager's tick loop outlived its deactivation so (an autoscaling test held for ten
minutes). ``asyncio.timeout`` waits in the task itself, so the cancellation always arrives.

The services wait so wherever a lost cancellation would let a task go on: loops, and a wait a
long-running step follows (a dialer's first Hello, an etcd request's connection), with
``wait_until_set`` for an event and ``asyncio.timeout`` inline for anything else. A
``wait_for`` around a close or a final publish stays: its task ends after it either way.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wait_until_set"]


async def wait_until_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds passed; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
