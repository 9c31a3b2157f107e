"""The live source on real sockets: what receivers on 127.0.0.1 get, and when.

Nothing is mocked. The source runs in a thread of the test (``run_source`` with a stop event)
or, for the signal test, as a real ``meshenc source`` process. Receivers are PyAV (FFmpeg's
udp/rtp inputs, as the encoders use them) or plain sockets that note each datagram's arrival
as the kernel's receive time. Every wait has a bound, and every thread and process is joined
or killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from meshenc.cli.main import cli
from meshenc.core.timecode import FrameRate
from services.encoder.media.datagrams import SO_TIMESTAMPNS, STAMP_SPACE, kernel_time
from services.source.clip import write_test_clip
from services.source.media import StreamFormat
from services.source.path import parse_destination
from services.source.rtp import RTP_PAYLOAD_MP2T
from services.source.service import SourceSettings, SourceStats, run_source

#: PyAV input options for a live TS over UDP: a read timeout (µs) so a reader ends when the
#: stream does, a big FIFO, and overruns that lose data rather than stop the reader.
LIVE_INPUT = "timeout=3000000&fifo_size=50000&overrun_nonfatal=1"


def _free_udp_port(pair: bool = False) -> int:
    """A UDP port free a moment ago (with ``pair``: an even one whose successor is free too,
    for RTP and its RTCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        port &= ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port pair")


def _udp_bound(host: str, port: int) -> bool:
    """Whether a socket on this host has bound ``host:port`` (Linux's ``/proc/net/udp``).

    Reading the table rather than trying to bind the port ourselves: a probe that binds, even
    for a moment, can take the port just as FFmpeg binds it and make FFmpeg's open fail.
    """
    wanted = {
        f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"  # little-endian, as listed
        for address in (host, "0.0.0.0")
    }
    with open("/proc/net/udp") as table:
        next(table)  # the header
        return any(line.split()[1] in wanted for line in table)


def _wait_bound(host: str, port: int, reader: threading.Thread, timeout: float = 10.0) -> None:
    """Wait until the reader (FFmpeg) has bound ``host:port``, or has stopped trying."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _udp_bound(host, port) or not reader.is_alive():
            return
        time.sleep(0.02)
    raise TimeoutError(f"nobody bound {host}:{port} within {timeout} s")


@dataclass
class _Decoded:
    streams: list[str] = field(default_factory=list)
    video_pts: list[int] = field(default_factory=list)
    audio_pts: list[int] = field(default_factory=list)
    error: BaseException | None = None


def _read_with_pyav(url: str, decoded: _Decoded, max_frames: int) -> None:
    """Decode ``url`` until the stream stops (the read timeout) or ``max_frames`` pictures."""
    try:
        # The URL's timeout ends a udp:// read; the rtp:// demuxer has none, so PyAV's own
        # (open, read) timeout stops it too.
        options = {"probesize": "200000", "analyzeduration": "1000000"}
        with av.open(url, options=options, timeout=(10.0, 1.5)) as c:
            decoded.streams = sorted(s.type for s in c.streams)
            with contextlib.suppress(av.FFmpegError, EOFError):
                for frame in c.decode(video=0, audio=0):
                    assert frame.pts is not None
                    if isinstance(frame, av.VideoFrame):
                        decoded.video_pts.append(frame.pts)
                        if len(decoded.video_pts) >= max_frames:
                            return
                    else:
                        decoded.audio_pts.append(frame.pts)
    except BaseException as exc:
        decoded.error = exc


@contextlib.contextmanager
def _reader(url: str, host: str, port: int, max_frames: int = 10_000) -> Iterator[_Decoded]:
    """A PyAV reader in a thread, ready (its port bound) when the block starts."""
    decoded = _Decoded()
    thread = threading.Thread(target=_read_with_pyav, args=(url, decoded, max_frames))
    thread.start()
    try:
        _wait_bound(host, port, thread)
        if decoded.error is not None:
            raise decoded.error  # FFmpeg could not open the input: no use sending to it
        yield decoded
    finally:
        thread.join(timeout=20)
        assert not thread.is_alive(), "the PyAV reader did not stop"
    if decoded.error is not None:
        raise decoded.error


def _run(settings: SourceSettings, timeout: float = 20.0) -> SourceStats:
    """Run the source in a thread and wait for it, bounded."""
    stop = threading.Event()
    result: list[SourceStats] = []
    thread = threading.Thread(target=lambda: result.append(run_source(settings, stop)))
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stop.set()
        thread.join(5)
        raise AssertionError(f"the source did not finish within {timeout} s")
    assert result, "the source failed (see the thread's exception above)"
    return result[0]


def _digest(payload: bytes) -> bytes:
    return hashlib.sha1(payload).digest()


class _Sink:
    """A plain UDP receiver noting (arrival, payload) for each datagram, in a thread.

    The arrival is the kernel's receive time (``SO_TIMESTAMPNS``, CLOCK_REALTIME seconds), not
    the time this thread got round to reading it: two sinks' threads in one busy process read
    late by different amounts, which once made datagrams 50 ms apart look simultaneous.
    """

    def __init__(self, host: str = "127.0.0.1", group: str | None = None) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if group is None:
            self.socket.bind((host, 0))
        else:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((group, _free_udp_port()))
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(host))
            self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        self.port = int(self.socket.getsockname()[1])
        self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.socket.settimeout(0.1)
        self.got: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set() and len(self.got) < 200_000:
            try:
                payload, ancillary, _, _ = self.socket.recvmsg(4096, STAMP_SPACE)
            except TimeoutError:
                continue
            received = kernel_time(ancillary)
            assert received is not None, "the kernel gave no receive time"
            self.got.append((received, payload))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.socket.close()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A one-second clip at 30000/1001 (30 frames, 1.001 s), small pictures."""
    path = tmp_path / "clip.ts"
    write_test_clip(path, seconds=1, frame_rate=FrameRate(30000, 1001), width=96, height=64)
    return path


def test_pyav_decodes_the_stream_over_udp_with_one_timeline_across_loops(clip: Path) -> None:
    port = _free_udp_port()
    settings = SourceSettings(
        input=clip,
        fmt=StreamFormat(96, 64, FrameRate(30000, 1001)),
        destinations=(parse_destination(f"udp://127.0.0.1:{port}?delay_ms=20&jitter_ms=4"),),
        loop=True,
        duration=2.7,
    )
    url = f"udp://127.0.0.1:{port}?{LIVE_INPUT}"
    # The last pictures wait in the demuxer for a next one: stop short of them, not at a timeout.
    with _reader(url, "127.0.0.1", port, max_frames=75) as decoded:
        stats = _run(settings)
    assert stats.loops >= 2
    assert decoded.streams == ["audio", "video"]
    video = decoded.video_pts
    assert len(video) == 75  # two passes of the clip and more, as the receiver saw them
    assert set(np.diff(video).tolist()) == {3003}  # one frame at 30000/1001, never a restart
    assert len(decoded.audio_pts) > 100
    assert set(np.diff(decoded.audio_pts).tolist()) == {1920}  # 1024 samples, continuous


def test_two_destinations_get_their_own_delay_jitter_and_loss() -> None:
    near, far = _Sink(), _Sink()
    try:
        settings = SourceSettings(
            input=None,
            fmt=StreamFormat(320, 180, FrameRate(50), bitrate_kbps=4000),
            destinations=(
                parse_destination(f"udp://127.0.0.1:{near.port}?delay_ms=10"),
                parse_destination(
                    f"udp://127.0.0.1:{far.port}?delay_ms=60&jitter_ms=5&loss=0.2&seed=11"
                ),
            ),
            duration=3.0,
        )
        stats = _run(settings)
    finally:
        near.close()
        far.close()
    sent = len(near.got)
    assert sent == stats.datagrams  # the clean path delivers every datagram
    assert sent > 150
    # Loss: the far path's share of datagrams missing, near the configured 20 %.
    rate = 1 - len(far.got) / sent
    assert abs(rate - 0.2) < 4 * (0.2 * 0.8 / sent) ** 0.5
    # Delay: the same datagram reaches the far end ~50 ms after the near one, give or take
    # the jitter (±5 ms) and the scheduling of two threads on a shared machine.
    # Datagrams are matched by content; the few that repeat (tables and padding whose
    # continuity counters came round) cannot be, and are left out.
    digests = Counter(_digest(p) for _, p in near.got)
    arrival = {_digest(p): t for t, p in near.got if digests[_digest(p)] == 1}
    matched = [(t, _digest(p)) for t, p in far.got if _digest(p) in arrival]
    assert len(matched) > 0.9 * len(far.got)
    gaps = [t - arrival[d] for t, d in matched]
    assert 0.045 <= statistics.median(gaps) <= 0.058
    # The middle half: a stall of the sending thread on a busy machine sends both copies
    # late together and shrinks a gap, so the tails say more about the machine than the path.
    quartiles = statistics.quantiles(gaps, n=4)
    assert quartiles[0] >= 0.038
    assert quartiles[-1] <= 0.066
    assert max(gaps) - min(gaps) >= 0.006  # there is jitter at all
    # Order: the far end gets its datagrams in the order they were sent.
    order = {_digest(p): k for k, (_, p) in enumerate(near.got) if _digest(p) in arrival}
    positions = [order[d] for _, d in matched]
    assert positions == sorted(positions)


def test_rtp_is_read_back_by_pyav_and_carries_mp2t_headers() -> None:
    port = _free_udp_port(pair=True)
    raw = _Sink()
    try:
        settings = SourceSettings(
            input=None,
            fmt=StreamFormat(160, 96, FrameRate(25)),
            destinations=(
                parse_destination(f"rtp://127.0.0.1:{port}?delay_ms=10"),
                parse_destination(f"rtp://127.0.0.1:{raw.port}"),
            ),
            # FFmpeg's rtp demuxer reads one datagram to learn the payload type, closes the
            # port and opens it again: what arrives meanwhile is lost, and on a busy machine
            # that can be the start of the first GOP. Four seconds leave 40 pictures after it.
            duration=4.0,
        )
        url = f"rtp://127.0.0.1:{port}"
        with _reader(url, "127.0.0.1", port, max_frames=40) as decoded:
            _run(settings)
    finally:
        raw.close()
    assert decoded.streams == ["audio", "video"]
    assert len(decoded.video_pts) == 40
    assert set(np.diff(decoded.video_pts).tolist()) == {3600}
    headers = [struct.unpack("!BBHII", p[:12]) for _, p in raw.got]
    assert all(h[0] == 0x80 and h[1] == RTP_PAYLOAD_MP2T for h in headers)
    assert {(b[2] - a[2]) % 65536 for a, b in itertools.pairwise(headers)} == {1}
    assert len({h[4] for h in headers}) == 1
    assert all(p[12] == 0x47 and (len(p) - 12) % 188 == 0 for _, p in raw.got)


def _multicast_works(group: str) -> bool:
    """Whether this kernel delivers multicast on the loopback interface."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rx.bind((group, 0))
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.sendto(b"probe", (group, rx.getsockname()[1]))
            rx.settimeout(1)
            return rx.recv(16) == b"probe"
        except OSError:
            return False


def test_multicast_on_the_loopback_interface_reaches_pyav() -> None:
    group = "239.255.77.1"
    if not _multicast_works(group):
        pytest.skip("this kernel does not deliver multicast on the loopback interface")
    port = _free_udp_port()
    settings = SourceSettings(
        input=None,
        fmt=StreamFormat(160, 96, FrameRate(25)),
        destinations=(parse_destination(f"udp://{group}:{port}?localaddr=127.0.0.1"),),
        duration=2.0,
    )
    url = f"udp://{group}:{port}?localaddr=127.0.0.1&{LIVE_INPUT}"
    with _reader(url, group, port, max_frames=30) as decoded:
        _run(settings)
    assert decoded.streams == ["audio", "video"]
    assert len(decoded.video_pts) == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "srt://127.0.0.1:5000"], "scheme must be udp:// or rtp://"),
        (["--to", "udp://127.0.0.1"], "no port"),
        (["--to", "udp://127.0.0.1:5000?latency=3"], "unknown parameter 'latency'"),
        (["--to", "udp://127.0.0.1:5000?delay_ms=5&jitter_ms=10"], "at least jitter_ms"),
        (["--to", "udp://127.0.0.1:5000?loss=2"], "loss must be a probability"),
        (["--to", "udp://127.0.0.1:5000", "--fps", "fast"], "not a frame rate"),
        (["--to", "udp://127.0.0.1:5000", "--size", "640"], "expected WIDTHxHEIGHT"),
        (["--to", "udp://127.0.0.1:5000", "--size", "641x360"], "width must be even"),
        (["--to", "udp://127.0.0.1:5000", "--input", "/nonexistent/clip.ts"], "cannot open"),
        (["--to", "udp://127.0.0.1:5000", "--duration", "0"], "--duration"),
        ([], "Missing option '--to'"),
    ],
)
def test_meshenc_source_refuses_bad_arguments_before_sending(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["source", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_meshenc_source_stops_on_a_signal_promptly(signum: signal.Signals) -> None:
    sink = _Sink()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "meshenc", "source", "--size", "160x96"]
    command += ["--to", f"udp://127.0.0.1:{sink.port}"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 20
        while len(sink.got) < 20 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert len(sink.got) >= 20, "the source sent nothing"
        signalled = time.monotonic()
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
        stopped = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=5)
        sink.close()
    assert process.returncode == 0, err
    assert stopped < 5.0  # a second or two on a busy machine: the interpreter's own exit
    assert "source:" in out
    assert f"{signum.name}: stopping" in err
