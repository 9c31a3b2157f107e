"""The master playlist of redundant variants (RFC 8216 §6.2.4) that ``meshenc up`` publishes.

Theory of operation
-------------------
Every encoder serves its own output folder over HTTP (``meshenc encoder --serve-output``), and
every locked encoder's media playlist lists the same segment numbers with the same bytes and
the same EXT-X-PROGRAM-DATE-TIME (numbering comes from the shared timeline). So each of them is
a redundant copy of one stream: :func:`master_playlist` lists them as variants with identical
``EXT-X-STREAM-INF`` attributes (a player treats variants that differ only in URI as redundant
and fails over between them: hls.js makes each a "pathway" and moves to the next one when a
playlist or fragment cannot be loaded), in the order given: a player starts on the first.

The attributes are the stream's (:class:`StreamAttributes`): ``BANDWIDTH`` the encoders'
configured bitrate, ``RESOLUTION`` and ``FRAME-RATE`` their settings, and ``CODECS`` read from a
published segment with the writer's own derivation (:func:`segment_codecs`: ``avc1.PPCCLL``
from the SPS, ``mp4a.40.N`` from the ADTS header of an MPEG-TS segment; a CMAF segment's from
the DASH manifest beside it, which the writer derived the same way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import av

from meshenc.core.timecode import FrameRate
from meshenc.report.verify import segment_source
from services.encoder.media.containers import SegmentFormat, aac_codec, avc_codec
from services.encoder.media.segments import MPD_NAME, segment_format

__all__ = ["REDUNDANT_NAME", "StreamAttributes", "master_playlist", "segment_codecs"]

#: Not ``master.m3u8``: that name is an encoder's own ladder master (one variant per rung).
REDUNDANT_NAME: Final = "redundant.m3u8"
_MPD_CODECS: Final = re.compile(r'codecs="([^"]+)"')


@dataclass(frozen=True, slots=True)
class StreamAttributes:
    """What every redundant variant declares alike."""

    bandwidth_bps: int
    width: int
    height: int
    frame_rate: FrameRate
    codecs: tuple[str, ...]

    @property
    def stream_inf(self) -> str:
        rate = self.frame_rate.num / self.frame_rate.den
        return (
            f"#EXT-X-STREAM-INF:BANDWIDTH={self.bandwidth_bps},"
            f'CODECS="{",".join(self.codecs)}",RESOLUTION={self.width}x{self.height},'
            f"FRAME-RATE={rate:.3f}"
        )


def master_playlist(attributes: StreamAttributes, uris: Sequence[str]) -> str:
    """A master playlist listing each URI as a redundant variant of one stream, in order.

    Raises:
        ValueError: no URI, a URI twice, or one with a line break or a quote.
    """
    if not uris:
        raise ValueError("a master playlist needs at least one variant")
    if len(set(uris)) != len(uris):
        raise ValueError("each variant once: a URI is listed twice")
    for uri in uris:
        if not uri or any(ch in uri for ch in '\r\n"') or uri.startswith("#"):
            raise ValueError(f"not a playlist URI: {uri!r}")
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for uri in uris:
        lines += [attributes.stream_inf, uri]
    return "\n".join(lines) + "\n"


def segment_codecs(path: Path) -> tuple[str, ...]:
    """RFC 6381 codecs of a published segment's tracks: video, then audio when it has AAC.

    Raises:
        ValueError: the segment carries no H.264 parameter set (or its manifest no codecs).
        OSError, av.FFmpegError: it cannot be read.
    """
    if segment_format(path.name) is SegmentFormat.CMAF:
        found = _MPD_CODECS.search((path.parent / MPD_NAME).read_text(encoding="utf-8"))
        if found is None:
            raise ValueError(f"{path.parent / MPD_NAME} declares no codecs")
        return tuple(found.group(1).split(","))
    video: str | None = None
    audio: str | None = None
    with av.open(segment_source(path), "r") as container:
        for packet in container.demux():
            if packet.size == 0:
                continue
            data = bytes(packet)
            if packet.stream.type == "video" and video is None:
                video = avc_codec(data)
            elif packet.stream.type == "audio" and audio is None and data[:2] >= b"\xff\xf0":
                audio = aac_codec(data)
            if video is not None and (audio is not None or not container.streams.audio):
                break
    if video is None:
        raise ValueError(f"{path} carries no H.264 sequence parameter set")
    return (video,) if audio is None else (video, audio)
