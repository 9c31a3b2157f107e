"""Capture-time smoothing: recovering the source's cadence the way a receiver recovers a clock.

Theory of operation: a raw capture timestamp is the measured arrival of a picture of a live
stream. It carries the clock's read jitter and the jitter of the ingest path (packetisation,
frame size, scheduling) — at 60 fps easily a quarter of the frame period. Feeding it straight
into ``floor(label × fps)`` would let that noise flip a timecode whenever a label sits near a
slot boundary. Instead the smoother fits the source's own cadence over many frames, as a
broadcast receiver recovers the sender's clock from PCR: a two-state Kalman filter of the
arrival time of the current picture and the frame period, with the picture's place in the
cadence given by *counting* (``periods`` since the previous picture: from the source's own
timestamps when the caller has them, from the arrival times otherwise). The smoothed time is
the fitted cadence at the picture, not the picture's arrival.

The fit adapts to what it measures. The measurement noise is the measured jitter: the spread
of the arrivals around the fitted cadence, tracked as it changes (``jitter``). The process
noise (``wander``) is how fast the cadence itself may change on the encoder's clock — clock
drift and ingest-delay changes, which pass through to the label, where the mesh sees and
corrects them. So the more jitter, the more frames the fit averages over: the steady-state
gain falls with the jitter and the frame period, and the uncertainty of the smoothed time
(``noise``) stays a small fraction of a frame even at a quarter frame of jitter (0.05 frames).

Robustness: a residual beyond ``gate`` standard deviations of what the fit expects is clipped
to that bound (one late picture must not drag the cadence); ``step_after`` clipped residuals in
a row on the same side mean the clock stepped or the ingest path changed: the smoother restarts
at the new reading and keeps its period. A late reading that comes less than half a period
after the one before it does not add to such a run but starts it again: that is a backlog
draining (a source that stalled for half a second sends the pictures it held at once, each
less late than the one before), and restarting on it put the labels of the drained pictures
two and a half frames late at 15 fps, then back, differently on each encoder; nor is such a
reading used in the fit, which goes on predicting until the arrivals are back on time. A
backlog sent more slowly (a sender or a relay on the way catching up at one and a half times
the frame rate) shows when the run is long enough to be a step: if its readings
came closer together than the periods they count, by more than a tenth of a period and what
the jitter explains, it is a backlog too, and late readings stay out of the fit until one is
on time again, the run counted afresh so that a path that slowed once the backlog was gone is
still taken for a step. Without the source's
period count, a gap counts as lost pictures only when it exceeds one period by half a period
plus three times the jitter, so that a late picture is not mistaken for a lost one (a miscount
would move the label by a whole frame); a loss this misses restarts the fit a few frames later
as a step.

Start-up: a fresh fit believes its earliest readings. Delays only add, and the first readings
of a stream are often late (a process still starting while pictures queue, a demuxer handing
over what it probed at once), so for its first ``warmup`` seconds of readings a fit restarts
when two readings in a row come more than three jitters (at least three of the jitter it starts
with) earlier than it predicts, forgetting the jitter it measured from them; a fit started on
a late reading would otherwise take a second or more to slide back, dragging the label with it
(measured: a restarted encoder locked in a whole frame off while its fit slid). The engine
measures its neighbours afresh after each such restart (``restarts`` counts them).

Resumption: readings made up by the caller while its input was lost (fillers on the fit's own
cadence) say nothing of when the source's pictures arrive. When the input is back
(``resume``), the fit starts again from the next reading, keeping its period, and warms up
anew: continued from the fillers, a fit whose first real readings came up to two periods
earlier than the fillers slid back half a period a picture, its labels late by up to three
periods for seven pictures (measured), which its neighbours read as a jump of this encoder's.

Invariants: the smoothed times of successive frames increase by at least half a period, except
that a raw timestamp more than two periods *behind* the smoothed time (the clock stepped back)
restarts the smoother at that timestamp; the period estimate stays within ``max_period_error``
of nominal; ``jitter`` stays within [``min_jitter``, ``max_jitter``].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CaptureSmoother", "SmoothedCapture"]


@dataclass(frozen=True, slots=True)
class SmoothedCapture:
    """One frame's smoothed capture time and how many frame periods passed since the last."""

    time: float
    periods: int

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(self, time: float, periods: int) -> None:
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "periods", periods)


class CaptureSmoother:
    """Kalman fit of a stream of capture timestamps to the source's cadence."""

    __slots__ = (
        "_alpha",
        "_beta",
        "_draining",
        "_early",
        "_gate",
        "_last_raw",
        "_max_error",
        "_max_var",
        "_memory",
        "_min_var",
        "_nominal",
        "_p00",
        "_p01",
        "_p11",
        "_period_before_run",
        "_q",
        "_r",
        "_r0",
        "_resumed",
        "_run",
        "_run_periods",
        "_run_started",
        "_seen",
        "_started_at",
        "_step_after",
        "_warming",
        "_warmup",
        "period",
        "restarts",
        "time",
    )

    def __init__(
        self,
        nominal_period: float,
        *,
        alpha: float | None = None,
        beta: float | None = None,
        max_period_error: float = 0.01,
        wander: float = 1e-6,
        initial_jitter: float = 0.002,
        min_jitter: float = 5e-5,
        max_jitter: float | None = None,
        jitter_memory: float = 1.0 / 256.0,
        gate: float = 4.0,
        step_after: int = 6,
        warmup: float = 0.5,
    ) -> None:
        """``wander`` is the spectral density of the cadence's rate changes, (s/s)²/s; the
        default holds ingest delays that swing by tens of milliseconds within a minute.
        ``alpha`` and ``beta`` fix the gains instead (an alpha–beta filter; tests, tools).
        ``max_jitter`` defaults to half a period."""
        if nominal_period <= 0:
            raise ValueError("nominal period must be positive")
        if (alpha is None) != (beta is None):
            raise ValueError("give both alpha and beta, or neither")
        if alpha is not None and beta is not None and not (0 < alpha <= 1 and 0 <= beta < alpha):
            raise ValueError("need 0 < alpha <= 1 and 0 <= beta < alpha")
        if wander <= 0 or min_jitter <= 0 or not 0 < jitter_memory <= 1 or gate <= 0:
            raise ValueError("wander, min_jitter, jitter_memory and gate must be positive")
        if warmup < 0:
            raise ValueError("warmup must not be negative")
        high = 0.5 * nominal_period if max_jitter is None else max_jitter
        if high < min_jitter:
            raise ValueError("max_jitter must not be below min_jitter")
        self._nominal = nominal_period
        self._alpha = alpha
        self._beta = beta
        self._max_error = max_period_error
        # Period variance added per frame of wander: (s/s)²/s × T² × T.
        self._q = wander * nominal_period**3
        self._min_var = min_jitter**2
        self._max_var = high**2
        self._memory = jitter_memory
        self._gate = gate
        self._step_after = step_after
        self._warmup = warmup
        #: Times the fit started again on early readings (``update``).
        self.restarts = 0
        #: Pictures in a row earlier than the fit expected, while it warms up.
        self._early = 0
        #: The fit's first reading since it was made or reset, and whether its readings have
        #: yet to span ``warmup`` seconds from it.
        self._started_at = 0.0
        self._warming = False
        #: Whether the next reading starts the fit again, keeping its period (``resume``).
        self._resumed = False
        self._r = self._r0 = min(max(initial_jitter**2, self._min_var), self._max_var)
        self.period = nominal_period
        self._period_before_run = nominal_period
        self.time: float | None = None
        self._p00 = self._p01 = self._p11 = 0.0
        self._run = 0
        #: The run's first reading and the periods counted since: its average spacing.
        self._run_started = 0.0
        self._run_periods = 0
        #: Whether late readings are a backlog draining, left out of the fit until one is on
        #: time again.
        self._draining = False
        #: The previous reading, as it came.
        self._last_raw = 0.0
        self._seen = 0

    @property
    def jitter(self) -> float:
        """The measured jitter: standard deviation (s) of arrivals around the fitted cadence."""
        return math.sqrt(self._r)

    @property
    def noise(self) -> float:
        """Standard deviation (s) of the smoothed time itself (what is left of the jitter)."""
        if self._alpha is not None:
            a, b = self._alpha, self._beta or 0.0
            return self.jitter * math.sqrt((2 * a * a + 2 * b - 3 * a * b) / (a * (4 - 2 * a - b)))
        return math.sqrt(self._p00) if self.time is not None else self.jitter

    @property
    def period_noise(self) -> float:
        """Standard deviation of the period estimate, as a fraction of the period (s/s)."""
        return math.sqrt(self._p11) / self._nominal

    def reset(self) -> None:
        """Forget the history, e.g. after the source stalled or the clock stepped."""
        self.period = self._nominal
        self.time = None
        self._resumed = False

    def resume(self) -> None:
        """The input is back after a loss the caller filled in: the next reading starts the
        fit again, on the cadence it had, and it warms up anew."""
        self._resumed = self.time is not None

    def _start(self, raw: float, keep_period: bool) -> SmoothedCapture:
        if not keep_period:
            self.period = self._nominal
            self._p11 = (self._max_error * self._nominal) ** 2
        self.time = raw
        self._p00 = self._r
        self._p01 = 0.0
        self._run = self._early = 0
        self._draining = False
        return SmoothedCapture(raw, 1)

    def update(self, raw: float, periods: int | None = None) -> SmoothedCapture:
        """Smooth one raw capture timestamp (seconds on the encoder's clock).

        ``periods`` is how many frame periods passed since the previous picture when the
        source's own timestamps say so; without it they are counted from the arrival times.
        """
        previous_raw, self._last_raw = self._last_raw, raw
        if self.time is None or self._resumed:
            self._started_at, self._warming = raw, True
            keep_period, self._resumed = self._resumed, False
            return self._start(raw, keep_period=keep_period)
        elapsed = raw - self.time
        if elapsed < -2.0 * self.period:
            # The clock went back by more than counting can explain (a step backwards): start
            # again from the new reading; the mesh sees the step and corrects the label.
            return self._start(raw, keep_period=False)
        if periods is None or periods < 1:
            # Count the pictures lost in a gap only when the gap is longer than one period by
            # half a period plus three times the jitter: with a quarter frame of jitter a late
            # picture now and then arrives half a period late, and taking it for a lost one
            # would move the label by a frame. A loss this misses shows as residuals of a
            # whole period in a row, which restart the fit (below) a few frames later.
            margin = 3.0 * self.jitter / self.period
            periods = 1 + max(0, round((elapsed - self.period) / self.period - margin))
        n = periods
        predicted = self.time + n * self.period
        residual = raw - predicted
        if self._warming:  # past its warm-up a fit never warms up again: one test per frame
            self._warming = raw - self._started_at < self._warmup
            # Early beyond three jitters, and never less than three of the jitter a fit starts
            # with: a young fit's own jitter estimate still swings from its first residuals.
            early = self._warming and residual < -3.0 * math.sqrt(max(self._r, self._r0))
            self._early = self._early + 1 if early else 0
        if self._early >= 2:
            # Still warming up, and two pictures in a row came earlier than the fit expects:
            # it started on late readings. Start again from this one (at most half a period
            # back from the last time, so that times still advance), on the nominal cadence,
            # with the jitter it started with: the late readings' residuals were no jitter.
            self._r, self._seen = self._r0, 0
            self._start(max(raw, self.time + 0.5 * self.period), keep_period=False)
            self.restarts += 1
            return SmoothedCapture(self.time, n)
        if self._alpha is not None:
            return self._fixed_gains(n, predicted, residual)
        q = self._q
        p00 = self._p00 + 2 * n * self._p01 + n * n * self._p11 + q * n**3 / 3.0
        p01 = self._p01 + n * self._p11 + q * n * n / 2.0
        p11 = self._p11 + q * n
        s = p00 + self._r
        bound = self._gate * math.sqrt(s)
        if abs(residual) > bound:
            side = 1 if residual > 0 else -1
            if side < 0:
                self._draining = False
            if self._run * side > 0:
                # A late reading that came less than half its periods after the one before is
                # a backlog draining (a source that stalled sends what it held at once), not
                # an arrival that moved and stayed: the run counts again from it.
                catching_up = side > 0 and raw - previous_raw < 0.5 * n * self.period
                if catching_up:
                    self._start_run(raw, side)
                else:
                    self._run += side
                    self._run_periods += n
            else:
                catching_up = False
                self._start_run(raw, side)
                self._period_before_run = self.period
            if side > 0 and self._run >= self._step_after and self._drains(raw):
                # Late readings closer together than their periods, all along the run: a
                # backlog sent faster than the frame rate but not at once. Not a step either.
                catching_up = self._draining = True
                self.period = self._period_before_run
                self._start_run(raw, side)
            if catching_up or (self._draining and side > 0):
                # Nor does it say when the source's pictures are due: the fit goes on without it,
                # as sure of its cadence as before (grown over a long backlog, the uncertainty
                # let the backlog's last late readings in with most of the weight: labels most
                # of a frame late after a backlog of 145 pictures).
                self.time = max(predicted, self.time + 0.5 * self.period)
                return SmoothedCapture(self.time, n)
            if abs(self._run) >= self._step_after:
                # The arrivals moved and stayed: a clock step or a new ingest path. Start again
                # from the reading with the cadence from before the run (the clipped residuals
                # that made it had pulled the period); the mesh sees the step and corrects it.
                self.period = self._period_before_run
                self._start(raw, keep_period=True)
                return SmoothedCapture(raw, n)
            residual = math.copysign(bound, residual)
        else:
            self._run = 0
            self._draining = False
        # Measured jitter: what the residuals show beyond the fit's own uncertainty (a plain
        # average over the first frames, then a moving one); not an early reading while the
        # fit warms up, which says the fit is late, not that arrivals jitter.
        if not self._early:
            self._seen += 1
            observed = min(max(residual * residual - p00, self._min_var), self._max_var)
            self._r += max(self._memory, 1.0 / self._seen) * (observed - self._r)
        k0, k1 = p00 / s, p01 / s
        time = predicted + k0 * residual
        self._p00 = (1.0 - k0) * p00
        self._p01 = (1.0 - k0) * p01
        self._p11 = p11 - k1 * p01
        self._set_period(self.period + k1 * residual)
        self.time = max(time, self.time + 0.5 * self.period)
        return SmoothedCapture(self.time, n)

    def _start_run(self, raw: float, side: int) -> None:
        self._run, self._run_started, self._run_periods = side, raw, 0

    def _drains(self, raw: float) -> bool:
        """Whether the late run's readings came closer together than the periods they count,
        by more than a tenth of a period and three times what the jitter can explain over the
        run (the spread of two readings, averaged over its periods): a backlog draining at
        more than about 1.1 times the frame rate; a path that moved keeps the cadence."""
        periods = self._run_periods
        if periods < 1:
            return False
        spacing = (raw - self._run_started) / periods
        slack = 0.1 * self.period + 3.0 * math.sqrt(2.0) * self.jitter / periods
        return spacing < self.period - slack

    def _fixed_gains(self, n: int, predicted: float, residual: float) -> SmoothedCapture:
        assert self._alpha is not None and self._beta is not None and self.time is not None
        self.time = max(predicted + self._alpha * residual, self.time + 0.5 * self.period)
        self._set_period(self.period + self._beta * residual / n)
        return SmoothedCapture(self.time, n)

    def _set_period(self, period: float) -> None:
        low = self._nominal * (1.0 - self._max_error)
        high = self._nominal * (1.0 + self._max_error)
        self.period = min(max(period, low), high)
