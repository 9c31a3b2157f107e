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
each rung keeping its share of the top rung's bitrate (``Rendition.bitrate_for``). A mesh-wide
picture size applies to the single output only: a rung's size is the ladder's. The frame
hash the ESPs carry covers every rung (``combined_hash``): with one rung it is that rung's
hash, as without a ladder.

Above the rungs, ``master.m3u8`` lists every rung (BANDWIDTH, RESOLUTION, CODECS, FRAME-RATE)
and, for CMAF, ``manifest.mpd`` has one Representation per rung in one AdaptationSet. CODECS
come from the segments' own SPS and ADTS headers (the container derives them as it muxes);
BANDWIDTH is the highest bit rate of the rung's segments written so far (bytes of the media
segment, audio and container included, over its duration). Both are known only once every rung
has written a segment, so the master appears then, and is rewritten when a rung's peak rises.

Placement (:class:`Holdings`): the Mesh Manager may place a ladder's rungs on different
encoders (each rung a work unit, ``0/<rung>``, on ``redundancy`` encoders). An encoder then
encodes and writes only the rungs it holds. The set changes only where a segment (a GOP)
starts: a rung taken on is encoded from the first slot of the next segment, by a fresh
GOP-deterministic context, so its first segment is whole and, on a timeline the mesh agrees
on, the same bytes as every other holder's; a rung given up stops there, its last segment
written whole once its audio has come. The manifests name only the rungs held (the master
drops a rung at once, takes a new one once it has written a segment). Encoders that hold
different rungs cannot compare encoded bytes, so a placed ladder's ESPs carry the hash of
what every encoder puts into its encoders instead (:func:`input_hash`: the slot's timecode,
its agreed bitrate and the top rung's picture, from which every rung is scaled); the GOP
determinism is what makes equal inputs equal segments.

A placed ladder's encoders publish no master or MPD of their own (they name only their rungs)
but the channel's (:func:`channel_master`, :func:`channel_mpd`): every rung of the ladder,
which every holder writes alike, with a bandwidth bound from the rung's rate and codecs from
the rung's settings.

Invariants: a ladder has at least one rung, every rung its own size; the top rung is the
largest picture; without ``--ladder`` the encoder has one rendition writing into its output
folder itself, with no master playlist, exactly as before ladders existed; the rungs an
encoder writes change only at a segment boundary.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

from meshenc.core.timecode import FrameRate, SegmentLayout
from services.encoder.media.containers import AudioPacket, avc_codec
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
from services.encoder.media.source import Picture, VideoFormat, black_picture

__all__ = [
    "CHANNEL",
    "MASTER_NAME",
    "MAX_RUNGS",
    "ChannelRung",
    "Holdings",
    "LadderManifests",
    "Rendition",
    "Rung",
    "channel_master",
    "channel_mpd",
    "channel_rungs",
    "combined_hash",
    "input_hash",
    "master_text",
    "open_rendition",
    "parse_ladder",
    "peak_bandwidth",
    "renditions_for",
    "rung_params",
    "rungs_mpd",
    "scale_picture",
    "share_of",
    "top_rung",
    "video_codec",
]

MASTER_NAME = "master.m3u8"
#: More renditions than any ladder needs, and a bound on one encoder's work per picture.
MAX_RUNGS = 8
#: Audio packets kept for a rung taken on (about 2.7 s of 48 kHz AAC).
AUDIO_KEPT = 128
#: The channel an encoder runs: its rungs are the work units ``0/<rung>`` of a placement.
CHANNEL = "0"
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


def input_hash(timecode: int, bitrate_kbps: int, picture: Picture) -> bytes:
    """The hash a placed ladder's ESP carries for one slot: SHA-256 of the slot's timecode, the
    top rung's agreed bitrate and the picture every rung is scaled from — what every encoder of
    the mesh feeds its encoders, whichever rungs it holds."""
    digest = hashlib.sha256(timecode.to_bytes(8, "big", signed=True))
    digest.update(bitrate_kbps.to_bytes(4, "big"))
    digest.update(np.ascontiguousarray(picture.yuv).data)  # no copy for a decoded picture
    return digest.digest()


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
        self._size = (params.width, params.height)

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
            return agreed_kbps  # the top rung, or the single output: no call per frame
        return share_of(agreed_kbps, self._share)

    def scaled(self, picture: Picture, size: tuple[int, int] | None = None) -> Picture:
        """``picture`` at this rendition's size: a rung's own, or for the single output the
        size the mesh agreed (``size``; None: the size it was started with)."""
        width, height = self._size if size is None or self.rung is not None else size
        return scale_picture(picture, width, height)

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
    return [
        open_rendition(out, frame_rate, gop, rung, top_kbps=top, fmt=fmt, aside=aside)
        for rung in rungs
    ]


def rung_params(
    rung: Rung, frame_rate: FrameRate, gop: int, bitrate_kbps: int | None = None
) -> EncoderParams:
    """The encoder settings of one rung (at its ladder bitrate, or at ``bitrate_kbps``)."""
    kbps = rung.bitrate_kbps if bitrate_kbps is None else bitrate_kbps
    return EncoderParams(rung.width, rung.height, frame_rate, gop, kbps)


def share_of(agreed_kbps: int, share: Fraction) -> int:
    """A rung's bitrate when the mesh agreed ``agreed_kbps`` for the top rung: ``share`` of
    it, the rung's share in the ladder (1 kbit/s at least)."""
    return max(1, round(agreed_kbps * share))


def open_rendition(
    out: Path,
    frame_rate: FrameRate,
    gop: int,
    rung: Rung,
    *,
    top_kbps: int,
    fmt: SegmentFormat,
    aside: Callable[[int], bool] | None = None,
) -> Rendition:
    """One rung's rendition, writing into its folder under ``out`` (created now)."""
    params = rung_params(rung, frame_rate, gop)
    writer = SegmentWriter(out / rung.name, params, fmt=fmt, aside=aside)
    return Rendition(rung, params, writer, top_kbps=top_kbps)


class Holdings:
    """The renditions an encoder writes, out of its ladder, as the placement tells it.

    :meth:`want` names the rungs to hold (None: every rung, as without a placement); the set
    written changes only in :meth:`slot`, at the first slot of a segment: rungs taken on
    are opened (``open_rung``) or woken, rungs given up stop (their writer's segment in
    progress is written whole once its audio has come, ``SegmentWriter.stop``) and keep
    their rendition, so that taking one back writes on into the same folder. The source's
    audio goes through :meth:`add_audio`, which keeps the newest packets: a rung taken on is
    given them first, since its first segment's audio may have come before its first frame.

    Args:
        ladder: the rungs, in ladder order (the manifests' order).
        open_rung: makes a rung's rendition the first time it is held.
        segments: the segment (GOP) layout of the timeline.
        opened: renditions made already (the rungs held from the start).
    """

    def __init__(
        self,
        ladder: Sequence[Rung],
        open_rung: Callable[[Rung], Rendition],
        segments: SegmentLayout,
        opened: Sequence[Rendition] = (),
    ) -> None:
        self._ladder = tuple(ladder)
        self._open = open_rung
        self._segments = segments
        self._renditions: dict[str, Rendition] = {str(r.folder): r for r in opened}
        self._wanted = frozenset(r.name for r in self._ladder)
        self._active: tuple[Rendition, ...] = ()
        self._segment: int | None = None
        self._changed = True
        self._audio: deque[AudioPacket] = deque(maxlen=AUDIO_KEPT)

    @classmethod
    def fixed(cls, renditions: Sequence[Rendition], segments: SegmentLayout) -> Holdings:
        """Renditions that are always all written (no placement: the single output, a
        benchmark)."""

        def refuse(rung: Rung) -> Rendition:
            raise RuntimeError(f"fixed renditions cannot open {rung}")

        holdings = cls((), refuse, segments, renditions)
        holdings._active = tuple(renditions)
        holdings._changed = False
        return holdings

    @property
    def rungs(self) -> tuple[str, ...]:
        """Every rung's name, in ladder order."""
        return tuple(r.name for r in self._ladder)

    @property
    def opened(self) -> list[Rendition]:
        """Every rendition made so far, held or not (to finish and close at the end)."""
        return list(self._renditions.values())

    @property
    def active(self) -> tuple[Rendition, ...]:
        """The renditions written now, in ladder order."""
        return self._active

    @property
    def wanted(self) -> frozenset[str]:
        """The rungs to write from the next segment on."""
        return self._wanted

    @property
    def writing(self) -> list[Rendition]:
        """The renditions that take the source's audio: those written, and stopped ones whose
        last segment still waits for it."""
        return [r for r in self._renditions.values() if r in self._active or r.writer.waiting]

    def add_audio(self, packet: AudioPacket) -> list[tuple[Rendition, list[Path]]]:
        """One audio packet of the source to every rendition that takes it (``writing``);
        returns the segments each one wrote."""
        self._audio.append(packet)
        return [(r, r.writer.add_audio(packet)) for r in self.writing]

    def want(self, rungs: Collection[str] | None) -> None:
        """Hold these rungs (names of the ladder's) from the next segment on; None: every one.

        Raises:
            ValueError: a name that is not a rung of the ladder.
        """
        names = frozenset(r.name for r in self._ladder) if rungs is None else frozenset(rungs)
        unknown = names - {r.name for r in self._ladder}
        if unknown:
            raise ValueError(f"not rungs of the ladder: {', '.join(sorted(unknown))}")
        if names != self._wanted:
            self._wanted = names
            self._changed = True

    def slot(self, timecode: int) -> tuple[list[Rendition], list[tuple[Rendition, list[Path]]]]:
        """The renditions to encode ``timecode`` into. Where a segment starts (and at the very
        first slot) the held set becomes the wanted one: returns the renditions started and,
        for those stopped, the segments their stop wrote."""
        segment = self._segments.segment_of(timecode)
        if segment == self._segment:
            return [], []
        self._segment = segment
        if not self._changed:
            return [], []
        self._changed = False
        started: list[Rendition] = []
        stopped: list[tuple[Rendition, list[Path]]] = []
        for rendition in self._active:
            if rendition.folder not in self._wanted:
                stopped.append((rendition, rendition.writer.stop(segment)))
                rendition.encoder.close()  # its libx264 context; a fresh one opens per GOP
        active = []
        for rung in self._ladder:
            if rung.name not in self._wanted:
                continue
            held = self._renditions.get(rung.name)
            if held is None:
                held = self._renditions[rung.name] = self._open(rung)
            if held not in self._active:
                started.append(held)
                for packet in self._audio:  # a packet it has already is dropped by the writer
                    held.writer.add_audio(packet)
            active.append(held)
        self._active = tuple(active)
        return started, stopped


def master_text(
    fmt: SegmentFormat,
    rate: FrameRate,
    streams: Sequence[tuple[int, EncoderParams, Sequence[str], str]],
) -> str:
    """An HLS master playlist: per stream (BANDWIDTH bit/s, its picture, RFC 6381 codecs,
    the media playlist's URI) one EXT-X-STREAM-INF, in the order given."""
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7" if fmt is SegmentFormat.CMAF else "#EXT-X-VERSION:3",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    for bandwidth, params, codecs, uri in streams:
        attributes = [f"BANDWIDTH={bandwidth}", f"RESOLUTION={params.width}x{params.height}"]
        if codecs:
            attributes.append(f'CODECS="{",".join(codecs)}"')
        attributes.append(f"FRAME-RATE={float(Fraction(rate.num, rate.den)):.3f}")
        lines.append(f"#EXT-X-STREAM-INF:{','.join(attributes)}")
        lines.append(uri)
    return "\n".join(lines) + "\n"


AUDIO_ALLOWANCE_KBPS = 192
"""What a channel master counts for a rung's audio: the source's audio goes into every rung as
it came, at a rate no encoder knows before it arrives; 192 kbit/s covers stereo AAC as live
sources send it."""
CONTAINER_ALLOWANCE = Fraction(11, 10)
"""What a channel master adds for the container (TS packets, CMAF boxes) over the streams."""


def video_codec(params: EncoderParams) -> str:
    """RFC 6381 codec of a rung's video as this encoder's libx264 writes it, from one black
    picture encoded with the rung's settings: profile and level follow from the settings
    (size, rate, VBV), not from the pictures, so every encoder names every rung alike,
    written or not.

    Raises:
        RuntimeError: libx264 wrote no SPS.
    """
    encoder = GopEncoder(params)
    try:
        frame = encoder.encode(0, black_picture(params.width, params.height))
    finally:
        encoder.close()
    codec = avc_codec(frame.data)
    if codec is None:
        raise RuntimeError(f"libx264 wrote no SPS for {params.width}x{params.height}")
    return codec


def peak_bandwidth(params: EncoderParams, segment_seconds: Fraction) -> int:
    """A rung's BANDWIDTH (bit/s) in a master every holder writes alike: a bound, not a
    measurement. The VBV (a one-second buffer at the rung's rate) lets a segment of ``D``
    seconds carry at most ``rate x (D + 1 s)`` of video; plus ``AUDIO_ALLOWANCE_KBPS``; plus
    ``CONTAINER_ALLOWANCE``."""
    video = params.bitrate_kbps * 1000 * (segment_seconds + 1) / segment_seconds
    return math.ceil((video + AUDIO_ALLOWANCE_KBPS * 1000) * CONTAINER_ALLOWANCE)


@dataclass(frozen=True, slots=True)
class ChannelRung:
    """One rung as a channel's manifests name it, alike from every holder: its name, its
    settings at the agreed bitrate, its :func:`peak_bandwidth` and its RFC 6381 codecs."""

    name: str
    params: EncoderParams
    bandwidth: int
    codecs: tuple[str, ...]


def channel_rungs(
    ladder: Sequence[Rung],
    frame_rate: FrameRate,
    gop: int,
    agreed_kbps: int,
    other_codecs: Sequence[str],
) -> list[ChannelRung]:
    """Every rung of a placed ladder as its channel's manifests name it. A placed ladder's
    rungs are held by different encoders, and no one encoder's own manifests (its rungs only)
    can be the channel's, so every holder of any rung writes the channel's alike. Per rung,
    at its share of the bitrate the mesh agreed for the top rung (``agreed_kbps``, which the
    level in the codec follows): :func:`peak_bandwidth`, the rung's size, its
    :func:`video_codec` (one black picture encoded per rung: made once per agreed bitrate,
    not per segment) and the source's other codecs as this encoder's segments carry them
    (``other_codecs``: the audio, alike in every rung)."""
    top = top_rung(ladder).bitrate_kbps
    rungs = []
    for rung in ladder:
        kbps = share_of(agreed_kbps, Fraction(rung.bitrate_kbps, top))
        params = rung_params(rung, frame_rate, gop, kbps)
        bandwidth = peak_bandwidth(params, params.segments.duration(params.time_base))
        rungs.append(
            ChannelRung(rung.name, params, bandwidth, (video_codec(params), *other_codecs))
        )
    return rungs


def channel_master(rungs: Sequence[ChannelRung], fmt: SegmentFormat) -> str:
    """The channel's HLS master playlist over every rung (:func:`channel_rungs`)."""
    return master_text(
        fmt,
        rungs[0].params.frame_rate,
        [(r.bandwidth, r.params, r.codecs, f"{r.name}/{PLAYLIST_NAME}") for r in rungs],
    )


def channel_mpd(rungs: Sequence[ChannelRung], *, window: int, publish_time: str) -> str:
    """The channel's DASH manifest over every rung (:func:`channel_rungs`) of a CMAF ladder,
    as a ladder's own MPD names them (:func:`rungs_mpd`)."""
    return rungs_mpd(
        [Representation(r.name, r.params, r.codecs, r.bandwidth) for r in rungs],
        window=window,
        publish_time=publish_time,
    )


def rungs_mpd(representations: Sequence[Representation], *, window: int, publish_time: str) -> str:
    """The MPD above a ladder's rung folders: one Representation per rung, its id the rung's
    folder, which the segment templates name."""
    return render_ladder_mpd(
        representations,
        window=window,
        publish_time=publish_time,
        media_template=f"$RepresentationID$/{segment_template(SegmentFormat.CMAF)}",
        init_template=f"$RepresentationID$/{INIT_NAME}",
    )


class LadderManifests:
    """``master.m3u8`` (and for CMAF ``manifest.mpd``) above the rungs' folders.

    :meth:`segment_written` is told of every segment a rung wrote; once every rung has written
    the same segment, the manifests are brought up to date: the master only when its content
    changed, the MPD after every such segment (its ``publishTime`` is the segment's end, as in
    each rung's own MPD). :meth:`follow` changes the rungs named (a placement).
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
        if (
            not self._renditions
            or segment <= self._newest
            or any(not r.writer.listed or r.writer.listed[-1] != segment for r in self._renditions)
        ):
            return False
        self._newest = segment
        self._write(segment, self._renditions)
        return True

    def follow(self, renditions: Sequence[Rendition]) -> None:
        """Name these renditions from now on (the rungs held changed). The manifests are
        rewritten at once over those of them that wrote the newest segment, so a rung given
        up leaves the master now and a rung taken on joins it once it has written a segment
        (``segment_written``); with no rung left, the master and the MPD are removed."""
        if any(r.rung is None for r in renditions):
            raise ValueError("ladder manifests need a rung per rendition")
        self._renditions = list(renditions)
        current = [
            r for r in self._renditions if r.writer.listed and r.writer.listed[-1] >= self._newest
        ]
        if current and self._newest >= 0:
            self._write(self._newest, current)
        elif not current:
            self._master = None
            for path in (self.master_path, self.mpd_path):
                if path is not None:
                    path.unlink(missing_ok=True)

    def _write(self, segment: int, renditions: Sequence[Rendition]) -> None:
        master = self.render_master(renditions).encode()
        if master != self._master:
            atomic_write(self.master_path, master)
            self._master = master
        if (mpd_path := self.mpd_path) is not None:
            atomic_write(mpd_path, self._mpd(segment, renditions).encode())

    def render_master(self, renditions: Sequence[Rendition] | None = None) -> str:
        """The HLS master playlist: one EXT-X-STREAM-INF per rung (default: every rung
        named), in ladder order."""
        renditions = self._renditions if renditions is None else renditions
        return master_text(
            self.format,
            renditions[0].writer.params.frame_rate,
            [
                (
                    r.writer.peak_bitrate,
                    r.params,
                    r.writer.codecs,
                    r.published_name(Path(PLAYLIST_NAME)),
                )
                for r in renditions
            ],
        )

    def _mpd(self, segment: int, renditions: Sequence[Rendition]) -> str:
        first = renditions[0].writer
        return rungs_mpd(
            [
                Representation(r.folder or "0", r.params, r.writer.codecs, r.writer.peak_bitrate)
                for r in renditions
            ],
            window=first.window,
            publish_time=utc_instant(first.segment_end(segment)),
        )
