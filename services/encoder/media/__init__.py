"""The encoder's media path: sources, GOP-deterministic H.264 encoding and HLS/DASH segments.

This is the only package of the encoder service that imports PyAV; the core never does.
"""

from __future__ import annotations

from services.encoder.media.gop import EncodedFrame, EncoderParams, GopEncoder
from services.encoder.media.segments import (
    PLAYLIST_NAME,
    SegmentFormat,
    SegmentWriter,
    segment_name,
)
from services.encoder.media.source import (
    Picture,
    SourceError,
    SyntheticSource,
    VideoFormat,
    fingerprint,
)

__all__ = [
    "PLAYLIST_NAME",
    "EncodedFrame",
    "EncoderParams",
    "GopEncoder",
    "Picture",
    "SegmentFormat",
    "SegmentWriter",
    "SourceError",
    "SyntheticSource",
    "VideoFormat",
    "fingerprint",
    "segment_name",
]
