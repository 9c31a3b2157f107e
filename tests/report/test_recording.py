"""The recording check on real MPEG-TS segments (libx264 video, MP2 audio, written by the
encoders' SegmentWriter) and on made-up decode results: a continuous recording passes; a missing
segment, a damaged file, a discontinuity tag, a lost audio frame or a repeated picture fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from meshenc.core.timecode import FrameRate
from meshenc.report.recording import (
    WRAP,
    DecodedSegment,
    check_recording,
    check_unit_recordings,
    judge,
    playlist_problems,
)
from services.encoder.media.gop import EncoderParams, GopEncoder
from services.encoder.media.segments import (
    PLAYLIST_NAME,
    AudioPacket,
    SegmentFormat,
    SegmentWriter,
    segment_name,
)
from services.encoder.media.source import SyntheticSource, VideoFormat

GOP = 10
SEGMENTS = 6
FIRST = 5_000_000
FRAME_TICKS = 3000
#: 1152 samples of MP2 at 48 kHz, in 90 kHz ticks.
AUDIO_TICKS = 2160
SOURCE_START = 900_000


def _audio(seconds: float) -> list[AudioPacket]:
    """Real MP2 packets of a tone, timed on the source's clock (90 kHz)."""
    codec = av.CodecContext.create("mp2", "w")
    codec.sample_rate, codec.layout, codec.format = 48_000, "stereo", "s16"
    codec.open()
    packets: list[AudioPacket] = []
    for start in range(0, int(seconds * 48_000), 1152):
        tone = (np.sin(np.arange(start, start + 1152) * 0.05) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), "s16", "stereo")
        frame.sample_rate, frame.pts = 48_000, start
        for packet in codec.encode(frame):
            at = SOURCE_START + len(packets) * AUDIO_TICKS
            packets.append(AudioPacket("mp2", 48_000, at, bytes(packet)))
    return packets


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an origin holds after a clean run: SEGMENTS segments and the playlist."""
    folder = tmp_path_factory.mktemp("recording")
    fmt = VideoFormat(160, 96, FrameRate(30))
    params = EncoderParams.for_format(fmt, gop=GOP, bitrate_kbps=200)
    source, encoder = SyntheticSource(fmt), GopEncoder(params)
    writer = SegmentWriter(folder, params)
    audio = _audio(SEGMENTS * GOP / 30 + 0.5)
    try:
        for i in range(SEGMENTS * GOP + 1):
            at = SOURCE_START + i * FRAME_TICKS
            while audio and audio[0].source_time <= at:
                writer.add_audio(audio.pop(0))
            writer.add(encoder.encode(FIRST * GOP + i, source.picture(i)), at)
        writer.finish()
    finally:
        encoder.close()
    assert len(list(folder.glob("seg-*.ts"))) == SEGMENTS
    return folder


@pytest.fixture
def copy(recording: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(recording, tmp_path / "origin"))


def test_a_clean_recording_is_one_continuous_stream(recording: Path) -> None:
    check = check_recording(recording)
    assert check is not None
    assert check.continuous, check.to_json()
    assert check.segments == tuple(range(FIRST, FIRST + SEGMENTS))
    assert check.video_frames == SEGMENTS * GOP
    assert check.frame_ticks == FRAME_TICKS
    assert check.audio_frames >= SEGMENTS * GOP / 30 * 48_000 / 1152 - 2
    assert check.worst_audio_ticks == 0
    assert check.line.endswith("continuous") and "NOT" not in check.line


def test_a_cmaf_recording_is_read_behind_its_init_segment(tmp_path: Path) -> None:
    """CMAF media segments decode only behind the init segment: the check puts it in front."""
    fmt = VideoFormat(160, 96, FrameRate(30))
    params = EncoderParams.for_format(fmt, gop=GOP, bitrate_kbps=200)
    source, encoder = SyntheticSource(fmt), GopEncoder(params)
    writer = SegmentWriter(tmp_path, params, fmt=SegmentFormat.CMAF)
    try:
        for i in range(SEGMENTS * GOP + 1):
            writer.add(encoder.encode(FIRST * GOP + i, source.picture(i)))
        writer.finish()
    finally:
        encoder.close()
    check = check_recording(tmp_path)
    assert check is not None
    assert check.continuous, check.to_json()
    assert check.video_frames == SEGMENTS * GOP and check.frame_ticks == FRAME_TICKS
    (tmp_path / segment_name(FIRST + 2, SegmentFormat.CMAF)).unlink()
    broken = check_recording(tmp_path)
    assert broken is not None and broken.missing == (FIRST + 2,)
    # The playlist still lists it, by its own name (not a .ts name the origin never held).
    lost = segment_name(FIRST + 2, SegmentFormat.CMAF)
    assert [p for p in broken.playlist_problems if "does not hold" in p] == [
        f"the playlist lists 1 segments the origin does not hold (first {lost})"
    ]


def test_a_ladder_recording_is_judged_by_the_rung_its_master_lists_first(
    recording: Path, tmp_path: Path
) -> None:
    """An origin fed by ``--ladder`` encoders: the master above a folder per rung."""
    origin = tmp_path / "origin"
    shutil.copytree(recording, origin / "160x96")
    (origin / "96x64").mkdir()  # a rung with nothing in it: not the one listed first
    (origin / "master.m3u8").write_text(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n160x96/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=1\n96x64/index.m3u8\n"
    )
    check = check_recording(origin)
    assert check is not None and check.continuous
    assert check.segments == tuple(range(FIRST, FIRST + SEGMENTS))


def test_every_unit_of_channels_is_judged_on_its_own(recording: Path, tmp_path: Path) -> None:
    """An origin fed by encoders of several channels, each a placed ladder: every unit
    (``<channel>/<rung>``) has its own verdict, and a segment missing from one unit breaks
    that unit alone."""
    origin = tmp_path / "origin"
    for unit in ("0/160x96", "0/96x64", "1/160x96"):
        shutil.copytree(recording, origin / unit)
    (origin / "1" / "160x96" / segment_name(FIRST + 2)).unlink()
    (origin / "1" / "96x64").mkdir()  # nothing published yet: not a unit of the recording
    checks = check_unit_recordings(origin)
    assert sorted(checks) == ["0/160x96", "0/96x64", "1/160x96"]
    assert checks["0/160x96"].continuous and checks["0/96x64"].continuous
    assert checks["1/160x96"].missing == (FIRST + 2,)
    assert checks["1/160x96"].verdict.startswith("NOT continuous: 1 segments missing")
    assert check_unit_recordings(recording) == {}  # one output: no units
    assert check_unit_recordings(tmp_path / "absent") == {}


def test_a_missing_segment_breaks_it(copy: Path) -> None:
    (copy / segment_name(FIRST + 3)).unlink()
    check = check_recording(copy)
    assert check is not None and not check.continuous
    assert check.missing == (FIRST + 3,)
    (jump,) = check.video_jumps
    assert jump.segment == FIRST + 4 and jump.ticks == GOP * FRAME_TICKS
    assert check.audio_jumps and check.audio_jumps[0].segment == FIRST + 4
    # The playlist still lists it: a player would be sent to a missing object.
    assert any("does not hold" in p for p in check.playlist_problems)
    assert "1 segments missing" in check.line


def test_a_discontinuity_tag_in_the_served_playlist_breaks_it(copy: Path) -> None:
    playlist = copy / PLAYLIST_NAME
    lines = playlist.read_text().splitlines()
    at = lines.index(segment_name(FIRST + 2))
    playlist.write_text("\n".join([*lines[: at - 1], "#EXT-X-DISCONTINUITY", *lines[at - 1 :]]))
    check = check_recording(copy)
    assert check is not None and not check.continuous
    assert check.playlist_problems == ("EXT-X-DISCONTINUITY in the playlist",)
    assert not check.video_jumps and not check.missing


def test_a_damaged_segment_breaks_it(copy: Path) -> None:
    victim = copy / segment_name(FIRST + 2)
    victim.write_bytes(victim.read_bytes()[: 188 * 3])  # three TS packets: no whole picture
    check = check_recording(copy)
    assert check is not None and not check.continuous
    assert check.video_frames < SEGMENTS * GOP
    assert check.video_jumps or check.undecodable


def test_no_playlist_and_no_segments() -> None:
    assert judge([DecodedSegment(7, (0, 3000))], None).playlist_problems == (
        "the origin holds no playlist",
    )
    assert check_recording(Path("/nonexistent/origin")) is None


def _segments(video: list[list[int]], audio: list[list[int]] | None = None) -> list[DecodedSegment]:
    audio = audio or [[] for _ in video]
    return [
        DecodedSegment(100 + i, tuple(v), tuple((a, 1920.0) for a in au), None)
        for i, (v, au) in enumerate(zip(video, audio, strict=True))
    ]


PLAYLIST = "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:100\n#EXTINF:2.0,\nseg-000000000100.ts\n"


def test_a_repeated_picture_or_a_lost_audio_frame_is_a_jump() -> None:
    steady = _segments([[0, 3000], [6000, 9000]], [[0, 1920, 3840], [5760, 7680]])
    assert not judge(steady, PLAYLIST).video_jumps
    assert not judge(steady, PLAYLIST).audio_jumps
    repeated = _segments([[0, 3000], [3000, 6000]])
    (jump,) = judge(repeated, PLAYLIST).video_jumps
    assert (jump.segment, jump.ticks) == (101, -3000)
    lost = _segments([[0, 3000], [6000, 9000]], [[0, 1920], [5760, 7680]])
    check = judge(lost, PLAYLIST)
    (gap,) = check.audio_jumps
    assert (gap.segment, gap.ticks) == (101, 1920) and check.worst_audio_ticks == 1920
    # Within the tolerance (rounding of a duration that is not whole ticks): continuous.
    rounded = _segments([[0, 3000], [6000, 9000]], [[0, 1920, 3841], [5761, 7681]])
    assert not judge(rounded, PLAYLIST).audio_jumps


def test_timestamps_that_wrap_at_33_bits_stay_continuous() -> None:
    wrapping = _segments([[WRAP - 6000, WRAP - 3000], [0, 3000]])
    check = judge(wrapping, PLAYLIST)
    assert not check.video_jumps and check.frame_ticks == 3000


def test_playlist_problems() -> None:
    present = {100, 101, 102}
    good = PLAYLIST + "#EXTINF:2.0,\nseg-000000000101.ts\n"
    assert playlist_problems(good, present) == ()
    assert playlist_problems(good.replace("SEQUENCE:100", "SEQUENCE:99"), present) == (
        "media sequence 99 is not its first segment 100",
    )
    skipping = PLAYLIST + "#EXTINF:2.0,\nseg-000000000102.ts\n"
    assert playlist_problems(skipping, present) == ("the playlist's segments are not consecutive",)
    assert "does not hold" in playlist_problems(good, {100})[0]
    assert playlist_problems(good + "#EXT-X-DISCONTINUITY-SEQUENCE:2\n", present) == (
        "playlist has EXT-X-DISCONTINUITY-SEQUENCE:2",
    )
    assert playlist_problems("#EXTM3U\n", present) == ("the playlist lists no segment",)
    for sequence in ("x", "-1", ""):
        assert playlist_problems(good.replace("SEQUENCE:100", f"SEQUENCE:{sequence}"), present) == (
            f"the playlist has a bad media sequence '#EXT-X-MEDIA-SEQUENCE:{sequence}'",
        )


def test_an_undecodable_segment_is_named_as_its_file_is() -> None:
    cmaf = DecodedSegment(100, (), error="no moof", format=SegmentFormat.CMAF)
    assert judge([cmaf], PLAYLIST).undecodable == ("seg-000000000100.m4s: no moof",)
