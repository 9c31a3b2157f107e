"""The ingest thread's hand-over to the event loop: every item arrives, in order, and audio
packets wait for the next picture so that they wake the loop with it rather than on their
own (a real event loop, a real thread; the loop's ``call_soon_threadsafe`` is counted)."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

from meshenc.core.timecode import FrameRate
from services.encoder.media import SyntheticSource, VideoFormat
from services.encoder.media.ingest import Ingested, IngestedAudio, IngestedPicture
from services.encoder.runtime import AUDIO_HELD, HandOver

BASE = Fraction(1, 90_000)
PICTURE = SyntheticSource(VideoFormat(32, 32, FrameRate(30))).picture(0)


def _picture(pts: int) -> IngestedPicture:
    return IngestedPicture(float(pts), PICTURE, pts, BASE)


def _audio(pts: int) -> IngestedAudio:
    return IngestedAudio("aac", 48_000, pts, BASE, b"")


def test_audio_waits_for_the_next_picture_and_goes_with_it_in_one_wake_up() -> None:
    items: list[Ingested] = [
        _audio(10),
        _audio(11),
        _picture(1),
        _picture(2),
        *(_audio(20 + i) for i in range(AUDIO_HELD)),  # no picture comes: they go on their own
        _audio(40),  # still held when the test looks
    ]

    async def scenario() -> tuple[list[int], list[Ingested]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Ingested] = asyncio.Queue()
        calls: list[int] = []
        real = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any) -> Any:
            if getattr(callback, "__name__", "") == "_queue_all":  # not the executor's own
                calls.append(len(args[1]))
            return real(callback, *args)

        loop.call_soon_threadsafe = counted  # type: ignore[assignment]
        hand_over = HandOver(loop, queue)

        def ingest() -> None:
            for item in items:
                hand_over(item)

        await asyncio.to_thread(ingest)
        await asyncio.sleep(0)
        return calls, [queue.get_nowait() for _ in range(queue.qsize())]

    calls, queued = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert calls == [3, 1, AUDIO_HELD]
    assert len(queued) == len(items) - 1
    assert all(got is sent for got, sent in zip(queued, items, strict=False))
