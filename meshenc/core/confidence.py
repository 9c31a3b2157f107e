"""An encoder's self-assessed confidence: one number in [0, 1], defined here and only here.

Theory of operation
-------------------
Confidence says how much the rest of the mesh should trust this encoder as a timing reference.
It travels in every ESP, ranks segment leaders (:mod:`meshenc.core.leader`) and feeds the Mesh
Manager's health view. It is the product of five factors, each in [0, 1] and each a simple
piecewise-linear curve of one signal from :class:`HealthSignals`:

=============  ==========================================  =====================================
factor         curve                                       why
=============  ==========================================  =====================================
cpu            1 up to 0.7 load, linear to 0.2 at 1.0,     a saturated encoder stalls; it still
               0.2 above (budget overrun)                  produces output, hence the floor
latency        1 while encode latency <= 0.5 frame         an encoder slower than the frame
               period, linear to 0 at 1.5 periods,         rate cannot hold the timeline at all
               0 above
loss           1 - esp_loss                                missing ESPs blind its predictions
jitter         1 up to 2 ms, linear to 0.5 at 20 ms,       jitter blurs deviation estimates but
               0.5 above                                   does not corrupt the output
corrections    1 up to 2/min, linear to 0.5 at 30/min,     frequent corrections mean an unstable
               0.5 above                                   clock or path
=============  ==========================================  =====================================

A product rather than a weighted sum so that any single fatal signal (an encoder that cannot
keep up, total ESP loss) zeroes the score whatever the others say.

Invariants:

1. ``0 <= confidence(s) <= 1`` for every valid input.
2. Monotone: a worse signal never raises confidence. It is non-increasing in cpu_load,
   encode_latency, esp_loss, jitter and corrections_per_minute, and non-decreasing in
   frame_period (a longer period gives the encoder more time per frame). This holds exactly
   in floating point, since every step is a monotone operation.
3. Perfect health scores exactly 1.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ConfidenceFactors",
    "HealthSignals",
    "confidence",
    "factors",
]

CPU_KNEE = 0.7
CPU_FULL = 1.0
CPU_FLOOR = 0.2
LATENCY_KNEE_PERIODS = 0.5
LATENCY_ZERO_PERIODS = 1.5
JITTER_KNEE = 0.002
JITTER_FULL = 0.020
JITTER_FLOOR = 0.5
CORRECTIONS_KNEE = 2.0
CORRECTIONS_FULL = 30.0
CORRECTIONS_FLOOR = 0.5


@dataclass(frozen=True, slots=True)
class HealthSignals:
    """What an encoder measures about itself over the last window.

    Attributes:
        cpu_load: fraction of the encoder's CPU budget in use (>= 0; above 1 is an overrun).
        encode_latency: seconds to encode one frame.
        frame_period: seconds per output frame (> 0).
        esp_loss: fraction of expected neighbour ESPs missing, in [0, 1].
        jitter: mean link jitter, seconds.
        corrections_per_minute: corrections applied, per minute.

    Raises:
        ValueError: on a NaN, infinite or negative signal, a zero frame period or an ESP
            loss above 1.
    """

    cpu_load: float
    encode_latency: float
    frame_period: float
    esp_loss: float
    jitter: float
    corrections_per_minute: float

    def __post_init__(self) -> None:
        for name in (
            "cpu_load",
            "encode_latency",
            "frame_period",
            "esp_loss",
            "jitter",
            "corrections_per_minute",
        ):
            value: float = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.frame_period <= 0.0:
            raise ValueError(f"frame_period must be > 0, got {self.frame_period!r}")
        if self.esp_loss > 1.0:
            raise ValueError(f"esp_loss is a fraction in [0, 1], got {self.esp_loss!r}")


@dataclass(frozen=True, slots=True)
class ConfidenceFactors:
    """The five factors of a confidence score, each in [0, 1]; shows *why* a score is low."""

    cpu: float
    latency: float
    loss: float
    jitter: float
    corrections: float

    @property
    def product(self) -> float:
        """The confidence these factors make."""
        return self.cpu * self.latency * self.loss * self.jitter * self.corrections


def _ramp(x: float, knee: float, full: float, floor: float) -> float:
    """1 up to ``knee``, linear down to ``floor`` at ``full``, ``floor`` beyond."""
    if x <= knee:
        return 1.0
    if x >= full:
        return floor
    return min(1.0, max(floor, 1.0 - (1.0 - floor) * ((x - knee) / (full - knee))))


def factors(signals: HealthSignals) -> ConfidenceFactors:
    """Each factor of the confidence score, as documented in this module's table."""
    periods = signals.encode_latency / signals.frame_period
    return ConfidenceFactors(
        cpu=_ramp(signals.cpu_load, CPU_KNEE, CPU_FULL, CPU_FLOOR),
        latency=_ramp(periods, LATENCY_KNEE_PERIODS, LATENCY_ZERO_PERIODS, 0.0),
        loss=1.0 - signals.esp_loss,
        jitter=_ramp(signals.jitter, JITTER_KNEE, JITTER_FULL, JITTER_FLOOR),
        corrections=_ramp(
            signals.corrections_per_minute, CORRECTIONS_KNEE, CORRECTIONS_FULL, CORRECTIONS_FLOOR
        ),
    )


def confidence(signals: HealthSignals) -> float:
    """The encoder's confidence in [0, 1]: the product of :func:`factors`.

    Inputs are validated when :class:`HealthSignals` is built, so a bad measurement fails
    where it is made rather than here.
    """
    return min(1.0, max(0.0, factors(signals).product))
