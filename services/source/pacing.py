"""Cutting the muxer's byte stream into datagrams, each due when the stream's timestamps say.

Theory of operation: the stream is paced by its own clock. Every PES header the muxer writes
carries a decode timestamp (DTS; the PTS where no DTS is given), and a TS packet is due at the
DTS of the PES it belongs to, on the stream's timeline (seconds from the first DTS, unwrapped
across the 33-bit wrap). Packets without a PES start (PSI tables, PCR, the rest of a PES)
inherit the time before them. This keeps the muxer's own buffering out of the timing: its
interleaving queue may hand out a picture a frame later than it was muxed, yet the picture
still leaves at its own time, as a hardware encoder's output would.

The packetizer gathers 188-byte TS packets seven to a datagram (1316 bytes, the usual size of
TS over UDP, which fits any Ethernet MTU). A datagram is due when the first PES starting in it
is, or at the running time if none starts in it; the datagrams one write completes are
spread evenly over ``spread`` seconds from there, so an
I-frame leaves as a short train rather than one burst that overflows a receiver's socket
buffer. Bytes short of a full datagram wait for the next write. No IO.

Invariants: datagram payloads concatenated are exactly the bytes written, minus the tail held
back for the next write; every payload but the last (:meth:`Packetizer.flush`) is 1316 bytes;
due times never decrease; a datagram is never due before the DTS of the first PES that starts
in it, nor before any datagram written earlier.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATAGRAM_SIZE",
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
    flags = pes[7] >> 6
    if flags == 0x3 and len(pes) >= 19:
        return _timestamp(pes[14:19])
    if flags & 0x2:
        return _timestamp(pes[9:14])
    return None


class Packetizer:
    """Seven TS packets to a datagram, each due at its PES's DTS, spread over ``spread``."""

    def __init__(self, spread: float) -> None:
        if spread < 0:
            raise ValueError(f"spread must be >= 0 s, got {spread}")
        self.spread = spread
        self._pending = bytearray()
        self._origin: int | None = None
        self._last_ticks = 0
        self._time = 0.0
        self._last_due = 0.0

    def _stamp(self, packet: bytes) -> float | None:
        """The stream time of the PES that starts in this TS packet (its DTS, unwrapped), or
        None when none starts; the running time follows it."""
        ticks = pes_timestamp(packet)
        if ticks is None:
            return None
        if self._origin is None:
            self._origin = self._last_ticks = ticks
        # Unwrap: a step back by more than half the range is the 33-bit counter wrapping.
        while ticks < self._last_ticks - _WRAP // 2:
            ticks += _WRAP
        self._last_ticks = ticks
        self._time = max(self._time, (ticks - self._origin) / PTS_CLOCK)
        return self._time

    def _datagram_time(self, chunk: bytes) -> float:
        """When a datagram may leave: when the first PES starting in it is due (a later one in
        the same datagram leaves a little early, which a receiver's buffer absorbs), or the
        running time when none starts in it."""
        first = None
        for k in range(0, len(chunk), TS_PACKET_SIZE):
            stamp = self._stamp(chunk[k : k + TS_PACKET_SIZE])
            if first is None:
                first = stamp
        return self._time if first is None else first

    def feed(self, data: bytes) -> list[Datagram]:
        """The datagrams that ``data`` (whole or partial TS packets) completes."""
        self._pending += data
        count = len(self._pending) // DATAGRAM_SIZE
        datagrams = []
        for i in range(count):
            chunk = bytes(self._pending[i * DATAGRAM_SIZE : (i + 1) * DATAGRAM_SIZE])
            due = max(self._datagram_time(chunk) + self.spread * i / count, self._last_due)
            self._last_due = due
            datagrams.append(Datagram(due, chunk))
        del self._pending[: count * DATAGRAM_SIZE]
        return datagrams

    def flush(self) -> list[Datagram]:
        """What is held back (whole TS packets), as one short datagram; none when nothing is."""
        whole = len(self._pending) - len(self._pending) % TS_PACKET_SIZE
        if not whole:
            return []
        chunk = bytes(self._pending[:whole])
        self._pending.clear()
        due = max(self._datagram_time(chunk), self._last_due)
        self._last_due = due
        return [Datagram(due, chunk)]
