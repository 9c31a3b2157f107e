"""Real encoded frames of the test pattern, for the media tests that write segments."""

from __future__ import annotations

from meshenc.core.timecode import FrameRate
from services.encoder.media import (
    EncodedFrame,
    EncoderParams,
    GopEncoder,
    SyntheticSource,
    VideoFormat,
)

#: The first frame's timecode: a segment boundary for every GOP length that divides it.
START = 600


def pattern_frames(gop: int, segments: int) -> tuple[EncoderParams, list[EncodedFrame]]:
    """The settings (160x96 at 30 fps, 300 kbit/s) and ``segments`` whole GOPs of the test
    pattern encoded by libx264 from timecode ``START``."""
    fmt = VideoFormat(160, 96, FrameRate(30))
    params = EncoderParams.for_format(fmt, gop=gop, bitrate_kbps=300)
    source = SyntheticSource(fmt)
    encoder = GopEncoder(params)
    try:
        return params, [encoder.encode(START + n, source.read()) for n in range(gop * segments)]
    finally:
        encoder.close()
