"""Segment containers: how one segment's access units and audio become bytes (MPEG-TS or CMAF).

Theory of operation: a container muxes one segment at a time with a fresh muxer, bit-exactly
(no creation times, no version strings, no random ids), with timestamps taken from the timecodes
alone, so a segment's bytes are a pure function of its frames, its audio and the params.

- **MPEG-TS** (``.ts``): one self-contained file per segment; the audio (any codec the TS muxer
  takes) goes in beside the video.
- **CMAF** (``.m4s``): fragmented MP4 with FFmpeg's mp4 muxer. Each segment is muxed as
  ``ftyp+moov+moof+mdat`` (one fragment, ``frag_custom``) and split: ``ftyp+moov`` is the
  *init segment* (``init.mp4``), ``styp+moof+mdat`` the media segment. ``frag_discont`` makes
  the fragment's ``tfdt`` the first sample's absolute decode time (the segment's first timecode
  in the track's timescale, not shifted to 0), no edit list moves it, and ``fragment_index`` sets
  the ``mfhd`` sequence number to the segment number plus one; so two encoders that started at
  different moments write the same media segment for the same number. The init carries no
  timestamps: only the tracks' parameters (SPS/PPS, the AAC AudioSpecificConfig), the same for
  every segment of one stream. AAC is the only audio CMAF carries (ADTS from the source, turned
  into raw AAC with ``aac_adtstoasc``); a container that has carried AAC keeps declaring its
  track, also in segments without audio, so track ids never change.

Invariants: ``mux`` never reads a clock or a counter of its own; a CMAF init is returned only
when the segment carries a sample of every track the init declares (a track without samples
changes a few fields of its ``trak``), so every init written describes the same stream alike.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

import av
from av.bitstream import BitStreamFilterContext
from av.stream import Stream

from services.encoder.media.gop import EncodedFrame, EncoderParams

__all__ = [
    "INIT_NAME",
    "TICKS",
    "AudioPacket",
    "Cmaf",
    "MpegTs",
    "Muxed",
    "SegmentFormat",
    "aac_codec",
    "avc_codec",
    "container_for",
    "stream_codecs",
    "track_timescale",
]

#: Timestamps in the segments' audio, and source times handed to the writer: MPEG-TS's 90 kHz.
TICKS = 90_000
#: CMAF's init segment (``ftyp+moov``), next to the media segments.
INIT_NAME = "init.mp4"
#: ``fragment_index`` is a C int in FFmpeg: sequence numbers wrap below it.
_MAX_SEQUENCE = 2**31 - 1
#: Samples per AAC frame (AAC-LC and HE-AAC's core alike).
_AAC_FRAME = 1024
#: The media segment's ``styp``: a DASH media segment (``msdh``) and a CMAF segment (``cmfs``).
_STYP = struct.pack(">I4s4sI4s4s", 24, b"styp", b"msdh", 0, b"msdh", b"cmfs")
_MOVFLAGS = "+".join(
    (
        "",
        "frag_custom",  # one fragment per file, cut when the muxer closes
        "empty_moov",  # the moov describes the tracks only: no samples in it
        "delay_moov",  # ... written once the first packets gave the codecs' parameters
        "default_base_moof",  # sample offsets relative to the moof: the file stands alone
        "frag_discont",  # tfdt = the first sample's decode time, not 0
        "skip_trailer",  # no mfra index at the end
        "cmaf",
    )
)


class SegmentFormat(StrEnum):
    """What the encoder writes (``--format``)."""

    TS = "ts"
    CMAF = "cmaf"

    @property
    def suffix(self) -> str:
        return ".ts" if self is SegmentFormat.TS else ".m4s"


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One compressed audio packet of the source, at ``source_time`` (90 kHz ticks)."""

    codec: str
    sample_rate: int
    source_time: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Muxed:
    """One segment's bytes, and for CMAF the init segment they need (None: none, or this
    segment cannot vouch for it)."""

    media: bytes
    init: bytes | None = None


def container_for(fmt: SegmentFormat, params: EncoderParams) -> MpegTs | Cmaf:
    return MpegTs(params) if fmt is SegmentFormat.TS else Cmaf(params)


def _video_packets(
    stream: Stream, params: EncoderParams, frames: Sequence[EncodedFrame]
) -> list[av.Packet[Stream]]:
    """The access units as packets at their absolute timecodes: continuous across segments and
    equal on every encoder."""
    packets = []
    for frame in frames:
        packet = av.Packet(frame.data)
        packet.stream = stream
        packet.time_base = params.time_base
        packet.pts = frame.timecode
        packet.dts = frame.timecode
        packet.duration = 1
        packet.is_keyframe = frame.keyframe
        packets.append(packet)
    return packets


def _audio_packet(stream: Stream, at: int, sample: AudioPacket) -> av.Packet[Stream]:
    packet = av.Packet(sample.data)
    packet.stream = stream
    packet.time_base = Fraction(1, TICKS)
    packet.pts = at
    packet.dts = at
    return packet


class MpegTs:
    """One self-contained MPEG-TS file per segment."""

    format = SegmentFormat.TS
    #: MPEG-TS declares no RFC 6381 codecs (its manifests name none).
    codecs: tuple[str, ...] = ()

    def __init__(self, params: EncoderParams) -> None:
        self.params = params
        #: The RFC 6381 codecs of the last segment muxed (video, then its audio if known).
        self.codecs: tuple[str, ...] = ()

    def mux(
        self,
        segment: int,
        frames: Sequence[EncodedFrame],
        audio: Sequence[tuple[int, AudioPacket]],
    ) -> Muxed:
        params = self.params
        out = io.BytesIO()
        rate = Fraction(params.frame_rate.num, params.frame_rate.den)
        width, height = picture_size(params, frames)
        with av.open(
            out, "w", format="mpegts", container_options={"fflags": "+bitexact"}
        ) as container:
            stream = container.add_mux_stream("h264", rate=rate, width=width, height=height)
            if audio:
                first = audio[0][1]
                sound = container.add_mux_stream(first.codec, rate=first.sample_rate)
                for at, sample in audio:
                    container.mux(_audio_packet(sound, at, sample))
            for packet in _video_packets(stream, params, frames):
                container.mux(packet)
        self.codecs = stream_codecs(frames, audio[0][1] if audio else None)
        return Muxed(out.getvalue())


def picture_size(params: EncoderParams, frames: Sequence[EncodedFrame]) -> tuple[int, int]:
    """The picture size of a segment: its frames' (a segment is one GOP, encoded at one
    size), or the params' for frames that do not say."""
    size = frames[0].size if frames else None
    return size if size is not None else (params.width, params.height)


def track_timescale(params: EncoderParams) -> int:
    """The video track's timescale: the smallest multiple of the rate's numerator from 90 kHz
    up, so a frame lasts a whole number of ticks (3000 at 30 fps, 3003 at 30000/1001)."""
    num = params.frame_rate.num
    return math.ceil(TICKS / num) * num


def avc_codec(access_unit: bytes) -> str | None:
    """RFC 6381's ``avc1.PPCCLL`` from the SPS in an Annex B access unit; None without one."""
    for nal in access_unit.split(b"\x00\x00\x01")[1:]:
        if len(nal) >= 4 and nal[0] & 0x1F == 7:
            return f"avc1.{nal[1]:02x}{nal[2]:02x}{nal[3]:02x}"
    return None


#: RFC 6381 names of the audio codecs MPEG-TS carries besides AAC (whose name needs its header).
_AUDIO_CODECS = {"mp2": "mp4a.40.33", "mp3": "mp4a.40.34", "ac3": "ac-3", "eac3": "ec-3"}


def stream_codecs(frames: Sequence[EncodedFrame], audio: AudioPacket | None) -> tuple[str, ...]:
    """RFC 6381 codecs of a segment: the video's from the SPS of its first access unit, the
    audio's from its AAC header (``audio``: a packet of it; None: no audio). What a DASH
    Representation's ``codecs`` and an HLS variant's CODECS say; an audio codec without an
    RFC 6381 name here is left out."""
    codecs = []
    if frames and (video := avc_codec(frames[0].data)) is not None:
        codecs.append(video)
    if audio is not None:
        if _is_adts_aac(audio):
            codecs.append(aac_codec(audio.data))
        elif (name := _AUDIO_CODECS.get(audio.codec)) is not None:
            codecs.append(name)
    return tuple(codecs)


def _is_adts_aac(packet: AudioPacket) -> bool:
    return packet.codec == "aac" and len(packet.data) > 7 and packet.data[:2] >= b"\xff\xf0"


def aac_codec(adts: bytes) -> str:
    """``mp4a.40.N``: N is the audio object type, ADTS's profile plus one (2 for AAC-LC)."""
    return f"mp4a.40.{(adts[2] >> 6) + 1}"


def _top_level_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """The (type, start, end) of each top-level ISO BMFF box (32-bit sizes: ours never need
    more)."""
    boxes = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size < 8:
            raise ValueError(f"bad box size {size} at {offset}")
        boxes.append((kind, offset, offset + size))
        offset += size
    return boxes


class Cmaf:
    """Fragmented MP4: an init segment and one ``styp+moof+mdat`` media segment per segment."""

    format = SegmentFormat.CMAF

    def __init__(self, params: EncoderParams) -> None:
        self.params = params
        #: A packet of the stream's AAC (ADTS): the audio track is declared from it.
        self._audio_config: AudioPacket | None = None
        #: The RFC 6381 codecs of the last segment muxed (video, then audio when declared).
        self.codecs: tuple[str, ...] = ()

    def mux(
        self,
        segment: int,
        frames: Sequence[EncodedFrame],
        audio: Sequence[tuple[int, AudioPacket]],
    ) -> Muxed:
        params = self.params
        carried = [(at, sample) for at, sample in audio if _is_adts_aac(sample)]
        if carried:
            self._audio_config = carried[0][1]
        config = self._audio_config
        out = io.BytesIO()
        options = {
            "movflags": _MOVFLAGS,
            "fragment_index": str(segment % _MAX_SEQUENCE + 1),
            "use_editlist": "0",
            "video_track_timescale": str(track_timescale(params)),
        }
        rate = Fraction(params.frame_rate.num, params.frame_rate.den)
        width, height = picture_size(params, frames)
        with av.open(
            out, "w", format="mp4", options=options, container_options={"fflags": "+bitexact"}
        ) as container:
            video = container.add_mux_stream("h264", rate=rate, width=width, height=height)
            if config is not None:
                sound = container.add_mux_stream("aac", rate=config.sample_rate)
                # The filter writes the AudioSpecificConfig into the stream's parameters.
                adts = BitStreamFilterContext("aac_adtstoasc", sound, sound)
                if not carried:
                    adts.filter(av.Packet(config.data))
                for at, sample in carried:
                    packet = _audio_packet(sound, at, sample)
                    packet.duration = round(Fraction(_AAC_FRAME * TICKS, sample.sample_rate))
                    for raw in adts.filter(packet):
                        raw.stream = sound
                        container.mux(raw)
            for packet in _video_packets(video, params, frames):
                container.mux(packet)
        self.codecs = stream_codecs(frames, config)
        data = out.getvalue()
        boxes = _top_level_boxes(data)
        moof = next(start for kind, start, _ in boxes if kind == b"moof")
        complete = config is None or bool(carried)
        return Muxed(_STYP + data[moof:], data[:moof] if complete else None)
