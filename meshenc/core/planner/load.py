"""An encoder's load as the manager reads it: pressure for autoscaling, capacity for placement.

Theory of operation
-------------------
Each health report carries the encoder's CPU load (process time over wall time, 1.0 = the one
core its loop runs on) and its encode latency (the mean time to encode one picture slot, every
unit it holds together). Against the frame budget (one frame interval, 40 ms at 25 fps) a
report says two things, both computed here and nowhere else:

- **pressure** (:func:`pressure`): the CPU load or the encode time over the budget, whichever
  is larger; 1.0 = full, above 1 the encoder falls behind real time. The autoscaler sizes the
  fleet from it.
- **its parts** (:func:`split`): the encode time over the budget is ``held`` units at
  ``per_unit`` each; what the CPU load shows beyond that is ``overhead`` (decoding, the mesh),
  paid whatever the encoder holds. So ``pressure = overhead + held x per_unit``.

:class:`LoadModel` smooths both per encoder (the mean of the first ``1 / smoothing`` reports,
then an exponential moving average giving each new report the weight ``smoothing``: no first
report weighs more than the others) and turns the parts into a **capacity**, the units the
placement may give the encoder: ``fit(level) = floor((level - overhead) / per_unit)`` units
keep it at or below a pressure of ``level``. With **hysteresis**, so that noise moves no work:
the capacity is ``fit(target)``, but it changes only when it leaves ``[fit(target),
fit(ceiling)]``, and then back to the middle of that band, not to its edge. The placement
moves copies only when a capacity falls below what an encoder holds (a rise moves nothing:
placement is sticky), and then only where another encoder has room
(:mod:`.placement`, ``Host.limit``), so a capacity that stays within the band moves nothing.

A report's encode time counts at most twice the smoothed one, or one whole frame budget if that
is more: a stall (one report of about 16 budgets a unit was seen at a load average of 35)
moves the smoothed values by a fifth, not by three budgets, while a real rise passes within a
few reports.

``held`` is what the manager's placement gives the encoder, which the encoder takes on at its
next GOP boundary and shows in the report after that: after a change in ``held`` the reports
of the next ``settle`` seconds do not count towards the parts (they would divide one holding's
encode time by another's count). Until ``warmup`` such reports have counted (a fresh encoder,
one that never held work) the capacity is the *registered* one (``--capacity``, 4 by default).
Capacities stay within ``[min_capacity, max_capacity]``: an encoder in the mesh can always
hold one unit (it decodes its sources anyway; capacity 0 is for a drained encoder, which must
hold nothing), and no more than one adjacency document can list.

Invariants (property-tested with Hypothesis):

1. A measured capacity puts the encoder at most at ``ceiling`` by its smoothed parts, unless
   ``min_capacity`` holds it up: ``overhead + capacity x per_unit <= ceiling``.
2. Reports whose parts keep the capacity between ``fit(target)`` and ``fit(ceiling)`` leave it
   unchanged.
3. Deterministic: the state is a function of the calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshenc.core.planner.health import HealthReported

__all__ = [
    "MAX_UNITS_PER_ENCODER",
    "LoadConfig",
    "LoadModel",
    "pressure",
    "split",
]

MAX_UNITS_PER_ENCODER = 64
"""Most work units one encoder holds: what one adjacency document may list."""


_ROUNDING = 1e-9
"""Added before rounding down a unit count, so that 0.95 - 0.9 fitting 0.05 once is one."""


def pressure(load: float, encode_latency: float, frame_budget: float) -> float:
    """How full an encoder is: its CPU load, or its encode time per frame over the frame
    budget, whichever is larger (1.0 = full; above 1 it falls behind real time)."""
    return max(load, encode_latency / frame_budget)


def split(
    load: float, encode_latency: float, frame_budget: float, held: int
) -> tuple[float, float]:
    """A report's pressure as ``(overhead, per_unit)``, ``overhead + held x per_unit`` being
    :func:`pressure`: the encode time is the ``held`` units' (``held`` >= 1), the rest of
    the CPU load is paid whatever the encoder holds."""
    encoding = encode_latency / frame_budget
    return max(load - encoding, 0.0), encoding / held


_OUTLIER = 2.0
"""A report's encode time counts at most this many times the smoothed one (or one full frame
budget, if more): one stalled picture slot must not move a capacity or scale the fleet."""


def _capped(latency: float, smoothed: float, budget: float) -> float:
    """``latency`` bounded by ``_OUTLIER`` x ``smoothed``, or by ``budget`` if that is more."""
    return min(latency, max(_OUTLIER * smoothed, budget))


def _fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> None:
    if not low < value <= high:  # NaN fails too
        raise ValueError(f"{name} must be in ({low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How reports become pressure and capacity (see the module docstring)."""

    #: Encode time per frame that counts as full: one frame interval (40 ms at 25 fps).
    frame_budget: float = 0.040
    #: Pressure the placement fills an encoder up to.
    target: float = 0.75
    #: Pressure above which an encoder's capacity falls below what it holds.
    ceiling: float = 0.95
    #: Weight of a new report in the smoothed values.
    smoothing: float = 0.2
    #: Seconds after a change of the units held before reports count towards the parts.
    settle: float = 5.0
    #: Reports that must count before the capacity is the measured one.
    warmup: int = 5
    min_capacity: int = 1
    max_capacity: int = MAX_UNITS_PER_ENCODER

    def __post_init__(self) -> None:
        if not (math.isfinite(self.frame_budget) and self.frame_budget > 0):
            raise ValueError(f"frame_budget must be positive and finite, got {self.frame_budget!r}")
        _fraction("ceiling", self.ceiling)
        _fraction("target", self.target, high=self.ceiling)
        if self.target == self.ceiling:
            raise ValueError("target must be below ceiling (the hysteresis band)")
        _fraction("smoothing", self.smoothing)
        if not (math.isfinite(self.settle) and self.settle >= 0):
            raise ValueError(f"settle must be finite and >= 0, got {self.settle!r}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {self.warmup}")
        if not 0 <= self.min_capacity <= self.max_capacity <= MAX_UNITS_PER_ENCODER:
            raise ValueError(
                f"capacities must be 0 <= min <= max <= {MAX_UNITS_PER_ENCODER}, got "
                f"{self.min_capacity}..{self.max_capacity}"
            )


@dataclass(slots=True)
class _Reading:
    """One encoder's smoothed load (private, mutable)."""

    pressure: float
    held: int
    held_since: float
    reports: int = 1
    overhead: float = 0.0
    per_unit: float = 0.0
    counted: int = 0
    capacity: int | None = None  # None: not measured yet, the registered one applies


class LoadModel:
    """Per-encoder smoothed pressure and measured capacity, from the health reports."""

    __slots__ = ("_readings", "config")

    def __init__(self, config: LoadConfig | None = None) -> None:
        self.config = config or LoadConfig()
        self._readings: dict[str, _Reading] = {}

    def observe(self, now: float, report: HealthReported, held: int, registered: int) -> None:
        """Fold in a report received at ``now`` from an encoder the placement gives ``held``
        units, registered with capacity ``registered`` (the starting point)."""
        config = self.config
        budget = config.frame_budget
        reading = self._readings.get(report.encoder_id)
        if reading is None:
            now_pressure = pressure(report.load, report.encode_latency, budget)
            reading = self._readings[report.encoder_id] = _Reading(now_pressure, held, now)
        else:
            latency = _capped(report.encode_latency, reading.pressure * budget, budget)
            now_pressure = pressure(report.load, latency, budget)
            reading.reports += 1
            reading.pressure += self._weight(reading.reports) * (now_pressure - reading.pressure)
        if held != reading.held:
            reading.held, reading.held_since = held, now
        if held == 0 or report.encode_latency == 0.0 or now - reading.held_since < config.settle:
            return  # nothing encoded, or not yet what the placement gives it
        latency = report.encode_latency
        if reading.counted:
            latency = _capped(latency, reading.per_unit * held * budget, budget)
        overhead, per_unit = split(report.load, latency, budget, held)
        reading.counted += 1
        weight = self._weight(reading.counted)
        reading.overhead += weight * (overhead - reading.overhead)
        reading.per_unit += weight * (per_unit - reading.per_unit)
        if reading.counted >= config.warmup:
            current = registered if reading.capacity is None else reading.capacity
            reading.capacity = self._hysteresis(current, reading.overhead, reading.per_unit)

    def _weight(self, count: int) -> float:
        """The ``count``-th sample's weight: a running mean until it falls to ``smoothing``."""
        return max(self.config.smoothing, 1.0 / count)

    def _hysteresis(self, current: int, overhead: float, per_unit: float) -> int:
        config = self.config

        def fit(level: float) -> int:
            room = (level - overhead) / per_unit + _ROUNDING
            return config.max_capacity if room >= config.max_capacity else math.floor(room)

        if current > fit(config.ceiling) or current < fit(config.target):
            current = fit(config.target)
        return min(max(current, config.min_capacity), config.max_capacity)

    def capacity(self, encoder_id: str, registered: int) -> int:
        """The units the placement may give the encoder: measured, else ``registered``."""
        reading = self._readings.get(encoder_id)
        return registered if reading is None or reading.capacity is None else reading.capacity

    def measured(self, encoder_id: str) -> bool:
        """Whether the encoder's capacity is measured (not the registered one)."""
        reading = self._readings.get(encoder_id)
        return reading is not None and reading.capacity is not None

    def pressure(self, encoder_id: str) -> float | None:
        """The encoder's smoothed pressure, or None before its first report."""
        reading = self._readings.get(encoder_id)
        return None if reading is None else reading.pressure

    def parts(self, encoder_id: str) -> tuple[float, float] | None:
        """The encoder's smoothed ``(overhead, per_unit)``, or None while none has counted."""
        reading = self._readings.get(encoder_id)
        if reading is None or reading.counted == 0:
            return None
        return reading.overhead, reading.per_unit

    def forget(self, encoder_id: str) -> None:
        """Drop what is known of an encoder (it left; a return measures afresh)."""
        self._readings.pop(encoder_id, None)
