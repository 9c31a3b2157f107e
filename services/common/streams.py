"""Turning a background follower into an async iterator.

A watch that follows the API server or etcd runs in its own task, so that its reconnects and
backoff do not depend on how fast the consumer reads. It hands what it sees to ``emit``; an
exception handed to ``emit`` ends the iteration by being raised to the consumer. Closing the
iterator cancels the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Emit", "drain"]

T = TypeVar("T")

Emit = Callable[[T | BaseException], None]
"""Where a follower puts what it sees (an exception ends the iteration)."""


async def drain(
    run: Callable[[Emit[T]], Coroutine[Any, Any, None]], *, name: str | None = None
) -> AsyncIterator[T]:
    """Run ``run(emit)`` in a task named ``name`` and yield what it emits (an emitted
    exception is raised)."""
    queue: asyncio.Queue[T | BaseException] = asyncio.Queue()
    task = asyncio.create_task(run(queue.put_nowait), name=name)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
