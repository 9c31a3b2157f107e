"""Live ingest: the input monitor (pure, time as an argument), audio passed through into the
segments, and LiveIngest reading a real file it plays in real time with PyAV."""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from meshenc.core.timecode import FrameRate
from meshenc.local.ports import free_ports
from services.encoder.media.datagrams import DatagramInput, video_pes_starts
from services.encoder.media.gop import EncodedFrame, EncoderParams, GopEncoder
from services.encoder.media.ingest import (
    Ingested,
    IngestedAudio,
    IngestedPicture,
    InputLossPolicy,
    InputMonitor,
    InputState,
    LiveIngest,
    decoded_picture,
)
from services.encoder.media.segments import AudioPacket, SegmentWriter, segment_name
from services.encoder.media.source import SourceError, SyntheticSource, VideoFormat, fingerprint
from services.source.pacing import DATAGRAM_SIZE

FPS = FrameRate(30)
PERIOD = 1 / 30
FMT = VideoFormat(160, 96, FPS)


# --- the input monitor ----------------------------------------------------------------------


def test_monitor_measures_arrival_jitter_against_the_source_timestamps() -> None:
    rng = random.Random(5)
    monitor = InputMonitor(PERIOD, InputLossPolicy(), started=100.0)
    for k in range(600):
        # Arrivals 40 ms after the source time, each ±2 ms uniform: |D| averages 4/3 ms.
        monitor.arrived(100.0 + 0.040 + k * PERIOD + rng.uniform(-0.002, 0.002), k * PERIOD)
    assert monitor.state is InputState.LIVE
    assert 0.0009 < monitor.jitter < 0.0018
    assert monitor.offset == pytest.approx(100.040, abs=0.001)


def test_monitor_fills_in_on_the_cadence_repeating_then_black_and_sees_the_input_back() -> None:
    policy = InputLossPolicy(loss_frames=5, repeat_seconds=0.5)
    monitor = InputMonitor(PERIOD, policy, started=0.0)
    monitor.arrived(10.0, 1.0)
    assert monitor.fill(10.0 + 4 * PERIOD) is None  # not lost yet
    fills = []
    now = 10.0 + 5 * PERIOD
    while now < 11.5:
        if (fill := monitor.fill(now)) is not None:
            fills.append(fill)
        now += 0.001
    assert monitor.lost_count == 1
    assert monitor.state is InputState.LOST
    times = [t for t, _ in fills]
    assert times[0] == pytest.approx(10.0 + 5 * PERIOD)
    assert all(b - a == pytest.approx(PERIOD) for a, b in itertools.pairwise(times))
    repeats = [t - times[0] for t, repeat in fills if repeat]
    assert max(repeats) < 0.5 <= min(t - times[0] for t, repeat in fills if not repeat)
    assert monitor.arrived(11.6, 2.6) is True  # the input is back
    assert monitor.state.value == "live"
    assert monitor.fill(11.6 + PERIOD) is None


def test_a_monitor_with_no_input_at_all_starts_filling_after_the_loss_time() -> None:
    monitor = InputMonitor(PERIOD, InputLossPolicy(loss_frames=3, repeat_seconds=1.0), 50.0)
    assert monitor.state.value == "waiting"
    fill = monitor.fill(50.0 + 3 * PERIOD)
    assert fill is not None and fill[0] == pytest.approx(50.0 + 3 * PERIOD)
    assert monitor.state is InputState.LOST


def test_input_loss_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        InputLossPolicy(loss_frames=0)
    with pytest.raises(ValueError):
        InputLossPolicy(repeat_seconds=-1.0)


# --- audio passed through -------------------------------------------------------------------

GOP = 10
PARAMS = EncoderParams.for_format(FMT, gop=GOP, bitrate_kbps=200)
#: 90 kHz ticks per frame at 30 fps, and per MP2 packet (1152 samples at 48 kHz).
FRAME_TICKS = 3000
AUDIO_TICKS = 2160


def _audio_packets(seconds: float) -> list[AudioPacket]:
    """Real MP2 packets of a tone, with their source timestamps (90 kHz)."""
    codec = av.CodecContext.create("mp2", "w")
    codec.sample_rate = 48_000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.open()
    packets: list[AudioPacket] = []
    samples = 0
    while samples < seconds * 48_000:
        tone = (np.sin(np.arange(samples, samples + 1152) * 0.06) * 9000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), "s16", "stereo")
        frame.sample_rate = 48_000
        frame.pts = samples
        samples += 1152
        for packet in codec.encode(frame):
            packets.append(
                AudioPacket("mp2", 48_000, 500_000 + len(packets) * AUDIO_TICKS, bytes(packet))
            )
    return packets


def _write(
    out: Path,
    frames: list[EncodedFrame],
    audio: list[AudioPacket],
    lead: int,
    skew: Callable[[int], int] = lambda i: 0,
) -> list[Path]:
    """Feed a writer video and audio interleaved by source time, audio ``lead`` ticks early;
    frame ``i`` carries the source picture ``skew(i)`` frames later."""
    writer = SegmentWriter(out, PARAMS)
    written: list[Path] = []
    queue = list(audio)
    for i, frame in enumerate(frames):
        source = 500_000 + (i + skew(i)) * FRAME_TICKS
        while queue and queue[0].source_time - lead <= source:
            written += writer.add_audio(queue.pop(0))
        written += writer.add(frame, source)
    for packet in queue:
        written += writer.add_audio(packet)
    return written + writer.finish()


def test_audio_lands_in_the_same_segments_byte_for_byte_whatever_the_interleaving(
    tmp_path: Path,
) -> None:
    base = 1_000_000 * GOP
    source = SyntheticSource(FMT)
    encoder = GopEncoder(PARAMS)
    frames = [encoder.encode(base + i, source.picture(i)) for i in range(4 * GOP)]
    audio = _audio_packets(4 * GOP / 30 + 0.5)
    early = _write(tmp_path / "early", frames, audio, lead=9000)
    late = _write(tmp_path / "late", frames, audio, lead=-20_000)
    assert (
        [p.name for p in early]
        == [p.name for p in late]
        == [segment_name(base // GOP + s) for s in range(4)]
    )
    for a, b in zip(early, late, strict=True):
        assert a.read_bytes() == b.read_bytes()
    # Each segment holds the audio of its own span, once: decoded back, the audio timestamps
    # are continuous across segments and sit inside the segment's video span.
    stamps = []
    for path in early:
        with av.open(str(path)) as container:
            video_pts = [
                int(p.pts or 0) for p in container.demux(container.streams.video[0]) if p.size
            ]
        with av.open(str(path)) as container:
            audio_pts = [
                int(p.pts or 0) for p in container.demux(container.streams.audio[0]) if p.size
            ]
        assert (
            audio_pts
            and min(video_pts) <= audio_pts[0] < audio_pts[-1] < max(video_pts) + FRAME_TICKS
        )
        stamps += audio_pts
    steps = {b - a for a, b in itertools.pairwise(stamps)}
    assert steps == {AUDIO_TICKS}, "an audio packet is missing or doubled at a boundary"


def test_a_segment_after_one_a_frame_off_has_the_same_audio(tmp_path: Path) -> None:
    """An encoder a frame ahead for one segment (resuming, locking in) and on the timeline
    again from the next writes that next segment with the same bytes as everyone else: a
    segment's audio comes from its own anchor, not from what the segment before it took
    (measured: a restarted encoder's first good segment lacked two audio packets)."""
    base = 3_000_000 * GOP
    source = SyntheticSource(FMT)
    encoder = GopEncoder(PARAMS)
    frames = [encoder.encode(base + i, source.picture(i)) for i in range(4 * GOP)]
    audio = _audio_packets(4 * GOP / 30 + 0.5)
    steady = _write(tmp_path / "steady", frames, audio, lead=9000)
    ahead = _write(
        tmp_path / "ahead", frames, audio, lead=9000, skew=lambda i: int(GOP <= i < 2 * GOP)
    )
    assert [p.name for p in steady] == [p.name for p in ahead]
    assert steady[1].read_bytes() != ahead[1].read_bytes()  # its audio starts a frame later
    for a, b in zip(steady[2:], ahead[2:], strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_a_segment_without_an_anchor_has_no_audio(tmp_path: Path) -> None:
    base = 2_000_000 * GOP
    source = SyntheticSource(FMT)
    encoder = GopEncoder(PARAMS)
    writer = SegmentWriter(tmp_path, PARAMS)
    for packet in _audio_packets(1.0):
        writer.add_audio(packet)
    for i in range(GOP + 1):
        writer.add(encoder.encode(base + i, source.picture(i)))  # no source times: filler
    with av.open(str(tmp_path / segment_name(base // GOP))) as container:
        assert not container.streams.audio
    writer.finish()


# --- LiveIngest on a real file ----------------------------------------------------------------


def _clip(path: Path, frames: int) -> Path:
    """A short H.264 + MP2 MPEG-TS file of the test pattern, made with PyAV."""
    source = SyntheticSource(FMT)
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = FMT.width, FMT.height, "yuv420p"
        video.options = {"tune": "zerolatency", "bf": "0"}
        sound = out.add_stream("mp2", rate=48_000)
        sound.layout = "stereo"
        samples = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.array(source.picture(i).yuv), "yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
            while samples < (i + 1) * 1600:
                tone = np.zeros((1, 2304), dtype=np.int16)
                chunk = av.AudioFrame.from_ndarray(tone, "s16", "stereo")
                chunk.sample_rate, chunk.pts = 48_000, samples
                samples += 1152
                out.mux(sound.encode(chunk))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))
    return path


def test_a_file_plays_in_real_time_loops_with_continuing_timestamps_and_carries_audio(
    tmp_path: Path,
) -> None:
    clip = _clip(tmp_path / "clip.ts", 15)
    items: list[Ingested] = []
    enough = threading.Event()

    def deliver(item: Ingested) -> None:
        items.append(item)
        if sum(isinstance(i, IngestedPicture) for i in items) >= 40:
            enough.set()

    ingest = LiveIngest(str(clip), FMT, deliver)
    started = time.time()
    ingest.start()
    try:
        assert enough.wait(10.0), f"only {len(items)} items in 10 s"
    finally:
        ingest.stop()
    pictures = [i for i in items if isinstance(i, IngestedPicture)]
    elapsed = pictures[39].arrived - pictures[0].arrived
    assert 39 * PERIOD * 0.9 < elapsed < 39 * PERIOD * 1.5, "not played in real time"
    assert pictures[0].arrived >= started
    seconds = [p.pts * p.time_base for p in pictures if p.pts is not None]
    steps = {b - a for a, b in itertools.pairwise(seconds)}
    assert steps == {Fraction(1, 30)}, "timestamps must continue across the loop"
    assert ingest.counters.reopens >= 2  # 40 pictures of a 15-picture clip
    assert any(isinstance(i, IngestedAudio) and i.codec == "mp2" for i in items)
    assert len({p.picture.fingerprint for p in pictures[:15]}) == 15


@pytest.mark.parametrize("fingerprinted", [False, True])
def test_a_decoded_frame_becomes_the_mesh_picture_at_its_size(fingerprinted: bool) -> None:
    """Scaled to the mesh's size in yuv420p where it differs, kept as it is where it does not;
    its fingerprint, computed at once or when first read, is that of its own pixels."""
    source = SyntheticSource(VideoFormat(320, 192, FPS)).picture(5)
    bigger = av.VideoFrame.from_ndarray(np.array(source.yuv), "yuv420p").reformat(format="rgb24")
    same = av.VideoFrame.from_ndarray(np.array(SyntheticSource(FMT).picture(5).yuv), "yuv420p")
    for frame in (bigger, same):
        picture = decoded_picture(7, frame, FMT, fingerprinted=fingerprinted)
        assert (picture.index, picture.width, picture.height) == (7, FMT.width, FMT.height)
        assert not picture.yuv.flags.writeable
        assert picture.fingerprint == fingerprint(np.array(picture.yuv), FMT.width, FMT.height)
    assert np.array_equal(picture.yuv, same.to_ndarray())


def test_garbage_input_is_counted_never_fatal(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ts"
    junk.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(50_000)))
    ingest = LiveIngest(str(junk), FMT, lambda item: None)
    ingest.start()
    deadline = time.time() + 5.0
    while ingest.counters.reopens < 2 and time.time() < deadline:
        time.sleep(0.05)
    ingest.stop()
    assert ingest.counters.reopens >= 2 and ingest.counters.pictures == 0
    assert ingest.counters.last_error


def test_a_missing_file_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a readable file"):
        LiveIngest(str(tmp_path / "nope.ts"), FMT, lambda item: None)


# --- the encoder's own datagram receiver ------------------------------------------------------


def test_video_pes_starts_are_found_in_real_ts_packets(tmp_path: Path) -> None:
    data = _clip(tmp_path / "clip.ts", 10).read_bytes()
    with av.open(str(tmp_path / "clip.ts")) as container:
        expected = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    found = [
        pts
        for i in range(0, len(data), DATAGRAM_SIZE)
        for pts in video_pes_starts(data[i : i + DATAGRAM_SIZE])
    ]
    assert found == expected
    assert video_pes_starts(b"\x00" * 188) == []  # no sync byte: nothing


def _send(data: bytes, port: int, *, pause: float = 0.0) -> dict[int, float]:
    """Send the stream to ``port`` in datagrams of the source's size, ``pause`` s apart; when
    each video PES started out, by PTS."""
    sent: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for i in range(0, len(data), DATAGRAM_SIZE):
            chunk = data[i : i + DATAGRAM_SIZE]
            for pts in video_pes_starts(chunk):
                sent[pts] = time.time()
            sender.sendto(chunk, ("127.0.0.1", port))
            if pause:
                time.sleep(pause)
    return sent


def test_a_udp_input_stamps_each_picture_when_its_first_datagram_arrives(tmp_path: Path) -> None:
    data = _clip(tmp_path / "clip.ts", 60).read_bytes()
    port = free_ports(1)[0]
    items: list[Ingested] = []
    ingest = LiveIngest(f"udp://127.0.0.1:{port}", FMT, items.append)
    ingest.start()
    try:
        sent = _send(data, port, pause=0.004)  # a paced sender: datagrams a few ms apart
        deadline = time.time() + 5.0
        while sum(isinstance(i, IngestedPicture) for i in items) < 50 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        ingest.stop()
    pictures = [i for i in items if isinstance(i, IngestedPicture)]
    assert len(pictures) >= 50
    # Each arrival is the moment its first datagram was received: just after it was sent, not
    # when the demuxer (which needs the next picture's start) let the picture go.
    lags = [p.arrived - sent[p.pts] for p in pictures if p.pts is not None and p.pts in sent]
    assert len(lags) >= 50
    assert all(0.0 <= lag < 0.004 for lag in sorted(lags)[: len(lags) // 2]), lags
    assert ingest.datagrams is not None and ingest.datagrams.malformed == 0


def test_datagrams_read_late_are_stamped_when_they_arrived(tmp_path: Path) -> None:
    """A receiver that gets to read only a while after the datagrams came (a thread waiting
    for the GIL, a process starved of CPU) still stamps them when the host received them."""
    data = _clip(tmp_path / "clip.ts", 10).read_bytes()
    port = free_ports(1)[0]
    receiver = DatagramInput(f"udp://127.0.0.1:{port}", time.time)  # bound, not reading yet
    # Linux turns receive timestamps on for the whole machine when the first socket asks, a
    # moment later (deferred work); a datagram that came before is stamped when it is read.
    time.sleep(0.2)
    try:
        sent = _send(data, port)
        time.sleep(0.5)
        read_from = time.time()
        receiver.start()
        deadline = time.time() + 5.0
        while receiver.datagrams * DATAGRAM_SIZE < len(data) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        receiver.close()
    stamps = {pts: receiver.arrivals.take(pts) for pts in sent}
    assert len(sent) == 10 and None not in stamps.values()
    lags = [stamp - sent[pts] for pts, stamp in stamps.items() if stamp is not None]
    assert all(0.0 <= lag < 0.1 for lag in lags), (lags, read_from - min(sent.values()))


def test_the_demuxer_reads_the_socket_in_order_and_sees_the_end_once_stopped(
    tmp_path: Path,
) -> None:
    """The pipe the demuxer reads receives from the socket itself: what is not whole TS packets
    (a stray 100-byte datagram, an empty one) is counted and skipped, a datagram larger than a
    read comes over several reads in order, and a read waiting on a silent socket returns the
    end of the stream once the input is stopped."""
    data = _clip(tmp_path / "clip.ts", 5).read_bytes()
    good = [data[i : i + DATAGRAM_SIZE] for i in range(0, 3 * DATAGRAM_SIZE, DATAGRAM_SIZE)]
    port = free_ports(1)[0]
    receiver = DatagramInput(f"udp://127.0.0.1:{port}", time.time)
    ended: list[bytes] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for datagram in (good[0], b"x" * 100, b"", good[1], good[2]):
                sender.sendto(datagram, ("127.0.0.1", port))
        received = b""
        for _ in range(40):  # 3 datagrams of 1,316 bytes in reads of at most 500
            if len(received) >= len(b"".join(good)):
                break
            received += receiver.pipe.read(500)
        assert received == b"".join(good)
        assert (receiver.datagrams, receiver.malformed) == (3, 2)
        reader = threading.Thread(target=lambda: ended.append(receiver.pipe.read(500)))
        reader.start()
        time.sleep(0.1)
        assert not ended  # nothing came: the read waits
        receiver.stop()
        reader.join(5.0)
    finally:
        receiver.close()
    assert ended == [b""]


def test_datagrams_the_kernel_dropped_are_counted() -> None:
    """A burst into a receive buffer too small for it, nothing reading: the kernel drops what
    does not fit and counts it, and the count reaches the input with the next datagram read
    after. Every datagram sent is either read or counted as dropped."""
    port = free_ports(1)[0]
    receiver = DatagramInput(f"udp://127.0.0.1:{port}", time.time, receive_buffer=4096)
    burst, marker = b"\x47" + bytes(187), b"\x47" + b"\x01" * 187  # whole TS packets
    read: list[bytes] = []

    def read_until_the_marker() -> None:
        while (payload := receiver.receive()) is not None:
            read.append(payload)
            if payload == marker:
                return

    reader = threading.Thread(target=read_until_the_marker)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):  # far more than 4 KB (doubled by the kernel) holds
                sender.sendto(burst * 7, ("127.0.0.1", port))
            reader.start()
            time.sleep(0.3)  # what the buffer held is read; the reader waits
            sender.sendto(marker, ("127.0.0.1", port))
            reader.join(5.0)
    finally:
        receiver.close()
        reader.join(5.0)
    assert read and read[-1] == marker
    assert receiver.dropped > 0
    assert len(read) - 1 + receiver.dropped == 200


def test_a_stalled_udp_input_continues_without_a_reopen(tmp_path: Path) -> None:
    data = _clip(tmp_path / "clip.ts", 60).read_bytes()
    chunks = [data[i : i + DATAGRAM_SIZE] for i in range(0, len(data), DATAGRAM_SIZE)]
    port = free_ports(1)[0]
    items: list[Ingested] = []
    ingest = LiveIngest(f"rtp://127.0.0.1:{port}", FMT, items.append)
    ingest.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for n, chunk in enumerate(chunks):
                header = bytes([0x80, 33]) + n.to_bytes(2, "big") + bytes(8)
                sender.sendto(header + chunk, ("127.0.0.1", port))
                if n == len(chunks) // 2:
                    time.sleep(2.0)  # the input stalls for two seconds
        deadline = time.time() + 5.0
        while sum(isinstance(i, IngestedPicture) for i in items) < 58 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        ingest.stop()
    pictures = [i for i in items if isinstance(i, IngestedPicture)]
    assert len(pictures) >= 58
    assert ingest.counters.reopens == 0
    assert ingest.datagrams is not None and ingest.datagrams.malformed == 0
    # Bad addresses are refused before anything starts.
    with pytest.raises(ValueError, match="no port"):
        LiveIngest("udp://127.0.0.1", FMT, items.append)


def test_a_burst_of_queued_pictures_is_late_not_lost() -> None:
    # A stream joined mid-way: the demuxer probes it, then hands its first second over at once.
    monitor = InputMonitor(PERIOD, InputLossPolicy(loss_frames=10), started=0.0)
    for k in range(30):
        assert monitor.arrived(100.0 + k * PERIOD, k * PERIOD, now=101.2 + k * 0.001) is False
        assert monitor.fill(101.2 + k * 0.001) is None
    assert monitor.state is InputState.LIVE and monitor.lost_count == 0
