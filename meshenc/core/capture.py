"""Capture-time smoothing: counting frames and letting the clock only steer the count.

Theory of operation: a raw capture timestamp carries the clock's read jitter and the
scheduling noise of the ingest path. Feeding it straight into ``floor(label × fps)`` would
let a few milliseconds of noise flip a timecode whenever a label sits near a slot boundary.
Instead each new frame is placed where counting says it should be — the previous smoothed
time plus a whole number of estimated frame periods (a lost frame counts as two periods) —
and the raw timestamp only nudges that prediction (an alpha–beta filter, the steady-state form
of a constant-velocity Kalman filter). Slow effects (clock drift, ingest-delay changes) pass
through to the label, where the mesh sees and corrects them; fast noise does not.

Invariants: the smoothed times of successive frames increase by at least half a period, except
that a raw timestamp more than two periods *behind* the smoothed time (the clock stepped back)
restarts the smoother at that timestamp; the period estimate stays within ``max_period_error``
of nominal.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CaptureSmoother", "SmoothedCapture"]


@dataclass(frozen=True, slots=True)
class SmoothedCapture:
    """One frame's smoothed capture time and how many frame periods passed since the last."""

    time: float
    periods: int


class CaptureSmoother:
    """Alpha–beta filter on a stream of capture timestamps at a nominal frame period."""

    __slots__ = ("_alpha", "_beta", "_max_error", "_nominal", "period", "time")

    def __init__(
        self,
        nominal_period: float,
        *,
        alpha: float = 0.08,
        beta: float = 0.002,
        max_period_error: float = 0.01,
    ) -> None:
        if nominal_period <= 0:
            raise ValueError("nominal period must be positive")
        if not (0 < alpha <= 1 and 0 <= beta < alpha):
            raise ValueError("need 0 < alpha <= 1 and 0 <= beta < alpha")
        self._nominal = nominal_period
        self._alpha = alpha
        self._beta = beta
        self._max_error = max_period_error
        self.period = nominal_period
        self.time: float | None = None

    def reset(self) -> None:
        """Forget the history, e.g. after the source stalled or the clock stepped."""
        self.period = self._nominal
        self.time = None

    def update(self, raw: float, periods: int | None = None) -> SmoothedCapture:
        """Smooth one raw capture timestamp (seconds on the encoder's clock).

        ``periods`` is how many frame periods passed since the previous picture when the
        source's own timestamps say so; without it they are counted from the arrival times.
        """
        if self.time is None:
            self.time = raw
            return SmoothedCapture(raw, 1)
        elapsed = raw - self.time
        if elapsed < -2.0 * self.period:
            # The clock went back by more than counting can explain (a step backwards): start
            # again from the new reading; the mesh sees the step and corrects the label.
            self.reset()
            self.time = raw
            return SmoothedCapture(raw, 1)
        if periods is None or periods < 1:
            periods = max(1, round(elapsed / self.period))
        predicted = self.time + periods * self.period
        residual = raw - predicted
        self.time = max(predicted + self._alpha * residual, self.time + 0.5 * self.period)
        period = self.period + self._beta * residual / periods
        low = self._nominal * (1.0 - self._max_error)
        high = self._nominal * (1.0 + self._max_error)
        self.period = min(max(period, low), high)
        return SmoothedCapture(self.time, periods)
