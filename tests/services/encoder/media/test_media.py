"""The encoder's media path on real PyAV/libx264: determinism, identity and files on disk.

Nothing is mocked except one failure: a mux step made to raise, to show that a failed write
leaves no file behind. Pictures are small (160x96) and GOPs short, so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from meshenc.core.timecode import FrameRate
from services.encoder.media import (
    EncodedFrame,
    EncoderParams,
    GopEncoder,
    Picture,
    SegmentFormat,
    SegmentWriter,
    SyntheticSource,
    VideoFormat,
    fingerprint,
    segment_name,
)
from services.encoder.media.containers import MpegTs, Muxed
from services.encoder.media.segments import aside_name
from services.encoder.media.source import frame_yuv, picture_frame

FMT = VideoFormat(160, 96, FrameRate(30))
GOP = 6
PARAMS = EncoderParams.for_format(FMT, gop=GOP, bitrate_kbps=300)
#: A realistic epoch-locked timecode (about 2027 at 30 fps), on a GOP boundary.
BASE = 54_000_000_000 - 54_000_000_000 % GOP


def pictures(count: int, start: int = 0) -> list[Picture]:
    source = SyntheticSource(FMT, start=start)
    return [source.read() for _ in range(count)]


def encode(pairs: list[tuple[int, Picture]], params: EncoderParams = PARAMS) -> list[EncodedFrame]:
    encoder = GopEncoder(params)
    try:
        return [encoder.encode(tc, picture) for tc, picture in pairs]
    finally:
        encoder.close()


def by_timecode(frames: list[EncodedFrame]) -> dict[int, bytes]:
    return {frame.timecode: frame.data for frame in frames}


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- formats and pictures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"), [(15, 96), (160, 97), (8, 8), (3842, 96), (160, 2162)]
)
def test_video_format_rejects_odd_or_out_of_range_sizes(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="must be even"):
        VideoFormat(width, height, FrameRate(30))


def test_picture_rejects_a_non_yuv420p_array() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Picture(0, np.zeros((96, 160), dtype=np.uint16), 0)


def test_encoder_params_default_gop_is_two_seconds() -> None:
    assert EncoderParams(640, 360, FrameRate(30)).gop == 60
    assert EncoderParams(640, 360, FrameRate(25)).gop == 50
    assert EncoderParams(640, 360, FrameRate(30000, 1001)).gop == 60
    with pytest.raises(ValueError, match="preset"):
        EncoderParams(640, 360, FrameRate(30), preset="warp")


# --- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_is_equal_for_the_same_picture() -> None:
    a = SyntheticSource(FMT).picture(42)
    b = SyntheticSource(FMT).picture(42)
    assert a.fingerprint == b.fingerprint == fingerprint(np.array(a.yuv), FMT.width, FMT.height)
    assert 0 <= a.fingerprint < 2**64


def test_fingerprint_differs_between_pictures() -> None:
    prints = [picture.fingerprint for picture in pictures(300)]
    assert len(set(prints)) == len(prints)  # consecutive pictures too: the counter changes
    rng = np.random.default_rng(7)
    noise = [
        fingerprint(rng.integers(0, 256, (144, 160), dtype=np.uint8), 160, 96) for _ in range(50)
    ]
    assert len(set(noise)) == len(noise)


@pytest.mark.parametrize("seed", range(5))
def test_fingerprint_is_stable_under_one_level_noise(seed: int) -> None:
    # Block means of a mosaic are integers, half a level from every bucket edge; dense ±1 noise
    # moves a 20x12 block's mean by about 0.05 levels, so the name must not change.
    rng = np.random.default_rng(seed)
    levels = rng.integers(16, 236, (8, 8), dtype=np.uint8)
    luma = np.kron(levels, np.ones((96 // 8, 160 // 8), dtype=np.uint8))
    yuv = np.vstack([luma, np.full((48, 160), 128, dtype=np.uint8)])
    noise = rng.integers(-1, 2, yuv.shape)
    noisy = np.clip(yuv.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    assert not np.array_equal(noisy, yuv)
    assert fingerprint(noisy, 160, 96) == fingerprint(yuv, 160, 96)


def _reference_fingerprint(luma: np.ndarray, width: int, height: int) -> int:
    """The fingerprint's definition in its plainest numpy: block sums, rounded means, BLAKE2b."""
    rows = (np.arange(9) * height) // 8
    cols = (np.arange(9) * width) // 8
    sums = np.add.reduceat(luma[:height, :width], rows[:-1], axis=0, dtype=np.uint64)
    sums = np.add.reduceat(sums, cols[:-1], axis=1, dtype=np.uint64)
    areas = np.outer(np.diff(rows), np.diff(cols)).astype(np.uint64)
    quantised = ((2 * sums + areas) // (8 * areas)).astype(np.uint8)
    return int.from_bytes(hashlib.blake2b(quantised.tobytes(), digest_size=8).digest(), "big")


@pytest.mark.parametrize(
    ("width", "height"),
    # Blocks of unequal sizes; bands of 257 rows (the most a 16-bit sum holds at 255) and 258.
    [(170, 90), (640, 360), (16, 2056), (16, 2064), (3840, 2160)],
)
def test_fingerprint_matches_its_reference_to_the_bit(width: int, height: int) -> None:
    rng = np.random.default_rng(width + height)
    for luma in (
        rng.integers(0, 256, (height, width), dtype=np.uint8),
        np.full((height, width), 255, dtype=np.uint8),  # the largest sums there are
    ):
        assert fingerprint(luma, width, height) == _reference_fingerprint(luma, width, height)


def test_fingerprint_reads_only_luma() -> None:
    picture = SyntheticSource(FMT).picture(3)
    yuv = np.array(picture.yuv)
    yuv[96:] = 0
    assert fingerprint(yuv, 160, 96) == picture.fingerprint


# --- the synthetic source -----------------------------------------------------------------------


def test_synthetic_source_is_deterministic_and_counts_up() -> None:
    first = pictures(20)
    again = pictures(20)
    assert [p.index for p in first] == list(range(20))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.yuv, b.yuv)
    resumed = SyntheticSource(FMT, start=10).read()
    assert resumed.index == 10
    assert np.array_equal(resumed.yuv, first[10].yuv)
    assert not np.array_equal(first[0].yuv, first[1].yuv)  # it moves


@pytest.mark.parametrize(("width", "height"), [(16, 16), (640, 360), (1280, 720)])
def test_synthetic_source_renders_yuv420p_at_any_size(width: int, height: int) -> None:
    with SyntheticSource(VideoFormat(width, height, FrameRate(25))) as source:
        for _ in range(100 if width == 640 else 5):
            picture = source.read()
    assert picture.yuv.shape == (height * 3 // 2, width)
    assert picture.yuv.dtype == np.uint8
    assert (picture.width, picture.height) == (width, height)
    assert not picture.yuv.flags.writeable  # pictures are shared between stages
    frame = av.VideoFrame.from_ndarray(picture.yuv, format="yuv420p")
    assert (frame.width, frame.height) == (width, height)


# --- pictures and PyAV frames ------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(160, 96), (160, 90), (170, 96)])
def test_a_picture_becomes_a_frame_and_back_without_changing_a_pixel(
    width: int, height: int
) -> None:
    picture = SyntheticSource(VideoFormat(width, height, FrameRate(30))).picture(7)
    frame = picture_frame(picture)
    assert (frame.width, frame.height, frame.format.name) == (width, height, "yuv420p")
    assert np.array_equal(frame.to_ndarray(), picture.yuv)
    luma = np.frombuffer(memoryview(frame.planes[0]), np.uint8)
    # Shared where PyAV can wrap the array (heights that are multiples of 4), else copied.
    assert np.shares_memory(luma, picture.yuv) == (height % 4 == 0)
    padded = av.VideoFrame.from_ndarray(np.array(picture.yuv), format="yuv420p")
    if width == 170:  # PyAV pads rows to an alignment: frame_yuv must read past the padding
        assert padded.planes[0].line_size > width
    back = frame_yuv(padded)
    assert np.array_equal(back, picture.yuv)
    assert not back.flags.writeable
    with pytest.raises(ValueError, match="yuv420p"):
        frame_yuv(padded.reformat(format="rgb24"))


# --- GOP-deterministic encoding -----------------------------------------------------------------


def test_one_access_unit_per_frame_and_one_idr_per_gop() -> None:
    pics = pictures(3 * GOP)
    frames = encode([(BASE + i, p) for i, p in enumerate(pics)])
    assert [f.timecode for f in frames] == [BASE + i for i in range(3 * GOP)]
    assert [f.keyframe for f in frames] == [i % GOP == 0 for i in range(3 * GOP)]
    assert all(f.sha256 == hashlib.sha256(f.data).digest() for f in frames)


def test_same_pictures_and_timecodes_give_identical_bytes() -> None:
    pairs = [(BASE + i, p) for i, p in enumerate(pictures(3 * GOP))]
    assert encode(pairs) == encode(pairs)


def test_an_encoder_that_joins_mid_gop_matches_from_the_next_boundary() -> None:
    pairs = [(BASE + i, p) for i, p in enumerate(pictures(3 * GOP))]
    full = by_timecode(encode(pairs))
    late = encode(pairs[GOP // 2 + 1 :])
    assert late[0].keyframe  # its first, incomplete GOP opens with its own IDR ...
    assert late[0].data != full[late[0].timecode]  # ... and differs from the mesh's bytes
    for frame in late:
        if frame.timecode >= BASE + GOP:
            assert frame.data == full[frame.timecode]


def test_a_jump_starts_a_fresh_gop_that_matches_from_the_next_boundary() -> None:
    pics = pictures(5 * GOP)
    pairs = [(BASE + i, p) for i, p in enumerate(pics)]
    full = by_timecode(encode(pairs))
    jumped = encode(pairs[:2] + pairs[2 * GOP + 3 :])  # skip from GOP 0 into the middle of 2
    for frame in jumped:
        if frame.timecode >= BASE + 3 * GOP:
            assert frame.data == full[frame.timecode]


def test_gop_alignment_enters_the_bytes_but_absolute_time_does_not() -> None:
    pics = pictures(3 * GOP)
    aligned = encode([(BASE + i, p) for i, p in enumerate(pics)])
    shifted = encode([(BASE + 1 + i, p) for i, p in enumerate(pics)])  # boundary one picture on
    assert [f.data for f in aligned] != [f.data for f in shifted]
    assert aligned[GOP].data != shifted[GOP].data  # an IDR in one, a P picture in the other
    later = encode([(BASE + 1000 * GOP + i, p) for i, p in enumerate(pics)])
    assert [f.data for f in aligned] == [f.data for f in later]


def test_encoder_rejects_wrong_sizes_and_timecodes_that_go_back() -> None:
    encoder = GopEncoder(PARAMS)
    pic = pictures(1)[0]
    encoder.encode(BASE + 1, pic)
    with pytest.raises(ValueError, match="does not follow"):
        encoder.encode(BASE + 1, pic)
    other = SyntheticSource(VideoFormat(320, 180, FrameRate(30))).read()
    with pytest.raises(ValueError, match="320x180"):
        encoder.encode(BASE + 2, other)
    encoder.close()


# --- segments on disk ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream() -> list[EncodedFrame]:
    """Four and a half GOPs, starting two frames into a GOP (as an encoder that just joined)."""
    pics = pictures(5 * GOP)
    return encode([(BASE - GOP + 2 + i, p) for i, p in enumerate(pics[: 4 * GOP + GOP // 2])])


def write_all(
    out_dir: Path, frames: list[EncodedFrame], fmt: SegmentFormat = SegmentFormat.TS
) -> SegmentWriter:
    writer = SegmentWriter(out_dir, PARAMS, fmt=fmt)
    for frame in frames:
        writer.add(frame)
    return writer


def test_segments_are_whole_gops_and_byte_identical(
    tmp_path: Path, stream: list[EncodedFrame]
) -> None:
    a = write_all(tmp_path / "a", stream)
    b = write_all(tmp_path / "b", stream)
    a.finish()
    b.finish()
    first = BASE // GOP
    names = [segment_name(s) for s in range(first, first + 3)]
    # The joining GOP (partial) and the last one (in progress at finish) are not written.
    assert files(tmp_path / "a") == sorted([*names, "index.m3u8"])
    for name in [*names, "index.m3u8"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_segment_its_encoder_cannot_vouch_for_is_written_aside(
    tmp_path: Path, stream: list[EncodedFrame]
) -> None:
    """The shared name holds only segments the encoder vouches for; one it cannot goes aside,
    with the same bytes, and the playlist still numbers it, tagged a gap; one moved aside
    later is tagged when it moves; one restored loses its tag."""
    first = BASE // GOP
    asked: list[int] = []

    def aside(segment: int) -> bool:
        asked.append(segment)
        return segment == first + 1

    writer = SegmentWriter(tmp_path / "a", PARAMS, aside=aside)
    for frame in stream:
        writer.add(frame)
    writer.finish()
    plain = write_all(tmp_path / "b", stream)
    plain.finish()
    assert asked == [first, first + 1, first + 2]
    assert files(tmp_path / "a") == sorted(
        [segment_name(first), aside_name(first + 1), segment_name(first + 2), "index.m3u8"]
    )
    assert (tmp_path / "a" / aside_name(first + 1)).read_bytes() == (
        tmp_path / "b" / segment_name(first + 1)
    ).read_bytes()
    playlist = "index.m3u8"
    tagged = (
        (tmp_path / "b" / playlist)
        .read_text()
        .replace(segment_name(first + 1), "#EXT-X-GAP\n" + segment_name(first + 1))
    )
    assert (tmp_path / "a" / playlist).read_text() == tagged
    writer.move_aside(first + 2)
    assert (tmp_path / "a" / aside_name(first + 2)).is_file()
    assert not (tmp_path / "a" / segment_name(first + 2)).exists()
    assert (tmp_path / "a" / playlist).read_text() == tagged.replace(
        segment_name(first + 2), "#EXT-X-GAP\n" + segment_name(first + 2)
    )
    # Restored (a vouched neighbour wrote the same bytes): the shared name, the tag gone.
    assert writer.restore(first + 1) == tmp_path / "a" / segment_name(first + 1)
    assert not (tmp_path / "a" / aside_name(first + 1)).exists()
    assert (tmp_path / "a" / segment_name(first + 1)).read_bytes() == (
        tmp_path / "b" / segment_name(first + 1)
    ).read_bytes()
    assert (tmp_path / "a" / playlist).read_text() == (
        tmp_path / "b" / playlist
    ).read_text().replace(segment_name(first + 2), "#EXT-X-GAP\n" + segment_name(first + 2))
    assert writer.restore(first + 1) is None  # nothing aside any more
    # At the top of the list a gap is left out: the playlist starts after it.
    leading = SegmentWriter(tmp_path / "c", PARAMS, aside=lambda segment: segment == first)
    for frame in stream:
        leading.add(frame)
    leading.finish()
    text = (tmp_path / "c" / playlist).read_text()
    assert f"#EXT-X-MEDIA-SEQUENCE:{first + 1}" in text and "#EXT-X-GAP" not in text


def test_segments_match_between_encoders_that_started_apart(tmp_path: Path) -> None:
    pics = pictures(4 * GOP)
    early = encode([(BASE + i, p) for i, p in enumerate(pics)])
    late = encode([(BASE + i, p) for i, p in enumerate(pics)][GOP + 3 :])
    write_all(tmp_path / "early", early).finish()
    write_all(tmp_path / "late", late).finish()
    common = [segment_name(BASE // GOP + s) for s in (2, 3)]
    for name in common:
        assert (tmp_path / "early" / name).read_bytes() == (tmp_path / "late" / name).read_bytes()
    assert not (tmp_path / "late" / segment_name(BASE // GOP + 1)).exists()


def test_a_segment_reads_back_as_one_gop(tmp_path: Path, stream: list[EncodedFrame]) -> None:
    writer = write_all(tmp_path, stream)
    segment = BASE // GOP + 1
    with av.open(str(tmp_path / segment_name(segment))) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (160, 96)
        packets = [p for p in container.demux(video) if p.size]
        decoded = [frame for p in packets for frame in p.decode()]
    assert len(packets) == GOP
    assert [p.is_keyframe for p in packets] == [True] + [False] * (GOP - 1)
    step = 90000 // 30
    first_pts = (segment * GOP * step) % 2**33  # MPEG-TS timestamps are 33-bit
    assert [p.pts for p in packets] == [(first_pts + i * step) % 2**33 for i in range(GOP)]
    assert len(decoded) == GOP
    writer.finish()


def test_finish_writes_a_whole_last_segment(tmp_path: Path) -> None:
    frames = encode([(BASE + i, p) for i, p in enumerate(pictures(2 * GOP))])
    writer = write_all(tmp_path, frames)
    assert list(writer.listed) == [BASE // GOP]
    assert writer.finish() == [tmp_path / segment_name(BASE // GOP + 1)]
    assert list(writer.listed) == [BASE // GOP, BASE // GOP + 1]


def test_playlist_is_a_sliding_window_of_consecutive_segments(tmp_path: Path) -> None:
    params = EncoderParams.for_format(FMT, gop=2, bitrate_kbps=300)
    pics = pictures(30)
    base = BASE - BASE % 2
    frames = encode([(base + i, p) for i, p in enumerate(pics[:28])], params)
    writer = SegmentWriter(tmp_path, params, window=10)
    for frame in frames:
        writer.add(frame)
    first = base // 2
    # 14 GOPs: 13 written as the next began, the 14th waits; the window holds the last 10.
    assert writer.listed == tuple(range(first + 3, first + 13))
    text = (tmp_path / "index.m3u8").read_text()
    lines = text.splitlines()
    assert lines[:4] == [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-TARGETDURATION:1",
        f"#EXT-X-MEDIA-SEQUENCE:{first + 3}",
    ]
    assert lines[5::3] == ["#EXTINF:0.067,"] * 10
    assert lines[6::3] == [segment_name(s) for s in range(first + 3, first + 13)]
    # Each segment's EXT-X-PROGRAM-DATE-TIME is its first frame's slot on the Unix epoch.
    stamps = [
        datetime.fromisoformat(line.removeprefix("#EXT-X-PROGRAM-DATE-TIME:"))
        for line in lines[4::3]
    ]
    for segment, stamp in zip(range(first + 3, first + 13), stamps, strict=True):
        assert abs(stamp.timestamp() - segment * 2 / 30) < 0.001

    # A jump of six segments (an encoder that shed them): they are listed as gaps, so the
    # media sequence goes on where every other encoder's does.
    jump = base + 40
    for i, picture in enumerate(pics[:6]):
        writer.add(GopEncoder(params).encode(jump + i, picture))
    assert writer.listed == tuple(range(first + 12, first + 22))
    lines = (tmp_path / "index.m3u8").read_text().splitlines()
    assert f"#EXT-X-MEDIA-SEQUENCE:{first + 12}" in lines
    gapped = [lines[i + 1] for i, line in enumerate(lines) if line == "#EXT-X-GAP"]
    assert gapped == [segment_name(s) for s in range(first + 14, first + 20)]
    assert not (tmp_path / segment_name(first + 14)).exists()

    # A jump longer than the window leaves nothing older: the run starts afresh after it.
    jump = base + 80
    for i, picture in enumerate(pics[:6]):
        writer.add(GopEncoder(params).encode(jump + i, picture))
    assert writer.listed == (jump // 2, jump // 2 + 1)
    text = (tmp_path / "index.m3u8").read_text()
    assert f"#EXT-X-MEDIA-SEQUENCE:{jump // 2}" in text and "#EXT-X-GAP" not in text
    writer.finish()
    assert not [name for name in files(tmp_path) if name.startswith(".")]


def test_segment_writer_rejects_time_going_back(tmp_path: Path, stream: list[EncodedFrame]) -> None:
    writer = write_all(tmp_path, stream[: 2 * GOP])
    with pytest.raises(ValueError, match="before segment"):
        writer.add(stream[0])
    with pytest.raises(ValueError, match="does not follow"):
        writer.add(stream[2 * GOP - 1])
    writer.finish()


def test_a_failed_mux_leaves_no_file(
    tmp_path: Path, stream: list[EncodedFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SegmentWriter(tmp_path, PARAMS)

    def crash(self: MpegTs, segment: int, frames: object, audio: object) -> Muxed:
        raise RuntimeError("mux crashed")

    boundary = next(i for i, f in enumerate(stream) if f.timecode == BASE + GOP)
    with monkeypatch.context() as patch:
        patch.setattr(MpegTs, "mux", crash)
        for frame in stream[:boundary]:
            writer.add(frame)
        with pytest.raises(RuntimeError, match="mux crashed"):
            writer.add(stream[boundary])
    assert files(tmp_path) == []  # neither the segment nor a temp file nor a playlist
    for frame in stream[boundary + 1 :]:
        writer.add(frame)  # the writer carries on with the next segment
    assert segment_name(BASE // GOP + 1) in files(tmp_path)
    writer.finish()
    assert not [name for name in files(tmp_path) if name.startswith(".")]


def test_a_write_cut_off_midway_leaves_no_file(
    tmp_path: Path, stream: list[EncodedFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SegmentWriter(tmp_path, PARAMS)
    boundary = next(i for i, f in enumerate(stream) if f.timecode == BASE + GOP)
    for frame in stream[:boundary]:
        writer.add(frame)

    def disk_died(temp: str, path: Path) -> None:
        assert os.stat(temp).st_size > 0  # the segment's bytes are in the temp file
        raise OSError("disk died")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", disk_died)
        with pytest.raises(OSError, match="disk died"):
            writer.add(stream[boundary])
    assert files(tmp_path) == []
    writer.finish()


def test_temp_files_of_a_killed_writer_are_cleaned_up(tmp_path: Path) -> None:
    leftover = tmp_path / ".tmp-seg-000000000001.ts.x1y2z3"
    leftover.write_bytes(b"\x47" * 188)
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("kept")
    writer = SegmentWriter(tmp_path, PARAMS)
    assert files(tmp_path) == ["notes.txt"]
    leftover.write_bytes(b"\x47" * 188)
    writer.finish()
    assert files(tmp_path) == ["notes.txt"]


def test_playlist_durations_on_an_ntsc_rate(tmp_path: Path) -> None:
    params = EncoderParams(160, 96, FrameRate(30000, 1001), gop=60, bitrate_kbps=300)
    writer = SegmentWriter(tmp_path, params)
    assert writer.segment_duration == Fraction(60 * 1001, 30000)
    base = BASE - BASE % 60
    frames = encode([(base + i, p) for i, p in enumerate(pictures(61))], params)
    for frame in frames:
        writer.add(frame)
    lines = (tmp_path / "index.m3u8").read_text().splitlines()
    assert "#EXT-X-TARGETDURATION:3" in lines  # 2.002 s rounds up: no segment may exceed it
    assert "#EXTINF:2.002," in lines
    writer.finish()
