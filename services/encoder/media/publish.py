"""Publishing an encoder's output to HTTP origins with PUT, never holding up encoding.

Theory of operation: ``publish(path, name)`` reads the file (whole, as the SegmentWriter's
atomic writes leave it) and queues its bytes for every origin; it never waits on the network.
Each origin has one sender task on the event loop, which PUTs one object at a time to
``ORIGIN/NAME``. Byte-identical segments under shared names make the PUT idempotent: several
encoders may publish the same name to the same origin.

Order, per origin:

- Segments (anything that is not a manifest) go out oldest first. Manifests (``.m3u8``,
  ``.mpd``) wait in a lane of their own and go out only when no segment is waiting, so a
  manifest is PUT after every segment published before it. A manifest published again under
  the same name before its previous version went out replaces it (counted as ``superseded``):
  after an outage one PUT of the newest playlist follows the segments, not one per version.
- An HLS playlist (``.m3u8``) is PUT only if every segment it lists is on that origin: PUT by
  this publisher, or else found there with a ``HEAD`` (another encoder may have put it).
  Otherwise it is not PUT (counted as ``skipped``): a player must never be sent to a segment
  that is not there. A later playlist whose segments are all there goes out as usual. A
  playlist that goes out has its ``EXT-X-GAP`` tags removed: they mark segments its encoder
  did not write under the shared name, and the origin has every one it lists, from the
  encoders that did (a segment under a shared name is the same bytes from any of them).
- A media playlist extends the origin's: the origin's version is read (``GET``) and what is
  PUT is that version with this one's newer segments appended (``hls.extend``), so that
  with several encoders publishing one playlist it neither jumps forward nor goes back; one
  that lists nothing newer than the origin's is not PUT (counted as ``superseded``).

Bounds: each lane holds at most ``queue_limit`` objects; publishing into a full lane drops its
oldest object (counted as ``dropped``), so a slow or dead origin costs memory of at most
``queue_limit`` objects per lane and never slows the caller. Each PUT has a ``timeout`` and an
object has at most ``attempts`` tries; a connection error, a timeout, 408, 425, 429 or 5xx is
retried after an exponential back-off with jitter (``services.common.retry``; counted as
``retries``); another 4xx, or the last failed try of an origin that answers, gives the object
up (``failed``).

An origin that cannot be reached (its last try was a connection error or a timeout) is down:
the object goes back to the head of its lane, once (its second round of tries is its last), and
the sender sends nothing more until a probe (``HEAD /``, back-off from ``backoff`` doubling to
``max_backoff``) gets any HTTP answer. Meanwhile objects queue up and the oldest are dropped.
So an origin down for 10 s and back catches up: what is still queued goes out in order, oldest
first, then the newest playlist; the segments pushed out of the full queue (the oldest of the
outage, and those published until the first probe that finds the origin back, at most
``max_backoff`` later) are skipped for good, and a playlist that lists one of them is not PUT.
Nothing is given up as ``failed`` by the outage itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import posixpath
import random
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from services.common.retry import Backoff
from services.encoder.media.hls import (
    MAX_PLAYLIST_BYTES,
    MediaPlaylist,
    extend,
    listed_names,
    without_gaps,
)

__all__ = ["OriginStats", "Publisher", "origin_url"]

log = logging.getLogger("meshenc.encoder.publish")

MANIFEST_SUFFIXES = frozenset({".m3u8", ".mpd"})
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".mpd": "application/dash+xml",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
}
#: Statuses worth another try: the origin is busy, restarting or timed out.
RETRIED_STATUSES = frozenset({408, 425, 429})
#: Names known to be on an origin, remembered for playlists' checks (oldest forgotten first).
CONFIRMED_NAMES = 4096
#: The shortest first wait before probing an origin that went down, seconds.
_MIN_PROBE_DELAY = 0.01


def origin_url(url: str) -> str:
    """Check an origin's base URL and return it without a trailing slash.

    Objects are PUT to ``URL/NAME``; the URL may carry a path (``http://origin/live/ch1``).

    Raises:
        ValueError: not http(s), no host, a bad port, a query, a fragment, credentials, or
            spaces or control characters.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        raise ValueError(f"origin URL {url!r} is not a valid URL: {exc}") from None
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError(f"origin URL {url!r} must not contain spaces or control characters")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"origin URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"origin URL {url!r} has no host")
    if parts.query or "?" in url:
        raise ValueError(f"origin URL {url!r} must not have a query: objects go to URL/NAME")
    if parts.fragment or "#" in url:
        raise ValueError(f"origin URL {url!r} must not have a fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"origin URL {url!r} must not carry credentials")
    return url.rstrip("/")


def _check_name(name: str) -> None:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or any(ch in "\\?#" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
    ):
        raise ValueError(
            f"object name {name!r} must be a relative path (a/b/seg.ts) without empty, '.' or "
            "'..' parts, backslashes, '?', '#' or control characters"
        )


def _is_manifest(name: str) -> bool:
    return posixpath.splitext(name)[1] in MANIFEST_SUFFIXES


@dataclasses.dataclass(frozen=True, slots=True)
class OriginStats:
    """What happened to the objects published to one origin so far."""

    url: str
    put: int
    """Objects the origin accepted (2xx)."""
    failed: int
    """Objects given up: a refusal, or every try failed."""
    dropped: int
    """Objects pushed out of a full queue (or left queued at close) without a try."""
    skipped: int
    """Playlists not PUT because a segment they list is not on the origin."""
    superseded: int
    """Manifest versions replaced by a newer one under the same name before they went out,
    and playlists that listed nothing newer than the origin's."""
    retries: int
    """Tries after the first, over all objects."""
    queued: int
    """Objects waiting now (not counting the one being sent)."""
    reachable: bool
    """False from a try that could not reach the origin until a probe gets an HTTP answer."""
    last_error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Object:
    name: str
    data: bytes
    #: Put back once already, after its tries found the origin unreachable.
    requeued: bool = False


class _Origin:
    """One origin's lanes, counters and sender."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.segments: deque[_Object] = deque()
        self.manifests: OrderedDict[str, _Object] = OrderedDict()
        self.confirmed: OrderedDict[str, None] = OrderedDict()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.reachable = True
        self.failing = False
        self.put = self.failed = self.dropped = self.skipped = 0
        self.superseded = self.retries = 0
        self.last_error: str | None = None

    def queued(self) -> int:
        return len(self.segments) + len(self.manifests)

    def next(self) -> _Object | None:
        if self.segments:
            return self.segments.popleft()
        if self.manifests:
            return self.manifests.popitem(last=False)[1]
        return None

    def requeue(self, item: _Object, queue_limit: int) -> None:
        """Put ``item`` back at the head of its lane, as its oldest object."""
        if _is_manifest(item.name):
            if item.name in self.manifests:  # a newer version is already waiting
                self.superseded += 1
                return
            self.manifests[item.name] = item
            self.manifests.move_to_end(item.name, last=False)
            if len(self.manifests) > queue_limit:
                self.manifests.popitem(last=False)
                self.dropped += 1
        else:
            self.segments.appendleft(item)
            if len(self.segments) > queue_limit:
                self.segments.popleft()
                self.dropped += 1

    def confirm(self, name: str) -> None:
        self.confirmed[name] = None
        self.confirmed.move_to_end(name)
        while len(self.confirmed) > CONFIRMED_NAMES:
            self.confirmed.popitem(last=False)

    def stats(self) -> OriginStats:
        return OriginStats(
            url=self.url,
            put=self.put,
            failed=self.failed,
            dropped=self.dropped,
            skipped=self.skipped,
            superseded=self.superseded,
            retries=self.retries,
            queued=self.queued(),
            reachable=self.reachable,
            last_error=self.last_error,
        )


class Publisher:
    """PUTs published objects to every origin, in the background of the caller's event loop.

    Create it and call :meth:`publish` from inside the running loop that sends (the senders
    start with the first object); end with ``await close()``, or use ``async with``.

    Args:
        origins: base URLs (``--publish URL``); objects go to ``URL/NAME``. None given:
            publishing does nothing.
        queue_limit: objects waiting per origin and lane before the oldest is dropped.
        attempts: tries per object and origin (1: no retry); an object whose tries found the
            origin unreachable gets one more round once the origin answers again.
        timeout: seconds for one request, connection included.
        backoff: the first retry's delay in seconds, doubled for each further one (up to
            ``max_backoff``); each delay is drawn between half and all of that (jitter).
        rng: the jitter's random source (seed it in tests).

    Raises:
        ValueError: a bad or repeated origin URL, or a bound that is not positive.
    """

    def __init__(
        self,
        origins: Sequence[str],
        *,
        queue_limit: int = 32,
        attempts: int = 4,
        timeout: float = 5.0,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if queue_limit < 1 or attempts < 1:
            raise ValueError(
                f"queue_limit and attempts must be at least 1, got {queue_limit} and {attempts}"
            )
        if timeout <= 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError(
                f"need timeout > 0 and 0 <= backoff <= max_backoff, got {timeout}, {backoff}, "
                f"{max_backoff}"
            )
        urls = [origin_url(url) for url in origins]
        for url in urls:
            if urls.count(url) > 1:
                raise ValueError(f"origin URL {url!r} is given more than once")
        self._origins = [_Origin(url) for url in urls]
        self._queue_limit = queue_limit
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._backoff = Backoff(backoff, max_backoff, jitter=0.0, spread=0.5)
        self._probe_backoff = Backoff(
            max(backoff, _MIN_PROBE_DELAY), max(max_backoff, _MIN_PROBE_DELAY), 0.0, 0.5
        )
        self._rng = rng if rng is not None else random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(origin.url for origin in self._origins)

    def publish(self, path: Path, name: str) -> None:
        """Queue the file at ``path`` (read now, whole) for every origin, as ``name``.

        Never waits on the network. A file that cannot be read counts as failed on every origin.

        Raises:
            ValueError: ``name`` is not a clean relative path.
            RuntimeError: the publisher is closed.
        """
        _check_name(name)
        if self._closing:
            raise RuntimeError("the publisher is closed")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            for origin in self._origins:
                origin.failed += 1
                origin.last_error = f"{name}: cannot read {path}: {exc}"
            log.warning("not publishing %s: cannot read %s: %s", name, path, exc)
            return
        self.publish_bytes(data, name)

    def publish_bytes(self, data: bytes, name: str) -> None:
        """Queue ``data`` for every origin as ``name``; never waits (see :meth:`publish`)."""
        _check_name(name)
        if self._closing:
            raise RuntimeError("the publisher is closed")
        item = _Object(name, bytes(data))
        for origin in self._origins:
            if _is_manifest(name):
                if origin.manifests.pop(name, None) is not None:
                    origin.superseded += 1
                origin.manifests[name] = item
                lane_full = len(origin.manifests) > self._queue_limit
                if lane_full:
                    origin.manifests.popitem(last=False)
            else:
                origin.segments.append(item)
                lane_full = len(origin.segments) > self._queue_limit
                if lane_full:
                    origin.segments.popleft()
            if lane_full:
                origin.dropped += 1
            origin.idle.clear()
            origin.wake.set()
            if origin.task is None:
                origin.task = asyncio.get_running_loop().create_task(
                    self._send_all(origin), name=f"publish to {origin.url}"
                )

    def stats(self) -> tuple[OriginStats, ...]:
        """Counters per origin, in the order the origins were given."""
        return tuple(origin.stats() for origin in self._origins)

    @property
    def put(self) -> int:
        return sum(origin.put for origin in self._origins)

    @property
    def failed(self) -> int:
        return sum(origin.failed for origin in self._origins)

    @property
    def dropped(self) -> int:
        return sum(origin.dropped for origin in self._origins)

    @property
    def skipped(self) -> int:
        return sum(origin.skipped for origin in self._origins)

    @property
    def retries(self) -> int:
        return sum(origin.retries for origin in self._origins)

    @property
    def last_error(self) -> str | None:
        """The most recent error of any origin, prefixed with its URL."""
        errors = [f"{o.url}: {o.last_error}" for o in self._origins if o.last_error]
        return errors[-1] if errors else None

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or being sent; False if ``timeout`` s passed first."""
        waits = [origin.idle.wait() for origin in self._origins]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return True

    async def close(self, grace: float = 5.0) -> None:
        """Refuse new objects, send what is queued for up to ``grace`` seconds, then stop.

        Objects still queued after the grace period count as dropped; the one being sent then
        is abandoned (its PUT is cancelled; the origin keeps nothing partial).
        """
        self._closing = True
        for origin in self._origins:
            origin.wake.set()
        tasks = [origin.task for origin in self._origins if origin.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for origin in self._origins:
            origin.dropped += origin.queued()
            origin.segments.clear()
            origin.manifests.clear()
            origin.idle.set()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _send_all(self, origin: _Origin) -> None:
        """The origin's sender: one object at a time, for as long as the publisher is open."""
        while True:
            if not origin.reachable:
                await self._await_origin(origin)
            item = origin.next()
            if item is None:
                origin.idle.set()
                if self._closing:
                    return
                origin.wake.clear()
                await origin.wake.wait()
                continue
            try:
                await self._send(origin, item)
            except asyncio.CancelledError:
                origin.dropped += 1  # abandoned at close
                raise
            except Exception as exc:  # a bug here must not end this origin's sender
                origin.failed += 1
                origin.last_error = f"PUT {item.name}: {type(exc).__name__}: {exc}"
                log.exception("publishing %s to %s failed unexpectedly", item.name, origin.url)

    async def _send(self, origin: _Origin, item: _Object) -> None:
        data = item.data
        if item.name.endswith(".m3u8"):
            missing = await self._missing(origin, item)
            if missing is not None:
                origin.skipped += 1
                origin.last_error = f"{item.name}: not PUT, it lists {missing}, not on the origin"
                return
            extended = await self._extended(origin, item.name, without_gaps(data))
            if extended is None:  # the origin's lists all this one does, and more
                origin.superseded += 1
                return
            data = extended
        url = f"{origin.url}/{urllib.parse.quote(item.name)}"
        headers = {
            "Content-Type": CONTENT_TYPES.get(
                posixpath.splitext(item.name)[1], "application/octet-stream"
            )
        }
        error = ""
        unreachable = False
        for attempt in range(self._attempts):
            if attempt:
                origin.retries += 1
                await asyncio.sleep(self._backoff.delay(attempt, self._rng))
            try:
                async with self._client().put(url, data=data, headers=headers) as answer:
                    unreachable = False
                    if 200 <= answer.status < 300:
                        origin.put += 1
                        origin.confirm(item.name)
                        if origin.failing:
                            origin.failing = False
                            log.info("origin %s accepts objects again", origin.url)
                        return
                    error = f"HTTP {answer.status} {answer.reason}"
                    if answer.status < 500 and answer.status not in RETRIED_STATUSES:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                unreachable = True
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        origin.last_error = f"PUT {item.name}: {error}"
        if not origin.failing:
            origin.failing = True
            log.warning("origin %s: PUT %s failed: %s", origin.url, item.name, error)
        if unreachable and not item.requeued:
            # The origin is down, not refusing: keep the object for when it is back.
            origin.reachable = False
            origin.requeue(dataclasses.replace(item, requeued=True), self._queue_limit)
        else:
            origin.failed += 1

    async def _await_origin(self, origin: _Origin) -> None:
        """Probe the origin with back-off until it gives any HTTP answer."""
        probes = 0
        while True:
            probes += 1
            await asyncio.sleep(self._probe_backoff.delay(probes, self._rng))
            try:
                async with self._client().head(f"{origin.url}/"):
                    break
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
        origin.reachable = True
        log.info("origin %s answers again; sending %d queued objects", origin.url, origin.queued())

    async def _extended(self, origin: _Origin, name: str, data: bytes) -> bytes | None:
        """What to PUT for the playlist ``data``: a media playlist extends the origin's
        version (:func:`extend`), read first; a master goes as it is."""
        mine = MediaPlaylist.parse(data)
        if mine is None:
            return data
        return extend(await self._current(origin, name), mine)

    async def _current(self, origin: _Origin, name: str) -> bytes | None:
        """The origin's version of a playlist; None when it has none, or when it cannot be
        read (the PUT that follows finds out why)."""
        url = f"{origin.url}/{urllib.parse.quote(name)}"
        try:
            async with self._client().get(url) as answer:
                if answer.status != 200 or (answer.content_length or 0) > MAX_PLAYLIST_BYTES:
                    return None
                data = bytearray()
                async for chunk in answer.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_PLAYLIST_BYTES:
                        return None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        return bytes(data)

    async def _missing(self, origin: _Origin, item: _Object) -> str | None:
        """The first name the playlist lists that is not on the origin, or None."""
        for name in listed_names(item.name, item.data):
            if name in origin.confirmed:
                continue
            url = f"{origin.url}/{urllib.parse.quote(name)}"
            try:
                async with self._client().head(url) as answer:
                    found = 200 <= answer.status < 300
            except (aiohttp.ClientError, TimeoutError, OSError):
                found = False
            if not found:
                return name
            origin.confirm(name)
        return None
