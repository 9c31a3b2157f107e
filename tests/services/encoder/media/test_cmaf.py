"""CMAF output on real PyAV/libx264 and FFmpeg's mp4 muxer: byte identity across encoders, the
boxes that carry the segment number, playback of init + segments, and the DASH MPD.

Nothing is mocked. Audio is real AAC in ADTS, as the ingest hands it over (muxed into MPEG-TS
and demuxed again, like a live source's). Boxes are read with a few lines of struct code.
"""

from __future__ import annotations

import io
import struct
import subprocess
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from meshenc.core.timecode import FrameRate
from services.encoder.media import EncodedFrame, EncoderParams, SegmentFormat, SegmentWriter
from services.encoder.media.containers import Cmaf, avc_codec, track_timescale
from services.encoder.media.dash import render_mpd
from services.encoder.media.segments import AudioPacket, segment_name, segment_template

from .test_media import BASE, GOP, PARAMS, encode, files, pictures

CMAF = SegmentFormat.CMAF
#: 90 kHz ticks per frame at 30 fps, per AAC frame at 48 kHz, and the source clock's start.
FRAME_TICKS = 3000
AAC_TICKS = 1920
SOURCE_START = 500_000
FIRST = BASE // GOP


def sequence_of(segment: int) -> int:
    """The mfhd sequence number of a segment: its number plus one, below FFmpeg's int limit
    (segment numbers pass it only with short GOPs: these tests' 6 frames, not 2 seconds')."""
    return segment % (2**31 - 1) + 1


def aac_packets(seconds: float) -> list[AudioPacket]:
    """Real AAC-LC packets (ADTS) of a tone, at their source times (90 kHz)."""
    muxed = io.BytesIO()
    with av.open(muxed, "w", format="mpegts") as container:
        stream = container.add_stream("aac", rate=48_000)
        stream.codec_context.layout = "stereo"
        samples = 0
        while samples < seconds * 48_000:
            tone = (np.sin(np.arange(samples, samples + 1024) * 0.06) * 0.3).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), "fltp", "stereo")
            frame.sample_rate = 48_000
            frame.pts = samples
            samples += 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    muxed.seek(0)
    with av.open(muxed, "r") as container:
        return [
            AudioPacket("aac", 48_000, SOURCE_START + i * AAC_TICKS, bytes(packet))
            for i, packet in enumerate(p for p in container.demux(audio=0) if p.size)
        ]


@pytest.fixture(scope="module")
def stream() -> list[EncodedFrame]:
    """Five GOPs from a GOP boundary."""
    return encode([(BASE + i, p) for i, p in enumerate(pictures(5 * GOP))])


@pytest.fixture(scope="module")
def audio() -> list[AudioPacket]:
    return aac_packets(5 * GOP / 30 + 0.5)


def write(
    out: Path, frames: list[EncodedFrame], audio: list[AudioPacket], skip: int = 0
) -> SegmentWriter:
    """A CMAF writer fed video and audio interleaved by source time, from frame ``skip`` on (an
    encoder that started later); frame ``i`` of the stream is at source time ``i`` frames."""
    writer = SegmentWriter(out, PARAMS, fmt=CMAF)
    queue = [p for p in audio if p.source_time >= SOURCE_START + skip * FRAME_TICKS]
    for i, frame in enumerate(frames[skip:], start=skip):
        source = SOURCE_START + i * FRAME_TICKS
        while queue and queue[0].source_time <= source:
            writer.add_audio(queue.pop(0))
        writer.add(frame, source)
    for packet in queue:
        writer.add_audio(packet)
    writer.finish()
    return writer


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, bytes]]:
    """(type, payload) of the boxes in ``data[start:end]``, in order."""
    end = len(data) if end is None else end
    found = []
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        found.append((kind, data[start + 8 : start + size]))
        start += size
    return found


def fragment(segment: bytes) -> tuple[int, dict[int, int]]:
    """The mfhd sequence number and each track's tfdt (track id → baseMediaDecodeTime)."""
    top = dict(boxes(segment))
    moof = boxes(top[b"moof"])
    sequence = struct.unpack(">I", dict(moof)[b"mfhd"][4:8])[0]
    decode_times = {}
    for kind, traf in moof:
        if kind == b"traf":
            parts = dict(boxes(traf))
            track = struct.unpack(">I", parts[b"tfhd"][4:8])[0]
            assert parts[b"tfdt"][0] == 1  # version 1: 64-bit decode times
            decode_times[track] = struct.unpack(">Q", parts[b"tfdt"][4:12])[0]
    return sequence, decode_times


def test_writers_that_started_apart_write_identical_init_and_segments(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    early = write(tmp_path / "early", stream, audio)
    write(tmp_path / "late", stream, audio, skip=GOP + 3)
    names = [segment_name(FIRST + s, CMAF) for s in range(5)]
    assert files(tmp_path / "early") == sorted([*names, "index.m3u8", "init.mp4", "manifest.mpd"])
    assert not (tmp_path / "late" / names[1]).exists()  # joined mid-GOP: partial, not written
    for name in ["init.mp4", *names[2:], "manifest.mpd"]:
        assert (tmp_path / "early" / name).read_bytes() == (tmp_path / "late" / name).read_bytes()
    assert early.init_path == tmp_path / "early" / "init.mp4"
    assert early.manifest_paths == (tmp_path / "early/index.m3u8", tmp_path / "early/manifest.mpd")


def test_sequence_number_and_decode_time_follow_the_segment_number(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    write(tmp_path, stream, audio)
    video_scale = track_timescale(PARAMS)
    assert video_scale == 90_000
    for offset in range(5):
        segment = FIRST + offset
        data = (tmp_path / segment_name(segment, CMAF)).read_bytes()
        assert data[4:8] == b"styp"
        sequence, decode_times = fragment(data)
        assert sequence == sequence_of(segment)
        # Video: the segment's first timecode in the track's timescale, never shifted to 0.
        assert decode_times[1] == segment * GOP * (video_scale // 30)
        # Audio (48 kHz): its first packet, re-timed onto the shared timeline.
        first_audio = -(-segment * GOP * FRAME_TICKS // AAC_TICKS) * AAC_TICKS
        assert decode_times[2] == first_audio * 48_000 // 90_000


def test_the_boxes_carry_the_segment_number_given(stream: list[EncodedFrame]) -> None:
    """A container told another segment number writes another sequence number; frames of
    another segment, another decode time."""
    right = Cmaf(PARAMS).mux(FIRST, stream[:GOP], [])
    wrong_number = Cmaf(PARAMS).mux(FIRST + 1, stream[:GOP], [])
    assert fragment(right.media) == (sequence_of(FIRST), {1: FIRST * GOP * 3000})
    assert fragment(wrong_number.media)[0] == sequence_of(FIRST) + 1
    two_seconds = 1_800_000_000 // 2  # a segment of 2027 with 2-second GOPs
    assert fragment(Cmaf(PARAMS).mux(two_seconds, stream[:GOP], []).media)[0] == two_seconds + 1
    shifted = [EncodedFrame(f.timecode + GOP, f.data, f.keyframe, f.sha256) for f in stream[:GOP]]
    assert fragment(Cmaf(PARAMS).mux(FIRST, shifted, []).media)[1] == {1: (FIRST + 1) * GOP * 3000}
    assert right.init == wrong_number.init  # the init holds no timestamp


def test_init_and_segments_decode_in_order_with_continuous_timestamps(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    write(tmp_path, stream, audio)
    joined = (tmp_path / "init.mp4").read_bytes() + b"".join(
        (tmp_path / segment_name(FIRST + s, CMAF)).read_bytes() for s in range(5)
    )
    with av.open(io.BytesIO(joined), "r") as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (160, 96)
        assert sound.codec_context.name == "aac"
        assert sound.codec_context.sample_rate == 48_000
        video_pts: list[int] = []
        audio_frames = 0
        for packet in container.demux(video, sound):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    assert frame.pts is not None
                    video_pts.append(frame.pts)
                    assert frame.time_base == Fraction(1, 90_000)
                else:
                    audio_frames += 1
    assert len(video_pts) == 5 * GOP
    assert video_pts == [(BASE + i) * 3000 for i in range(5 * GOP)]  # absolute, continuous
    assert audio_frames == -(-5 * GOP * FRAME_TICKS // AAC_TICKS)


def test_ffprobe_accepts_init_and_a_segment(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    write(tmp_path / "out", stream, audio)
    joined = tmp_path / "joined.mp4"
    joined.write_bytes(
        (tmp_path / "out/init.mp4").read_bytes()
        + (tmp_path / "out" / segment_name(FIRST + 2, CMAF)).read_bytes()
    )
    probe = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames",
            "-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0", str(joined),
        ],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stderr == ""
    assert probe.stdout.split() == ["h264,6", "aac,10"]


def test_hls_playlist_maps_the_init_segment(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    write(tmp_path, stream, audio)
    lines = (tmp_path / "index.m3u8").read_text().splitlines()
    assert lines[:5] == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:1",
        f"#EXT-X-MEDIA-SEQUENCE:{FIRST}",
        '#EXT-X-MAP:URI="init.mp4"',
    ]
    assert lines[7::3] == [segment_name(FIRST + s, CMAF) for s in range(5)]


def test_segments_without_audio_keep_the_init(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    """Audio that stops leaves the audio track declared: the init stays, the listed run goes on,
    and the silent segments still decode behind it."""
    cut = SOURCE_START + 2 * GOP * FRAME_TICKS
    writer = write(tmp_path, stream, [p for p in audio if p.source_time < cut], skip=0)
    assert writer.listed == tuple(range(FIRST, FIRST + 5))
    silent = (tmp_path / segment_name(FIRST + 3, CMAF)).read_bytes()
    assert list(fragment(silent)[1]) == [1]  # a video fragment only
    with av.open(io.BytesIO((tmp_path / "init.mp4").read_bytes() + silent), "r") as container:
        assert len(container.streams.audio) == 1
        assert sum(1 for f in container.decode(video=0)) == GOP


def test_mpd_is_dynamic_on_the_epoch_with_exact_durations(
    tmp_path: Path, stream: list[EncodedFrame], audio: list[AudioPacket]
) -> None:
    write(tmp_path, stream, audio)
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.fromstring((tmp_path / "manifest.mpd").read_bytes())
    assert mpd.tag == "{urn:mpeg:dash:schema:mpd:2011}MPD"
    assert mpd.attrib["type"] == "dynamic"
    assert mpd.attrib["availabilityStartTime"] == "1970-01-01T00:00:00Z"
    # Published after the newest segment: its end on the shared timeline.
    assert mpd.attrib["publishTime"] == "2027-01-15T08:00:01.000Z"
    assert mpd.attrib["minimumUpdatePeriod"] == "PT0.200S"
    assert mpd.attrib["timeShiftBufferDepth"] == "PT2.000S"  # the 10-segment window
    template = mpd.find("d:Period/d:AdaptationSet/d:SegmentTemplate", ns)
    representation = mpd.find("d:Period/d:AdaptationSet/d:Representation", ns)
    assert template is not None and representation is not None
    assert template.attrib == {
        "timescale": "90000",
        "duration": str(GOP * 3000),
        "startNumber": "0",
        "initialization": "init.mp4",
        "media": "seg-$Number%012d$.m4s",
    }
    # $Number$ of the segment that starts at an instant is the segment number on disk.
    start = FIRST * GOP * 3000 // int(template.attrib["duration"])
    assert template.attrib["media"].replace("$Number%012d$", f"{start:012d}") == segment_name(
        FIRST, CMAF
    )
    codec = avc_codec(stream[0].data)
    assert codec is not None and codec.startswith("avc1.42")  # x264 ultrafast: baseline
    assert representation.attrib["codecs"] == f"{codec},mp4a.40.2"
    assert (representation.attrib["width"], representation.attrib["height"]) == ("160", "96")


def test_mpd_durations_are_exact_on_an_ntsc_rate() -> None:
    params = EncoderParams(640, 360, FrameRate(30000, 1001), gop=60)
    mpd = ET.fromstring(
        render_mpd(
            params,
            codecs=("avc1.42c01e",),
            window=10,
            publish_time="2027-01-01T00:00:00.000Z",
            media_template=segment_template(CMAF),
        )
    )
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    template = mpd.find("d:Period/d:AdaptationSet/d:SegmentTemplate", ns)
    representation = mpd.find("d:Period/d:AdaptationSet/d:Representation", ns)
    assert template is not None and representation is not None
    assert (template.attrib["timescale"], template.attrib["duration"]) == ("90000", "180180")
    assert Fraction(180180, 90000) == params.segments.duration(params.time_base)
    assert representation.attrib["frameRate"] == "30000/1001"
    assert mpd.attrib["timeShiftBufferDepth"] == "PT20.020S"
