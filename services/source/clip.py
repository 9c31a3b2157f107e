"""A test clip of ordinary content whose pictures are hard to tell apart.

Theory of operation: the test pattern burns a frame counter into every picture, which makes
picture identity trivial; real programmes do not. This clip is made of what breaks naive
identification: hard cuts, three seconds of black (all pictures equal), a three-second freeze
(one picture repeated), a still slate, a fade through black (near-black pictures on both
sides), low-motion noise (pictures that differ only by grain) and, at the end, the opening of
an earlier scene again (the same pictures twice in one clip). Its sound is a steady 440 Hz
tone. The schedule is a table (:data:`SCENES`, 30 s); a longer clip repeats it, a shorter one
is its beginning.

Invariants: picture ``n`` is a pure function of ``n``, the seed, the size and the frame rate
(:meth:`ClipRenderer.render`), so the same arguments give the same file (libx264 runs on one
thread); scene boundaries fall on the frames ``round(seconds × fps)`` of the table's running
sum; every black picture is exactly Y=16, U=V=128; every picture of a freeze equals the last
picture before it; the slate never changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from meshenc.core.timecode import FrameRate
from services.common.testpattern import YuvArray

__all__ = ["SCENES", "ClipInfo", "ClipRenderer", "Scene", "SceneSpan", "write_test_clip"]

AUDIO_RATE = 48_000
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.1  # −20 dBFS
DEFAULT_FRAME_RATE = FrameRate(30)
_SUFFIX_FORMATS = {".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts", ".mp4": "mp4"}


@dataclass(frozen=True, slots=True)
class Scene:
    """One row of the schedule: a kind of picture for a number of seconds."""

    kind: str
    seconds: int
    note: str


#: The clip's schedule, 30 s in all. Kinds: ``pan`` (a landscape panning slowly), ``blobs``
#: (soft discs drifting), ``black``, ``texture`` (a scrolling cloud texture), ``freeze`` (the
#: previous scene's last picture, repeated), ``slate`` (a still card), ``fade`` (the landscape
#: fading to black and back), ``noise`` (a flat field with fresh grain each frame).
SCENES: tuple[Scene, ...] = (
    Scene("pan", 4, "ordinary slow motion"),
    Scene("blobs", 3, "hard cut in"),
    Scene("black", 3, "three seconds of identical black pictures"),
    Scene("texture", 3, "hard cut in from black"),
    Scene("freeze", 3, "the texture's last picture, repeated"),
    Scene("slate", 3, "a still card"),
    Scene("fade", 4, "fade through black: near-black pictures on both sides"),
    Scene("noise", 4, "pictures that differ only by grain"),
    Scene("blobs", 3, "the second scene again: the same pictures twice in one clip"),
)


@dataclass(frozen=True, slots=True)
class SceneSpan:
    """Where a scene lies in a clip: frames ``start`` (included) to ``stop`` (excluded)."""

    kind: str
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """What :func:`write_test_clip` wrote: the frame count and where each scene lies."""

    frames: int
    frame_rate: FrameRate
    scenes: tuple[SceneSpan, ...]


def _spans(frames: int, rate: FrameRate) -> tuple[SceneSpan, ...]:
    """The schedule, repeated as needed, cut to ``frames`` frames."""
    spans: list[SceneSpan] = []
    elapsed = 0
    start = 0
    while start < frames:
        for scene in SCENES:
            elapsed += scene.seconds
            stop = min(frames, round(Fraction(elapsed) * rate.num / rate.den))
            if stop > start:
                spans.append(SceneSpan(scene.kind, start, stop))
            start = stop
            if start >= frames:
                break
    return tuple(spans)


class ClipRenderer:
    """Renders picture ``n`` of the clip (random access, the same bytes every time)."""

    def __init__(self, width: int, height: int, frame_rate: FrameRate, frames: int, seed: int):
        if width % 2 or height % 2 or width < 32 or height < 32:
            raise ValueError(f"clip size must be even and at least 32x32, got {width}x{height}")
        self.width = width
        self.height = height
        self.frame_rate = frame_rate
        self.seed = seed
        self.spans = _spans(frames, frame_rate)
        rng = np.random.default_rng(seed)
        # The landscape's trees and the texture are drawn once, from the seed.
        self._trees = rng.integers(0, 4 * width, size=24)
        self._tree_widths = rng.integers(max(2, width // 80), max(3, width // 30), size=24)
        coarse = rng.integers(40, 200, size=(height // 16 + 2, (2 * width) // 16 + 2))
        fine = rng.integers(-12, 13, size=(height // 4 + 2, (2 * width) // 4 + 2))
        texture = np.kron(coarse, np.ones((16, 16), dtype=np.int64))[:height, : 2 * width]
        texture = texture + np.kron(fine, np.ones((4, 4), dtype=np.int64))[:height, : 2 * width]
        self._texture = np.clip(texture, 16, 235).astype(np.uint8)
        self._blobs = rng.uniform(0, 1, size=(5, 6))  # x, y phases, speeds, radius, colour

    def scene_at(self, n: int) -> tuple[SceneSpan, int]:
        """The scene picture ``n`` belongs to and its index inside that scene."""
        for span in self.spans:
            if span.start <= n < span.stop:
                return span, n - span.start
        raise IndexError(f"picture {n} is outside the clip (0..{self.spans[-1].stop - 1})")

    def render(self, n: int) -> YuvArray:
        """Picture ``n`` in yuv420p, shape (height × 3 / 2, width)."""
        span, i = self.scene_at(n)
        if span.kind == "freeze":
            return self.render(span.start - 1) if span.start > 0 else self._black()
        if span.kind == "pan":
            return self._pan(i)
        if span.kind == "blobs":
            return self._blob_picture(i)
        if span.kind == "texture":
            return self._texture_picture(i)
        if span.kind == "slate":
            return self._slate()
        if span.kind == "fade":
            return self._fade(i, span.stop - span.start)
        if span.kind == "noise":
            return self._noise(n)
        return self._black()

    # -- pictures ---------------------------------------------------------------------------

    def _planes(
        self, luma: int = 16, cb: int = 128, cr: int = 128
    ) -> tuple[YuvArray, YuvArray, YuvArray, YuvArray]:
        w, h = self.width, self.height
        yuv = np.empty((h * 3 // 2, w), dtype=np.uint8)
        flat = yuv.reshape(-1)
        y = flat[: w * h].reshape(h, w)
        u = flat[w * h : w * h + w * h // 4].reshape(h // 2, w // 2)
        v = flat[w * h + w * h // 4 :].reshape(h // 2, w // 2)
        y[:] = luma
        u[:] = cb
        v[:] = cr
        return yuv, y, u, v

    def _black(self) -> YuvArray:
        return self._planes()[0]

    def _pan(self, i: int) -> YuvArray:
        """A sky over hills with trees, panning right by one pixel a frame."""
        w, h = self.width, self.height
        yuv, y, u, v = self._planes()
        x = np.arange(w) + i
        horizon = (h * 0.6 + h * 0.06 * np.sin(2 * np.pi * x / (1.7 * w))).astype(np.int64)
        rows = np.arange(h)[:, None]
        sky = rows < horizon[None, :]
        y[:] = np.where(sky, 200 - (rows * 80) // h, 70 + (rows * 40) // h).astype(np.uint8)
        for centre, width in zip(self._trees, self._tree_widths, strict=True):
            left = int(centre) - x[0] % (4 * w)
            if -width < left < w:
                cols = slice(max(0, left), min(w, left + int(width)))
                top = int(horizon[max(0, min(w - 1, left))]) - h // 8
                y[top : h * 9 // 10, cols] = 40
        sky_c = sky[::2, ::2]
        u[:] = np.where(sky_c, 150, 105)
        v[:] = np.where(sky_c, 110, 115)
        return yuv

    def _blob_picture(self, i: int) -> YuvArray:
        """Soft-edged discs drifting over a dark blue ground."""
        w, h = self.width, self.height
        yuv, y, u, v = self._planes(40, 150, 118)
        for px, py, sx, sy, r, c in self._blobs:
            radius = int((0.08 + 0.1 * r) * h)
            cx = int(w * (0.5 + 0.4 * math.sin(2 * math.pi * (px + i * (0.002 + 0.004 * sx)))))
            cy = int(h * (0.5 + 0.35 * math.sin(2 * math.pi * (py + i * (0.002 + 0.003 * sy)))))
            top, left = max(0, cy - radius), max(0, cx - radius)
            bottom, right = min(h, cy + radius), min(w, cx + radius)
            if bottom <= top or right <= left:
                continue
            yy, xx = np.ogrid[top:bottom, left:right]
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
            y[top:bottom, left:right][inside] = 90 + int(120 * c)
            half = inside[::2, ::2]
            ct, cl = top // 2, left // 2
            region_u = u[ct : ct + half.shape[0], cl : cl + half.shape[1]]
            region_v = v[ct : ct + half.shape[0], cl : cl + half.shape[1]]
            region_u[half[: region_u.shape[0], : region_u.shape[1]]] = 64 + int(128 * c)
            region_v[half[: region_v.shape[0], : region_v.shape[1]]] = 192 - int(128 * c)
        return yuv

    def _texture_picture(self, i: int) -> YuvArray:
        """A cloud-like texture scrolling left by two pixels a frame."""
        w = self.width
        yuv, y, _u, _v = self._planes(128, 120, 132)
        shift = (2 * i) % w
        y[:] = self._texture[:, shift : shift + w]
        return yuv

    def _slate(self) -> YuvArray:
        """A still card: grey ground, a row of colour chips, a white title bar, a black box."""
        w, h = self.width, self.height
        yuv, y, u, v = self._planes(110)
        chips = ((180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58))
        chip_w = w // (2 * len(chips))
        for k, (cy, cu, cv) in enumerate(chips):
            left = w // 4 + k * chip_w
            y[h // 8 : h // 4, left : left + chip_w] = cy
            u[h // 16 : h // 8, left // 2 : (left + chip_w) // 2] = cu
            v[h // 16 : h // 8, left // 2 : (left + chip_w) // 2] = cv
        y[h // 2 : h // 2 + h // 10, w // 8 : w * 7 // 8] = 235
        y[h * 3 // 4 : h * 7 // 8, w // 3 : w * 2 // 3] = 16
        return yuv

    def _fade(self, i: int, length: int) -> YuvArray:
        """The landscape fading down to black over the first half, and up over the second."""
        half = max(1, length // 2)
        gain = abs(i - half) / half
        yuv = self._pan(i).astype(np.int32)
        w, h = self.width, self.height
        yuv[:h] = 16 + ((yuv[:h] - 16) * gain)
        yuv[h:] = 128 + ((yuv[h:] - 128) * gain)
        return np.clip(yuv, 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)

    def _noise(self, n: int) -> YuvArray:
        """A flat grey field with fresh grain each frame (±4 levels of luma)."""
        yuv, y, _u, _v = self._planes(0)
        rng = np.random.default_rng((self.seed, n))
        grain = rng.integers(-4, 5, size=y.shape, dtype=np.int16)
        y[:] = (110 + grain).astype(np.uint8)
        return yuv


def _tone(start: int, count: int) -> npt.NDArray[np.float32]:
    n = np.arange(start, start + count, dtype=np.float64)
    phase = (n * TONE_HZ) % AUDIO_RATE / AUDIO_RATE
    tone = (TONE_AMPLITUDE * np.sin(2 * np.pi * phase)).astype(np.float32)
    return np.stack([tone, tone])


def write_test_clip(
    path: Path,
    *,
    seconds: float = 30.0,
    frame_rate: FrameRate = DEFAULT_FRAME_RATE,
    width: int = 640,
    height: int = 360,
    seed: int = 0,
) -> ClipInfo:
    """Write the test clip (H.264 and AAC in MPEG-TS or MP4, by the file's suffix).

    Raises:
        ValueError: an unknown suffix (``.ts``, ``.m2ts``, ``.mts`` or ``.mp4``), a size that
            is odd or under 32x32, or a length under one frame.
    """
    container_format = _SUFFIX_FORMATS.get(path.suffix.lower())
    if container_format is None:
        raise ValueError(f"clip file must end in one of {', '.join(_SUFFIX_FORMATS)}: {path}")
    frames = math.ceil(Fraction(seconds) * frame_rate.num / frame_rate.den - Fraction(1, 10**6))
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {seconds} s")
    renderer = ClipRenderer(width, height, frame_rate, frames, seed)
    rate = Fraction(frame_rate.num, frame_rate.den)
    period = 1 / rate  # the stream's time base changes to the muxer's once it starts
    with av.open(str(path), "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=rate)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.time_base = period
        video.codec_context.options = {
            "preset": "superfast",
            "crf": "20",
            "threads": "1",  # one thread: the same bytes every time
            "g": str(max(1, round(2 * frame_rate.fps))),
        }
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        audio.format = "fltp"
        audio.bit_rate = 128_000
        samples = 0
        for n in range(frames):
            picture = av.VideoFrame.from_ndarray(renderer.render(n), format="yuv420p")
            picture.pts = n
            picture.time_base = period
            container.mux(video.encode(picture))
            end = (n + 1) * AUDIO_RATE * frame_rate.den // frame_rate.num
            while samples + 1024 <= end:
                sound = av.AudioFrame.from_ndarray(
                    _tone(samples, 1024), format="fltp", layout="stereo"
                )
                sound.sample_rate = AUDIO_RATE
                sound.pts = samples
                sound.time_base = Fraction(1, AUDIO_RATE)
                samples += 1024
                container.mux(audio.encode(sound))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return ClipInfo(frames, frame_rate, renderer.spans)
