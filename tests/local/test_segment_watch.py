"""The run's watch of a segment's leader key on a real etcd (``EtcdProcess``), through an
etcd restart: it picks up where it left off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from meshenc.local.etcd import EtcdProcess
from meshenc.local.segment import SegmentWatch
from services.common.etcd import EtcdSettings, connect_client
from services.encoder.leadership import SegmentKeys


def test_a_segment_watch_resumes_after_etcd_restarts(etcd: EtcdProcess) -> None:
    """A leader named before etcd stops and one named after it is back are both seen, the
    second from the revision after the first (nothing missed, nothing replayed twice)."""
    keys = SegmentKeys("/meshenc", "w1")
    settings = EtcdSettings(endpoints=(etcd.endpoint,))

    async def until(check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "not seen in time"
            await asyncio.sleep(0.05)

    async def put(client: Any, holder: str) -> None:
        value = json.dumps({"holder": holder}).encode()
        deadline = time.monotonic() + 15.0
        while True:  # the client may need a moment to find etcd again
            try:
                await client.put(keys.leader, value)
                return
            except Exception:
                assert time.monotonic() < deadline, "etcd did not come back"
                await asyncio.sleep(0.2)

    async def story() -> None:
        client = connect_client(settings)
        watch = SegmentWatch(keys)
        follower = asyncio.create_task(watch.follow_resuming(client, pause=0.2))
        try:
            await put(client, "a")
            await until(lambda: watch.leader == "a", 10.0)
            first = watch.revision
            await asyncio.to_thread(etcd.restart)
            await put(client, "b")
            await until(lambda: watch.leader == "b", 15.0)
            assert watch.revision > first
        finally:
            follower.cancel()
            with contextlib.suppress(BaseException):
                await follower
            await client.close()

    asyncio.run(asyncio.wait_for(story(), 60.0))
