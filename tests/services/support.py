"""Helpers of the actuator tests: names shared with the stand-in, an etcd client, and a
collector that drains async iterators without cancelling them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aetcd  # type: ignore[import-untyped]

from meshenc.local.etcd import EtcdProcess
from services.common.grpc_server import CHANNEL_OPTIONS

NAMESPACE = "media"
STATEFULSET = "meshenc-encoder"
POD_LABELS = {"app.kubernetes.io/name": "meshenc", "app.kubernetes.io/component": "encoder"}


def etcd_client(process: EtcdProcess) -> Any:
    """A plain aetcd client for ``process`` with the project's channel options."""
    return aetcd.Client(
        "127.0.0.1", process.client_port, timeout=2.0, options=dict(CHANNEL_OPTIONS)
    )


class Collector:
    """Drains an async iterator in a task, so a test can wait for items without cancelling
    the iterator; :meth:`close` ends it (and the iterator's own clean-up runs)."""

    def __init__(self, iterator: AsyncIterator[Any]) -> None:
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._iterator = iterator
        self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async for item in self._iterator:
                self.items.append(item)
                self._queue.put_nowait(item)
        except Exception as exc:
            self.error = exc
            self._queue.put_nowait(exc)

    async def take(self, count: int, timeout: float = 10.0) -> list[Any]:
        """The next ``count`` items; fails after ``timeout`` seconds or on the iterator's
        error."""
        taken: list[Any] = []
        async with asyncio.timeout(timeout):
            while len(taken) < count:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                taken.append(item)
        return taken

    async def failure(self, timeout: float = 10.0) -> BaseException:
        """Wait for the iterator to fail, skipping items; return its error."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    return item

    async def quiet(self, wait: float = 0.3) -> None:
        """Assert that no item arrives within ``wait`` seconds."""
        await asyncio.sleep(wait)
        assert self._queue.empty(), f"unexpected: {self._queue.get_nowait()!r}"

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()
