"""The stream's bytes on real PyAV/libx264, without a network or a clock.

``pace`` always says yes, so the producer runs as fast as it can; the datagrams it emits are
joined and decoded again by PyAV. Pictures are small so every test takes about a second.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from meshenc.core.timecode import FrameRate
from services.source.clip import write_test_clip
from services.source.media import (
    FileInput,
    LiveStream,
    MediaError,
    PatternInput,
    StreamFormat,
    samples_before,
)
from services.source.pacing import DATAGRAM_SIZE, Datagram, pes_timestamp


def _decode(datagrams: list[Datagram]) -> tuple[list[int], list[int], list[float]]:
    """Video PTS, audio PTS (90 kHz) and each picture's mean luma, from the joined bytes."""
    data = io.BytesIO(b"".join(d.payload for d in datagrams))
    video_pts: list[int] = []
    audio_pts: list[int] = []
    lumas: list[float] = []
    with av.open(data, "r", format="mpegts") as container:
        for frame in container.decode(video=0, audio=0):
            assert frame.pts is not None
            if isinstance(frame, av.VideoFrame):
                video_pts.append(frame.pts)
                lumas.append(float(frame.to_ndarray(format="gray").mean()))
            else:
                audio_pts.append(frame.pts)
    return video_pts, audio_pts, lumas


def _video_pts(payload: bytes) -> int | None:
    """The PTS of the first video PES that starts in these TS packets, if any."""
    for k in range(0, len(payload), 188):
        packet = payload[k : k + 188]
        if not packet[1] & 0x40:  # no payload unit starts here
            continue
        start = 4 + (1 + packet[4] if packet[3] & 0x20 else 0)  # after the adaptation field
        if packet[start : start + 3] == b"\x00\x00\x01" and 0xE0 <= packet[start + 3] <= 0xEF:
            return pes_timestamp(packet)
    return None


@pytest.mark.parametrize("rate", ["25", "30000/1001", "50", "60000/1001", "60"])
def test_a_looped_file_keeps_one_timeline(tmp_path: Path, rate: str) -> None:
    frame_rate = FrameRate.parse(rate)
    clip = tmp_path / "clip.ts"
    info = write_test_clip(clip, seconds=0.5, frame_rate=frame_rate, width=64, height=48)
    out: list[Datagram] = []
    fmt = StreamFormat(64, 48, frame_rate)
    loops = 3
    stream = LiveStream(
        FileInput(clip), fmt, out.append, loop=True, duration=loops * info.frames / frame_rate.fps
    )
    stats = stream.run(lambda _t: True)
    assert stats.frames == loops * info.frames
    assert stats.loops == loops
    video, audio, lumas = _decode(out)
    assert len(video) == loops * info.frames
    # PTS in 90 kHz: one frame per step (60000/1001 is 1501.5 ticks, which the muxer rounds
    # half up, frame by frame from the first), and no restart at a loop.
    num, den = frame_rate.num, frame_rate.den
    ticks = [(2 * 90_000 * k * den + num) // (2 * num) for k in range(len(video))]
    assert video == [video[0] + t for t in ticks]
    steps = set(np.diff(audio).tolist())
    assert steps == {1920}  # 1024 samples at 48 kHz, continuous across the loops
    # The loop really starts the file again: each pass shows the same pictures.
    n = info.frames
    assert lumas[:n] == pytest.approx(lumas[n : 2 * n], abs=2.0)


def test_audio_is_counted_so_it_never_drifts_from_the_pictures() -> None:
    rate = FrameRate(30000, 1001)
    assert samples_before(30, rate) == 48_048
    assert samples_before(30_000, rate) == 48_048_000
    spans = {samples_before(g + 1, rate) - samples_before(g, rate) for g in range(1000)}
    assert spans == {1601, 1602}


def test_the_test_pattern_streams_in_whole_datagrams_with_rising_due_times() -> None:
    out: list[Datagram] = []
    fmt = StreamFormat(160, 96, FrameRate(25))
    stats = LiveStream(PatternInput(), fmt, out.append, duration=1.0).run(lambda _t: True)
    assert stats.frames == 25
    assert stats.datagrams == len(out)
    assert all(len(d.payload) == DATAGRAM_SIZE for d in out[:-1])
    assert all(d.payload[k * 188] == 0x47 for d in out for k in range(len(d.payload) // 188))
    dues = [d.due for d in out]
    assert dues == sorted(dues)
    assert 0.9 <= dues[-1] <= 1.1
    # A picture always starts a datagram, and that datagram leaves at the picture's time.
    starts = [(k, d) for d, k in ((d, _video_pts(d.payload)) for d in out) if k is not None]
    assert len(starts) == 25
    assert all(_video_pts(d.payload[188:]) is None for _, d in starts)
    first_pts, first = starts[0]
    assert [d.due - first.due for _, d in starts] == pytest.approx(
        [(pts - first_pts) / 90_000 for pts, _ in starts]
    )
    video, audio, _ = _decode(out)
    assert len(video) == 25
    assert audio


def test_the_producer_waits_for_pace_and_stops_when_told() -> None:
    asked: list[float] = []

    def pace(t: float) -> bool:
        asked.append(t)
        return len(asked) < 5

    out: list[Datagram] = []
    stats = LiveStream(PatternInput(), StreamFormat(64, 48, FrameRate(25)), out.append).run(pace)
    assert stats.frames == 4
    assert asked == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16])


def test_an_input_that_is_not_media_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a transport stream" * 10)
    with pytest.raises(MediaError):
        FileInput(junk).probe()
    with pytest.raises(MediaError, match="cannot open"):
        FileInput(tmp_path / "missing.ts").probe()


def test_a_file_without_sound_still_streams_an_audio_track_of_silence(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for n in range(10):
            picture = av.VideoFrame.from_ndarray(
                np.full((72, 64), 16 + 20 * n, dtype=np.uint8), format="yuv420p"
            )
            picture.pts = n
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
    probed = FileInput(path).probe()
    assert (probed.width, probed.height, probed.frame_rate, probed.has_audio) == (
        64,
        48,
        FrameRate(25),
        False,
    )
    out: list[Datagram] = []
    LiveStream(FileInput(path), StreamFormat(64, 48, FrameRate(25)), out.append).run(
        lambda _t: True
    )
    data = io.BytesIO(b"".join(d.payload for d in out))
    with av.open(data, "r", format="mpegts") as container:
        sound = [f.to_ndarray() for f in container.decode(audio=0)]
    assert sound
    assert all(float(np.abs(s).max()) == 0.0 for s in sound)
