"""RTP framing of MPEG-TS datagrams (RFC 3550 header, RFC 2250 payload type 33).

Theory of operation: each datagram of seven TS packets goes behind a 12-byte RTP header:
version 2, no padding, extension or CSRCs, marker 0, payload type 33 (MP2T), a sequence number
that counts every datagram handed to the path (so a receiver sees the path's losses as gaps),
a 90 kHz timestamp of the datagram's send time on the stream's timeline (RFC 2250: the target
transmission time of its first byte) and a synchronisation source id. The first sequence
number, timestamp offset and SSRC come from the caller's random generator, as RFC 3550 asks,
which keeps a run repeatable for a seed. No IO.

Invariants: sequence numbers increase by one per datagram modulo 2**16; timestamps never
decrease (modulo 2**32) for non-decreasing send times; the payload follows the header unchanged.
"""

from __future__ import annotations

import random
import struct

__all__ = ["RTP_CLOCK_RATE", "RTP_HEADER_SIZE", "RTP_PAYLOAD_MP2T", "RtpFramer"]

RTP_HEADER_SIZE = 12
RTP_PAYLOAD_MP2T = 33
RTP_CLOCK_RATE = 90_000
_VERSION_BYTE = 2 << 6  # V=2, P=0, X=0, CC=0
_HEADER = struct.Struct("!BBHII")


class RtpFramer:
    """Puts one destination's datagrams behind RTP headers, in sending order."""

    def __init__(self, rng: random.Random) -> None:
        self.ssrc = rng.getrandbits(32)
        self._sequence = rng.getrandbits(16)
        self._timestamp_offset = rng.getrandbits(32)

    def frame(self, payload: bytes, sent: float) -> bytes:
        """``payload`` behind the next header; ``sent`` is its send time (s) on the timeline."""
        timestamp = (self._timestamp_offset + round(sent * RTP_CLOCK_RATE)) & 0xFFFFFFFF
        header = _HEADER.pack(_VERSION_BYTE, RTP_PAYLOAD_MP2T, self._sequence, timestamp, self.ssrc)
        self._sequence = (self._sequence + 1) & 0xFFFF
        return header + payload
