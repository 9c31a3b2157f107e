"""The confidence score: its documented curves, its bounds and its monotonicity."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.confidence import ConfidenceFactors, HealthSignals, confidence, factors

HEALTHY = HealthSignals(
    cpu_load=0.3,
    encode_latency=0.010,
    frame_period=0.040,
    esp_loss=0.0,
    jitter=0.001,
    corrections_per_minute=0.5,
)


def _with(**changes: float) -> HealthSignals:
    return dataclasses.replace(HEALTHY, **changes)


def test_perfect_health_is_full_confidence() -> None:
    assert confidence(HEALTHY) == 1.0
    assert factors(HEALTHY) == ConfidenceFactors(1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("cpu_load", "expected"),
    [(0.0, 1.0), (0.7, 1.0), (0.85, 0.6), (1.0, 0.2), (1.5, 0.2)],
)
def test_cpu_curve(cpu_load: float, expected: float) -> None:
    assert factors(_with(cpu_load=cpu_load)).cpu == pytest.approx(expected)


@pytest.mark.parametrize(
    ("encode_latency", "expected"),
    [(0.0, 1.0), (0.020, 1.0), (0.040, 0.5), (0.060, 0.0), (0.100, 0.0)],
)
def test_latency_curve_in_frame_periods(encode_latency: float, expected: float) -> None:
    assert factors(_with(encode_latency=encode_latency)).latency == pytest.approx(expected)


def test_latency_is_judged_against_the_frame_period() -> None:
    # 40 ms per frame is one period at 25 fps, but only half a period at 12.5 fps.
    assert factors(_with(encode_latency=0.040, frame_period=0.080)).latency == 1.0


@pytest.mark.parametrize(("loss", "expected"), [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0)])
def test_loss_curve(loss: float, expected: float) -> None:
    assert factors(_with(esp_loss=loss)).loss == pytest.approx(expected)


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [(0.0, 1.0), (0.002, 1.0), (0.011, 0.75), (0.020, 0.5), (0.5, 0.5)],
)
def test_jitter_curve(jitter: float, expected: float) -> None:
    assert factors(_with(jitter=jitter)).jitter == pytest.approx(expected)


@pytest.mark.parametrize(
    ("per_minute", "expected"),
    [(0.0, 1.0), (2.0, 1.0), (16.0, 0.75), (30.0, 0.5), (600.0, 0.5)],
)
def test_corrections_curve(per_minute: float, expected: float) -> None:
    assert factors(_with(corrections_per_minute=per_minute)).corrections == pytest.approx(expected)


def test_confidence_is_the_product_of_the_factors() -> None:
    signals = _with(cpu_load=0.85, esp_loss=0.25, jitter=0.011)
    assert confidence(signals) == pytest.approx(0.6 * 0.75 * 0.75)


def test_an_encoder_that_cannot_keep_up_has_no_confidence() -> None:
    assert confidence(_with(encode_latency=0.080)) == 0.0


@pytest.mark.parametrize(
    "changes",
    [
        {"cpu_load": -0.1},
        {"encode_latency": -0.001},
        {"frame_period": 0.0},
        {"frame_period": -0.04},
        {"esp_loss": -0.1},
        {"esp_loss": 1.01},
        {"jitter": math.nan},
        {"corrections_per_minute": math.inf},
        {"cpu_load": math.nan},
    ],
)
def test_bad_signals_are_errors(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        _with(**changes)


# --- properties -----------------------------------------------------------------------------


def _nonneg(high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=high)


SIGNALS = st.builds(
    HealthSignals,
    cpu_load=_nonneg(2.0),
    encode_latency=_nonneg(0.2),
    frame_period=st.floats(min_value=0.001, max_value=0.2),
    esp_loss=_nonneg(1.0),
    jitter=_nonneg(0.1),
    corrections_per_minute=_nonneg(100.0),
)

# Fields where a larger value is worse, with the largest valid value to test against.
WORSE_WHEN_LARGER = {
    "cpu_load": 2.0,
    "encode_latency": 0.2,
    "esp_loss": 1.0,
    "jitter": 0.1,
    "corrections_per_minute": 100.0,
}


@given(SIGNALS)
def test_confidence_is_within_unit_interval(signals: HealthSignals) -> None:
    value = confidence(signals)
    assert 0.0 <= value <= 1.0
    assert all(0.0 <= f <= 1.0 for f in dataclasses.astuple(factors(signals)))


@given(SIGNALS, st.sampled_from(sorted(WORSE_WHEN_LARGER)), st.data())
def test_a_worse_signal_never_raises_confidence(
    signals: HealthSignals, name: str, data: st.DataObject
) -> None:
    current: float = getattr(signals, name)
    worse_value = data.draw(st.floats(min_value=current, max_value=WORSE_WHEN_LARGER[name]))
    worse = dataclasses.replace(signals, **{name: worse_value})
    assert confidence(worse) <= confidence(signals)


@given(SIGNALS, st.data())
def test_a_shorter_frame_period_never_raises_confidence(
    signals: HealthSignals, data: st.DataObject
) -> None:
    """Less time per frame is a harder deadline for the same encode latency."""
    shorter = data.draw(st.floats(min_value=0.0005, max_value=signals.frame_period))
    assert confidence(dataclasses.replace(signals, frame_period=shorter)) <= confidence(signals)


@given(SIGNALS, SIGNALS)
def test_worse_in_every_signal_is_never_more_confident(a: HealthSignals, b: HealthSignals) -> None:
    worst = HealthSignals(
        cpu_load=max(a.cpu_load, b.cpu_load),
        encode_latency=max(a.encode_latency, b.encode_latency),
        frame_period=min(a.frame_period, b.frame_period),
        esp_loss=max(a.esp_loss, b.esp_loss),
        jitter=max(a.jitter, b.jitter),
        corrections_per_minute=max(a.corrections_per_minute, b.corrections_per_minute),
    )
    assert confidence(worst) <= min(confidence(a), confidence(b))
