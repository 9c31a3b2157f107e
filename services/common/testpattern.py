"""The built-in test pattern: moving colour bars, a bouncing box and a burnt-in counter.

Picture ``n`` is a pure function of ``n`` and the size (the same bytes on every machine), and
consecutive pictures always differ (the counter changes). The live source sends it when no
input file is given, and the encoder benchmark encodes it. Everything is integer numpy on
precomputed rows and glyphs, which keeps 640x360 to a fraction of a millisecond.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["TestPattern", "YuvArray"]

YuvArray = npt.NDArray[np.uint8]

#: 75 % colour bars in 8-bit limited-range BT.601 YUV: white, yellow, cyan, green, magenta, red,
#: blue.
_BARS = np.array(
    [
        (180, 128, 128),
        (162, 44, 142),
        (131, 156, 44),
        (112, 72, 58),
        (84, 184, 198),
        (65, 100, 212),
        (35, 212, 114),
    ],
    dtype=np.uint8,
)

#: Seven-segment layout: which of the segments a, b, c, d, e, f, g each digit lights.
_SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}

_BLACK = 16
_WHITE = 235
_GREY = 128
_MAX_DIGITS = 8


def _digit_glyphs(height: int) -> YuvArray:
    """Luma images of the ten digits, shape (10, height, height // 2), drawn as 7 segments."""
    width = height // 2
    thick = max(2, height // 9)
    mid = height // 2
    half = thick // 2
    boxes = {
        "a": (slice(0, thick), slice(0, width)),
        "b": (slice(0, mid + half), slice(width - thick, width)),
        "c": (slice(mid - half, height), slice(width - thick, width)),
        "d": (slice(height - thick, height), slice(0, width)),
        "e": (slice(mid - half, height), slice(0, thick)),
        "f": (slice(0, mid + half), slice(0, thick)),
        "g": (slice(mid - half, mid - half + thick), slice(0, width)),
    }
    glyphs = np.full((10, height, width), _BLACK, dtype=np.uint8)
    for digit, lit in _SEGMENTS.items():
        for segment in lit:
            glyphs[(digit, *boxes[segment])] = _WHITE
    return glyphs


def _triangle(value: int, span: int) -> int:
    """A position that bounces between 0 and ``span``, so a moving object never leaves."""
    if span <= 0:
        return 0
    phase = value % (2 * span)
    return phase if phase <= span else 2 * span - phase


class TestPattern:
    """Renders picture ``n`` of the test pattern at one size."""

    __test__ = False  # not a pytest class

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        luma_bar = (np.arange(width) * len(_BARS)) // width
        chroma_bar = (np.arange(0, width, 2) * len(_BARS)) // width
        self._row_y = _BARS[luma_bar, 0]
        self._row_u = _BARS[chroma_bar, 1]
        self._row_v = _BARS[chroma_bar, 2]
        self._box = max(4, (height // 6) & ~1)
        digit_height = max(8, (height // 5) & ~1)
        self._glyphs = _digit_glyphs(digit_height)
        self._pitch = digit_height // 2 + max(2, digit_height // 8)
        margin = max(2, (height // 40) & ~1)
        self._margin = margin
        fit = (width - 2 * margin) // self._pitch
        self._digits = max(1, min(_MAX_DIGITS, fit))

    def render(self, n: int) -> YuvArray:
        """Picture ``n`` in yuv420p, rendered from scratch (random access, same bytes every time;
        read-only)."""
        width, height = self.width, self.height
        luma_size = width * height
        chroma_w, chroma_h = width // 2, height // 2
        chroma_size = chroma_w * chroma_h
        yuv = np.empty((height * 3 // 2, width), dtype=np.uint8)
        flat = yuv.reshape(-1)
        y = flat[:luma_size].reshape(height, width)
        u = flat[luma_size : luma_size + chroma_size].reshape(chroma_h, chroma_w)
        v = flat[luma_size + chroma_size :].reshape(chroma_h, chroma_w)

        # Bars scroll left by 4 px a frame (an even shift keeps chroma aligned with luma).
        shift = (4 * n) % width
        y[:] = np.roll(self._row_y, -shift)
        u[:] = np.roll(self._row_u, -(shift // 2))
        v[:] = np.roll(self._row_v, -(shift // 2))

        # A box bouncing across the picture, its colour cycling with n.
        box = self._box
        bx = _triangle(6 * n, width - box) & ~1
        by = _triangle(4 * n, height - box) & ~1
        y[by : by + box, bx : bx + box] = 16 + (n * 7) % 220
        u[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 16 + (n * 11) % 224
        v[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 16 + (n * 5) % 224

        # The frame counter, bottom left, white on black.
        glyphs = self._glyphs
        glyph_h, glyph_w = glyphs.shape[1], glyphs.shape[2]
        margin = self._margin
        top = height - margin - glyph_h
        left = margin
        right = left + self._digits * self._pitch
        rows = slice(top - margin // 2, height - margin // 2)
        cols = slice(left - margin // 2, right)
        y[rows, cols] = _BLACK
        chroma_rows = slice(rows.start // 2, rows.stop // 2)
        chroma_cols = slice(cols.start // 2, cols.stop // 2)
        u[chroma_rows, chroma_cols] = _GREY
        v[chroma_rows, chroma_cols] = _GREY
        text = str(n % 10**self._digits).rjust(self._digits, "0")
        for position, char in enumerate(text):
            x = left + position * self._pitch
            y[top : top + glyph_h, x : x + glyph_w] = glyphs[int(char)]

        yuv.flags.writeable = False
        return yuv
