"""The deviation filter: convergence, rate, outlier gate, restarts, noise adaptation, covariance.

Nothing is mocked: the filter is fed seeded Gaussian samples of a known deviation and rate.
"""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.kalman import DeviationFilter, KalmanTuning

STEP = 0.1  # 10 Hz control period
#: A clock's drift is a constant rate; the default tuning allows for swinging ingest delays.
STEADY = KalmanTuning(process_noise=1e-12)


def _run(
    f: DeviationFilter,
    rng: random.Random,
    count: int,
    *,
    level: float = 0.0,
    rate: float = 0.0,
    noise: float = 0.0005,
    start: float = 0.0,
) -> float:
    """Feed ``count`` noisy samples of ``level + rate * t``; returns the time of the last."""
    t = start
    for i in range(count):
        t = start + i * STEP
        f.update(t, level + rate * t + rng.gauss(0.0, noise))
    return t


def _state(f: DeviationFilter) -> tuple[float, ...]:
    return (f.time, f.deviation, f.rate, f.deviation_variance, f.rate_variance)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_on_a_constant_deviation(seed: int) -> None:
    f = DeviationFilter()
    _run(f, random.Random(seed), 300, level=0.0123)
    assert f.deviation == pytest.approx(0.0123, abs=0.0005)
    assert abs(f.rate) < 2e-4
    assert f.rejected == 0
    # The filter knows it has converged: far less uncertain than one sample.
    assert math.sqrt(f.deviation_variance) < 0.0005


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_estimates_a_constant_rate(seed: int) -> None:
    f = DeviationFilter(STEADY)
    last = _run(f, random.Random(seed), 300, level=0.004, rate=300e-6)
    assert f.rate == pytest.approx(300e-6, abs=20e-6)
    assert f.deviation == pytest.approx(0.004 + 300e-6 * last, abs=0.0003)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_tuning_rate_is_within_its_own_uncertainty(seed: int) -> None:
    f = DeviationFilter()
    _run(f, random.Random(seed), 300, level=0.004, rate=300e-6)
    assert f.rate > 0
    assert abs(f.rate - 300e-6) < 3.0 * math.sqrt(f.rate_variance)


def test_at_extrapolates_with_the_rate_and_changes_nothing() -> None:
    f = DeviationFilter(STEADY)
    _run(f, random.Random(5), 200, level=-0.002, rate=-150e-6)
    before = _state(f)
    assert f.at(f.time + 2.0) == pytest.approx(f.deviation + 2.0 * f.rate)
    assert f.at(f.time + 2.0) == pytest.approx(-0.002 - 150e-6 * (f.time + 2.0), abs=0.0003)
    assert f.at(f.time - 5.0) == f.deviation  # the past is not extrapolated backwards
    assert _state(f) == before


def test_at_is_nan_before_the_first_measurement() -> None:
    assert math.isnan(DeviationFilter().at(10.0))


def test_a_wild_outlier_is_rejected_and_moves_nothing() -> None:
    f = DeviationFilter()
    twin = DeviationFilter()
    last = _run(f, random.Random(7), 200, level=0.003)
    _run(twin, random.Random(7), 200, level=0.003)
    t = last + STEP
    assert f.update(t, 0.003 + 0.050) is False
    assert (f.rejected, f.updates) == (1, 200)
    # Apart from prediction to the same instant, the state is what it would have been.
    twin.predict(t)
    assert _state(f) == _state(twin)
    assert f.measurement_noise == twin.measurement_noise
    # A normal sample right after is taken again.
    assert f.update(t + STEP, 0.003) is True


def test_a_persistent_step_restarts_the_filter_at_the_new_level() -> None:
    tuning = KalmanTuning()
    f = DeviationFilter(tuning)
    rng = random.Random(8)
    t = _run(f, rng, 200, level=0.003)
    for _ in range(tuning.reset_after):
        t += STEP
        assert f.update(t, 0.040 + rng.gauss(0.0, 0.0005)) is False
    t += STEP
    assert f.update(t, 0.0401) is True
    assert (f.deviation, f.rate, f.time) == (0.0401, 0.0, t)
    # From there on the new level is normal.
    _run(f, rng, 50, level=0.040, start=t + STEP)
    assert f.deviation == pytest.approx(0.040, abs=0.0005)
    assert f.rejected == tuning.reset_after


def test_rejections_must_be_in_a_row_to_restart() -> None:
    f = DeviationFilter()
    rng = random.Random(9)
    t = _run(f, rng, 200, level=0.003)
    for _ in range(5):  # outlier, good, outlier, good, ...
        t += STEP
        assert f.update(t, 0.080) is False
        t += STEP
        assert f.update(t, 0.003 + rng.gauss(0.0, 0.0005)) is True
    assert f.deviation == pytest.approx(0.003, abs=0.0005)


def test_reset_makes_the_next_update_restart() -> None:
    f = DeviationFilter()
    t = _run(f, random.Random(10), 100, level=0.003, rate=1e-4)
    f.reset()
    assert not f.initialised
    assert f.update(t + STEP, 0.0031) is True  # an ordinary sample, taken as a fresh start
    assert (f.deviation, f.rate, f.time) == (0.0031, 0.0, t + STEP)
    assert f.updates == 1


def test_measurement_noise_adapts_to_the_observed_spread() -> None:
    adapted = {}
    for noise in (0.0002, 0.003):
        f = DeviationFilter()
        _run(f, random.Random(11), 600, level=0.01, noise=noise)
        adapted[noise] = f.measurement_noise
        # The estimate is a variance of the right size (within a factor of two).
        assert noise**2 / 2 < f.measurement_noise < noise**2 * 2
    assert adapted[0.003] > 50 * adapted[0.0002]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_known_noise_floor_keeps_the_gate_from_rejecting_mere_noise(seed: int) -> None:
    # Samples far noisier (4 ms) than the filter's starting guess (2 ms) and its adapted one
    # after a quiet start: told the floor the capture jitter explains, the filter rejects none
    # of them; without it, it starts rejecting honest samples as jumps.
    floor = 0.004**2
    counts = []
    for with_floor in (True, False):
        rng = random.Random(seed)
        f = DeviationFilter()
        for i in range(300):
            f.update(i * STEP, rng.gauss(0.0, 0.0002), floor if with_floor else 0.0)
        for i in range(300, 400):
            f.update(i * STEP, rng.gauss(0.0, 0.004), floor if with_floor else 0.0)
        counts.append(f.rejected)
    assert counts[0] == 0, f"seed {seed}: {counts}"
    assert counts[1] > 0, f"seed {seed}: {counts}"


@given(
    steps=st.lists(st.tuples(st.floats(0.0, 10.0), st.floats(-1.0, 1.0)), min_size=1, max_size=60),
    resets=st.sets(st.integers(0, 59), max_size=3),
)
def test_covariance_stays_positive(steps: list[tuple[float, float]], resets: set[int]) -> None:
    f = DeviationFilter()
    t = 1.8e9
    for i, (dt, measurement) in enumerate(steps):
        if i in resets:
            f.reset()
        t += dt
        f.update(t, measurement)
        assert f.deviation_variance > 0
        assert f.rate_variance > 0
        assert math.isfinite(f.deviation) and math.isfinite(f.rate)
        assert f.measurement_noise > 0


def test_predict_to_an_earlier_time_is_a_no_op() -> None:
    f = DeviationFilter()
    t = _run(f, random.Random(12), 50, level=0.001, rate=2e-4)
    before = _state(f)
    f.predict(t - 3.0)
    f.predict(t)
    assert _state(f) == before
    f.predict(t + 1.0)
    assert f.time == t + 1.0
    assert f.deviation_variance > before[3]


def test_predict_before_any_measurement_does_nothing() -> None:
    f = DeviationFilter()
    f.predict(5.0)
    assert not f.initialised
    assert math.isnan(f.time)


def test_filtered_deviation_is_steadier_than_the_samples() -> None:
    # The filtered deviation is much steadier than the raw samples it is fed.
    f = DeviationFilter(STEADY)
    rng = random.Random(15)
    estimates = []
    for i in range(600):
        f.update(i * STEP, 0.002 + rng.gauss(0.0, 0.001))
        if i >= 100:
            estimates.append(f.deviation)
    assert statistics.pstdev(estimates) < 0.2 * 0.001
