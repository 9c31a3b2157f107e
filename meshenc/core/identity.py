"""Picture identity and source cadence: naming a picture alike on every encoder.

Theory of operation
-------------------
Two encoders can only compare their labels for a picture if they name it alike. A live stream
that carries timestamps (MPEG-TS, RTP, RTMP, most files) names every picture by its
presentation timestamp: the same number on every encoder, whatever path and delay it took and
whatever the picture shows — black, a freeze or a slate are told apart as well as motion. So a
picture with a source timestamp is named by that timestamp (``SourceIdentity``): modulo the
timestamp's wrap (33 bits in MPEG-TS, about 26.5 hours at 90 kHz), which is far longer than
any window in which names are compared, so wrapping and source restarts need no mapping at all.

A source without timestamps is named by what it shows: a *window* of consecutive picture
fingerprints, hashed. A single fingerprint collides on ordinary content (every black picture
looks alike), and a collision would pair the wrong pictures and mismeasure. A window whose
fingerprints are not all different (black, a freeze, a still slate) is *ambiguous* and gives no
name at all (``NO_IDENTITY``): the engine holds on its prediction rather than mismeasure.

The same timestamps give the source's cadence (``SourceCadence``): how many frame periods
passed since the previous picture, counted from the source's clock instead of from noisy
arrival times, so the capture smoother fits arrivals against the sender's own timing, as a
broadcast receiver recovers the sender's clock from PCR. A timestamp that goes backwards or
jumps by more than ``max_gap`` (a source restart, a splice), or whose time base changed, is a
discontinuity: no count is given and the smoother falls back to counting arrivals.

Invariants: an identity is never 0 (``NO_IDENTITY``); the same timestamp always gives the same
identity; a fingerprint window with a repeated fingerprint never gives one.
"""

from __future__ import annotations

import hashlib
from collections import deque
from fractions import Fraction

from meshenc.core.engine import NO_IDENTITY

__all__ = ["NO_IDENTITY", "FingerprintWindow", "SourceCadence", "source_identity"]

#: MPEG-TS timestamps wrap at 2**33 ticks of 90 kHz.
TIMESTAMP_BITS = 33
_TIMESTAMP_MASK = (1 << TIMESTAMP_BITS) - 1
#: Set in every timestamp identity, so that timestamp 0 is a name too.
_TIMESTAMP_TAG = 1 << 62


def source_identity(pts: int) -> int:
    """The identity of the picture whose source timestamp is ``pts`` (never ``NO_IDENTITY``)."""
    return (pts & _TIMESTAMP_MASK) | _TIMESTAMP_TAG


class FingerprintWindow:
    """Names pictures of a source without timestamps by a window of their fingerprints."""

    __slots__ = ("_recent", "size")

    def __init__(self, size: int = 4) -> None:
        if size < 2:
            raise ValueError(f"a fingerprint window needs at least 2 pictures, got {size}")
        self.size = size
        self._recent: deque[int] = deque(maxlen=size)

    def reset(self) -> None:
        """Forget the window (the input was lost: pictures before and after are not adjacent)."""
        self._recent.clear()

    def identify(self, fingerprint: int) -> int:
        """The identity of the picture just seen, or ``NO_IDENTITY`` while ambiguous."""
        recent = self._recent
        recent.append(fingerprint)
        if len(recent) < self.size or len(set(recent)) < self.size:
            return NO_IDENTITY
        digest = hashlib.blake2b(
            b"".join(f.to_bytes(8, "big") for f in recent), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big") or 1


class SourceCadence:
    """Frame periods between pictures, counted on the source's own timestamps.

    Counted in integers on the timestamps' own ticks, exactly as the fractions of seconds
    they stand for would give (rounding half to even): 0.5 µs a picture, where ``Fraction``
    arithmetic took 7 µs.

    Args:
        frame_period: the mesh's frame period in seconds (exact).
        max_gap: a step longer than this many seconds (or backwards) is a discontinuity.
    """

    __slots__ = ("_gap", "_last", "_period")

    def __init__(self, frame_period: Fraction, max_gap: float = 1.0) -> None:
        if frame_period <= 0:
            raise ValueError("the frame period must be positive")
        period = Fraction(frame_period)
        gap = Fraction(max_gap)
        self._period = (period.numerator, period.denominator)
        self._gap = (gap.numerator, gap.denominator)
        #: The previous picture's timestamp and its time base's numerator and denominator.
        self._last: tuple[int, int, int] | None = None

    def reset(self) -> None:
        """Forget the previous timestamp (the input was lost or reopened)."""
        self._last = None

    def periods(self, pts: int, time_base: Fraction) -> int | None:
        """Whole frame periods since the previous picture, or None at a discontinuity (a step
        backwards, longer than ``max_gap``, or a time base that changed).

        Differences are taken modulo the 33-bit wrap when the time base is MPEG-TS's, so a
        wrap is an ordinary step.
        """
        num, den = time_base.numerator, time_base.denominator
        last, self._last = self._last, (pts, num, den)
        if last is None:
            return None
        last_pts, last_num, last_den = last
        if last_num != num or last_den != den:
            return None
        ticks = pts - last_pts
        if num == 1 and den == 90_000:
            ticks &= _TIMESTAMP_MASK
        # The step is span / den seconds; beyond max_gap (gap_num / gap_den) it is a break.
        span = ticks * num
        gap_num, gap_den = self._gap
        if span <= 0 or span * gap_den > gap_num * den:
            return None
        # round(step / period), half to even, as Python rounds a fraction.
        period_num, period_den = self._period
        divisor = den * period_num
        whole, rest = divmod(span * period_den, divisor)
        if 2 * rest > divisor or (2 * rest == divisor and whole % 2):
            whole += 1
        return max(1, whole)
