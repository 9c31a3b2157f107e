"""The running source: a producer thread, a sending loop and one socket per destination.

The producer (:class:`~services.source.media.LiveStream`) encodes at most :data:`LEAD`
seconds ahead of real time and queues datagrams stamped with stream times. The sending loop,
in the caller's thread, maps stream time to the monotonic clock (``t0 + t``), runs each
destination's :class:`~services.source.path.DelayLine` (and RTP framing) as a datagram is
queued, keeps every copy on one heap ordered by due time, and sends each when it is due on a
non-blocking socket: a destination that cannot take a datagram loses it (counted), and never
holds up the others or the timeline. ``stop`` (set by SIGTERM/SIGINT in the command) ends both
within a frame; without it the run ends when the input does and the last delayed datagram
has left.
"""

from __future__ import annotations

import heapq
import logging
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.source.media import (
    FileInput,
    LiveStream,
    PatternInput,
    StreamFormat,
    StreamStats,
)
from services.source.pacing import Datagram
from services.source.path import DelayLine, Destination, Scheme
from services.source.rtp import RtpFramer

__all__ = ["LEAD", "DestinationStats", "SourceError", "SourceSettings", "SourceStats", "run_source"]

log = logging.getLogger(__name__)

#: How far ahead of real time the producer may run: enough to ride out a slow frame (an
#: I-frame, a file's open at a loop), short enough to stop promptly.
LEAD = 0.5
#: Time between starting and the first frame's send time: the encoder opens meanwhile.
PRESTART = 0.3
#: Socket send buffer per destination.
SEND_BUFFER = 1 << 20
#: Lateness histogram: 0.1 ms buckets up to 100 ms.
_BUCKET_MS = 0.1
_BUCKETS = 1000


class SourceError(Exception):
    """The source cannot start: a destination cannot be resolved or a socket opened."""


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """One run: the input (None: the test pattern), the stream and where it goes."""

    input: Path | None
    fmt: StreamFormat
    destinations: tuple[Destination, ...]
    loop: bool = False
    duration: float | None = None

    def __post_init__(self) -> None:
        if not self.destinations:
            raise ValueError("at least one destination (--to) is needed")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration}")


@dataclass(frozen=True, slots=True)
class DestinationStats:
    """One destination: datagrams sent, lost by its path model, dropped by a full socket."""

    destination: str
    sent: int
    lost: int
    dropped: int


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A run's account: frames and loops made, each destination's datagrams, send lateness."""

    frames: int
    loops: int
    datagrams: int
    destinations: tuple[DestinationStats, ...]
    late_p99_ms: float
    late_max_ms: float


class _Path:
    """One destination: its socket, address, delay line, RTP framer and counters."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        rng = random.Random(destination.params.seed)
        self.line = DelayLine(destination.params, rng)
        self.framer = RtpFramer(rng) if destination.scheme is Scheme.RTP else None
        self.sent = self.lost = self.dropped = 0
        self.socket, self.address = _open_socket(destination)

    def stats(self) -> DestinationStats:
        return DestinationStats(str(self.destination), self.sent, self.lost, self.dropped)


def _open_socket(destination: Destination) -> tuple[socket.socket, tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(
            destination.host, destination.port, socket.AF_INET, socket.SOCK_DGRAM
        )
    except OSError as exc:
        raise SourceError(f"{destination}: cannot resolve {destination.host!r}: {exc}") from exc
    address = infos[0][4]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if destination.multicast:
            if destination.localaddr:
                sock.setsockopt(
                    socket.IPPROTO_IP,
                    socket.IP_MULTICAST_IF,
                    socket.inet_aton(destination.localaddr),
                )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, destination.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        elif destination.localaddr:
            sock.bind((destination.localaddr, 0))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SourceError(f"{destination}: cannot open a socket: {exc}") from exc
    return sock, (str(address[0]), int(address[1]))


class _Lateness:
    """How late datagrams left against their due time: a histogram and the maximum."""

    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS + 1)
        self.total = 0
        self.max_ms = 0.0

    def add(self, late_s: float) -> None:
        ms = max(0.0, late_s * 1000)
        self.counts[min(_BUCKETS, int(ms / _BUCKET_MS))] += 1
        self.total += 1
        self.max_ms = max(self.max_ms, ms)

    def percentile(self, q: float) -> float:
        """The upper edge of the bucket holding the ``q`` quantile (ms)."""
        if not self.total:
            return 0.0
        rank = q * self.total
        seen = 0
        for bucket, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return (bucket + 1) * _BUCKET_MS
        return self.max_ms


def run_source(settings: SourceSettings, stop: threading.Event) -> SourceStats:
    """Play the input to every destination until it ends or ``stop`` is set.

    Raises:
        SourceError: a destination cannot be resolved or its socket opened.
        MediaError: the input cannot be read (the producer's error, raised here).
    """
    paths = []
    try:
        for destination in settings.destinations:
            paths.append(_Path(destination))
        return _run(settings, paths, stop)
    finally:
        for path in paths:
            path.socket.close()


def _run(settings: SourceSettings, paths: list[_Path], stop: threading.Event) -> SourceStats:
    source = FileInput(settings.input) if settings.input is not None else PatternInput()
    made: queue.SimpleQueue[Datagram | None] = queue.SimpleQueue()
    stream = LiveStream(
        source, settings.fmt, made.put, loop=settings.loop, duration=settings.duration
    )
    t0 = time.monotonic() + PRESTART

    halt = threading.Event()  # the sending loop is done: the producer stops too

    def pace(stream_time: float) -> bool:
        wait = t0 + stream_time - LEAD - time.monotonic()
        if halt.is_set() or (wait > 0 and stop.wait(wait)):
            return False
        return not stop.is_set()

    results: list[StreamStats] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            results.append(stream.run(pace))
        except BaseException as exc:  # raised again in the caller's thread below
            errors.append(exc)
        finally:
            made.put(None)

    producer = threading.Thread(target=produce, name="source-producer", daemon=True)
    producer.start()
    lateness = _Lateness()
    try:
        _send_loop(paths, made, t0, stop, lateness)
    finally:
        halt.set()
        producer.join(timeout=10)
    if errors:
        raise errors[0]
    made_stats = results[0] if results else StreamStats(0, 0, 0)
    return SourceStats(
        frames=made_stats.frames,
        loops=made_stats.loops,
        datagrams=made_stats.datagrams,
        destinations=tuple(path.stats() for path in paths),
        late_p99_ms=lateness.percentile(0.99),
        late_max_ms=lateness.max_ms,
    )


def _send_loop(
    paths: list[_Path],
    made: queue.SimpleQueue[Datagram | None],
    t0: float,
    stop: threading.Event,
    lateness: _Lateness,
) -> None:
    """Route datagrams through each path and send each copy when due, until done or stopped."""
    heap: list[tuple[float, int, int, bytes]] = []
    order = 0
    producing = True
    while not stop.is_set():
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            due, _, index, payload = heapq.heappop(heap)
            path = paths[index]
            try:
                path.socket.sendto(payload, path.address)
                path.sent += 1
            except BlockingIOError:
                path.dropped += 1
            except OSError as exc:
                if not path.dropped:
                    log.warning("%s: send failed: %s", path.destination, exc)
                path.dropped += 1
            lateness.add(time.monotonic() - due)
        if not producing and not heap:
            return
        timeout = min(0.1, heap[0][0] - time.monotonic()) if heap else 0.1
        try:
            datagram = made.get(timeout=max(0.0, timeout)) if timeout > 0 else made.get_nowait()
        except queue.Empty:
            continue
        while True:
            if datagram is None:
                producing = False
            else:
                for index, path in enumerate(paths):
                    arrival = path.line.due(datagram.due)
                    payload = datagram.payload
                    if path.framer is not None:  # before the loss: gaps show the path's losses
                        payload = path.framer.frame(payload, datagram.due)
                    if arrival is None:
                        path.lost += 1
                        continue
                    heapq.heappush(heap, (t0 + arrival, order, index, payload))
                    order += 1
            try:
                datagram = made.get_nowait()
            except queue.Empty:
                break
