"""The virtual oscillator: offset, drift from its origin, steps from their instant, jitter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.clock import ClockStep, VirtualOscillator

START = 1.8e9


def test_offset_only_clock_reads_reference_plus_offset() -> None:
    clock = VirtualOscillator(offset=-0.150)
    for reference in (0.0, 12.5, START):
        assert clock.read(reference) == pytest.approx(reference - 0.150, abs=1e-6)
        assert clock.error(reference) == -0.150


def test_drift_accumulates_from_origin_at_the_stated_rate() -> None:
    clock = VirtualOscillator(offset=0.010, drift_ppm=100.0, origin=START)
    # At the origin only the offset shows; 100 ppm is 100 µs per second after it, and the
    # same amount less before it.
    assert clock.error(START) == pytest.approx(0.010)
    assert clock.error(START + 1000.0) == pytest.approx(0.010 + 0.100)
    assert clock.error(START - 1000.0) == pytest.approx(0.010 - 0.100)
    assert clock.read(START + 3600.0) - (START + 3600.0) == pytest.approx(0.010 + 0.360, abs=1e-6)


def test_negative_drift_runs_slow() -> None:
    clock = VirtualOscillator(drift_ppm=-50.0, origin=START)
    assert clock.read(START + 100.0) - clock.read(START) == pytest.approx(100.0 - 0.005, abs=1e-6)


def test_steps_apply_from_their_instant_on() -> None:
    clock = VirtualOscillator(
        offset=0.002,
        steps=(ClockStep(at=START + 10.0, step=0.250), ClockStep(at=START + 20.0, step=-0.100)),
    )
    assert clock.error(START + 9.999) == pytest.approx(0.002)
    assert clock.error(START + 10.0) == pytest.approx(0.252)
    assert clock.error(START + 19.0) == pytest.approx(0.252)
    assert clock.error(START + 20.0) == pytest.approx(0.152)
    assert clock.error(START + 1e6) == pytest.approx(0.152)


def test_jitter_adds_to_the_reading_but_not_to_the_error() -> None:
    clock = VirtualOscillator(offset=0.5, drift_ppm=20.0, origin=100.0)
    plain = clock.read(200.0)
    assert clock.read(200.0, jitter=0.003) - plain == pytest.approx(0.003)
    assert clock.read(200.0, jitter=-0.003) - plain == pytest.approx(-0.003)
    assert clock.error(200.0) == pytest.approx(0.5 + 20e-6 * 100.0)


@given(
    offset=st.floats(-1.0, 1.0),
    drift_ppm=st.floats(-99_999.0, 99_999.0),
    start=st.floats(0.0, 1e6),
    gaps=st.lists(st.floats(1e-3, 100.0), min_size=1, max_size=30),
)
def test_read_is_strictly_increasing_without_jitter(
    offset: float, drift_ppm: float, start: float, gaps: list[float]
) -> None:
    clock = VirtualOscillator(offset=offset, drift_ppm=drift_ppm, origin=start)
    reference = start
    previous = clock.read(reference)
    for gap in gaps:
        reference += gap
        now = clock.read(reference)
        assert now > previous
        previous = now


@pytest.mark.parametrize("drift_ppm", [1e5, -1e5, 1e6, math.inf, -math.inf, math.nan])
def test_invalid_drift_is_rejected(drift_ppm: float) -> None:
    with pytest.raises(ValueError):
        VirtualOscillator(drift_ppm=drift_ppm)


def test_default_oscillator_is_the_reference() -> None:
    clock = VirtualOscillator()
    assert clock.read(START) == START
    assert clock.error(START) == 0.0
