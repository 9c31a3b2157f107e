"""The Publisher against the real nginx origin, over real HTTP on 127.0.0.1.

Nothing is mocked. The origin is stopped and started for real (in a thread, as an operator's
restart is outside the encoder's loop); a dead origin is a free port with nothing listening.
The event loop's responsiveness is measured by a ticker task that sleeps 10 ms at a time and
records how late it wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshenc.local.origin import OriginProcess
from meshenc.local.ports import free_ports
from services.encoder.media import (
    PLAYLIST_NAME,
    SegmentFormat,
    SegmentWriter,
    segment_name,
)
from services.encoder.media.publish import OriginStats, Publisher, origin_url

from .frames import pattern_frames

pytestmark = pytest.mark.asyncio

TICK = 0.01
#: A generous bound on the loop's lag: a blocked loop would show seconds (timeouts, restarts).
MAX_LAG = 0.5


def fetch(url: str) -> bytes | None:
    """The object's bytes, or None if the origin has no such object."""
    try:
        with urllib.request.urlopen(url, timeout=5.0) as answer:
            return bytes(answer.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return None
        raise


async def served(url: str) -> bytes | None:
    return await asyncio.to_thread(fetch, url)


@contextlib.asynccontextmanager
async def ticker() -> AsyncIterator[list[float]]:
    """Record, for every 10 ms sleep, how late the loop woke up (seconds)."""
    lags: list[float] = []
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(TICK)
            lags.append(loop.time() - start - TICK)

    task = asyncio.create_task(tick())
    try:
        yield lags
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def accounted(stats: OriginStats) -> int:
    """Every object published to an origin ends in exactly one of these once all is sent."""
    return stats.put + stats.failed + stats.dropped + stats.skipped + stats.superseded


def playlist(segments: range) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1"]
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{segments.start}")
    for n in segments:
        lines += ["#EXTINF:0.100,", f"seg-{n:012d}.ts"]
    return ("\n".join(lines) + "\n").encode()


async def test_published_files_are_served_byte_for_byte(
    origin: OriginProcess, tmp_path: Path
) -> None:
    """publish(path, name) PUTs the file's bytes under the name, nested names included."""
    published: dict[str, bytes] = {}
    async with Publisher([origin.url + "/"]) as publisher:
        for i, name in enumerate(["seg-000000000001.ts", "live/ch1/seg-000000000002.ts"]):
            data = os.urandom(100_000 + i)
            path = tmp_path / f"file{i}"
            path.write_bytes(data)
            publisher.publish(path, name)
            published[name] = data
        assert await publisher.drain(10.0)
        assert publisher.put == 2
        assert (publisher.failed, publisher.dropped, publisher.retries) == (0, 0, 0)
    for name, data in published.items():
        assert await served(f"{origin.url}/{name}") == data


@pytest.mark.parametrize("segment_format", list(SegmentFormat))
async def test_two_encoders_segment_writers_publish_identical_files(
    origin: OriginProcess, tmp_path: Path, segment_format: SegmentFormat
) -> None:
    """Real segments (MPEG-TS, and CMAF with its init and MPD): two SegmentWriters fed the
    same encoded frames, each with a publisher, as the encoder uses them: the init, every
    written segment, then the manifests. The origin ends with exactly each encoder's files,
    byte for byte, and the playlist that maps the init was never held back."""
    params, frames = pattern_frames(gop=6, segments=5)
    writers = [SegmentWriter(tmp_path / name, params, fmt=segment_format) for name in "ab"]
    publishers = [Publisher([origin.url]) for _ in writers]

    def publish(writer: SegmentWriter, publisher: Publisher, written: list[Path]) -> None:
        for path in written:
            if writer.init_path is not None:
                publisher.publish(writer.init_path, writer.init_path.name)
            publisher.publish(path, path.name)
        if written:
            for manifest in writer.manifest_paths:
                publisher.publish(manifest, manifest.name)

    for frame in frames:
        for writer, publisher in zip(writers, publishers, strict=True):
            publish(writer, publisher, writer.add(frame))
        await asyncio.sleep(0)
    for writer, publisher in zip(writers, publishers, strict=True):
        publish(writer, publisher, writer.finish())
        assert await publisher.drain(20.0)
        await publisher.close()
        assert (publisher.failed, publisher.dropped, publisher.skipped) == (0, 0, 0)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    # Five segments and the playlist; CMAF adds its init and the MPD.
    assert len(names) == (6 if segment_format is SegmentFormat.TS else 8)
    assert names == sorted(p.name for p in origin.root.iterdir())
    for name in names:
        body = await served(f"{origin.url}/{name}")
        assert body == (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


async def test_an_encoder_that_shed_a_segment_publishes_the_same_window(
    origin: OriginProcess, tmp_path: Path
) -> None:
    """Two SegmentWriters fed the same real frames, as two holders of a rung; the second
    sheds its third segment (``stop``, as ``FramePipeline.shed`` does, and the frames of that
    segment never reach it). Each publishes its segments and then its playlist, the shedder
    last, as a lagging holder would. The origin's playlist is then the other's, byte for
    byte: the same media sequence and window, the shed segment listed (the other encoder put
    it) and not tagged a gap, where the shedder's own playlist tags it."""
    params, frames = pattern_frames(gop=3, segments=6)
    whole, shedder = (SegmentWriter(tmp_path / name, params) for name in ("whole", "shedder"))
    shed = params.segments.segment_of(frames[3 * 2].timecode)
    async with Publisher([origin.url]) as first, Publisher([origin.url]) as second:
        for frame in frames:
            segment = params.segments.segment_of(frame.timecode)
            for writer, publisher in ((whole, first), (shedder, second)):
                if writer is shedder and segment == shed:
                    if frame.timecode == params.segments.first_timecode(segment) + 1:
                        writer.stop(segment)  # shed mid-segment: its frames so far go
                    if frame.timecode > params.segments.first_timecode(segment):
                        continue
                for path in writer.add(frame):
                    publisher.publish(path, path.name)
                    publisher.publish(writer.playlist_path, PLAYLIST_NAME)
                assert await publisher.drain(10.0)
        assert (first.skipped, second.skipped) == (0, 0)
    assert shed in shedder.listed and shedder.listed == whole.listed
    own = (tmp_path / "shedder" / PLAYLIST_NAME).read_text()
    assert f"#EXT-X-GAP\n{segment_name(shed)}" in own
    assert not (tmp_path / "shedder" / segment_name(shed)).exists()
    served_playlist = await served(f"{origin.url}/{PLAYLIST_NAME}")
    assert served_playlist == (tmp_path / "whole" / PLAYLIST_NAME).read_bytes()


async def test_origin_restart_mid_run(origin: OriginProcess) -> None:
    """60 segments at 10/s, each followed by the playlist of the last 10; the origin goes down
    for 1.5 s after 2 s. The loop is never held up, nothing on the origin is partial or
    foreign, every object is accounted for, and objects published after the restart arrive."""
    publisher = Publisher(
        [origin.url], queue_limit=8, attempts=3, timeout=1.0, backoff=0.05, max_backoff=0.2,
        rng=random.Random(7),
    )  # fmt: skip
    segments: dict[str, bytes] = {}
    playlists: list[bytes] = []
    rng = random.Random(1)

    async def outage() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(origin.stop)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(origin.start)

    async with asyncio.timeout(40.0), ticker() as lags:
        restarting = asyncio.create_task(outage())
        for n in range(60):
            name = f"seg-{n:012d}.ts"
            segments[name] = rng.randbytes(rng.randrange(2_000, 60_000))
            publisher.publish_bytes(segments[name], name)
            playlists.append(playlist(range(max(0, n - 9), n + 1)))
            publisher.publish_bytes(playlists[-1], "index.m3u8")
            await asyncio.sleep(0.1)
        await restarting
        assert await publisher.drain(20.0)
        await publisher.close()

    assert max(lags) < MAX_LAG, f"the loop was held up for {max(lags):.3f} s"
    (stats,) = publisher.stats()
    assert accounted(stats) == 120
    assert stats.failed + stats.dropped > 0, "the outage cost nothing: was the origin down?"
    assert stats.retries > 0
    on_origin = {p.name for p in origin.root.iterdir()}
    assert on_origin <= set(segments) | {"index.m3u8"}, "a temp or foreign file on the origin"
    missing = 0
    for name, data in segments.items():
        body = await served(f"{origin.url}/{name}")
        assert body is None or body == data, f"{name} differs from what was published"
        missing += body is None
    assert 0 < missing <= stats.failed + stats.dropped
    # The newest objects, published well after the restart, are there, and so is the newest
    # playlist, every segment of which is on the origin.
    for n in range(50, 60):
        assert await served(f"{origin.url}/seg-{n:012d}.ts") == segments[f"seg-{n:012d}.ts"]
    assert await served(f"{origin.url}/index.m3u8") == playlists[-1]


async def test_a_dead_origin_only_costs_counted_losses(origin: OriginProcess) -> None:
    """Nothing listens on the second URL: its first object spends its tries, then the sender
    waits for the origin while objects queue up to the bound (the oldest dropped); close()
    drops the rest. The live origin gets everything and the loop is not held up."""
    (port,) = free_ports(1)
    dead = f"http://127.0.0.1:{port}"
    publisher = Publisher(
        [origin.url, dead], queue_limit=3, attempts=3, backoff=0.01, max_backoff=0.05,
        rng=random.Random(3),
    )  # fmt: skip
    async with asyncio.timeout(30.0), ticker() as lags:
        for n in range(5):
            publisher.publish_bytes(b"segment %d" % n, f"seg-{n:012d}.ts")
            await asyncio.sleep(0.05)
        while publisher.stats()[1].reachable:
            await asyncio.sleep(0.01)
        assert not await publisher.drain(0.3)
        await publisher.close(grace=0.1)
    assert max(lags) < MAX_LAG
    live, gone = publisher.stats()
    assert (live.put, live.failed, live.dropped, live.retries) == (5, 0, 0, 0)
    assert (gone.put, gone.failed, gone.dropped, gone.queued) == (0, 0, 5, 0)
    assert gone.retries == 2  # the first object's tries; then only probes until close
    assert gone.last_error is not None and "seg-000000000000.ts" in gone.last_error
    assert publisher.last_error is not None and publisher.last_error.startswith(dead)
    for n in range(5):
        assert await served(f"{origin.url}/seg-{n:012d}.ts") == b"segment %d" % n


async def test_an_origin_down_for_10_s_catches_up_on_what_is_queued(
    origin: OriginProcess,
) -> None:
    """4 segments/s for 14 s with the origin down from 1 s to 11 s and room for 20 in the
    queue: nothing is given up; the segments pushed out of the full queue are the only ones
    missing, and the newest ones of the outage, all later ones and the newest playlist are on
    the origin once it is back."""
    publisher = Publisher([origin.url], queue_limit=20, rng=random.Random(11))
    segments: dict[str, bytes] = {}
    playlists: list[bytes] = []
    rng = random.Random(2)
    down_from = up_from = 0

    async def outage() -> None:
        nonlocal down_from, up_from
        await asyncio.sleep(1.0)
        down_from = len(segments)
        await asyncio.to_thread(origin.stop)
        await asyncio.sleep(10.0)
        await asyncio.to_thread(origin.start)
        up_from = len(segments)

    async with asyncio.timeout(50.0), ticker() as lags:
        restarting = asyncio.create_task(outage())
        for n in range(56):
            name = f"seg-{n:012d}.ts"
            segments[name] = rng.randbytes(rng.randrange(2_000, 20_000))
            publisher.publish_bytes(segments[name], name)
            playlists.append(playlist(range(max(0, n - 9), n + 1)))
            publisher.publish_bytes(playlists[-1], "index.m3u8")
            await asyncio.sleep(0.25)
        await restarting
        assert await publisher.drain(20.0)
        await publisher.close()

    assert max(lags) < MAX_LAG, f"the loop was held up for {max(lags):.3f} s"
    (stats,) = publisher.stats()
    assert accounted(stats) == 112
    assert stats.failed == 0
    assert stats.dropped > 0
    missing = []
    for n, (name, data) in enumerate(segments.items()):
        body = await served(f"{origin.url}/{name}")
        assert body is None or body == data, f"{name} differs from what was published"
        if body is None:
            missing.append(n)
    # One run of segments, from the outage's start: the oldest pushed out of the full queue
    # while the sender waited for the origin. It probes with back-off (up to 2 s apart here),
    # so the queue still overflows for about that long (8 segments) after the origin is back;
    # the bound allows 3 s, for a busy machine.
    assert len(missing) == stats.dropped
    assert missing == list(range(missing[0], missing[-1] + 1))
    assert down_from - 2 <= missing[0] and missing[-1] <= up_from + 12 - 20, (down_from, up_from)
    assert await served(f"{origin.url}/index.m3u8") == playlists[-1]


async def test_a_full_queue_drops_the_oldest_and_publishing_never_waits() -> None:
    """1000 objects for a dead origin with room for 5: publish returns at once every time, the
    oldest are dropped and counted, and close() gives up the rest after its grace period."""
    (port,) = free_ports(1)
    publisher = Publisher([f"http://127.0.0.1:{port}"], queue_limit=5, attempts=2, backoff=0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(1000):
        publisher.publish_bytes(b"x" * 1000, f"seg-{n:012d}.ts")
    assert loop.time() - start < MAX_LAG
    (stats,) = publisher.stats()
    assert (stats.dropped, stats.queued) == (995, 5)
    await publisher.close(grace=0.2)
    (stats,) = publisher.stats()
    assert accounted(stats) == 1000
    assert stats.queued == 0
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish_bytes(b"x", "late.ts")


async def test_playlists_go_after_the_segments_they_list(origin: OriginProcess) -> None:
    """A playlist published before its segment still goes after it; one that lists a segment
    that is nowhere is not PUT; one listing a segment another encoder put goes out."""
    async with Publisher([origin.url]) as first, Publisher([origin.url]) as second:
        first.publish_bytes(playlist(range(1, 2)), "live/index.m3u8")
        first.publish_bytes(b"one", "live/seg-000000000001.ts")
        assert await first.drain(10.0)
        assert (first.put, first.skipped) == (2, 0)

        first.publish_bytes(playlist(range(1, 3)), "live/index.m3u8")  # segment 2: nowhere
        assert await first.drain(10.0)
        assert first.skipped == 1
        assert await served(f"{origin.url}/live/index.m3u8") == playlist(range(1, 2))

        second.publish_bytes(b"two", "live/seg-000000000002.ts")
        assert await second.drain(10.0)
        first.publish_bytes(playlist(range(1, 3)), "live/index.m3u8")  # found with HEAD
        assert await first.drain(10.0)
        assert (first.put, first.skipped) == (3, 1)
        assert await served(f"{origin.url}/live/index.m3u8") == playlist(range(1, 3))


async def test_publishers_of_one_playlist_move_it_forward_only(origin: OriginProcess) -> None:
    """Two publishers of one media playlist: one that just began (it lists one segment) puts
    the origin's window moved on by that segment, not that segment alone; one a segment
    behind puts nothing (counted as superseded), so the media sequence never goes back."""
    async with Publisher([origin.url]) as steady, Publisher([origin.url]) as other:
        for n in range(1, 12):
            steady.publish_bytes(b"x", f"live/seg-{n:012d}.ts")
        steady.publish_bytes(playlist(range(1, 11)), "live/index.m3u8")
        assert await steady.drain(10.0)

        other.publish_bytes(playlist(range(11, 12)), "live/index.m3u8")  # just began
        assert await other.drain(10.0)
        assert await served(f"{origin.url}/live/index.m3u8") == playlist(range(2, 12))

        other.publish_bytes(playlist(range(1, 11)), "live/index.m3u8")  # a segment behind
        assert await other.drain(10.0)
        assert await served(f"{origin.url}/live/index.m3u8") == playlist(range(2, 12))
        (stats,) = other.stats()
        assert (stats.put, stats.superseded, stats.skipped) == (1, 1, 0)


async def test_identical_names_from_several_encoders(origin: OriginProcess) -> None:
    """Three publishers PUT the same bytes under the same names at once: all accepted, the
    origin serves those bytes."""
    data = {f"seg-{n:012d}.ts": os.urandom(50_000) for n in range(10)}
    publishers = [Publisher([origin.url]) for _ in range(3)]
    for name, body in data.items():
        for publisher in publishers:
            publisher.publish_bytes(body, name)
    for publisher in publishers:
        assert await publisher.drain(20.0)
        await publisher.close()
        assert (publisher.put, publisher.failed) == (10, 0)
    for name, body in data.items():
        assert await served(f"{origin.url}/{name}") == body


async def test_an_unreadable_file_counts_as_failed(tmp_path: Path) -> None:
    async with Publisher(["http://127.0.0.1:9"]) as publisher:
        publisher.publish(tmp_path / "missing.ts", "missing.ts")
        assert publisher.failed == 1
        assert publisher.last_error is not None and "cannot read" in publisher.last_error


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://127.0.0.1/", "http:// or https://"),
        ("127.0.0.1:8080", "http:// or https://"),
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("http://127.0.0.1:8080/live?token=1", "query"),
        ("http://127.0.0.1:8080/live#x", "fragment"),
        ("http://user:secret@127.0.0.1/", "credentials"),
        ("http://127.0.0.1:99999/", "not a valid URL"),
        ("http://127.0.0.1:8080/live ch1", "spaces"),
    ],
)
async def test_bad_origin_urls_are_refused(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Publisher([url])


async def test_urls_and_names_checked() -> None:
    assert origin_url("https://origin.example/live/ch1/") == "https://origin.example/live/ch1"
    with pytest.raises(ValueError, match="more than once"):
        Publisher(["http://127.0.0.1:1", "http://127.0.0.1:1/"])
    with pytest.raises(ValueError, match="at least 1"):
        Publisher(["http://127.0.0.1:1"], queue_limit=0)
    async with Publisher(["http://127.0.0.1:1"]) as publisher:
        for name in ["", "/abs.ts", "../up.ts", "a//b.ts", "a/./b.ts", "a?b.ts", "a\\b.ts"]:
            with pytest.raises(ValueError, match="relative path"):
                publisher.publish_bytes(b"x", name)
        assert publisher.stats()[0].queued == 0
    async with Publisher([]) as nowhere:
        nowhere.publish_bytes(b"x", "seg.ts")
        assert await nowhere.drain(1.0)
        assert nowhere.stats() == ()
