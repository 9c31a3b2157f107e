"""Epoch-locked timecodes on rational frame rates.

Theory of operation: every encoder names a picture by the frame slot its label falls into,
``TC = floor(label × fps)`` with the label in seconds since the Unix epoch. Two encoders agree on
a picture's timecode exactly when their labels for it fall into the same slot, so the sync
loop's job is to keep labels of one picture together and away from slot boundaries (mid-slot
leaves half a frame of margin on either side). Segment numbers follow from timecodes:
``segment = TC div GOP`` (:class:`SegmentLayout`, the one place that does this arithmetic), so
segment boundaries are common to every encoder that agrees on TCs.

Invariants: ``slot(slot_start(tc)) == tc`` for every tc; ``0 <= phase(label) < 1``;
``first_timecode(s) <= tc <= last_timecode(s)`` exactly when ``segment_of(tc) == s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, overload

__all__ = ["FrameRate", "SegmentLayout"]


@dataclass(frozen=True, slots=True)
class FrameRate:
    """A frame rate as an exact ratio, so 30000/1001 stays exact over decades of timecodes."""

    num: int
    den: int = 1

    def __post_init__(self) -> None:
        if self.num <= 0 or self.den <= 0:
            raise ValueError(f"frame rate must be positive, got {self.num}/{self.den}")
        if self.num / self.den > 1000:
            raise ValueError(f"frame rate {self.num}/{self.den} is above 1000 fps")
        common = math.gcd(self.num, self.den)
        if common > 1:  # one rate, one representation: 60000/2002 is 30000/1001
            object.__setattr__(self, "num", self.num // common)
            object.__setattr__(self, "den", self.den // common)

    @classmethod
    def parse(cls, text: str) -> FrameRate:
        """Read ``"30"``, ``"30000/1001"`` or ``"29.97"`` (the last as the NTSC ratio)."""
        text = text.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return cls(int(num), int(den))
            value = Fraction(text)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"not a frame rate: {text!r}") from exc
        if value <= 0:
            raise ValueError(f"not a frame rate: {text!r}")
        if value.denominator != 1:
            # 23.976, 29.97, 59.94 ... name the NTSC ratios N×1000/1001.
            whole = round(value * Fraction(1001, 1000))
            ntsc = Fraction(whole * 1000, 1001)
            if whole >= 12 and abs(ntsc - value) < Fraction(1, 200):
                return cls(ntsc.numerator, ntsc.denominator)
            value = value.limit_denominator(1001)
        return cls(value.numerator, value.denominator)

    @property
    def fps(self) -> float:
        return self.num / self.den

    @property
    def period(self) -> float:
        """One frame slot in seconds."""
        return self.den / self.num

    def slot(self, label: float) -> int:
        """The timecode of a label: the index of the frame slot it falls into.

        Exact for the float it is given (integer arithmetic on the float's own ratio), so no
        rounding can put a label on a slot boundary into the wrong slot.
        """
        p, q = label.as_integer_ratio()
        return (p * self.num) // (q * self.den)

    def slot_start(self, timecode: int) -> float:
        """The smallest label (s) that falls into slot ``timecode``."""
        start = Fraction(timecode * self.den, self.num)
        value = float(start)
        return value if value >= start else math.nextafter(value, math.inf)

    def slot_middle(self, timecode: int) -> float:
        """The middle of slot ``timecode`` (s), correctly rounded: integer true division
        rounds exactly as ``float(Fraction(...))`` does, without building the fraction."""
        return (2 * timecode + 1) * self.den / (2 * self.num)

    def phase(self, label: float) -> float:
        """Where in its slot a label lies, in frames: 0 at the start, just under 1 at the end."""
        p, q = label.as_integer_ratio()
        scale = q * self.den
        fraction = ((p * self.num) % scale) / scale
        return fraction if fraction < 1.0 else math.nextafter(1.0, 0.0)

    def __str__(self) -> str:
        return str(self.num) if self.den == 1 else f"{self.num}/{self.den}"


@dataclass(frozen=True, slots=True)
class SegmentLayout:
    """How timecodes group into segments: one segment is one GOP of ``gop`` frame slots.

    Segment ``s`` holds the timecodes ``s × gop`` to ``(s + 1) × gop - 1``. Division floors,
    so a negative timecode lies in a negative segment and every segment has ``gop`` slots.
    """

    gop: int

    def __post_init__(self) -> None:
        if self.gop < 1:
            raise ValueError(f"a segment holds at least one frame, got gop {self.gop}")

    def segment_of(self, timecode: int) -> int:
        """The segment number of ``timecode``."""
        return timecode // self.gop

    def first_timecode(self, segment: int) -> int:
        """The first slot of ``segment`` (its IDR picture)."""
        return segment * self.gop

    def last_timecode(self, segment: int) -> int:
        """The last slot of ``segment``."""
        return (segment + 1) * self.gop - 1

    def offset_in_segment(self, timecode: int) -> int:
        """Slots between the start of ``timecode``'s segment and ``timecode``: 0 to gop - 1."""
        return timecode % self.gop

    def is_first(self, timecode: int) -> bool:
        """Whether ``timecode`` opens its segment."""
        return timecode % self.gop == 0

    def is_last(self, timecode: int) -> bool:
        """Whether ``timecode`` closes its segment (the next slot starts another)."""
        return (timecode + 1) % self.gop == 0

    @overload
    def duration(self, frame_period: Fraction) -> Fraction: ...
    @overload
    def duration(self, frame_period: float) -> float: ...
    def duration(self, frame_period: Any) -> Any:
        """One segment's length: ``gop`` frame periods, in the period's own type, so float
        seconds stay float (the engine's clock) and an exact Fraction stays exact (the
        muxer's). Typed ``Any`` inside, not with a constrained type variable: mypyc rejects
        one, and compiles a ``float`` parameter as a C double, which would turn a Fraction into
        a float."""
        return self.gop * frame_period
