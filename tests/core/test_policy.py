"""Resync policies: the form of a shift, when each strategy fires, its lead, votes, steering."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.messages import CorrectionKind
from meshenc.core.policy import (
    ControlView,
    EpochPolicy,
    FreeRunningPolicy,
    PolicyTuning,
    PredictivePolicy,
    ReactivePolicy,
    Strategy,
    classify_shift,
    make_policy,
    plan_shift,
    time_to_boundary,
)
from meshenc.core.timecode import FrameRate

RATE = FrameRate(30)
PERIOD = RATE.period
TUNING = PolicyTuning()
TC = RATE.slot(1.8e9)
MIDDLE = RATE.slot_middle(TC)
BOUNDARY = TUNING.boundary * PERIOD  # 16.7 ms
TRIGGER = TUNING.trigger * PERIOD  # 8.3 ms


def _view(error: float, error_rate: float = 0.0, correction_rate: float = 0.0) -> ControlView:
    """A view in which the mesh gives the current picture slot TC (label = middle + error)."""
    return ControlView(
        now=MIDDLE,
        label=MIDDLE + error,
        error=error,
        error_rate=error_rate,
        correction_rate=correction_rate,
    )


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (0.0, CorrectionKind.SLEW),
        (0.45, CorrectionKind.SLEW),
        (-0.45, CorrectionKind.SLEW),
        (0.55, CorrectionKind.DUPLICATE),
        (1.5, CorrectionKind.DUPLICATE),
        (-0.55, CorrectionKind.DROP),
        (-3.0, CorrectionKind.DROP),
    ],
)
def test_classify_shift_from_mid_slot(frames: float, expected: CorrectionKind) -> None:
    assert classify_shift(RATE, MIDDLE, frames * PERIOD) is expected


def test_classify_shift_depends_on_where_the_label_sits() -> None:
    # The same 5 ms forward shift is invisible mid-slot but crosses the boundary near the end.
    near_end = RATE.slot_start(TC + 1) - 0.002
    assert classify_shift(RATE, MIDDLE, 0.005) is CorrectionKind.SLEW
    assert classify_shift(RATE, near_end, 0.005) is CorrectionKind.DUPLICATE
    assert classify_shift(RATE, RATE.slot_start(TC) + 0.002, -0.005) is CorrectionKind.DROP


def test_predictive_fires_on_the_predicted_error_while_the_current_one_is_small() -> None:
    policy = PredictivePolicy(RATE, TUNING)
    view = _view(error=0.002, error_rate=0.010)  # 2 ms now, 12 ms in a second
    plan = policy.decide(view)
    assert plan is not None
    assert plan.shift == pytest.approx(-0.002)
    assert plan.kind is CorrectionKind.SLEW
    assert not plan.needs_vote
    assert plan.lead == pytest.approx((BOUNDARY - 0.002) / 0.010)
    assert plan.lead > 0
    # The correction also steers the label rate against the drift.
    assert plan.new_rate == pytest.approx(-TUNING.steering_gain * 0.010)


def test_predictive_stays_quiet_when_now_and_later_are_both_small() -> None:
    policy = PredictivePolicy(RATE, TUNING)
    assert policy.decide(_view(error=0.002, error_rate=0.001)) is None
    assert policy.decide(_view(error=-0.008, error_rate=0.015)) is None  # -8 ms → +7 ms


def test_predictive_lead_is_nan_when_the_error_is_heading_in() -> None:
    policy = PredictivePolicy(RATE, TUNING)
    plan = policy.decide(_view(error=0.005, error_rate=-0.020))  # crosses zero to -15 ms
    assert plan is not None
    assert math.isnan(plan.lead)
    assert plan.shift == pytest.approx(-0.005)


def test_predictive_fires_on_a_large_current_error_without_a_rate() -> None:
    plan = PredictivePolicy(RATE, TUNING).decide(_view(error=-0.010))
    assert plan is not None
    assert math.isnan(plan.lead)
    assert plan.kind is CorrectionKind.SLEW
    assert not plan.needs_vote  # 10 ms is under a third of a frame


def test_reactive_fires_only_past_the_half_frame_boundary() -> None:
    policy = ReactivePolicy(RATE, TUNING)
    assert policy.decide(_view(error=0.9 * BOUNDARY, error_rate=0.5)) is None
    assert policy.decide(_view(error=-0.9 * BOUNDARY, error_rate=-0.5)) is None
    plan = policy.decide(_view(error=1.1 * BOUNDARY, correction_rate=3e-4))
    assert plan is not None
    # The label is already in the next slot: moving it back is a DROP, put to the vote.
    assert plan.kind is CorrectionKind.DROP
    assert plan.needs_vote
    assert plan.lead == 0.0
    assert plan.new_rate == 3e-4  # reactive does not touch the rate


@given(
    error=st.floats(-3 * PERIOD, 3 * PERIOD),
    error_rate=st.floats(-0.1, 0.1),
    correction_rate=st.floats(-5e-3, 5e-3),
)
def test_predictive_fires_whenever_reactive_does(
    error: float, error_rate: float, correction_rate: float
) -> None:
    view = _view(error, error_rate, correction_rate)
    predictive = PredictivePolicy(RATE, TUNING).decide(view)
    if ReactivePolicy(RATE, TUNING).decide(view) is not None:
        assert predictive is not None
    if predictive is not None:
        # The shift puts the label back at the middle of the mesh's slot.
        assert RATE.slot(view.label + predictive.shift) == TC
        assert predictive.lead >= 0 or math.isnan(predictive.lead)
        assert abs(predictive.new_rate) <= TUNING.max_rate


def _noisy(error: float, noise: float, rate_noise: float = 0.0) -> ControlView:
    view = _view(error)
    return ControlView(
        now=view.now,
        label=view.label,
        error=error,
        error_rate=0.0,
        correction_rate=0.0,
        noise=noise,
        rate_noise=rate_noise,
    )


def test_predictive_trigger_rises_with_the_measured_noise() -> None:
    policy = PredictivePolicy(RATE, TUNING)
    error = 0.3 * PERIOD  # past the quarter-frame trigger
    assert policy.decide(_noisy(error, 0.0)) is not None
    # With a tenth of a frame of noise on the error, 0.3 frames is within four sigma of 0:
    # measurement noise alone could show it, so it fires no correction...
    assert policy.decide(_noisy(error, 0.1 * PERIOD)) is None
    # ...and the same holds for noise on the rate, over the one-second horizon.
    assert policy.decide(_noisy(error, 0.0, 0.1 * PERIOD / TUNING.horizon)) is None
    # Small noise leaves the quarter-frame trigger as it was.
    assert policy.trigger(_noisy(error, 0.01 * PERIOD)) == pytest.approx(TRIGGER)


@given(noise=st.floats(0.0, 10 * PERIOD), rate_noise=st.floats(0.0, 1.0))
def test_predictive_trigger_stays_below_the_boundary(noise: float, rate_noise: float) -> None:
    # However noisy the measurements, the predictive policy still acts before reactive would.
    trigger = PredictivePolicy(RATE, TUNING).trigger(_noisy(0.0, noise, rate_noise))
    assert TRIGGER <= trigger <= TUNING.max_trigger * BOUNDARY


@pytest.mark.parametrize(
    ("frames", "kind", "needs_vote"),
    [
        (0.2, CorrectionKind.SLEW, False),
        (-0.2, CorrectionKind.SLEW, False),
        (0.4, CorrectionKind.SLEW, True),  # in-slot but above vote_threshold
        (-0.4, CorrectionKind.SLEW, True),
        (0.7, CorrectionKind.DROP, True),  # visible: always voted
        (-0.7, CorrectionKind.DUPLICATE, True),
    ],
)
def test_needs_vote(frames: float, kind: CorrectionKind, needs_vote: bool) -> None:
    plan = plan_shift(RATE, TUNING, _view(error=frames * PERIOD), 0.0, math.nan)
    assert (plan.kind, plan.needs_vote) == (kind, needs_vote)


def test_vote_threshold_is_tunable() -> None:
    lax = PolicyTuning(vote_threshold=0.45)
    assert not plan_shift(RATE, lax, _view(error=0.4 * PERIOD), 0.0, 0.0).needs_vote


def test_predictive_steering_works_against_the_drift() -> None:
    policy = PredictivePolicy(RATE, TUNING)
    assert policy.steer(_view(0.0, error_rate=2e-3, correction_rate=1e-4)) == pytest.approx(
        1e-4 - TUNING.steering_gain * 2e-3
    )
    assert policy.steer(_view(0.0, error_rate=-2e-3)) == pytest.approx(TUNING.steering_gain * 2e-3)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_predictive_steering_is_clamped(sign: float) -> None:
    policy = PredictivePolicy(RATE, TUNING)
    steered = policy.steer(_view(0.0, error_rate=-sign * 1.0, correction_rate=sign * 4e-3))
    assert steered == sign * TUNING.max_rate


def test_steering_gain_zero_turns_steering_off() -> None:
    policy = PredictivePolicy(RATE, PolicyTuning(steering_gain=0.0))
    assert policy.steer(_view(0.0, error_rate=3e-3, correction_rate=1e-3)) == 1e-3


@pytest.mark.parametrize(
    "policy",
    [ReactivePolicy(RATE, TUNING), EpochPolicy(), FreeRunningPolicy()],
    ids=["reactive", "epoch", "none"],
)
def test_other_policies_leave_the_rate_alone(
    policy: ReactivePolicy | EpochPolicy | FreeRunningPolicy,
) -> None:
    assert policy.steer(_view(0.004, error_rate=2e-3, correction_rate=7e-4)) == 7e-4


@pytest.mark.parametrize("policy", [EpochPolicy(), FreeRunningPolicy()], ids=["epoch", "none"])
def test_meshless_policies_never_correct(policy: EpochPolicy | FreeRunningPolicy) -> None:
    assert policy.decide(_view(error=2 * PERIOD, error_rate=0.1)) is None


def test_time_to_boundary() -> None:
    assert time_to_boundary(0.020, 0.001, BOUNDARY) == 0.0
    assert time_to_boundary(-BOUNDARY, 0.0, BOUNDARY) == 0.0
    assert math.isnan(time_to_boundary(0.005, 0.0, BOUNDARY))
    assert math.isnan(time_to_boundary(0.005, -0.001, BOUNDARY))
    assert math.isnan(time_to_boundary(-0.005, 0.001, BOUNDARY))
    assert time_to_boundary(0.005, 0.002, BOUNDARY) == pytest.approx((BOUNDARY - 0.005) / 0.002)
    assert time_to_boundary(-0.005, -0.002, BOUNDARY) == pytest.approx((BOUNDARY - 0.005) / 0.002)
    assert time_to_boundary(0.0, -0.004, BOUNDARY) == pytest.approx(BOUNDARY / 0.004)


@pytest.mark.parametrize(
    ("strategy", "kind", "uses_mesh", "counts_frames"),
    [
        (Strategy.PREDICTIVE, PredictivePolicy, True, False),
        (Strategy.REACTIVE, ReactivePolicy, True, False),
        (Strategy.EPOCH, EpochPolicy, False, False),
        (Strategy.NONE, FreeRunningPolicy, False, True),
    ],
)
def test_make_policy(strategy: Strategy, kind: type, uses_mesh: bool, counts_frames: bool) -> None:
    policy = make_policy(strategy, RATE)
    assert isinstance(policy, kind)
    assert policy.strategy is strategy
    assert (policy.uses_mesh, policy.counts_frames) == (uses_mesh, counts_frames)


def test_make_policy_passes_the_tuning_on() -> None:
    # With a trigger of a whole frame, a 10 ms error heading nowhere is left alone.
    quiet = make_policy(Strategy.PREDICTIVE, RATE, PolicyTuning(trigger=1.0, boundary=1.0))
    assert make_policy(Strategy.PREDICTIVE, RATE).decide(_view(error=0.010)) is not None
    assert quiet.decide(_view(error=0.010)) is None
