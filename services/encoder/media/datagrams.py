"""MPEG-TS over UDP or RTP, received by the encoder itself: arrival stamps at the socket.

Theory of operation: for ``udp://`` and ``rtp://`` inputs the encoder does not let FFmpeg open
the socket. It binds it itself (joining the group for a multicast address) and reads every
datagram with the time the kernel received it (``SO_TIMESTAMPNS``), so a picture's arrival is
the moment its first datagram reached the host — before any demuxing or decoding, without
waiting for the next picture to close the PES, and however late the socket was read: a thread
waits for the GIL, and a process starved of CPU reads what came meanwhile all at once (stamped
when read, those pictures were as late as the starvation was long). The kernel's time is taken
onto the encoder's clock as that clock's reading now, less the datagram's age. Where the
kernel gives no time (another OS or architecture, or ``kernel_times=False``), the clock is
read when the datagram is read; so does Linux itself for a datagram that came in the moment
after the first socket on the machine asked for receive times, before it turned them on.

The demuxer reads the socket itself, through ``DatagramPipe``: a file-like object whose read
receives the next datagram when nothing of the last one is left, blocking until one comes. Each
datagram is scanned for the start of a video PES (``payload_unit_start_indicator``, stream id
0xE0-0xEF), whose 33-bit PTS is remembered with that arrival (``Arrivals``) before the bytes
(RTP headers removed) go to PyAV. One thread receives, scans and demuxes: a datagram wakes one
thread once, where a receiver thread of its own handing the bytes over to the demuxer's woke two
(and made them take the GIL in turn) for every datagram. While the demuxer is busy, datagrams
wait in the socket's receive buffer (``RECEIVE_BUFFER``), stamped by the kernel as they came. A
stalled input therefore never times the demuxer out and never forces a reopen with its probing:
when datagrams flow again, demuxing simply continues.

What the receive buffer could not hold the kernel drops, and says so: with ``SO_RXQ_OVFL``
every datagram carries the socket's count of drops so far, kept as ``dropped``.

Invariants: bytes reach PyAV in arrival order, exactly as received minus RTP headers; a read
returns b"" (the end of the stream) only once the input is stopped or its socket failed.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import platform
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ANCILLARY_SPACE",
    "SO_RXQ_OVFL",
    "SO_TIMESTAMPNS",
    "STAMP_SPACE",
    "Arrivals",
    "DatagramInput",
    "DatagramPipe",
    "InputAddress",
    "kernel_drops",
    "kernel_time",
    "video_pes_starts",
]

#: The socket's receive buffer: what waits while the demuxer decodes (about 2 s of a 16 Mbit/s
#: stream; the kernel caps it at its ``rmem_max``).
RECEIVE_BUFFER = 4 << 20
#: Seconds a blocked receive waits before the reader looks at the stop flag again.
POLL = 0.2
#: Linux's ``SO_TIMESTAMPNS`` (and ``SCM_TIMESTAMPNS``), which Python does not name: each
#: datagram's receive time as a ``struct timespec`` of CLOCK_REALTIME, in its ancillary data.
#: The value of x86 and of the generic ABI; a few architectures (MIPS, SPARC, PA-RISC, Alpha)
#: number it otherwise, so it is asked for only on those of ``KERNEL_TIMES_MACHINES``.
SO_TIMESTAMPNS = 35
#: Linux's ``SO_RXQ_OVFL``: each datagram's ancillary data carries the socket's count of
#: datagrams dropped so far (a full receive buffer), a 32-bit unsigned int. Numbered as
#: ``SO_TIMESTAMPNS`` is, by the generic ABI.
SO_RXQ_OVFL = 40
KERNEL_TIMES_MACHINES = frozenset({"x86_64", "i686", "i386", "aarch64", "armv7l", "riscv64"})
_TIMESPEC = struct.Struct("@qq")
_DROPS = struct.Struct("@I")
#: The oldest kernel time taken (s): anything older is a wall clock that stepped, and the
#: datagram is stamped when it is read. The receive buffer holds about 2 s of a fast stream.
MAX_STAMP_AGE = 10.0
TS_PACKET = 188
_PTS_MASK = (1 << 33) - 1


class InputAddressError(ValueError):
    """A udp:// or rtp:// URL that cannot be received."""


@dataclass(frozen=True, slots=True)
class InputAddress:
    """Where to receive: ``udp://HOST:PORT`` or ``rtp://HOST:PORT`` (``@`` or empty: any)."""

    scheme: str
    host: str
    port: int
    multicast: bool
    interface: str

    @classmethod
    def parse(cls, url: str) -> InputAddress:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("udp", "rtp"):
            raise InputAddressError(f"not a udp:// or rtp:// URL: {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise InputAddressError(f"bad port in {url!r}") from exc
        if not port:
            raise InputAddressError(f"{url!r} names no port")
        host = (parts.hostname or "").strip("@") or "0.0.0.0"
        try:
            multicast = ipaddress.ip_address(host).is_multicast
        except ValueError as exc:
            raise InputAddressError(f"{url!r}: the host must be an IPv4 address") from exc
        query = parse_qs(parts.query)
        interface = query.get("localaddr", ["0.0.0.0"])[0]
        return cls(scheme, host, port, multicast, interface)


class Arrivals:
    """Arrival times of video PES starts, by 33-bit PTS (the newest ``capacity`` of them)."""

    def __init__(self, capacity: int = 256) -> None:
        self._times: OrderedDict[int, float] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, pts: int, at: float) -> None:
        with self._lock:
            times = self._times
            times.setdefault(pts & _PTS_MASK, at)
            while len(times) > self._capacity:
                times.popitem(last=False)

    def take(self, pts: int) -> float | None:
        """The arrival of the PES with this PTS (once), or None if it was not seen."""
        with self._lock:
            return self._times.pop(pts & _PTS_MASK, None)


#: The ancillary buffer ``recvmsg`` needs for one ``SCM_TIMESTAMPNS``.
STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
#: ... and for the drop count of ``SO_RXQ_OVFL`` beside it.
ANCILLARY_SPACE = STAMP_SPACE + socket.CMSG_SPACE(_DROPS.size)


def _socket_message(
    cmsgs: list[tuple[int, int, bytes]], kind: int, layout: struct.Struct
) -> tuple[int, ...] | None:
    """The values of the ``SOL_SOCKET`` ancillary message ``kind``, or None without one."""
    for level, found, data in cmsgs:
        if level == socket.SOL_SOCKET and found == kind and len(data) >= layout.size:
            return layout.unpack_from(data)
    return None


def kernel_time(cmsgs: list[tuple[int, int, bytes]]) -> float | None:
    """When the kernel received the datagram (CLOCK_REALTIME seconds), from its
    ``SCM_TIMESTAMPNS``; None without one (the socket did not ask for ``SO_TIMESTAMPNS``)."""
    stamp = _socket_message(cmsgs, SO_TIMESTAMPNS, _TIMESPEC)
    return None if stamp is None else float(stamp[0] + stamp[1] * 1e-9)


def kernel_drops(cmsgs: list[tuple[int, int, bytes]]) -> int | None:
    """The socket's count of datagrams dropped so far, from ``SO_RXQ_OVFL`` ancillary data;
    None without it (not asked for, or none dropped yet)."""
    drops = _socket_message(cmsgs, SO_RXQ_OVFL, _DROPS)
    return None if drops is None else drops[0]


def _age(cmsgs: list[tuple[int, int, bytes]], now: float) -> float:
    """Seconds since the kernel received the datagram (``now`` on CLOCK_REALTIME), from its
    ``SCM_TIMESTAMPNS``; 0 without one, or when it is not within ``MAX_STAMP_AGE`` of now."""
    received = kernel_time(cmsgs)
    if received is None:
        return 0.0
    age = now - received
    return age if 0.0 <= age <= MAX_STAMP_AGE else 0.0


def video_pes_starts(payload: bytes) -> list[int]:
    """The PTS of every video PES that starts in these TS packets (malformed ones skipped)."""
    found = []
    for offset in range(0, len(payload) - TS_PACKET + 1, TS_PACKET):
        if payload[offset] != 0x47 or not payload[offset + 1] & 0x40:
            continue  # no sync, or no payload unit start
        control = (payload[offset + 3] >> 4) & 0x3
        start = offset + 4
        if control == 0x3:  # an adaptation field before the payload
            start += 1 + payload[offset + 4]
        elif control != 0x1:
            continue
        pes = payload[start : offset + TS_PACKET]
        if len(pes) < 14 or pes[:3] != b"\x00\x00\x01" or not 0xE0 <= pes[3] <= 0xEF:
            continue
        if not pes[7] & 0x80:
            continue  # no PTS
        b = pes[9:14]
        pts = ((b[0] >> 1) & 0x07) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | (b[4] >> 1)
        found.append(pts)
    return found


def _rtp_payload(datagram: bytes) -> bytes | None:
    """The payload of an RTP packet (RFC 3550), or None when it is not one."""
    if len(datagram) < 12 or datagram[0] >> 6 != 2:
        return None
    start = 12 + 4 * (datagram[0] & 0x0F)
    if datagram[0] & 0x10:  # a header extension
        if len(datagram) < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from("!H", datagram, start + 2)[0]
    end = len(datagram)
    if datagram[0] & 0x20:  # padding
        end -= datagram[-1]
    return datagram[start:end] if start <= end else None


class DatagramPipe(io.RawIOBase):
    """The socket as the file the demuxer reads: a read that finds nothing left of the last
    datagram receives the next one (``receive``), blocking until one comes; b"" once
    ``receive`` returns None."""

    def __init__(self, receive: Callable[[], bytes | None]) -> None:
        super().__init__()
        self._receive = receive
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._rest:
            payload = self._receive()
            if payload is None:
                return 0
            self._rest = memoryview(payload)
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


class DatagramInput:
    """One socket, arrival stamps per video PES, and the pipe the demuxer reads it through.

    The demuxer's thread reads ``pipe``; without a demuxer (the arrivals benchmark), ``start``
    reads it in a thread of its own and drops the bytes. ``close`` releases the socket once
    nothing reads it any more.

    Args:
        url: ``udp://HOST:PORT`` or ``rtp://HOST:PORT`` (a multicast HOST is joined).
        clock: the host clock the arrivals are read from.
        kernel_times: stamp datagrams with the kernel's receive time (False: when read; the
            benchmark's baseline).
        receive_buffer: the receive buffer asked of the kernel, bytes.
    """

    def __init__(
        self,
        url: str,
        clock: Callable[[], float],
        *,
        kernel_times: bool = True,
        receive_buffer: int = RECEIVE_BUFFER,
    ) -> None:
        self.address = InputAddress.parse(url)
        self.arrivals = Arrivals()
        self.pipe = DatagramPipe(self.receive)
        self.datagrams = 0
        self.malformed = 0
        #: Datagrams the kernel dropped for want of room in the receive buffer, as of the
        #: latest datagram read (0 where the kernel does not count them for us).
        self.dropped = 0
        self._clock = clock
        self._rtp = self.address.scheme == "rtp"
        self._stop = threading.Event()
        self._socket = self._bind(kernel_times, receive_buffer)
        self._thread: threading.Thread | None = None

    def _bind(self, kernel_times: bool, receive_buffer: int) -> socket.socket:
        address = self.address
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):  # capped by the kernel's limit; best effort
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            if platform.machine() in KERNEL_TIMES_MACHINES:
                if kernel_times:
                    with contextlib.suppress(OSError):  # no kernel times: stamped when read
                        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                with contextlib.suppress(OSError):  # no drop counts: none reported
                    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            sock.bind((address.host, address.port))
            if address.multicast:
                group = socket.inet_aton(address.host) + socket.inet_aton(address.interface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
            sock.settimeout(POLL)
        except OSError as exc:
            sock.close()
            raise InputAddressError(
                f"cannot receive on {address.host}:{address.port}: {exc}"
            ) from exc
        return sock

    def start(self) -> None:
        """Receive in a thread of its own, dropping the bytes (a receiver without a demuxer)."""
        self._thread = threading.Thread(target=self._drain, name="ingest-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving: a read under way returns the end of the stream within ``POLL``."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(2 * POLL + 1.0)

    def close(self) -> None:
        """Stop, and release the socket."""
        self.stop()
        self._socket.close()

    def receive(self) -> bytes | None:
        """The next datagram's TS bytes (RTP header removed), the video PES starts in it noted
        with the time it came; blocks until one comes. None once stopped, or when the socket
        failed. Datagrams that are not whole TS packets (or not RTP, for rtp://) are counted
        and skipped."""
        while not self._stop.is_set():
            try:
                datagram, cmsgs, _flags, _sender = self._socket.recvmsg(65_536, ANCILLARY_SPACE)
            except TimeoutError:
                continue
            except OSError:
                return None
            at = self._clock() - _age(cmsgs, time.time())
            if (drops := kernel_drops(cmsgs)) is not None:
                self.dropped = max(self.dropped, drops)
            payload = _rtp_payload(datagram) if self._rtp else datagram
            if not payload or len(payload) % TS_PACKET:
                self.malformed += 1
                continue
            self.datagrams += 1
            for pts in video_pes_starts(payload):
                self.arrivals.add(pts, at)
            return payload
        return None

    def _drain(self) -> None:
        while self.receive() is not None:
            pass
