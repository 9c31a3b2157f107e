"""Pictures: their format, their fingerprint, their PyAV frames, and the test pattern as a source.

Theory of operation: a :class:`Picture` is one picture in yuv420p at the mesh's agreed size; the
live input (``services.encoder.media.ingest``) makes them from a stream, and tests and the
benchmarks' streams from the test pattern (:class:`SyntheticSource`). Every picture carries a
:func:`fingerprint` that is the same on every encoder that sees the same picture, whatever
path and delay it took: the name of a picture where its source gives no timestamp (see
``meshenc.core.identity``). A picture becomes a PyAV frame (for libx264) with
:func:`picture_frame` and a frame a picture's array with :func:`frame_yuv`: one copy of the
pixels at most each way, as the frame path does this once or more per picture.

Invariants: the synthetic source's picture ``n`` is a pure function of ``n`` and the format
(same bytes on every machine), and ``Picture.index`` counts up by one per ``read()``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt
from av.video.frame import VideoFrame

from meshenc.core.parameters import check_size
from meshenc.core.timecode import FrameRate
from services.common.testpattern import TestPattern

__all__ = [
    "Picture",
    "SourceError",
    "SyntheticSource",
    "VideoFormat",
    "fingerprint",
    "frame_yuv",
    "picture_frame",
]

YuvArray = npt.NDArray[np.uint8]

#: The fingerprint grid (8×8 blocks) and how many bits of each block's mean luma it keeps.
FINGERPRINT_GRID = 8
FINGERPRINT_BITS = 6
#: The most rows of 8-bit samples a 16-bit sum holds (255 × 257 = 65,535).
_UINT16_ROWS = 257


class SourceError(Exception):
    """A source cannot be opened or read (missing file, no video stream, corrupt data)."""


@dataclass(frozen=True, slots=True)
class VideoFormat:
    """The picture size and frame rate every encoder of the mesh agrees on."""

    width: int
    height: int
    frame_rate: FrameRate

    def __post_init__(self) -> None:
        check_size(self.width, self.height)


@dataclass(frozen=True, slots=True, eq=False)
class Picture:
    """One source picture in yuv420p.

    ``yuv`` holds the three planes back to back in one ``(height * 3 // 2, width)`` uint8 array
    (PyAV's layout for yuv420p), so it can go to the encoder without copying plane by plane.
    Its :func:`fingerprint` is given or computed when first read: a source with timestamps
    names its pictures by those, and the frame path never reads it then. Compared by identity
    (``eq=False``): comparing arrays element-wise is the caller's choice.
    """

    index: int
    yuv: YuvArray
    #: The fingerprint, if known (None: computed when ``fingerprint`` is first read).
    _fingerprint: int | None = None

    @property
    def fingerprint(self) -> int:
        known = self._fingerprint
        if known is None:
            known = fingerprint(self.yuv, self.width, self.height)
            object.__setattr__(self, "_fingerprint", known)  # a cache: the pixels never change
        return known

    def __post_init__(self) -> None:
        if self.yuv.ndim != 2 or self.yuv.dtype != np.uint8 or self.yuv.shape[0] % 3:
            raise ValueError(
                f"yuv must be a (height*3//2, width) uint8 array, got {self.yuv.dtype}"
                f" {self.yuv.shape}"
            )

    @property
    def width(self) -> int:
        return int(self.yuv.shape[1])

    @property
    def height(self) -> int:
        return int(self.yuv.shape[0]) * 2 // 3


def fingerprint(yuv: YuvArray, width: int, height: int) -> int:
    """A 64-bit name for a picture that every encoder computes alike.

    The luma plane is averaged down to 8×8 blocks, each mean is quantised to 6 bits and the
    64 values are hashed (8 bytes of BLAKE2b). Quantising is what makes the name survive the
    paths a picture takes: two decoders, scalers or pixel-format converters may differ by ±1 on
    some pixels, which moves a block mean by a tiny fraction of a level and almost never across
    a 4-level bucket edge, whereas a different picture moves whole blocks. Integer arithmetic
    throughout, so every machine gets the same bits.

    Args:
        yuv: yuv420p planes, luma first (only the first ``height`` rows are read).
        width: picture width in pixels.
        height: picture height in pixels.

    Returns:
        The fingerprint as an unsigned 64-bit integer.
    """
    if width < FINGERPRINT_GRID or height < FINGERPRINT_GRID:
        raise ValueError(f"picture {width}x{height} is smaller than the fingerprint grid")
    luma = yuv[:height, :width]
    rows = (np.arange(FINGERPRINT_GRID + 1) * height) // FINGERPRINT_GRID
    cols = (np.arange(FINGERPRINT_GRID + 1) * width) // FINGERPRINT_GRID
    # Each band of rows is summed down its columns first, whole rows at a time (in 16 bits
    # while a band is short enough, twice as fast as 32), then each band across its blocks:
    # exact integer sums, so the order does not change a bit.
    wide = np.uint16 if int(np.diff(rows).max()) <= _UINT16_ROWS else np.uint32
    columns = np.empty((FINGERPRINT_GRID, width), dtype=wide)
    for band in range(FINGERPRINT_GRID):
        np.add.reduce(luma[rows[band] : rows[band + 1]], axis=0, dtype=wide, out=columns[band])
    sums = np.add.reduceat(columns, cols[:-1], axis=1, dtype=np.uint32)
    areas = np.outer(np.diff(rows), np.diff(cols)).astype(np.uint32)
    # floor((mean + 1/2) / step) in integers: bucket edges sit half a level off the integers,
    # so a flat block (integer mean, common in graphics and test patterns) is never on an edge.
    step = 1 << (8 - FINGERPRINT_BITS)
    quantised = ((2 * sums + areas) // (2 * step * areas)).astype(np.uint8)
    digest = hashlib.blake2b(quantised.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def black_picture(width: int, height: int) -> Picture:
    """A black picture of that size (studio range: luma 16, chroma 128), read-only."""
    black = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    black[:height] = 16
    black.flags.writeable = False
    return Picture(0, black)


def picture_frame(picture: Picture) -> VideoFrame:
    """``picture`` as a PyAV frame that carries its pixels and nothing else (no timestamp,
    picture type or side data), sharing the picture's array where PyAV can.

    PyAV wraps a packed yuv420p array without a copy only when the height is a multiple of 4
    (``from_numpy_buffer`` takes the height to be ``rows // 6 * 4``); other heights are copied.
    libx264 never writes into its input, so the shared, read-only array is safe.
    """
    yuv = picture.yuv
    if picture.height % 4 == 0 and yuv.flags.c_contiguous:
        return VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
    return VideoFrame.from_ndarray(yuv, format="yuv420p")


def frame_yuv(frame: VideoFrame) -> YuvArray:
    """A yuv420p frame's pixels as a :class:`Picture`'s read-only array (the layout of PyAV's
    ``to_ndarray``), copied once, plane by plane, past the rows' padding.

    Raises:
        ValueError: the frame is not yuv420p.
    """
    if frame.format.name != "yuv420p":
        raise ValueError(f"expected a yuv420p frame, got {frame.format.name}")
    width, height = frame.width, frame.height
    yuv = np.empty((height * 3 // 2, width), dtype=np.uint8)
    flat = yuv.reshape(-1)
    start = 0
    for plane in frame.planes:
        plane_width, rows, stride = plane.width, plane.height, plane.line_size
        if stride < plane_width:  # bottom-up rows (a negative stride): PyAV copies those
            return _read_only(np.asarray(frame.to_ndarray(), np.uint8))
        size = plane_width * rows
        source = np.frombuffer(memoryview(plane), np.uint8, count=stride * rows).reshape(
            rows, stride
        )
        flat[start : start + size].reshape(rows, plane_width)[...] = source[:, :plane_width]
        start += size
    return _read_only(yuv)


def _read_only(yuv: YuvArray) -> YuvArray:
    yuv.flags.writeable = False
    return yuv


class _Source:
    """What every source shares: ``close()``, and use as a context manager."""

    def close(self) -> None:
        """Release what the source holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyntheticSource(_Source):
    """The built-in test pattern (``services.common.testpattern``) as a picture source.

    Picture ``n`` is a pure function of ``n`` and the format, so every encoder that renders
    ``n`` gets the same bytes (and the same fingerprint). Used by the encoder benchmark, which
    measures encoding, not ingest.
    """

    def __init__(self, fmt: VideoFormat, start: int = 0) -> None:
        self.fmt = fmt
        self._next = start
        self._pattern = TestPattern(fmt.width, fmt.height)

    def read(self) -> Picture:
        """The next picture: ``start``, ``start + 1``, ..."""
        picture = self.picture(self._next)
        self._next += 1
        return picture

    def picture(self, n: int) -> Picture:
        """Picture ``n``, rendered from scratch (random access, same bytes every time)."""
        return Picture(n, self._pattern.render(n))

    def close(self) -> None:
        """Nothing to release; present so every source closes alike."""
