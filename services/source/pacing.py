"""Cutting the muxer's byte stream into datagrams, each with the time it is due to leave.

Theory of operation: the muxer writes TS packets as it muxes each encoded packet, and the
producer stamps every write with the stream time of the packet being muxed (its decode time on
the stream's timeline, never earlier than the stamp before). A live encoder has a picture's
bytes at that moment, so that is when they may leave. The packetizer gathers 188-byte TS
packets seven to a datagram (1316 bytes, the usual size of TS over UDP, which fits any
Ethernet MTU) and spreads the datagrams a write completes evenly over ``spread`` seconds from
its stamp, so an I-frame leaves as a short train rather than one burst that overflows a
receiver's socket buffer. Bytes short of a full datagram wait for the next write. No IO.

Invariants: datagram payloads concatenated are exactly the bytes written, minus the tail held
back for the next write; every payload but the last (:meth:`Packetizer.flush`) is 1316 bytes;
due times never decrease; a datagram is never due before the stamp of the write that completed
it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATAGRAM_SIZE", "TS_PACKETS_PER_DATAGRAM", "TS_PACKET_SIZE", "Datagram", "Packetizer"]

TS_PACKET_SIZE = 188
TS_PACKETS_PER_DATAGRAM = 7
DATAGRAM_SIZE = TS_PACKET_SIZE * TS_PACKETS_PER_DATAGRAM


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram of TS packets and when it is due to leave (s on the stream's timeline)."""

    due: float
    payload: bytes


class Packetizer:
    """Seven TS packets to a datagram, each due at its write's stamp, spread over ``spread``."""

    def __init__(self, spread: float) -> None:
        if spread < 0:
            raise ValueError(f"spread must be >= 0 s, got {spread}")
        self.spread = spread
        self._pending = bytearray()
        self._last_due = 0.0

    def feed(self, data: bytes, stamp: float) -> list[Datagram]:
        """The datagrams that ``data``, written at stream time ``stamp``, completes."""
        self._pending += data
        count = len(self._pending) // DATAGRAM_SIZE
        datagrams = []
        for i in range(count):
            chunk = bytes(self._pending[i * DATAGRAM_SIZE : (i + 1) * DATAGRAM_SIZE])
            due = max(stamp + self.spread * i / count, self._last_due)
            self._last_due = due
            datagrams.append(Datagram(due, chunk))
        del self._pending[: count * DATAGRAM_SIZE]
        return datagrams

    def flush(self, stamp: float) -> list[Datagram]:
        """What is held back, as one short datagram due at ``stamp`` (none when nothing is)."""
        if not self._pending:
            return []
        due = max(stamp, self._last_due)
        self._last_due = due
        chunk = bytes(self._pending)
        self._pending.clear()
        return [Datagram(due, chunk)]
