"""Picture identity and source cadence (meshenc.core.identity): pure functions of their input."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshenc.core.identity import NO_IDENTITY, FingerprintWindow, SourceCadence, source_identity

TS = Fraction(1, 90_000)


def test_a_timestamp_names_a_picture_alike_across_the_wrap_and_never_as_none() -> None:
    assert source_identity(0) != NO_IDENTITY
    assert source_identity(3003) == source_identity(3003 + (1 << 33))  # the same wrapped PTS
    assert len({source_identity(p) for p in range(0, 90_000, 3003)}) == 30


def test_a_window_of_distinct_fingerprints_names_a_picture_and_a_repeat_names_none() -> None:
    a, b = FingerprintWindow(4), FingerprintWindow(4)
    seen = [11, 12, 13, 14, 15]
    names_a = [a.identify(f) for f in seen]
    names_b = [b.identify(f) for f in seen]
    assert names_a[:3] == [NO_IDENTITY] * 3  # not a whole window yet
    assert names_a == names_b and NO_IDENTITY not in names_a[3:]
    assert names_a[3] != names_a[4]
    # A freeze (the same picture again) is ambiguous until it has left the window.
    frozen = [a.identify(f) for f in (15, 16, 17, 18, 19)]
    assert frozen[:3] == [NO_IDENTITY] * 3 and NO_IDENTITY not in frozen[3:]
    # Black, black, black: once the window is all black, never a name.
    black = [a.identify(0xB1AC) for _ in range(10)]
    assert black[1:] == [NO_IDENTITY] * 9


def test_window_names_depend_on_order_and_a_reset_forgets() -> None:
    w = FingerprintWindow(2)
    w.identify(1)
    forward = w.identify(2)
    w.reset()
    assert w.identify(2) == NO_IDENTITY
    assert w.identify(1) not in (NO_IDENTITY, forward)
    with pytest.raises(ValueError):
        FingerprintWindow(1)


@pytest.mark.parametrize(
    ("rate", "step"), [(Fraction(25), 3600), (Fraction(30000, 1001), 3003), (Fraction(60), 1500)]
)
def test_cadence_counts_periods_on_the_source_clock(rate: Fraction, step: int) -> None:
    cadence = SourceCadence(1 / rate)
    pts = (1 << 33) - 2 * step  # two pictures before the 33-bit wrap
    assert cadence.periods(pts, TS) is None  # nothing to count from yet
    counts = []
    for gap in (1, 1, 2, 1, 3):
        pts = (pts + gap * step) & ((1 << 33) - 1)
        counts.append(cadence.periods(pts, TS))
    assert counts == [1, 1, 2, 1, 3]


def test_cadence_gives_no_count_across_a_discontinuity() -> None:
    cadence = SourceCadence(Fraction(1, 30))
    cadence.periods(900_000, TS)
    assert cadence.periods(900_000 + 5 * 90_000, TS) is None  # a 5 s jump: a restart
    assert cadence.periods(900_000 + 5 * 90_000 + 3000, TS) == 1
    assert cadence.periods(100, TS) is None  # backwards, and not a wrap (far from 2**33)
    cadence.reset()
    assert cadence.periods(3100, TS) is None
    ms = SourceCadence(Fraction(1, 50))
    ms.periods(1000, Fraction(1, 1000))
    assert ms.periods(1040, Fraction(1, 1000)) == 2


def _counted_as_fractions(
    last: int, pts: int, time_base: Fraction, period: Fraction, max_gap: float
) -> int | None:
    """The count as the timestamps' fractions of seconds give it: the step, modulo the wrap
    for MPEG-TS's time base, rounded to periods half to even."""
    step = (pts - last) * time_base
    if time_base == TS:
        step = ((pts - last) & ((1 << 33) - 1)) * TS
    if step <= 0 or step > max_gap:
        return None
    return max(1, round(step / period))


@given(
    last=st.integers(0, (1 << 33) - 1),
    gap=st.integers(-200_000, 200_000),
    time_base=st.sampled_from([TS, Fraction(1, 1000), Fraction(1, 48_000), Fraction(1001, 30_000)]),
    rate=st.sampled_from([Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(60)]),
    max_gap=st.sampled_from([1.0, 0.5, 2.75]),
)
@example(last=0, gap=4500, time_base=TS, rate=Fraction(30), max_gap=1.0)  # 1.5 periods: 2
@example(last=0, gap=7500, time_base=TS, rate=Fraction(30), max_gap=1.0)  # 2.5 periods: 2
@example(last=(1 << 33) - 1000, gap=2000, time_base=TS, rate=Fraction(30), max_gap=1.0)
@example(last=0, gap=90_000, time_base=TS, rate=Fraction(30), max_gap=1.0)  # max_gap exactly
def test_cadence_counts_what_the_timestamps_fractions_of_seconds_give(
    last: int, gap: int, time_base: Fraction, rate: Fraction, max_gap: float
) -> None:
    pts = (last + gap) & ((1 << 33) - 1) if time_base == TS else last + gap
    cadence = SourceCadence(1 / rate, max_gap)
    assert cadence.periods(last, time_base) is None
    assert cadence.periods(pts, time_base) == _counted_as_fractions(
        last, pts, time_base, 1 / rate, max_gap
    )


def test_a_time_base_that_changes_is_a_discontinuity() -> None:
    cadence = SourceCadence(Fraction(1, 30))
    cadence.periods(3000, TS)  # 1/30 s
    assert cadence.periods(67, Fraction(1, 1000)) is None  # 67 ms, on another clock
    assert cadence.periods(100, Fraction(1, 1000)) == 1
