"""Picture identity and source cadence (meshenc.core.identity): pure functions of their input."""

from __future__ import annotations

from fractions import Fraction

import pytest

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
