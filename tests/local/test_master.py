"""The master playlist of redundant variants and the codecs it declares, read from real
libx264 + AAC segments of both formats."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from meshenc.core.timecode import FrameRate
from meshenc.local.master import StreamAttributes, master_playlist, segment_codecs
from services.encoder.media import EncodedFrame, SegmentFormat, SegmentWriter
from services.encoder.media.containers import avc_codec
from services.encoder.media.segments import AudioPacket, segment_name
from tests.services.encoder.media.test_cmaf import FIRST, FRAME_TICKS, SOURCE_START, aac_packets
from tests.services.encoder.media.test_media import BASE, GOP, PARAMS, encode, pictures

ATTRIBUTES = StreamAttributes(1_500_000, 320, 180, FrameRate(30000, 1001), ("avc1.42c01e",))


@pytest.fixture(scope="module")
def frames() -> list[EncodedFrame]:
    return encode([(BASE + i, p) for i, p in enumerate(pictures(2 * GOP))])


def write(
    out: Path, fmt: SegmentFormat, frames: list[EncodedFrame], audio: list[AudioPacket]
) -> Path:
    """Two segments, video and audio interleaved by source time; the first segment's path."""
    writer = SegmentWriter(out, PARAMS, fmt=fmt)
    queue = list(audio)
    for i, frame in enumerate(frames):
        source = SOURCE_START + i * FRAME_TICKS
        while queue and queue[0].source_time <= source:
            writer.add_audio(queue.pop(0))
        writer.add(frame, source)
    writer.finish()
    return out / segment_name(FIRST, fmt)


def test_codecs_come_from_the_sps_and_the_adts_header_alike_in_both_formats(
    tmp_path: Path, frames: list[EncodedFrame]
) -> None:
    audio = aac_packets(2 * GOP / 30 + 0.5)
    video = avc_codec(frames[0].data)
    assert video is not None and video.startswith("avc1.")
    ts = segment_codecs(write(tmp_path / "ts", SegmentFormat.TS, frames, audio))
    cmaf = segment_codecs(write(tmp_path / "cmaf", SegmentFormat.CMAF, frames, audio))
    assert ts == cmaf == (video, "mp4a.40.2")
    silent = segment_codecs(write(tmp_path / "silent", SegmentFormat.TS, frames, []))
    assert silent == (video,)
    (tmp_path / "empty.ts").write_bytes(b"")
    with pytest.raises(av.FFmpegError):
        segment_codecs(tmp_path / "empty.ts")


def test_every_variant_declares_the_same_attributes_in_the_given_order() -> None:
    uris = ["http://127.0.0.1:1001/index.m3u8", "http://127.0.0.1:1002/index.m3u8"]
    text = master_playlist(ATTRIBUTES, uris)
    lines = text.splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    inf = (
        '#EXT-X-STREAM-INF:BANDWIDTH=1500000,CODECS="avc1.42c01e",RESOLUTION=320x180,'
        "FRAME-RATE=29.970"
    )
    assert lines[3:] == [inf, uris[0], inf, uris[1]]
    assert text.endswith("\n")
    two = StreamAttributes(800_000, 640, 360, FrameRate(25), ("avc1.64001f", "mp4a.40.2"))
    assert two.stream_inf == (
        '#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=640x360,'
        "FRAME-RATE=25.000"
    )


@pytest.mark.parametrize(
    "uris",
    [[], ["a.m3u8", "a.m3u8"], ["a.m3u8\n#EXT-X-ENDLIST"], ['a".m3u8'], ["#x"], [""]],
)
def test_bad_variant_lists_are_refused(uris: list[str]) -> None:
    with pytest.raises(ValueError):
        master_playlist(ATTRIBUTES, uris)
