"""Cutting the muxer's byte stream into datagrams, each due when the stream's timestamps say.

Theory of operation: the stream is paced by its own clock. Every PES header the muxer writes
carries a decode timestamp (DTS; the PTS where no DTS is given), and a datagram in which a PES
starts is due at that DTS on the stream's timeline (seconds from the first DTS, unwrapped
across the 33-bit wrap). This keeps the muxer's own buffering out of the timing: its
interleaving queue may hand out a picture a frame later than it was muxed, yet the picture
still leaves at its own time, as a hardware encoder's output would.

TS packets go seven to a datagram (1316 bytes, the usual size of TS over UDP, which fits any
Ethernet MTU), and every picture starts a datagram of its own: when a video PES starts while
a datagram is partly filled, that datagram is completed with null packets (PID 0x1FFF, which
every demuxer discards) and closed. Receivers stamp a picture's arrival by the datagram that
starts it, so two small pictures must never share one — the second would arrive a frame early.
A datagram that starts a picture is due at the picture's DTS; one without a video PES start
but with another PES (sound) at that PES's DTS; the others (the rest of a picture, tables)
follow the datagram before at steps of ``spread`` divided by the number of datagrams the write
completes, so an I-frame leaves as a short train rather than one burst that overflows a
receiver's socket buffer. Bytes short of a datagram wait for the next write. No IO.

Invariants: datagram payloads concatenated, null packets removed, are exactly the bytes
written (minus the tail held back for the next write); every payload but the last
(:meth:`Packetizer.flush`) is 1316 bytes; a video PES start is always a datagram's first TS
packet; due times never decrease; a datagram that starts a picture is due at that picture's
DTS unless a datagram written earlier is due later.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATAGRAM_SIZE",
    "NULL_PACKET",
    "TS_PACKETS_PER_DATAGRAM",
    "TS_PACKET_SIZE",
    "Datagram",
    "Packetizer",
    "pes_timestamp",
]

TS_PACKET_SIZE = 188
TS_PACKETS_PER_DATAGRAM = 7
DATAGRAM_SIZE = TS_PACKET_SIZE * TS_PACKETS_PER_DATAGRAM
TS_SYNC = 0x47
#: A null packet (PID 0x1FFF): padding that every demuxer discards.
NULL_PACKET = bytes([TS_SYNC, 0x1F, 0xFF, 0x10]) + b"\xff" * (TS_PACKET_SIZE - 4)
PTS_CLOCK = 90_000
_WRAP = 1 << 33


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram of TS packets and when it is due to leave (s on the stream's timeline)."""

    due: float
    payload: bytes


def _timestamp(field: bytes) -> int:
    """A 33-bit PTS/DTS from its 5-byte field (with marker bits)."""
    return (
        ((field[0] >> 1) & 0x07) << 30
        | field[1] << 22
        | (field[2] >> 1) << 15
        | field[3] << 7
        | field[4] >> 1
    )


def pes_timestamp(packet: bytes) -> int | None:
    """The DTS (else the PTS) of the PES that starts in this TS packet, in 90 kHz ticks.

    None when the packet starts no PES or its PES header carries no timestamp.

    Raises:
        ValueError: the packet does not start with the TS sync byte or is not 188 bytes.
    """
    start = _pes_start(packet)
    return None if start is None else start[1]


def _pes_start(packet: bytes) -> tuple[bool, int] | None:
    """Whether the PES starting in this packet is video, and its DTS (else PTS); see above."""
    if len(packet) != TS_PACKET_SIZE or packet[0] != TS_SYNC:
        raise ValueError("not a 188-byte TS packet")
    if not packet[1] & 0x40:  # payload_unit_start_indicator
        return None
    control = (packet[3] >> 4) & 0x3
    if not control & 0x1:  # no payload
        return None
    offset = 4 + (1 + packet[4] if control & 0x2 else 0)
    pes = packet[offset:]
    if len(pes) < 14 or pes[:3] != b"\x00\x00\x01":
        return None  # a PSI section, or a PES header that does not fit
    video = 0xE0 <= pes[3] <= 0xEF
    flags = pes[7] >> 6
    if flags == 0x3 and len(pes) >= 19:
        return video, _timestamp(pes[14:19])
    if flags & 0x2:
        return video, _timestamp(pes[9:14])
    return None


class Packetizer:
    """Seven TS packets to a datagram, a datagram per picture start, due by the DTS."""

    def __init__(self, spread: float) -> None:
        if spread < 0:
            raise ValueError(f"spread must be >= 0 s, got {spread}")
        self.spread = spread
        self._partial = bytearray()  # bytes short of a whole TS packet
        self._packets: list[bytes] = []  # the datagram being filled
        self._start: float | None = None  # the time of the PES it starts, if any
        self._picture = False  # whether that PES is a picture
        self._origin: int | None = None
        self._last_ticks = 0
        self._time = 0.0
        self._last_due = 0.0
        self.null_packets = 0

    def _stamp(self, ticks: int) -> float:
        """The stream time of a DTS: unwrapped, from the first DTS; the running time follows."""
        if self._origin is None:
            self._origin = self._last_ticks = ticks
        # Unwrap: a step back by more than half the range is the 33-bit counter wrapping.
        while ticks < self._last_ticks - _WRAP // 2:
            ticks += _WRAP
        self._last_ticks = ticks
        stamp = (ticks - self._origin) / PTS_CLOCK
        self._time = max(self._time, stamp)
        return stamp

    def _close(self, closed: list[tuple[bytes, float | None]], *, pad: bool) -> None:
        """Close the datagram being filled (padded with null packets to seven when ``pad``)."""
        missing = TS_PACKETS_PER_DATAGRAM - len(self._packets) if pad else 0
        self.null_packets += missing
        closed.append((b"".join(self._packets) + NULL_PACKET * missing, self._start))
        self._packets = []
        self._start = None
        self._picture = False

    def _datagrams(self, data: bytes, *, final: bool) -> list[Datagram]:
        self._partial += data
        whole = len(self._partial) - len(self._partial) % TS_PACKET_SIZE
        closed: list[tuple[bytes, float | None]] = []  # payload, time of the PES it starts
        for k in range(0, whole, TS_PACKET_SIZE):
            packet = bytes(self._partial[k : k + TS_PACKET_SIZE])
            pes = _pes_start(packet)
            if pes is not None:
                video, ticks = pes
                stamp = self._stamp(ticks)
                if video and self._packets:
                    self._close(closed, pad=True)  # a picture starts a datagram of its own
                if video and not self._picture:
                    self._start, self._picture = stamp, True
                elif self._start is None:
                    self._start = stamp
            self._packets.append(packet)
            if len(self._packets) == TS_PACKETS_PER_DATAGRAM:
                self._close(closed, pad=False)
        del self._partial[:whole]
        if final and self._packets:
            self._close(closed, pad=False)
        return self._timed(closed)

    def _timed(self, closed: list[tuple[bytes, float | None]]) -> list[Datagram]:
        """Due times: a datagram's own PES time, or the one before plus steps of the spread."""
        datagrams = []
        anchor = self._last_due
        step = 0
        for payload, start in closed:
            if start is not None:
                anchor, step = start, 0
            else:
                step += 1
            due = max(anchor + self.spread * step / len(closed), self._last_due)
            self._last_due = due
            datagrams.append(Datagram(due, payload))
        return datagrams

    def feed(self, data: bytes) -> list[Datagram]:
        """The datagrams that ``data`` (whole or partial TS packets) completes."""
        return self._datagrams(data, final=False)

    def flush(self) -> list[Datagram]:
        """What is held back (whole TS packets), as one short datagram; none when nothing is."""
        return self._datagrams(b"", final=True)
