"""The manager's health model: what each encoder last said, and what its links look like.

Theory of operation
-------------------
Every encoder reports about once a second (:class:`HealthReported`): its confidence, CPU load,
encode latency and one :class:`LinkSample` per link it runs. The model keeps, per encoder, the
latest values and when they arrived (on the *manager's* clock: the time the manager is stepped
with on receipt, so encoders' clocks never decide liveness), and per link

- a smoothed RTT (exponential moving average) for display and decisions;
- since when the link has been down, as either end reports it. A link is *down* in a report
  when the sample says ``connected=False``, or when the report is made in the manager's
  current topology epoch and leaves out a planned neighbour altogether.

Each RTT sample also moves the reporter's Vivaldi coordinate (:mod:`.vivaldi`), so the planner
has a latency estimate for every pair, linked or not.

The model only observes: deciding that an encoder is silent, that its streams are all broken
or that a link is bad is :mod:`.manager`'s job, with the queries here (:meth:`HealthModel.silent`,
:meth:`HealthModel.down_since`).

Invariants:

1. Reports are validated on construction; a report from an encoder the model does not track
   is ignored (and counted), never half-applied.
2. Time never goes backwards in the model: a report received before the encoder's latest is
   ignored (and counted), so a delayed stream cannot resurrect a silent encoder.
3. Deterministic: the state is a function of the sequence of calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from meshenc.core.planner.vivaldi import Coordinate, origin, update

__all__ = [
    "EncoderHealth",
    "HealthModel",
    "HealthReported",
    "LinkSample",
]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _check_seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class LinkSample:
    """One link as the reporting encoder sees it.

    Attributes:
        neighbour_id: the encoder at the other end.
        rtt: round-trip time, seconds; 0 = no measurement yet.
        jitter: one-way delay variation, seconds; 0 = no measurement yet.
        connected: whether the ESP stream to that neighbour is up.
    """

    neighbour_id: str
    rtt: float = 0.0
    jitter: float = 0.0
    connected: bool = True

    def __post_init__(self) -> None:
        if not self.neighbour_id:
            raise ValueError("link sample needs a neighbour_id")
        _check_seconds("rtt", self.rtt)
        _check_seconds("jitter", self.jitter)


@dataclass(frozen=True, slots=True)
class HealthReported:
    """An encoder's health report, as the manager received it (when: the time it is stepped with).

    Attributes:
        encoder_id: the reporter.
        confidence: the encoder's confidence in its timeline, [0, 1].
        load: CPU load, [0, 1].
        encode_latency: mean encode time per frame, seconds.
        topology_epoch: the epoch the encoder works in (0 = none yet).
        links: one sample per link; distinct neighbours, never the reporter itself.
        units: the work units it serves: it wrote a segment of each lately that the mesh
            confirmed (what a hand-over waits for, :mod:`.handover`).
    """

    encoder_id: str
    confidence: float
    load: float
    encode_latency: float
    topology_epoch: int = 0
    links: tuple[LinkSample, ...] = ()
    units: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.encoder_id:
            raise ValueError("health report needs an encoder_id")
        _check_fraction("confidence", self.confidence)
        _check_fraction("load", self.load)
        _check_seconds("encode_latency", self.encode_latency)
        if self.topology_epoch < 0:
            raise ValueError(f"topology_epoch must be >= 0, got {self.topology_epoch}")
        seen: set[str] = set()
        for link in self.links:
            if link.neighbour_id == self.encoder_id:
                raise ValueError(f"{self.encoder_id!r} reports a link to itself")
            if link.neighbour_id in seen:
                raise ValueError(f"duplicate link to {link.neighbour_id!r}")
            seen.add(link.neighbour_id)


@dataclass(frozen=True, slots=True)
class EncoderHealth:
    """What the model knows about one encoder."""

    encoder_id: str
    last_seen: float
    confidence: float = 0.0
    load: float = 0.0
    encode_latency: float = 0.0
    reports: int = 0


class HealthModel:
    """Per-encoder health, per-link RTT and state, and every encoder's network coordinate.

    Args:
        dimensions: Euclidean dimensions of the coordinates.
        rtt_smoothing: weight of a new sample in the smoothed RTT, in (0, 1].
    """

    __slots__ = (
        "_coords",
        "_dimensions",
        "_down_since",
        "_encoders",
        "_rtt",
        "_smoothing",
        "ignored_reports",
    )

    def __init__(self, *, dimensions: int = 2, rtt_smoothing: float = 0.2) -> None:
        if not 0.0 < rtt_smoothing <= 1.0:
            raise ValueError(f"rtt_smoothing must be in (0, 1], got {rtt_smoothing!r}")
        self._dimensions = dimensions
        self._smoothing = rtt_smoothing
        self._encoders: dict[str, EncoderHealth] = {}
        self._coords: dict[str, Coordinate] = {}
        self._rtt: dict[tuple[str, str], float] = {}
        self._down_since: dict[tuple[str, str], float] = {}
        self.ignored_reports = 0
        origin(dimensions)  # validates dimensions

    def __contains__(self, encoder_id: object) -> bool:
        return encoder_id in self._encoders

    def track(self, encoder_id: str, now: float) -> None:
        """Start tracking an encoder (it joined); it counts as seen ``now``.

        An encoder tracked before keeps its coordinate, so a restart does not cost it its
        place in the latency map.
        """
        old = self._encoders.get(encoder_id)
        self._encoders[encoder_id] = (
            EncoderHealth(encoder_id, last_seen=now)
            if old is None
            else EncoderHealth(
                encoder_id, max(now, old.last_seen), old.confidence, old.load, old.encode_latency
            )
        )
        self._coords.setdefault(encoder_id, origin(self._dimensions))

    def forget(self, encoder_id: str) -> None:
        """Stop tracking an encoder's liveness and links (its coordinate is kept)."""
        self._encoders.pop(encoder_id, None)
        for key in [k for k in self._down_since if encoder_id in k]:
            del self._down_since[key]

    def ingest(self, report: HealthReported, now: float, planned: frozenset[str] | None) -> bool:
        """Fold a report in.

        Args:
            report: the report.
            now: when the manager received it, seconds on the manager's clock.
            planned: the reporter's neighbours in the manager's current topology when the
                report was made in the current epoch (their absence then means a down link);
                None otherwise.

        Returns:
            Whether the report was applied (False: unknown encoder or stale report).
        """
        old = self._encoders.get(report.encoder_id)
        if old is None or now < old.last_seen:
            self.ignored_reports += 1
            return False
        self._encoders[report.encoder_id] = EncoderHealth(
            report.encoder_id,
            now,
            report.confidence,
            report.load,
            report.encode_latency,
            old.reports + 1,
        )
        me = report.encoder_id
        reported = set()
        for link in report.links:
            reported.add(link.neighbour_id)
            key = (me, link.neighbour_id)
            if link.connected:
                self._down_since.pop(key, None)
            else:
                self._down_since.setdefault(key, now)
            if link.rtt > 0.0 and link.neighbour_id in self._coords:
                self._sample(me, link.neighbour_id, link.rtt)
        for neighbour in planned or ():
            if neighbour not in reported:
                self._down_since.setdefault((me, neighbour), now)
        return True

    def _sample(self, me: str, neighbour: str, rtt: float) -> None:
        key = (me, neighbour) if me < neighbour else (neighbour, me)
        old = self._rtt.get(key)
        self._rtt[key] = rtt if old is None else old + self._smoothing * (rtt - old)
        self._coords[me] = update(
            self._coords[me], self._coords[neighbour], rtt, local_id=me, remote_id=neighbour
        )

    def health(self, encoder_id: str) -> EncoderHealth | None:
        """The latest known health of an encoder, or None if it is not tracked."""
        return self._encoders.get(encoder_id)

    def tracked(self) -> list[str]:
        """Every tracked encoder, sorted."""
        return sorted(self._encoders)

    def confidence(self, encoder_id: str) -> float:
        """The encoder's last reported confidence (0 before its first report)."""
        health = self._encoders.get(encoder_id)
        return 0.0 if health is None else health.confidence

    def coordinate(self, encoder_id: str) -> Coordinate:
        """The encoder's network coordinate (the origin if it never had one)."""
        return self._coords.get(encoder_id) or origin(self._dimensions)

    def rtt(self, a: str, b: str) -> float | None:
        """The smoothed measured RTT of link (a, b), seconds, or None if never measured."""
        return self._rtt.get((a, b) if a < b else (b, a))

    def silent(self, now: float, timeout: float) -> list[str]:
        """Tracked encoders not heard from for more than ``timeout`` seconds, sorted."""
        return sorted(e for e, h in self._encoders.items() if now - h.last_seen > timeout)

    def down_since(self, reporter: str, neighbour: str) -> float | None:
        """Since when ``reporter`` has seen its link to ``neighbour`` down, or None if up."""
        return self._down_since.get((reporter, neighbour))

    def down_links(self) -> Iterable[tuple[tuple[str, str], float]]:
        """Every (reporter, neighbour) link seen down, with the time it went down, sorted."""
        return sorted(self._down_since.items())
