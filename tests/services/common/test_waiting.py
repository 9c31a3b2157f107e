"""``wait_until_set``: a timed wait whose task can always be cancelled."""

from __future__ import annotations

import asyncio

from services.common.waiting import wait_until_set


def test_it_says_whether_the_event_came_in_time() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        missed = await wait_until_set(event, 0.01)
        asyncio.get_running_loop().call_later(0.01, event.set)
        return missed, await wait_until_set(event, 5.0)

    assert asyncio.run(asyncio.wait_for(scenario(), 10.0)) == (False, True)


def test_a_loop_cancelled_as_its_event_is_set_ends() -> None:
    """The event set and the task cancelled in the same turn of the loop: the cancellation
    must reach the loop (with ``asyncio.wait_for`` in place of it, it is lost and the loop
    runs on; checked)."""

    async def ticks(event: asyncio.Event, counted: list[int]) -> None:
        while True:
            await wait_until_set(event, 10.0)
            event.clear()
            counted.append(1)

    async def scenario() -> tuple[bool, bool]:
        event, counted = asyncio.Event(), list[int]()
        task = asyncio.create_task(ticks(event, counted))
        await asyncio.sleep(0.01)  # the loop waits on the event now
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:
            task.cancel()  # a second cancellation reaches it: the test fails, not hangs
            await asyncio.wait({task}, timeout=1.0)
        return bool(done), task.cancelled()

    assert asyncio.run(asyncio.wait_for(scenario(), 10.0)) == (True, True)
