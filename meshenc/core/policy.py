"""Resync policies: when to correct, by how much, and in which form.

Theory of operation: the engine condenses what the mesh knows into a ``ControlView`` — the
error ``E`` between this encoder's label and the middle of the frame slot the mesh gives the
current picture, its rate, and the part of that rate that is relative to the neighbours (what
the per-neighbour Kalman filters measured). A policy turns the view into at most one
``PlannedCorrection``. The form follows from the size: a shift that keeps the label inside its
slot is a SLEW (invisible in the output); one that crosses a slot boundary is a DROP (label
moves back: one source frame is not encoded) or a DUPLICATE (label moves forward: one output
slot repeats a picture). Shifts beyond ``vote_threshold`` and every visible correction go to the
neighbours' vote first.

The four strategies share this interface so that the simulator compares them on equal terms:

- ``predictive`` — corrects when the error *predicted* ``horizon`` seconds ahead passes
  ``trigger`` (a quarter frame), long before the half-frame boundary, and between corrections
  steers the label rate against the measured drift, so one correction holds for a long while.
- ``reactive`` — the same mesh and measurements, but corrects only once the measured error has
  passed the half-frame boundary, i.e. after a picture has already been labelled differently.
- ``epoch`` — no mesh: timecodes straight from the local clock against the Unix epoch (the
  DASH-IF / EpochSegmentSync recipe). Correct only if clocks and ingest paths are identical.
- ``none`` — free-running: the first frame takes its timecode from the clock, later frames
  count up from it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

from meshenc.core.messages import CorrectionKind
from meshenc.core.timecode import FrameRate

__all__ = [
    "ControlView",
    "EpochPolicy",
    "FreeRunningPolicy",
    "PlannedCorrection",
    "PolicyTuning",
    "PredictivePolicy",
    "ReactivePolicy",
    "ResyncPolicy",
    "Strategy",
    "classify_shift",
    "make_policy",
    "plan_shift",
    "time_to_boundary",
]


class Strategy(enum.Enum):
    PREDICTIVE = "predictive"
    REACTIVE = "reactive"
    EPOCH = "epoch"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class PolicyTuning:
    """Thresholds in frames (fractions of one frame period) and seconds."""

    #: Predictive: correct when the predicted |error| passes this many frames.
    trigger: float = 0.25
    #: Predictive: how far ahead (s) the error is predicted.
    horizon: float = 1.0
    #: The boundary: past half a frame a picture gets another timecode than on the mesh.
    boundary: float = 0.5
    #: Largest frequency adjustment an encoder applies to its labels (s/s): ingest delays that
    #: swing by tens of milliseconds within a minute need thousands of ppm.
    max_rate: float = 5000e-6
    #: Shifts larger than this many frames are put to a vote even when they stay in-slot.
    vote_threshold: float = 1.0 / 3.0
    #: Predictive: share of the measured drift removed from the label rate per control step
    #: (frequency steering between corrections; 0 turns it off).
    steering_gain: float = 0.1
    #: Predictive: the trigger is at least this many standard deviations of the predicted
    #: error's noise (``ControlView.noise`` and ``rate_noise`` over the horizon), so that
    #: measurement noise alone does not fire corrections...
    noise_margin: float = 4.0
    #: ...but never more than this share of the boundary, so it still fires before it.
    max_trigger: float = 0.8


@dataclass(frozen=True, slots=True)
class ControlView:
    """What the engine knows at one control step. Seconds and seconds per second."""

    now: float
    label: float
    #: Own label minus the middle of the slot the mesh gives the current picture (s).
    error: float
    #: How fast the error grows: the own label's drift from the nominal frame grid (s/s).
    error_rate: float
    #: The label-rate adjustment in force (s/s).
    correction_rate: float
    #: Standard deviation of ``error`` (s) and of ``error_rate`` (s/s) that measurement noise
    #: alone explains (from the capture jitter the encoder measures); 0 when unknown.
    noise: float = 0.0
    rate_noise: float = 0.0

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(
        self,
        now: float,
        label: float,
        error: float,
        error_rate: float,
        correction_rate: float,
        noise: float = 0.0,
        rate_noise: float = 0.0,
    ) -> None:
        object.__setattr__(self, "now", now)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "error_rate", error_rate)
        object.__setattr__(self, "correction_rate", correction_rate)
        object.__setattr__(self, "noise", noise)
        object.__setattr__(self, "rate_noise", rate_noise)


@dataclass(frozen=True, slots=True)
class PlannedCorrection:
    """A correction a policy wants: add ``shift`` to the label, set the label rate adjustment
    to ``new_rate``. ``lead`` is how long before the half-frame boundary it fired (s, NaN when
    the error was not heading there)."""

    kind: CorrectionKind
    shift: float
    new_rate: float
    lead: float
    needs_vote: bool


def classify_shift(frame_rate: FrameRate, label: float, shift: float) -> CorrectionKind:
    """SLEW when ``label + shift`` stays in the slot of ``label``; else DROP or DUPLICATE."""
    before = frame_rate.slot(label)
    after = frame_rate.slot(label + shift)
    if after == before:
        return CorrectionKind.SLEW
    return CorrectionKind.DUPLICATE if after > before else CorrectionKind.DROP


def plan_shift(
    frame_rate: FrameRate,
    tuning: PolicyTuning,
    view: ControlView,
    new_rate: float,
    lead: float,
) -> PlannedCorrection:
    """A correction that cancels ``view.error``, in the form its size calls for."""
    shift = -view.error
    kind = classify_shift(frame_rate, view.label, shift)
    big = abs(shift) > tuning.vote_threshold * frame_rate.period
    return PlannedCorrection(kind, shift, new_rate, lead, big or kind != CorrectionKind.SLEW)


class ResyncPolicy(Protocol):
    strategy: Strategy
    #: Whether the policy needs neighbours' ESPs at all.
    uses_mesh: bool
    #: Whether timecodes count frames from the first one instead of following the label.
    counts_frames: bool

    @property
    def tolerance(self) -> float:
        """How far (frames) the policy lets an encoder's error grow before it acts."""
        ...

    def decide(self, view: ControlView) -> PlannedCorrection | None: ...

    def steer(self, view: ControlView) -> float:
        """The label-rate adjustment (s/s) to run with until the next control step."""
        ...


@dataclass(frozen=True, slots=True)
class _MeshPolicy:
    frame_rate: FrameRate
    tuning: PolicyTuning
    uses_mesh = True
    counts_frames = False

    def _plan(self, view: ControlView, new_rate: float, lead: float) -> PlannedCorrection:
        return plan_shift(self.frame_rate, self.tuning, view, new_rate, lead)

    def steer(self, view: ControlView) -> float:
        return view.correction_rate


class PredictivePolicy(_MeshPolicy):
    strategy = Strategy.PREDICTIVE

    @property
    def tolerance(self) -> float:
        return self.tuning.trigger

    def trigger(self, view: ControlView) -> float:
        """The predicted |error| (s) past which a correction fires: ``trigger`` frames, or
        ``noise_margin`` standard deviations of the predicted error where that is more (but
        at most ``max_trigger`` of the boundary)."""
        period = self.frame_rate.period
        t = self.tuning
        noise = math.hypot(view.noise, view.rate_noise * t.horizon)
        ceiling = t.max_trigger * t.boundary * period
        return max(t.trigger * period, min(t.noise_margin * noise, ceiling))

    def decide(self, view: ControlView) -> PlannedCorrection | None:
        period = self.frame_rate.period
        t = self.tuning
        predicted = view.error + view.error_rate * t.horizon
        limit = self.trigger(view)
        if abs(predicted) <= limit and abs(view.error) <= limit:
            return None
        lead = time_to_boundary(view.error, view.error_rate, t.boundary * period)
        return self._plan(view, self.steer(view), lead)

    def steer(self, view: ControlView) -> float:
        """Frequency steering: every encoder cancels its own label's drift from the frame
        grid. All of them see the same source cadence, so this keeps them together between
        corrections whatever their clocks and ingest paths do; the mesh only has to agree on
        the phase, which then changes slowly."""
        t = self.tuning
        new_rate = view.correction_rate - t.steering_gain * view.error_rate
        return min(max(new_rate, -t.max_rate), t.max_rate)


class ReactivePolicy(_MeshPolicy):
    strategy = Strategy.REACTIVE

    @property
    def tolerance(self) -> float:
        return self.tuning.boundary

    def decide(self, view: ControlView) -> PlannedCorrection | None:
        if abs(view.error) <= self.tuning.boundary * self.frame_rate.period:
            return None
        return self._plan(view, view.correction_rate, 0.0)


class _WithoutMesh:
    """Baselines: they never correct and never steer."""

    uses_mesh = False
    tolerance = math.inf

    def decide(self, view: ControlView) -> PlannedCorrection | None:
        return None

    def steer(self, view: ControlView) -> float:
        return view.correction_rate


class EpochPolicy(_WithoutMesh):
    strategy = Strategy.EPOCH
    counts_frames = False


class FreeRunningPolicy(_WithoutMesh):
    strategy = Strategy.NONE
    counts_frames = True


def time_to_boundary(error: float, rate: float, boundary: float) -> float:
    """Seconds until ``|error|`` reaches ``boundary`` at ``rate`` (0 if past, NaN if never)."""
    if abs(error) >= boundary:
        return 0.0
    if rate == 0.0 or (error != 0.0 and (rate > 0) != (error > 0)):
        return math.nan
    return (boundary - abs(error)) / abs(rate)


def make_policy(
    strategy: Strategy, frame_rate: FrameRate, tuning: PolicyTuning | None = None
) -> ResyncPolicy:
    tuning = tuning or PolicyTuning()
    if strategy is Strategy.PREDICTIVE:
        return PredictivePolicy(frame_rate, tuning)
    if strategy is Strategy.REACTIVE:
        return ReactivePolicy(frame_rate, tuning)
    if strategy is Strategy.EPOCH:
        return EpochPolicy()
    return FreeRunningPolicy()
