"""Link measurement from ESP timestamps: round-trip time, jitter and loss per neighbour.

Theory of operation: each ESP carries the sender's send time and, now and then, an echo of the
last ESP it received from us (our send time and how long it held it). With our receive time
that gives the four NTP timestamps, so ``rtt = (now - echo_sent_at) - echo_hold`` without any
assumption about the two clocks. Jitter is the RFC 3550 interarrival jitter of the one-way
transit time (receive minus send), whose constant clock offset cancels in the differences.
Loss is counted from gaps in the per-stream sequence numbers.

Invariants: ``rtt >= 0`` once measured; ``0 <= loss <= 1``.
"""

from __future__ import annotations

import math

__all__ = ["LinkMeter"]


class LinkMeter:
    """Running RTT, jitter and loss for one neighbour."""

    __slots__ = (
        "_last_transit",
        "expected",
        "jitter",
        "last_received_at",
        "last_sent_at",
        "last_sequence",
        "received",
        "rtt",
    )

    def __init__(self) -> None:
        self.rtt = math.nan
        self.jitter = 0.0
        self.received = 0
        self.expected = 0
        self.last_sequence = 0
        #: Our clock when the last packet arrived (-inf: never), and its sender's send time.
        self.last_received_at = -math.inf
        self.last_sent_at = 0.0
        self._last_transit: float | None = None

    @property
    def loss(self) -> float:
        """Fraction of the neighbour's ESPs that never arrived (since this meter started)."""
        if self.expected == 0:
            return 0.0
        return max(0.0, 1.0 - self.received / self.expected)

    def on_packet(
        self,
        now: float,
        sequence: int,
        sent_at: float,
        echo_sent_at: float = 0.0,
        echo_hold: float = 0.0,
    ) -> None:
        """Account for one received packet (all times in seconds, ``now`` on our clock)."""
        last = self.last_sequence
        if self.received == 0:
            self.expected = 1
            self.last_sequence = sequence
        elif sequence > last:
            self.expected += sequence - last
            self.last_sequence = sequence
        self.received += 1
        transit = now - sent_at
        previous = self._last_transit
        if previous is not None:
            self.jitter += (abs(transit - previous) - self.jitter) / 16.0
        self._last_transit = transit
        self.last_received_at = now
        self.last_sent_at = sent_at
        if echo_sent_at > 0.0:
            sample = max(0.0, (now - echo_sent_at) - echo_hold)
            self.rtt = sample if math.isnan(self.rtt) else self.rtt + (sample - self.rtt) / 8.0

    def echo(self, now: float) -> tuple[int, float, float]:
        """What to echo back in our next packet: (their sequence, their send time, how long
        we have held it). All zero before anything arrived."""
        if not self.received:
            return 0, 0.0, 0.0
        return self.last_sequence, self.last_sent_at, max(0.0, now - self.last_received_at)
