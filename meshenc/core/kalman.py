"""A two-state Kalman filter for the deviation between two encoders' labels.

Theory of operation: for one neighbour, the filter tracks ``x = [deviation, rate]`` of the
*uncorrected* label difference (own capture time minus the neighbour's, for the same picture).
Uncorrected, because both sides' corrections are known exactly (each ESP carries the sender's
correction), so they are bookkeeping, not dynamics: what remains is physics — clock drift and
ingest-delay changes — which is smooth and well described by a constant-velocity model driven
by white acceleration noise.

Noise adapts to what the link shows: the measurement variance follows the observed spread of
the samples (timestamp jitter on both ends), never below the floor the caller knows from the
capture jitter it measures, and the process noise is scaled up while
innovations are larger than the filter expects and back down when they are not. Innovations
beyond ``gate`` standard deviations are rejected as outliers (a lying or glitching neighbour
must not move the estimate); after ``reset_after`` rejections in a row the filter restarts from
the next measurement, because a persistent "outlier" is a real step.

Invariants: the covariance stays symmetric positive definite; time never runs backwards
(``predict`` to an earlier time is a no-op).

The filter is written out in scalars rather than with numpy: it runs once per neighbour per
control period on the hot path of a simulation of thousands of encoders, where 2×2 numpy
operations would cost more than they compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DeviationFilter", "KalmanTuning"]


@dataclass(frozen=True, slots=True)
class KalmanTuning:
    """Noise settings. Units: seconds for deviation, seconds per second for rate."""

    #: Spectral density of the white acceleration driving the rate, (s/s²)²·s.
    process_noise: float = 2e-8
    #: Starting per-sample measurement variance, s² (2 ms of timestamp jitter).
    measurement_noise: float = 4e-6
    #: Bounds on the adapted measurement variance, s².
    min_measurement_noise: float = 1e-8
    max_measurement_noise: float = 1e-3
    #: Weight of a new innovation in the measurement-variance estimate.
    noise_adaptation: float = 0.02
    #: Initial rate uncertainty (s/s)²: 1000 ppm at one sigma.
    initial_rate_variance: float = 1e-6
    #: Innovation gate in standard deviations, and rejections in a row before restarting.
    gate: float = 6.0
    reset_after: int = 3


class DeviationFilter:
    """Kalman filter of one neighbour's label deviation and its rate."""

    __slots__ = (
        "_nis",
        "_p00",
        "_p01",
        "_p11",
        "_q_scale",
        "_r",
        "_rejections_in_row",
        "_tuning",
        "deviation",
        "rate",
        "rejected",
        "time",
        "updates",
    )

    def __init__(self, tuning: KalmanTuning | None = None) -> None:
        self._tuning = tuning or KalmanTuning()
        self._r = self._tuning.measurement_noise
        self._q_scale = 1.0
        self._nis = 1.0
        self._rejections_in_row = 0
        self.updates = 0
        self.rejected = 0
        self.time = math.nan
        self.deviation = 0.0
        self.rate = 0.0
        self._p00 = self._p01 = self._p11 = 0.0

    @property
    def initialised(self) -> bool:
        return self.updates > 0

    @property
    def measurement_noise(self) -> float:
        """The adapted per-sample measurement variance (s²)."""
        return self._r

    @property
    def deviation_variance(self) -> float:
        return self._p00

    @property
    def rate_variance(self) -> float:
        return self._p11

    def predict(self, now: float) -> None:
        """Advance the state to ``now`` (the caller's clock)."""
        if not self.initialised or now <= self.time:
            return
        dt = now - self.time
        q = self._tuning.process_noise * self._q_scale
        p00, p01, p11 = self._p00, self._p01, self._p11
        self.deviation += self.rate * dt
        self._p00 = p00 + 2.0 * dt * p01 + dt * dt * p11 + q * dt * dt * dt / 3.0
        self._p01 = p01 + dt * p11 + q * dt * dt / 2.0
        self._p11 = p11 + q * dt
        self.time = now

    def update(self, now: float, measurement: float, noise_floor: float = 0.0) -> bool:
        """Fold in one deviation measurement taken at ``now``.

        ``noise_floor`` is a variance (s²) the measurement noise is known to have at least
        (what the capture jitter both encoders measure explains): the adapted variance is
        raised to it, so the gate never rejects what is only that noise.

        Returns False when the measurement was rejected by the gate.
        """
        t = self._tuning
        if noise_floor > self._r:
            self._r = min(noise_floor, t.max_measurement_noise)
        r = self._r
        if not self.initialised or self._rejections_in_row >= t.reset_after:
            self._restart(now, measurement, r)
            return True
        self.predict(now)
        innovation = measurement - self.deviation
        s = self._p00 + r
        nis = innovation * innovation / s
        if nis > t.gate * t.gate:
            self._rejections_in_row += 1
            self.rejected += 1
            return False
        self._rejections_in_row = 0
        # Innovations have variance P00 + R: what exceeds the filter's own uncertainty is
        # measurement noise (timestamp jitter on both ends), tracked as it changes.
        observed = innovation * innovation - self._p00
        observed = min(max(observed, t.min_measurement_noise), t.max_measurement_noise)
        self._r += t.noise_adaptation * (observed - self._r)
        # Scale process noise by how surprised the filter keeps being (bounded both ways).
        self._nis += 0.05 * (nis - self._nis)
        self._q_scale = min(max(self._nis, 0.5), 4.0)
        k0 = self._p00 / s
        k1 = self._p01 / s
        self.deviation += k0 * innovation
        self.rate += k1 * innovation
        p00, p01, p11 = self._p00, self._p01, self._p11
        self._p00 = (1.0 - k0) * p00
        self._p01 = (1.0 - k0) * p01
        self._p11 = p11 - k1 * p01
        self.updates += 1
        return True

    def reset(self) -> None:
        """Forget the state; the next measurement starts the filter afresh (after a step that
        is known to be real, such as this encoder's own clock jumping)."""
        self.updates = 0
        self._rejections_in_row = 0

    def _restart(self, now: float, value: float, r: float) -> None:
        self.time = now
        self.deviation = value
        self.rate = 0.0
        self._p00 = r
        self._p01 = 0.0
        self._p11 = self._tuning.initial_rate_variance
        self._rejections_in_row = 0
        self._q_scale = 1.0
        self._nis = 1.0
        self.updates += 1

    def at(self, when: float) -> float:
        """The predicted deviation at ``when`` (no state change)."""
        if not self.initialised:
            return math.nan
        return self.deviation + self.rate * max(0.0, when - self.time)
