"""Frame rates and timecodes: parsing, the slot round trip, phase bounds and long-run exactness;
segments of timecodes: every slot in exactly one segment, negative timecodes included."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.timecode import FrameRate, SegmentLayout

NTSC = FrameRate(30000, 1001)
THIRTY = FrameRate(30)

#: Labels of today's wall clock are around 1.8e9 s. The round trip is checked from 2008 up to
#: the last second before 2**31 s (2038-01-19); the round trip also holds outside that band.
EPOCH_LOW = 1.2e9
EPOCH_HIGH = float(2**31 - 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", FrameRate(30, 1)),
        ("25", FrameRate(25, 1)),
        (" 50 ", FrameRate(50, 1)),
        ("30000/1001", FrameRate(30000, 1001)),
        ("29.97", FrameRate(30000, 1001)),
        ("59.94", FrameRate(60000, 1001)),
        ("23.976", FrameRate(24000, 1001)),
        ("12.5", FrameRate(25, 2)),
    ],
)
def test_parse(text: str, expected: FrameRate) -> None:
    assert FrameRate.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "0", "-30", "30/0", "0/1", "30/-1", "30/1.5", "nan", "inf", "1001", "1/2/3"]
)
def test_parse_rejects_non_rates(text: str) -> None:
    with pytest.raises(ValueError):
        FrameRate.parse(text)


def test_parsed_ntsc_rate_is_the_exact_ratio_not_the_decimal() -> None:
    rate = FrameRate.parse("29.97")
    assert Fraction(rate.num, rate.den) == Fraction(30000, 1001)
    assert str(rate) == "30000/1001"
    assert rate.period == pytest.approx(1001 / 30000)


@pytest.mark.parametrize("rate", [THIRTY, NTSC])
@given(data=st.data())
def test_slot_of_slot_start_round_trips_on_epoch_labels(
    rate: FrameRate, data: st.DataObject
) -> None:
    tc = data.draw(st.integers(rate.slot(EPOCH_LOW), rate.slot(EPOCH_HIGH)))
    assert rate.slot(rate.slot_start(tc)) == tc
    # The start of the next slot belongs to the next slot, not this one.
    assert rate.slot(rate.slot_start(tc + 1)) == tc + 1


@pytest.mark.parametrize(
    ("rate", "tc"),
    [
        (THIRTY, 123),  # slot_start = 4.1 s; 4.1 * 30 == 122.99999999999999
        (NTSC, 15),  # slot_start = 0.5005 s
        (FrameRate(25), 32_500_000_003),  # slot_start = 1300000000.12 s (2011)
        (THIRTY, 64_424_509_445),  # slot_start = 2147483648.1666665 s (2038)
        (NTSC, 64_360_149_291),  # slot_start = 2147483648.0097 s (2038)
    ],
)
def test_slot_of_slot_start_round_trips_everywhere(rate: FrameRate, tc: int) -> None:
    assert rate.slot(rate.slot_start(tc)) == tc


@pytest.mark.parametrize("rate", [THIRTY, NTSC, FrameRate(25), FrameRate(60000, 1001)])
@given(data=st.data())
def test_slot_middle_lies_strictly_inside_its_slot(rate: FrameRate, data: st.DataObject) -> None:
    tc = data.draw(st.integers(-(10**6), rate.slot(4e9)))
    middle = rate.slot_middle(tc)
    assert rate.slot(middle) == tc
    assert rate.slot_start(tc) < middle < rate.slot_start(tc + 1)
    assert rate.phase(middle) == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("rate", [THIRTY, NTSC, FrameRate(25), FrameRate(7, 3)])
@given(label=st.floats(0.0, 4e9))
def test_phase_is_in_the_unit_interval(rate: FrameRate, label: float) -> None:
    assert 0.0 <= rate.phase(label) < 1.0


def test_phase_is_below_one_for_negative_labels() -> None:
    assert THIRTY.phase(-1e-20) < 1.0


def test_ntsc_rate_is_exact_over_decades() -> None:
    # 1001 s are exactly 30000 frames at 30000/1001. A float fps (29.97) is off by 30 frames
    # every 1001 * 1000 s, so after decades it is hundreds of thousands of frames out.
    for seconds in (1001 * 1_000, 1001 * 1_798_201, 1001 * 2_145_316):  # up to 2038
        assert NTSC.slot(float(seconds)) == seconds // 1001 * 30000
        # A microsecond earlier is still the previous slot: no accumulated rounding.
        assert NTSC.slot(seconds - 1e-6) == seconds // 1001 * 30000 - 1
        assert NTSC.slot_start(seconds // 1001 * 30000) == float(seconds)
    naive = int(1001 * 1_798_201 * 29.97)
    assert NTSC.slot(1001.0 * 1_798_201) - naive > 50_000


@given(tc=st.integers(0, NTSC.slot(EPOCH_HIGH)), frames=st.integers(1, 10**6))
def test_slots_count_frames_exactly(tc: int, frames: int) -> None:
    # Moving a mid-slot label by a whole number of periods moves the timecode by that number.
    middle = NTSC.slot_middle(tc)
    later = middle + float(Fraction(frames * NTSC.den, NTSC.num))
    assert NTSC.slot(later) - NTSC.slot(middle) == frames


#: Timecodes either side of zero, and as far as today's epoch timecodes at high frame rates.
TIMECODES = st.integers(-(10**12), 10**12)
GOPS = st.integers(1, 10_000)


@given(tc=TIMECODES, gop=GOPS)
def test_the_first_and_last_slot_of_a_segment_bracket_its_timecodes(tc: int, gop: int) -> None:
    layout = SegmentLayout(gop)
    segment = layout.segment_of(tc)
    assert layout.first_timecode(segment) <= tc <= layout.last_timecode(segment)
    assert layout.last_timecode(segment) - layout.first_timecode(segment) == gop - 1
    assert layout.offset_in_segment(tc) == tc - layout.first_timecode(segment)
    assert 0 <= layout.offset_in_segment(tc) < gop


@given(segment=TIMECODES, gop=GOPS)
def test_segments_tile_the_timeline(segment: int, gop: int) -> None:
    layout = SegmentLayout(gop)
    assert layout.last_timecode(segment) + 1 == layout.first_timecode(segment + 1)
    assert layout.segment_of(layout.first_timecode(segment)) == segment
    assert layout.segment_of(layout.last_timecode(segment)) == segment
    assert layout.is_first(layout.first_timecode(segment))
    assert layout.is_last(layout.last_timecode(segment))


@given(tc=TIMECODES, gop=st.integers(2, 10_000))
def test_a_slot_opens_or_closes_its_segment_only_at_its_edges(tc: int, gop: int) -> None:
    layout = SegmentLayout(gop)
    segment = layout.segment_of(tc)
    assert layout.is_first(tc) == (tc == layout.first_timecode(segment))
    assert layout.is_last(tc) == (tc == layout.last_timecode(segment))
    assert not (layout.is_first(tc) and layout.is_last(tc))


def test_negative_timecodes_floor_into_negative_segments() -> None:
    layout = SegmentLayout(60)
    assert [layout.segment_of(tc) for tc in (-1, -60, -61, 0, 59, 60)] == [-1, -1, -2, 0, 0, 1]
    assert (layout.first_timecode(-1), layout.last_timecode(-1)) == (-60, -1)
    assert layout.offset_in_segment(-1) == 59 and layout.is_last(-1) and layout.is_first(-60)


def test_a_one_frame_segment_both_opens_and_closes() -> None:
    layout = SegmentLayout(1)
    assert layout.segment_of(-7) == -7 and layout.is_first(-7) and layout.is_last(-7)


def test_a_segment_lasts_gop_periods_in_the_periods_own_type() -> None:
    layout = SegmentLayout(60)
    exact = layout.duration(Fraction(NTSC.den, NTSC.num))
    assert isinstance(exact, Fraction) and exact == Fraction(1001, 500)
    assert layout.duration(NTSC.period) == 60 * NTSC.period


@pytest.mark.parametrize("gop", [0, -1])
def test_a_segment_holds_at_least_one_frame(gop: int) -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        SegmentLayout(gop)
