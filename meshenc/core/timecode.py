"""Epoch-locked timecodes on rational frame rates.

Theory of operation: every encoder names a picture by the frame slot its label falls into,
``TC = floor(label × fps)`` with the label in seconds since the Unix epoch. Two encoders agree on
a picture's timecode exactly when their labels for it fall into the same slot, so the sync
loop's job is to keep labels of one picture together and away from slot boundaries (mid-slot
leaves half a frame of margin on either side). Segment numbers follow from timecodes:
``segment = TC div GOP``, so segment boundaries are common to every encoder that agrees on TCs.

Invariants: ``slot(slot_start(tc)) == tc`` for every tc; ``0 <= phase(label) < 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["FrameRate"]


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
        if value.denominator != 1:
            ntsc = Fraction(round(value * 1001 / 1000) * 1000, 1001)
            if abs(float(ntsc - value)) < 0.01:
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
        """The timecode of a label: the index of the frame slot it falls into."""
        return math.floor(label * self.num / self.den)

    def slot_start(self, timecode: int) -> float:
        """Label (s) at which slot ``timecode`` begins."""
        return float(Fraction(timecode * self.den, self.num))

    def slot_middle(self, timecode: int) -> float:
        return float(Fraction((2 * timecode + 1) * self.den, 2 * self.num))

    def phase(self, label: float) -> float:
        """Where in its slot a label lies, in frames: 0 at the start, just under 1 at the end."""
        scaled = label * self.num / self.den
        return scaled - math.floor(scaled)

    def __str__(self) -> str:
        return str(self.num) if self.den == 1 else f"{self.num}/{self.den}"
