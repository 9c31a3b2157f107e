"""Capture smoothing: counting frames, filtering jitter, tracking frequency, keeping its bounds."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.capture import CaptureSmoother, SmoothedCapture

PERIOD = 1.0 / 30.0
#: Resolution of a float label near START (seconds).
QUANTUM = 2.5e-7
START = 1.8e9


def _feed(smoother: CaptureSmoother, raws: list[float]) -> list[SmoothedCapture]:
    return [smoother.update(raw) for raw in raws]


@pytest.mark.parametrize(
    # Epoch-sized raw times are themselves rounded to 2**-22 s; the filter sees that as noise.
    ("start", "tolerance"),
    [(0.0, 1e-9), (START, 5e-6)],
)
def test_even_jitter_free_input_passes_through(start: float, tolerance: float) -> None:
    raws = [start + i * PERIOD for i in range(2000)]
    out = _feed(CaptureSmoother(PERIOD), raws)
    assert [o.periods for o in out] == [1] * 2000
    for o, raw in zip(out, raws, strict=True):
        assert o.time == pytest.approx(raw, abs=tolerance)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gaussian_jitter_is_smoothed_away(seed: int) -> None:
    rng = random.Random(seed)
    smoother = CaptureSmoother(PERIOD)
    raw_dev: list[float] = []
    smooth_dev: list[float] = []
    for i in range(3000):
        true = START + i * PERIOD
        jitter = rng.gauss(0.0, 0.002)
        out = smoother.update(true + jitter)
        if i >= 300:  # past the settling of the period estimate
            raw_dev.append(jitter)
            smooth_dev.append(out.time - true)
    assert statistics.pstdev(smooth_dev) < 0.5 * statistics.pstdev(raw_dev)
    # Smoothing must not bias the labels either.
    assert abs(statistics.fmean(smooth_dev)) < 0.0003


def test_a_lost_frame_counts_two_periods_and_adds_no_offset() -> None:
    smoother = CaptureSmoother(PERIOD)
    _feed(smoother, [START + i * PERIOD for i in range(100)])
    out = smoother.update(START + 101 * PERIOD)  # frame 100 never arrived
    assert out.periods == 2
    assert out.time == pytest.approx(START + 101 * PERIOD, abs=1e-6)
    after = smoother.update(START + 102 * PERIOD)
    assert after.periods == 1
    assert after.time == pytest.approx(START + 102 * PERIOD, abs=1e-6)


def test_several_lost_frames_are_counted() -> None:
    smoother = CaptureSmoother(PERIOD)
    _feed(smoother, [START + i * PERIOD for i in range(10)])
    assert smoother.update(START + 14 * PERIOD).periods == 5


def test_steady_frequency_error_is_tracked() -> None:
    true_period = PERIOD * (1.0 + 200e-6)
    smoother = CaptureSmoother(PERIOD)
    residuals = []
    for i in range(3000):
        true = START + i * true_period
        residuals.append(smoother.update(true).time - true)
    # The period estimate has moved from nominal to the true period (a 6.7 µs difference)...
    assert smoother.period == pytest.approx(true_period, abs=0.05 * (true_period - PERIOD))
    # ...so after settling the smoothed times do not lag the true ones.
    assert max(abs(r) for r in residuals[500:]) < 5e-6


@pytest.mark.parametrize("factor", [1.05, 0.95])
def test_period_estimate_is_clamped(factor: float) -> None:
    smoother = CaptureSmoother(PERIOD, max_period_error=0.01)
    _feed(smoother, [START + i * PERIOD * factor for i in range(2000)])
    bound = PERIOD * (1.0 + (0.01 if factor > 1 else -0.01))
    assert smoother.period == pytest.approx(bound, rel=1e-12)


def test_reset_forgets_the_history() -> None:
    smoother = CaptureSmoother(PERIOD)
    _feed(smoother, [START + i * PERIOD * 1.005 for i in range(1000)])
    smoother.reset()
    assert smoother.period == PERIOD
    out = smoother.update(START + 7.0)  # taken as is, not as a count of periods
    assert out == SmoothedCapture(START + 7.0, 1)


@given(
    seed=st.integers(0, 2**32 - 1),
    jitter=st.floats(0.0, 0.02),
    loss=st.floats(0.0, 0.3),
    count=st.integers(2, 300),
)
def test_successive_outputs_advance_by_at_least_half_a_period(
    seed: int, jitter: float, loss: float, count: int
) -> None:
    rng = random.Random(seed)
    smoother = CaptureSmoother(PERIOD)
    previous: float | None = None
    for i in range(count):
        if rng.random() < loss:
            continue
        raw = START + i * PERIOD + rng.gauss(0.0, jitter)
        period = smoother.period
        out = smoother.update(raw)
        if previous is not None and raw < previous - 2 * period:
            assert out.time == raw  # the documented restart after a step back
        elif previous is not None:
            # Labels near 1.8e9 s are quantised to 2.4e-7 s; allow that much.
            assert out.time - previous >= 0.5 * period - QUANTUM
        previous = out.time
        assert abs(smoother.period - PERIOD) <= 0.01 * PERIOD * (1 + 1e-12)


def test_a_clock_stepping_back_restarts_the_smoother_at_the_new_reading() -> None:
    smoother = CaptureSmoother(PERIOD)
    _feed(smoother, [START + i * PERIOD for i in range(10)])
    stepped = smoother.update(START - 1.0)  # the clock stepped back by a second
    assert (stepped.time, stepped.periods) == (START - 1.0, 1)
    following = smoother.update(START - 1.0 + PERIOD)
    assert following.time == pytest.approx(START - 1.0 + PERIOD, abs=1e-9)


def test_output_advances_by_half_a_period_even_when_raw_times_stand_still() -> None:
    smoother = CaptureSmoother(PERIOD, alpha=1.0, beta=0.0)
    first = smoother.update(START).time
    second = smoother.update(START).time
    assert second - first >= 0.5 * PERIOD - QUANTUM


@pytest.mark.parametrize(
    ("nominal", "alpha", "beta"),
    [(0.0, 0.08, 0.002), (-PERIOD, 0.08, 0.002), (PERIOD, 0.0, 0.0), (PERIOD, 1.5, 0.0)],
)
def test_invalid_settings_are_rejected(nominal: float, alpha: float, beta: float) -> None:
    with pytest.raises(ValueError):
        CaptureSmoother(nominal, alpha=alpha, beta=beta)


def test_beta_must_stay_below_alpha() -> None:
    with pytest.raises(ValueError):
        CaptureSmoother(PERIOD, alpha=0.1, beta=0.1)


# --- live ingest: jitter that is a large part of the frame period -------------------------------

RATES = [25.0, 30000 / 1001, 50.0, 60000 / 1001, 60.0]


def _jittered(rate: float, fraction: float, seed: int, count: int) -> list[tuple[float, float]]:
    """(true arrival, measured arrival) of ``count`` pictures with Gaussian jitter."""
    rng = random.Random(seed)
    period = 1.0 / rate
    return [
        (START + i * period, START + i * period + rng.gauss(0.0, fraction * period))
        for i in range(count)
    ]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("seed", [1, 2])
def test_quarter_frame_jitter_never_flips_a_timecode(rate: float, seed: int) -> None:
    # Arrivals in the middle of their slots, jittered by a quarter period: the smoothed time,
    # fitted with the source's period count, must stay far inside the slot.
    period = 1.0 / rate
    smoother = CaptureSmoother(period)
    worst = 0.0
    for i, (true, raw) in enumerate(_jittered(rate, 0.25, seed, int(60 * rate))):
        out = smoother.update(raw + 0.5 * period, None if i == 0 else 1)
        if i >= 2 * rate:  # past the first two seconds of fitting
            worst = max(worst, abs(out.time - 0.5 * period - true))
    assert worst < 0.25 * period, f"seed {seed}: {worst / period:.3f} of a period"


@pytest.mark.parametrize("rate", [30.0, 60.0])
def test_the_jitter_is_measured(rate: float) -> None:
    period = 1.0 / rate
    smoother = CaptureSmoother(period)
    for i, (_, raw) in enumerate(_jittered(rate, 0.2, 7, int(60 * rate))):
        smoother.update(raw, None if i == 0 else 1)
    assert smoother.jitter == pytest.approx(0.2 * period, rel=0.2)


def test_more_jitter_means_a_longer_fit() -> None:
    # The smoothed time's own noise, relative to the jitter, falls as the jitter grows: the
    # fit averages over more frames.
    period = 1.0 / 60.0
    ratios = []
    for fraction in (0.02, 0.25):
        smoother = CaptureSmoother(period)
        for i, (_, raw) in enumerate(_jittered(60.0, fraction, 3, 3600)):
            smoother.update(raw, None if i == 0 else 1)
        ratios.append(smoother.noise / smoother.jitter)
    assert ratios[1] < 0.8 * ratios[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_late_picture_is_not_taken_for_a_lost_one(seed: int) -> None:
    # Without the source's period count, at a quarter frame of jitter: no picture was lost, so
    # every picture must count as one period, and the smoothed times must never skip a slot.
    period = 1.0 / 60.0
    smoother = CaptureSmoother(period)
    out = [smoother.update(raw) for _, raw in _jittered(60.0, 0.25, seed, 3600)]
    assert [o.periods for o in out[1:]].count(1) == len(out) - 1, f"seed {seed}"
    steps = [b.time - a.time for a, b in itertools.pairwise(out[120:])]
    assert max(steps) < 1.5 * period and min(steps) > 0.5 * period, f"seed {seed}"


@pytest.mark.parametrize("step", [0.025, -0.06])
def test_a_clock_step_restarts_the_fit_within_a_few_frames(step: float) -> None:
    period = 1.0 / 30.0
    smoother = CaptureSmoother(period)
    for i in range(300):
        smoother.update(START + i * period, None if i == 0 else 1)
    for i in range(300, 300 + 10):
        out = smoother.update(START + i * period + step, 1)
    assert out.time == pytest.approx(START + 309 * period + step, abs=1e-3)
    assert smoother.period == pytest.approx(period, rel=1e-3)


def _stalled_source(
    fps: int, stall: float, step: float = 0.0, speed: float = math.inf
) -> list[float]:
    """Arrivals of a live source (2 ms of jitter, seed fixed) that stalls ``stall`` seconds 10 s
    in and then sends the pictures it held at ``speed`` times the frame rate (at once by
    default) until it has caught up; from a second after it caught up on, the path is ``step``
    seconds slower for good."""
    rng = random.Random(3)
    period, stalled_at = 1.0 / fps, START + 10.0
    resumed = stalled_at + stall
    raws, held, caught_up = [], 0, math.inf
    for i in range(20 * fps):
        due = START + i * period
        sent = due
        if due >= stalled_at:
            backlog = resumed + held * period / speed
            if backlog > due:
                sent, held = backlog, held + 1
            else:
                caught_up = min(caught_up, due)
        slower = step if due >= caught_up + 1.0 else 0.0
        raws.append(sent + slower + rng.gauss(0.0, 0.002))
    return raws


@pytest.mark.parametrize(("fps", "stall"), [(15, 0.5), (15, 1.5), (30, 0.5), (60, 0.5), (60, 1.0)])
def test_a_source_that_stalls_and_sends_its_backlog_at_once_keeps_the_cadence(
    fps: int, stall: float
) -> None:
    """The held pictures arrive late, each less late than the one before: a backlog draining,
    not a path that moved. Taken for a step, the fit restarted on one of them and put the
    next labels up to 2.5 frames late at 15 fps (25 at 60), then came back."""
    period = 1.0 / fps
    smoother = CaptureSmoother(period)
    raws = _stalled_source(fps, stall)
    out = [smoother.update(raw, None if i == 0 else 1).time for i, raw in enumerate(raws)]
    off = [(time - (START + i * period)) / period for i, time in enumerate(out)]
    assert max(abs(o) for o in off[5 * fps :]) < 0.1


@pytest.mark.parametrize(
    ("fps", "stall", "speed"),
    [(30, 1.0, 1.5), (30, 1.0, 1.25), (60, 1.0, 1.5), (15, 2.0, 1.25), (30, 0.5, 3.0)],
)
def test_a_backlog_sent_faster_than_the_frame_rate_but_not_at_once_keeps_the_cadence(
    fps: int, stall: float, speed: float
) -> None:
    """Each held picture comes less than a period after the one before, but more than half a
    period: no single reading tells a backlog from a step. Taken for a step, the fit restarted
    on a late reading and the labels went as late as the backlog (28 frames at 30 fps)."""
    period = 1.0 / fps
    smoother = CaptureSmoother(period)
    raws = _stalled_source(fps, stall, speed=speed)
    out = [smoother.update(raw, None if i == 0 else 1).time for i, raw in enumerate(raws)]
    off = [(time - (START + i * period)) / period for i, time in enumerate(out)]
    assert max(abs(o) for o in off[5 * fps :]) < 0.25


@pytest.mark.parametrize("speed", [math.inf, 1.5])
def test_a_path_that_slows_for_good_after_a_stall_is_still_followed(speed: float) -> None:
    fps, step = 30, 0.1
    period = 1.0 / fps
    smoother = CaptureSmoother(period)
    raws = _stalled_source(fps, 0.5, step, speed)
    out = [smoother.update(raw, None if i == 0 else 1).time for i, raw in enumerate(raws)]
    # Three seconds after the path slowed, the labels are on its new delay.
    assert abs(out[-1] - (START + (len(raws) - 1) * period + step)) < 0.1 * period


@pytest.mark.parametrize(
    "late",
    [
        [0.045],  # one late first reading
        [0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01],  # a queue drained at start-up
        [(30 - k) * PERIOD for k in range(30)],  # a second of probed pictures handed over at once
    ],
)
def test_a_fit_started_on_late_readings_is_on_the_cadence_after_its_warmup(
    late: list[float],
) -> None:
    """Delays only add: a fresh fit restarts on earlier readings while it warms up (half a
    second of readings), so that from then on its times are the pictures' true cadence, not
    the late start (a plain fit is still tens of milliseconds off then, and slides for
    seconds). Each restart is counted, for the engine to measure its neighbours afresh."""
    rng = random.Random(7)
    smoother = CaptureSmoother(PERIOD)
    first = None
    for i in range(300):
        true = START + i * PERIOD
        raw = true + (late[i] if i < len(late) else 0.0) + abs(rng.gauss(0.0, 0.0015))
        out = smoother.update(raw, None if i == 0 else 1)
        first = raw if first is None else first
        if raw - first >= 0.5:
            assert abs(out.time - true) < 0.25 * PERIOD, (i, out.time - true)
    assert smoother.restarts > 0


@pytest.mark.parametrize("earlier", [0.2 * PERIOD, 1.5 * PERIOD, 1.9 * PERIOD])
def test_a_resumed_fit_follows_the_returning_arrivals_at_once(earlier: float) -> None:
    """Fillers on the fit's cadence, then the input back with pictures that arrived up to two
    periods before the fillers' times (they queued while the input was being read again):
    resumed, the fit's times are the real arrivals from the first picture, its period kept;
    carried on from the fillers, they sit up to three periods late for several pictures."""

    def run(resume: bool) -> list[float]:
        smoother = CaptureSmoother(PERIOD)
        for i in range(60):
            smoother.update(START + i * PERIOD, None if i == 0 else 1)
        period = smoother.period
        for i in range(60, 90):  # the input is lost: fillers on the fit's own cadence
            smoother.update(START + i * PERIOD, 1)
        if resume:
            smoother.resume()
        back = START + 90 * PERIOD - earlier
        lags = [smoother.update(back, None).time - back]
        lags += [smoother.update(back + k * PERIOD, 1).time - (back + k * PERIOD) for k in (1, 2)]
        if resume:
            assert smoother.period == period
        return lags

    assert max(abs(lag) for lag in run(resume=True)) < 1e-6
    assert max(run(resume=False)) > (0.5 * PERIOD if earlier > PERIOD else 0.1 * earlier)


def test_resuming_a_fit_that_never_started_changes_nothing() -> None:
    smoother = CaptureSmoother(PERIOD)
    smoother.resume()
    assert smoother.update(START) == SmoothedCapture(START, 1)
    assert smoother.update(START + PERIOD, 1).time == pytest.approx(START + PERIOD, abs=1e-6)
