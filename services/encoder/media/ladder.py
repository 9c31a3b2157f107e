"""An ABR ladder in one encoder: several renditions of one source, GOP-aligned.

Theory of operation: the source is decoded once per picture, at the top rung's size (the largest
picture of the ladder); every other rung is scaled from that picture with libswscale (PyAV's
``reformat``: area averaging, with swscale's bit-exact and accurate-rounding flags, so no
CPU-specific code path changes a pixel), a pure function of the picture's bytes: encoders that
hold the same picture scale it alike. Each rung has its own GOP-deterministic libx264 encoder
and its own segment writer, in a folder named after the rung (``640x360/index.m3u8``, segments,
CMAF's init). The rungs share the timeline, the timecodes and the GOP length, so their segments
start on the same frames and carry the same numbers: a player can switch rungs at any segment
boundary. The source's audio is muxed into every rung, as into the single output.

The mesh agrees on one bitrate, the top rung's: a mesh-wide change scales the whole ladder,
each rung keeping its share of the top rung's bitrate (``Rendition.bitrate_for``). The frame
hash the ESPs carry covers every rung (``combined_hash``): with one rung it is that rung's
hash, as without a ladder.

Above the rungs, ``master.m3u8`` lists every rung (BANDWIDTH, RESOLUTION, CODECS, FRAME-RATE)
and, for CMAF, ``manifest.mpd`` has one Representation per rung in one AdaptationSet. CODECS
come from the segments' own SPS and ADTS headers (the container derives them as it muxes);
BANDWIDTH is the highest bit rate of the rung's segments written so far (bytes of the media
segment, audio and container included, over its duration). Both are known only once every rung
has written a segment, so the master appears then, and is rewritten when a rung's peak rises.

Invariants: a ladder has at least one rung, every rung its own size; the top rung is the
largest picture; without ``--ladder`` the encoder has one rendition writing into its output
folder itself, with no master playlist, exactly as before ladders existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

from meshenc.core.timecode import FrameRate
from services.encoder.media.dash import MPD_NAME, Representation, render_ladder_mpd
from services.encoder.media.gop import EncodedFrame, EncoderParams, GopEncoder
from services.encoder.media.segments import (
    INIT_NAME,
    PLAYLIST_NAME,
    SegmentFormat,
    SegmentWriter,
    atomic_write,
    segment_template,
    utc_instant,
)
from services.encoder.media.source import Picture, VideoFormat

__all__ = [
    "MASTER_NAME",
    "MAX_RUNGS",
    "LadderManifests",
    "Rendition",
    "Rung",
    "combined_hash",
    "parse_ladder",
    "renditions_for",
    "scale_picture",
    "top_rung",
]

MASTER_NAME = "master.m3u8"
#: More renditions than any ladder needs, and a bound on one encoder's work per picture.
MAX_RUNGS = 8
MIN_RUNG_KBPS = 16
MAX_RUNG_KBPS = 200_000
#: Area averaging (the sharpest clean downscale), bit-exact: the same pixels on every CPU.
_SCALING = Interpolation.AREA | Interpolation.BITEXACT | Interpolation.ACCURATE_RND


@dataclass(frozen=True, slots=True)
class Rung:
    """One rendition of a ladder: its picture size and its bitrate before any agreed change."""

    width: int
    height: int
    bitrate_kbps: int

    def __post_init__(self) -> None:
        VideoFormat(self.width, self.height, FrameRate(1))  # the same size rules as --size
        if not MIN_RUNG_KBPS <= self.bitrate_kbps <= MAX_RUNG_KBPS:
            raise ValueError(
                f"bitrate must be {MIN_RUNG_KBPS}..{MAX_RUNG_KBPS} kbit/s, got {self.bitrate_kbps}"
            )

    @property
    def name(self) -> str:
        """The rung's folder and DASH Representation id: ``640x360``."""
        return f"{self.width}x{self.height}"

    def __str__(self) -> str:
        return f"{self.name}@{self.bitrate_kbps}"


def parse_ladder(text: str) -> tuple[Rung, ...]:
    """``"640x360@800,320x180@200"`` → the rungs, in the order given.

    Raises:
        ValueError: a rung that is not WIDTHxHEIGHT@KBPS, a size or bitrate out of bounds, two
            rungs of one size, no rung or more than ``MAX_RUNGS``; the message names the rung.
    """
    rungs: list[Rung] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"ladder {text!r} has an empty rung: WIDTHxHEIGHT@KBPS,...")
        size, at, kbps = item.lower().partition("@")
        width, x, height = size.partition("x")
        digits = (width, height, kbps)
        if not (at and x and all(d.isascii() and d.isdigit() for d in digits)):
            raise ValueError(f"rung {item!r} is not WIDTHxHEIGHT@KBPS, e.g. 640x360@800")
        try:
            rung = Rung(int(width), int(height), int(kbps))
        except ValueError as exc:
            raise ValueError(f"rung {item!r}: {exc}") from None
        if any(other.name == rung.name for other in rungs):
            raise ValueError(f"rung {item!r}: the ladder already has a {rung.name} rung")
        rungs.append(rung)
    if len(rungs) > MAX_RUNGS:
        raise ValueError(f"a ladder has at most {MAX_RUNGS} rungs, got {len(rungs)}")
    return tuple(rungs)


def top_rung(rungs: Sequence[Rung]) -> Rung:
    """The rung the source is decoded for and whose bitrate the mesh agrees on: the largest
    picture (the higher bitrate between equal areas, then the first given)."""
    return max(rungs, key=lambda r: (r.width * r.height, r.bitrate_kbps))


def scale_picture(picture: Picture, width: int, height: int) -> Picture:
    """``picture`` at ``width``x``height`` (itself when it has that size already).

    The scaled picture keeps the source picture's index and fingerprint: they name the picture
    the mesh agreed on, not the rung's pixels.
    """
    if picture.width == width and picture.height == height:
        return picture
    frame = av.VideoFrame.from_ndarray(picture.yuv, format="yuv420p")
    scaled = frame.reformat(width, height, "yuv420p", interpolation=_SCALING)
    yuv = np.asarray(scaled.to_ndarray(), np.uint8)
    yuv.flags.writeable = False
    return Picture(picture.index, yuv, picture.fingerprint)


def combined_hash(frames: Sequence[EncodedFrame]) -> bytes:
    """The hash an ESP carries for one slot: the one rung's, or SHA-256 over every rung's in
    ladder order, so two encoders agree only if every rung's access unit is the same."""
    if len(frames) == 1:
        return frames[0].sha256
    return hashlib.sha256(b"".join(frame.sha256 for frame in frames)).digest()


class Rendition:
    """One rung's encoder and segment writer.

    Args:
        rung: the rung; None for the encoder's single output without a ladder.
        top_kbps: the top rung's bitrate before any change (the rung's share is taken of it).
        folder: the rung's folder under the output (None: the output folder itself).
    """

    def __init__(
        self,
        rung: Rung | None,
        params: EncoderParams,
        writer: SegmentWriter,
        *,
        top_kbps: int,
    ) -> None:
        self.rung = rung
        self.params = params
        self.encoder = GopEncoder(params)
        self.writer = writer
        self._share = Fraction(params.bitrate_kbps, top_kbps)

    @property
    def folder(self) -> str | None:
        """The rung's folder name under the encoder's output; None: the output itself."""
        return None if self.rung is None else self.rung.name

    def published_name(self, path: Path) -> str:
        """The name a file of this rendition goes out under: with its rung's folder."""
        return path.name if self.folder is None else f"{self.folder}/{path.name}"

    def bitrate_for(self, agreed_kbps: int) -> int:
        """This rung's bitrate when the mesh agreed ``agreed_kbps`` for the top rung: the same
        share of it as the ladder gives the rung (1 kbit/s at least)."""
        if self._share == 1:
            return agreed_kbps  # the top rung, or the single output: no arithmetic per frame
        return max(1, round(agreed_kbps * self._share))

    def scaled(self, picture: Picture) -> Picture:
        return scale_picture(picture, self.params.width, self.params.height)

    def close(self) -> None:
        self.encoder.close()


def renditions_for(
    out: Path,
    frame_rate: FrameRate,
    gop: int,
    rungs: Sequence[Rung] | None,
    *,
    size: tuple[int, int],
    bitrate_kbps: int,
    fmt: SegmentFormat,
    aside: Callable[[int], bool] | None = None,
) -> list[Rendition]:
    """The encoder's renditions: one per rung in its folder under ``out``, in ladder order, or
    without a ladder (``rungs`` None) one writing ``size`` at ``bitrate_kbps`` into ``out``.
    Every writer asks ``aside`` which segments to write aside (``SegmentWriter``)."""
    if not rungs:
        params = EncoderParams(size[0], size[1], frame_rate, gop, bitrate_kbps)
        writer = SegmentWriter(out, params, fmt=fmt, aside=aside)
        return [Rendition(None, params, writer, top_kbps=bitrate_kbps)]
    top = top_rung(rungs).bitrate_kbps
    renditions = []
    for rung in rungs:
        params = EncoderParams(rung.width, rung.height, frame_rate, gop, rung.bitrate_kbps)
        writer = SegmentWriter(out / rung.name, params, fmt=fmt, aside=aside)
        renditions.append(Rendition(rung, params, writer, top_kbps=top))
    return renditions


class LadderManifests:
    """``master.m3u8`` (and for CMAF ``manifest.mpd``) above the rungs' folders.

    :meth:`segment_written` is told of every segment a rung wrote; once every rung has written
    the same segment, the manifests are brought up to date: the master only when its content
    changed, the MPD after every such segment (its ``publishTime`` is the segment's end, as in
    each rung's own MPD).
    """

    def __init__(self, out: Path, renditions: Sequence[Rendition], fmt: SegmentFormat) -> None:
        if any(r.rung is None for r in renditions):
            raise ValueError("ladder manifests need a rung per rendition")
        self.out = out
        self.format = fmt
        self._renditions = list(renditions)
        self._master: bytes | None = None
        self._newest = -1

    @property
    def master_path(self) -> Path:
        return self.out / MASTER_NAME

    @property
    def mpd_path(self) -> Path | None:
        return self.out / MPD_NAME if self.format is SegmentFormat.CMAF else None

    @property
    def master(self) -> bytes | None:
        """The master playlist as written (None before every rung has written a segment)."""
        return self._master

    def segment_written(self, segment: int) -> bool:
        """A rung wrote ``segment``; True when it was the last rung to, and the manifests were
        brought up to date (the master rewritten only if it changed)."""
        if segment <= self._newest or any(
            not r.writer.listed or r.writer.listed[-1] != segment for r in self._renditions
        ):
            return False
        self._newest = segment
        master = self.render_master().encode()
        if master != self._master:
            atomic_write(self.master_path, master)
            self._master = master
        if (mpd_path := self.mpd_path) is not None:
            atomic_write(mpd_path, self._mpd(segment).encode())
        return True

    def render_master(self) -> str:
        """The HLS master playlist: one EXT-X-STREAM-INF per rung, in ladder order."""
        first = self._renditions[0].writer
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7" if self.format is SegmentFormat.CMAF else "#EXT-X-VERSION:3",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ]
        rate = first.params.frame_rate
        for rendition in self._renditions:
            writer = rendition.writer
            attributes = [
                f"BANDWIDTH={writer.peak_bitrate}",
                f"RESOLUTION={rendition.params.width}x{rendition.params.height}",
            ]
            if writer.codecs:
                attributes.append(f'CODECS="{",".join(writer.codecs)}"')
            attributes.append(f"FRAME-RATE={float(Fraction(rate.num, rate.den)):.3f}")
            lines.append(f"#EXT-X-STREAM-INF:{','.join(attributes)}")
            lines.append(rendition.published_name(Path(PLAYLIST_NAME)))
        return "\n".join(lines) + "\n"

    def _mpd(self, segment: int) -> str:
        first = self._renditions[0].writer
        return render_ladder_mpd(
            [
                Representation(r.folder or "0", r.params, r.writer.codecs, r.writer.peak_bitrate)
                for r in self._renditions
            ],
            window=first.window,
            publish_time=utc_instant(first.segment_end(segment)),
            media_template=f"$RepresentationID$/{segment_template(self.format)}",
            init_template=f"$RepresentationID$/{INIT_NAME}",
        )
