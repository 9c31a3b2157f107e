"""``meshenc bench encoder``: what one encoder costs on this machine, with the mesh on.

Theory of operation
-------------------
Three measurements, each a question the design has to answer with numbers:

1. *Throughput, from the same stream as ffmpeg.* The test pattern is encoded once per size as
   a live source sends it (``write_stream``: H.264 in MPEG-TS, here without audio), and both
   sides decode that file, each with one decoder thread. Ours runs the runtime's own per-frame
   path over it as fast as it can (no pacing): PyAV demuxes and decodes each picture in the
   loop, the live ingest's ``decoded_picture`` makes it the mesh's picture (scaling is a no-op
   at the same size; one copy), named by its source timestamp and counted on the source's
   cadence as the runtime does (so no fingerprint is computed: a picture with a timestamp
   needs none), then the pipeline's ``FrameCaptured`` →
   ``GopEncoder.encode`` → ``SegmentWriter.add`` (real files, in a temporary
   directory) → ``FrameEncoded`` → the conversion of each ESP to its wire envelope, once for
   the three neighbours it goes to (as ``MeshLinks.send_all`` does; one per neighbour on the
   frames whose ESPs echo each neighbour's own). The engine is configured with three
   neighbours whose ESPs are fed back to it (built from its own ESPs with small label
   offsets, then checked and converted as a received stream is), so the Kalman filters, the
   control step and the lock logic really run. Building the neighbours' ESPs is their work,
   not ours: its time is left out. The
   engine's clock advances by one frame period per picture, as it would live, although the
   loop itself does not wait. The file comes from the page cache, not a socket: the UDP
   receiver's own work per datagram is ``meshenc bench ingest``'s.

   The baseline is Debian's ``ffmpeg`` decoding the same file (``-threads 1`` on the input)
   and encoding it with the same libx264 preset, tune and ``x264-params``, one thread, into
   one MPEG-TS file. What is compared is pictures per CPU-second: ours is the process's CPU
   time (user + system) over the loop, ffmpeg's its own ``-benchmark`` utime + stime (the
   transcode, without process start-up, option parsing and probing; our stream is opened and
   probed before the clocks start too). Wall-clock rates are reported beside them. What still
   differs: a fresh libx264 context for every GOP, ours alone and the point of the design;
   ours writes a file per segment and a playlist, ffmpeg one file; and the libx264
   and FFmpeg builds (PyAV's own against Debian's; the table names both x264 builds). Runs of
   ours and of ffmpeg alternate, so that a noisy neighbour on the machine hits both alike; the
   ratio is computed per pair of runs.

2. *Mesh protocol CPU per frame,* timed (``perf_counter``, on the one thread that does all the
   work) around only the mesh parts of the same loop: the engine's steps for the picture, the
   ESPs' conversion to the wire, and for each of the three neighbour ESPs the stream check, the
   conversion from the wire and ``EspReceived`` (plus votes for any proposal). Reported as the
   median over every frame of every run, and as a share of the frame period.

3. *ESP latency over real gRPC* on 127.0.0.1: two ``MeshServer``/``MeshLinks`` pairs in one
   event loop, linked as encoders are, each sending ESPs at the frame rate whose ``sent_at`` is
   the host clock just before ``MeshLinks.send``; the receiving handler notes the host clock on
   arrival. One host clock, so no clock correction is involved.

Invariants: every step is bounded in time (ffmpeg and the gRPC run have timeouts; the loops
are finite); temporary files live in directories removed on exit, also on errors; the only
child process is ffmpeg, waited for or killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from rich.table import Table

from meshenc.bench.results import (
    BenchError,
    Progress,
    Spread,
    machine,
    percentile,
    quiet,
    results_table,
)
from meshenc.core.engine import (
    Action,
    EngineConfig,
    EspReceived,
    SendEsp,
    SendProposal,
    SyncEngine,
    VoteReceived,
)
from meshenc.core.identity import SourceCadence, source_identity
from meshenc.core.messages import EncodingStatePacket, ResyncProposal, ResyncVote
from meshenc.core.timecode import FrameRate
from meshenc.v1 import mesh_pb2
from meshenc.wire import PROTOCOL_VERSION, convert, hot_path
from meshenc.wire.validation import ExchangeStreamChecker
from services.common.tls import TlsFiles
from services.encoder.media.containers import TICKS, SegmentFormat
from services.encoder.media.gop import EncodedFrame, EncoderParams
from services.encoder.media.ingest import SWITCH_INTERVAL, decoded_picture
from services.encoder.media.ladder import Rendition, Rung, renditions_for, top_rung
from services.encoder.media.source import SyntheticSource, VideoFormat, picture_frame
from services.encoder.mesh import MeshLinks, MeshServer
from services.encoder.pipeline import FramePipeline
from services.encoder.settings import parse_size

__all__ = [
    "FRAME_RATE",
    "GOP",
    "PARTS",
    "PRESET",
    "EncoderBench",
    "EncoderResult",
    "EncoderSize",
    "LatencyResult",
    "LinkedPair",
    "default_bitrate",
    "esp_delays",
    "ffmpeg_binary",
    "ffmpeg_command",
    "latency_esp",
    "linked_pair",
    "measure_encoder",
    "measure_latency",
    "parse_sizes",
    "results_dict",
    "run_encoder_bench",
    "run_ffmpeg",
    "run_path",
    "write_stream",
]

FRAME_RATE: Final = FrameRate(30)
#: The parts of the per-frame path timed separately: the picture (demux, decode, conversion),
#: libx264 (with the frame hash), segment muxing and writing, the mesh protocol,
#: and the rest (the loop itself and the shell's hooks; the neighbours' side of the exchange,
#: which the benchmark plays, is left out).
PARTS: Final = ("picture", "encode", "segments", "mesh", "other")
GOP: Final = 60
PRESET: Final = "ultrafast"

NODE: Final = "bench"
#: The neighbours fed to the engine, and how far (seconds) their labels sit from ours: small,
#: as in a locked mesh, and not all alike, so the filters and the trimmed mean have work.
NEIGHBOURS: Final[tuple[tuple[str, float], ...]] = (
    ("n1", +0.0004),
    ("n2", -0.0007),
    ("n3", +0.0011),
)
#: A neighbour echoes our previous ESP after holding it this long (a 0.5 ms round trip).
ECHO_RTT: Final = 0.0005
#: Reference point of the default bitrate rule: 1500 kbit/s at 640x360...
REFERENCE_PIXELS: Final = 640 * 360
REFERENCE_KBPS: Final = 1500
#: ...growing with the pixel count to this power (gives 4000 kbit/s at 1280x720).
BITRATE_EXPONENT: Final = 0.7
#: The slowest encode still accepted from ffmpeg before it is killed, frames per second.
FFMPEG_MIN_FPS: Final = 5.0
FFMPEG_STARTUP_ALLOWANCE: Final = 30.0
#: How long the two gRPC nodes may take to link up, and how long the last ESPs may take.
LINK_TIMEOUT: Final = 10.0
DRAIN_TIMEOUT: Final = 5.0

MISSING_FFMPEG: Final = (
    "the encoder benchmark needs Debian's ffmpeg as its baseline and it is not on PATH; "
    "`make bench` installs it (scripts/ensure-system-deps.sh --bench)"
)

_BENCHMARK_RE: Final = re.compile(r"\butime=([0-9.]+)s stime=([0-9.]+)s rtime=([0-9.]+)s")
_X264_RE: Final = re.compile(rb"x264 - core (\d+)(?: (r\d+))?")


# --- sizes ------------------------------------------------------------------------------------


def default_bitrate(width: int, height: int) -> int:
    """The bitrate a size gets unless one is given: 1500 kbit/s at 640x360, 4000 at 720p.

    Bits per pixel fall as pictures grow, hence the exponent below 1; rounded to 100 kbit/s.
    """
    scale: float = (width * height / REFERENCE_PIXELS) ** BITRATE_EXPONENT
    return max(100, round(REFERENCE_KBPS * scale / 100) * 100)


@dataclass(frozen=True, slots=True)
class EncoderSize:
    """One picture size to measure and the bitrate to encode it at."""

    width: int
    height: int
    bitrate_kbps: int

    def __post_init__(self) -> None:
        VideoFormat(self.width, self.height, FRAME_RATE)  # the source's own size rules
        if self.bitrate_kbps <= 0:
            raise ValueError(f"bitrate must be positive, got {self.bitrate_kbps} kbit/s")

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def params(self) -> EncoderParams:
        fmt = VideoFormat(self.width, self.height, FRAME_RATE)
        return EncoderParams.for_format(fmt, gop=GOP, bitrate_kbps=self.bitrate_kbps, preset=PRESET)


def parse_sizes(text: str) -> list[EncoderSize]:
    """Read ``640x360,1280x720`` (``WxH@KBPS`` sets a bitrate; else :func:`default_bitrate`).

    Raises:
        ValueError: an entry is not ``WxH`` or ``WxH@KBPS``, or the size is not encodable.
    """
    sizes = []
    for entry in (part.strip().lower() for part in text.split(",")):
        if not entry:
            continue
        shape, _, kbps = entry.partition("@")
        try:
            width, height = parse_size(shape)
            bitrate = int(kbps) if kbps else default_bitrate(width, height)
        except ValueError:
            raise ValueError(f"expected WxH or WxH@KBPS, e.g. 640x360, got {entry!r}") from None
        sizes.append(EncoderSize(width, height, bitrate))
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


# --- 1 and 2: the per-frame path ------------------------------------------------------------


def _hello(node_id: str) -> mesh_pb2.Hello:
    return mesh_pb2.Hello(
        sender_id=node_id,
        protocol_version=PROTOCOL_VERSION,
        frame_rate=convert.frame_rate_to_proto(FRAME_RATE),
        gop_length=GOP,
        topology_epoch=0,
    )


def _stream_checker(peer: str) -> ExchangeStreamChecker:
    """A checker for ``peer``'s stream to us, past its Hello, as the mesh links keep one."""
    checker = ExchangeStreamChecker(NODE)
    checker.check(mesh_pb2.MeshMessage(hello=_hello(peer)))
    return checker


def _neighbour_messages(ours: EncodingStatePacket, now: float) -> list[mesh_pb2.MeshMessage]:
    """What the three neighbours would send for the same picture, on the wire.

    Their labels sit a little off ours; every one echoes our previous ESP, so the round-trip
    estimator runs too, and passes our anchor on one link further. This is the neighbours'
    work, not ours: it is outside the mesh timing.
    """
    period = FRAME_RATE.period
    echo = ours.sequence > 1
    return [
        mesh_pb2.MeshMessage(
            esp=convert.esp_to_proto(
                replace(
                    ours,
                    sender=name,
                    label=ours.label + offset,
                    sent_at=now,
                    echo_sequence=ours.sequence - 1 if echo else 0,
                    echo_sent_at=now - period if echo else 0.0,
                    echo_hold=period - ECHO_RTT if echo else 0.0,
                    # Our anchor, announced one link further on, as a neighbour passes it on.
                    anchor_hops=ours.anchor_hops + 1 if ours.anchor else 0,
                    anchor_offset=ours.anchor_offset + offset if ours.anchor else 0.0,
                    **_beacon_of(name, ours),
                )
            )
        )
        for name, offset in NEIGHBOURS
    ]


def _beacon_of(name: str, ours: EncodingStatePacket) -> dict[str, Any]:
    """The timeline beacon neighbour ``name`` announces: its own, locked on our timeline, once
    we are locked; none before (what it would pass on depends on encoders the bench does not
    play)."""
    locked = bool(ours.timeline)
    return {
        "beacon_timeline": ours.timeline,
        "beacon_hops": 0,
        "beacon_offset": 0.0,
        "beacon_origin": name if locked else "",
    }


class _BenchShell:
    """The process around the pipeline, as the benchmark plays it: it converts every ESP to
    its wire envelope (as sending does), keeps the proposals for the neighbours to answer,
    counts segments and notes the libx264 build."""

    def __init__(self) -> None:
        self.segments = 0
        self.x264: str | None = None
        self.esps: list[EncodingStatePacket] = []
        self.wire: list[mesh_pb2.MeshMessage] = []
        self.proposals: list[ResyncProposal] = []

    def slot_starts(self, timecode: int, measured: bool) -> None:
        del timecode, measured

    def slot_encoded(self, frame: EncodedFrame, encode_seconds: float) -> None:
        del encode_seconds
        if self.x264 is None and frame.keyframe:
            self.x264 = _x264_version(frame.data)

    def segments_written(self, rendition: Rendition, paths: list[Path], started_ns: int) -> None:
        del rendition, started_ns
        self.segments += len(paths)

    def renditions_changed(self, active: Sequence[Rendition]) -> None:
        del active

    def picture_done(self) -> None:
        pass

    def carry_out(self, action: Action) -> None:
        if isinstance(action, SendEsp):
            # Converted once for every neighbour it goes to, as ``MeshLinks.send_all`` does.
            self.esps.append(action.esp)
            self.wire.append(mesh_pb2.MeshMessage(esp=convert.esp_to_proto(action.esp)))
        elif isinstance(action, SendProposal):
            self.proposals.append(action.proposal)


def _approvals(proposal: ResyncProposal) -> list[ResyncVote]:
    """Every neighbour approves at once, as locked neighbours would."""
    return [
        ResyncVote(
            proposer=NODE,
            proposal_id=proposal.proposal_id,
            voter=voter,
            approve=True,
            estimated_deviation=0.0,
        )
        for voter, _ in NEIGHBOURS
    ]


@dataclass(frozen=True, slots=True)
class _PathRun:
    frames: int
    #: Wall time and the process's CPU time of the run, the neighbours' part taken out.
    seconds: float
    cpu_seconds: float
    mesh_seconds: list[float]
    #: Wall seconds spent in each part of the path over the run (see ``PARTS``).
    parts: dict[str, float]
    segments: int
    proposals: int
    locked: bool
    x264: str | None


def _x264_version(data: bytes) -> str | None:
    """The libx264 build named in a bitstream's SEI (``core 164 r3095``), if present."""
    match = _X264_RE.search(data)
    if match is None:
        return None
    return " ".join(part.decode() for part in match.groups() if part)


def write_stream(size: EncoderSize, frames: int, path: Path, *, audio: bool = True) -> None:
    """The test pattern as a live source sends it: H.264 (the size's bitrate, libx264's
    ultrafast preset, an IDR every second, no B-frames), with an MP2 tone unless ``audio`` is
    False, in MPEG-TS."""
    source = SyntheticSource(VideoFormat(size.width, size.height, FRAME_RATE))
    rate = Fraction(FRAME_RATE.num, FRAME_RATE.den)
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = size.width, size.height, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(round(rate))}
        video.bit_rate = size.bitrate_kbps * 1000
        sound = out.add_stream("mp2", rate=48_000) if audio else None
        if sound is not None:
            sound.layout = "stereo"
        samples = 0
        for index in range(frames):
            frame = picture_frame(source.picture(index))
            frame.pts = index
            out.mux(video.encode(frame))
            while sound is not None and samples < (index + 1) * 48_000 * FRAME_RATE.den // (
                FRAME_RATE.num
            ):
                tone = (np.sin(np.arange(samples, samples + 1152) * 0.06) * 8000).astype(np.int16)
                chunk = av.AudioFrame.from_ndarray(
                    np.repeat(tone, 2).reshape(1, -1), "s16", "stereo"
                )
                chunk.sample_rate, chunk.pts = 48_000, samples
                samples += 1152
                out.mux(sound.encode(chunk))
        out.mux(video.encode(None))
        if sound is not None:
            out.mux(sound.encode(None))


def _decoded(container: InputContainer) -> Iterator[VideoFrame]:
    """The container's video frames as one decoder thread decodes them (``ffmpeg -threads 1``)."""
    video = container.streams.video[0]
    video.codec_context.thread_count = 1
    for packet in container.demux(video):
        for frame in packet.decode():
            if isinstance(frame, VideoFrame):
                yield frame


def run_path(
    size: EncoderSize,
    stream: Path,
    out_dir: Path,
    *,
    ladder: Sequence[Rung] = (),
    rung_threads: int = 1,
    origin: float | None = None,
) -> _PathRun:
    """Run the per-frame path over every picture of ``stream`` as fast as possible.

    ``stream`` is a file :func:`write_stream` made at ``size``. Everything is fresh (engine,
    encoders, segment writers), as in a newly started encoder. With a ``ladder`` the pictures
    (of ``size``, the top rung's) go to one rendition per rung, the mesh agreeing on the top
    rung's bitrate, as ``meshenc encoder --ladder`` does, ``rung_threads`` of them at once.
    The first picture is stamped at ``origin`` (a Unix time; by default the last whole second),
    so runs given the same one write the same files.

    Raises:
        ValueError: ``size`` is not the ladder's top rung's size.
        BenchError: the stream holds no picture.
    """
    params = size.params
    if ladder and (top := top_rung(ladder)).name != size.name:
        raise ValueError(f"the pictures are {size.name}, the ladder's top rung is {top.name}")
    fmt = VideoFormat(size.width, size.height, FRAME_RATE)
    bitrate = top_rung(ladder).bitrate_kbps if ladder else params.bitrate_kbps
    config = EngineConfig(frame_rate=FRAME_RATE, gop=GOP, bitrate_kbps=bitrate)
    engine = SyncEngine(NODE, config, [n for n, _ in NEIGHBOURS])
    checkers = {name: _stream_checker(name) for name, _ in NEIGHBOURS}
    cadence = SourceCadence(Fraction(FRAME_RATE.den, FRAME_RATE.num))
    period = FRAME_RATE.period
    origin = float(math.floor(time.time())) if origin is None else origin
    now = origin
    shell = _BenchShell()
    pipeline = FramePipeline(engine, shell, lambda: now, rung_threads=rung_threads)
    renditions = renditions_for(
        out_dir,
        FRAME_RATE,
        GOP,
        ladder or None,
        size=(size.width, size.height),
        bitrate_kbps=params.bitrate_kbps,
        fmt=SegmentFormat.TS,
    )
    pipeline.start(renditions)
    times = pipeline.times
    clock, cpu = time.perf_counter, time.process_time
    mesh_seconds: list[float] = []
    picture_seconds = 0.0
    neighbours = 0.0  # the neighbours' work, which is not ours
    answered: list[tuple[EncodingStatePacket, float]] = []
    proposals = 0
    frames = 0
    # The GIL's switch interval the runtime sets (a thread waiting for it: rung threads here).
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        with av.open(str(stream)) as container:  # opened and probed before the clocks start
            decoded = _decoded(container)
            started, started_cpu = clock(), cpu()
            while True:
                mark = clock()
                frame = next(decoded, None)
                if frame is None:
                    break
                picture = decoded_picture(frames, frame, fmt)
                picture_seconds += clock() - mark
                now = origin + frames * period
                frames += 1
                inside = times.engine + times.actions
                shell.esps.clear()
                shell.wire.clear()
                # Named and counted by its source timestamp, as the runtime does.
                pts, time_base = frame.pts, frame.time_base
                if pts is None or time_base is None:
                    raise BenchError(f"picture {frames} of {stream} has no timestamp")
                ticks = round(pts * time_base * TICKS)
                periods = cadence.periods(pts, time_base)
                pipeline.capture(now, picture, source_identity(ticks), periods, ticks)
                spent = times.engine + times.actions - inside
                mark = clock()
                incoming = _neighbour_messages(shell.esps[0], now) if shell.wire else []
                neighbours += clock() - mark
                if incoming:
                    answered.append((shell.esps[0], now))
                mark = clock()
                for msg in incoming:
                    checkers[msg.esp.sender_id].check(msg)
                    pipeline.step(now, EspReceived(convert.esp_from_proto(msg.esp)))
                while shell.proposals:
                    proposals += 1
                    for vote in _approvals(shell.proposals.pop(0)):
                        pipeline.step(now, VoteReceived(vote))
                spent += clock() - mark
                mesh_seconds.append(spent)
            seconds = clock() - started - neighbours
            cpu_seconds = cpu() - started_cpu
        # The neighbours' CPU time, taken out below: their work done again, timed as a whole
        # (reading the process's CPU clock twice a frame would cost more than it measures).
        started_cpu = cpu()
        for esp, at in answered:
            _neighbour_messages(esp, at)
        cpu_seconds -= cpu() - started_cpu
        if not frames:
            raise BenchError(f"{stream} holds no picture")
        locked = engine.snapshot(origin + frames * period).locked
    finally:
        sys.setswitchinterval(switch_interval)
        pipeline.close()
        for rendition in renditions:
            rendition.writer.finish()
            rendition.close()
    mesh = math.fsum(mesh_seconds)
    parts = {
        "picture": picture_seconds,
        "encode": times.encode,
        "segments": times.segments,
        "mesh": mesh,
    }
    parts["other"] = max(0.0, seconds - math.fsum(parts.values()))
    return _PathRun(
        frames=frames,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        mesh_seconds=mesh_seconds,
        parts=parts,
        segments=shell.segments,
        proposals=proposals,
        locked=locked,
        x264=shell.x264,
    )


# --- the ffmpeg baseline ----------------------------------------------------------------------


def ffmpeg_binary() -> str:
    """The ``ffmpeg`` on PATH.

    Raises:
        BenchError: there is none (the message says how to get it).
    """
    found = shutil.which("ffmpeg")
    if found is None:
        raise BenchError(MISSING_FFMPEG)
    return found


def ffmpeg_command(binary: str, size: EncoderSize, stream: Path, out: Path) -> list[str]:
    """The baseline command: the stream decoded by one thread, encoded with our libx264
    settings by one thread, one context for the whole run, into one MPEG-TS file."""
    params = size.params
    return [
        binary,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-benchmark",
        "-y",
        "-threads",
        "1",
        "-i",
        str(stream),
        "-map",
        "0:v:0",
        "-c:v",
        "libx264",
        "-preset",
        params.preset,
        "-tune",
        "zerolatency",
        "-x264-params",
        params.x264_params,
        "-threads",
        "1",
        "-f",
        "mpegts",
        str(out),
    ]


@dataclass(frozen=True, slots=True)
class _FfmpegRun:
    #: The transcode's CPU time (user + system) and wall time, from ``-benchmark``.
    cpu_seconds: float
    transcode_seconds: float
    x264: str | None


def run_ffmpeg(command: Sequence[str], frames: int, out: Path) -> _FfmpegRun:
    """Run the baseline once; killed (and reported) if slower than ``FFMPEG_MIN_FPS``.

    Raises:
        BenchError: ffmpeg failed, timed out or did not report its timing.
    """
    timeout = FFMPEG_STARTUP_ALLOWANCE + frames / FFMPEG_MIN_FPS
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"ffmpeg took longer than {timeout:.0f} s and was stopped") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BenchError(f"ffmpeg failed with exit status {done.returncode}:\n{tail}")
    match = _BENCHMARK_RE.search(done.stderr)
    if match is None:
        raise BenchError("ffmpeg did not print its -benchmark line (bench: utime=... rtime=...)")
    utime, stime, rtime = (float(group) for group in match.groups())
    with out.open("rb") as stream:
        x264 = _x264_version(stream.read(1 << 16))
    return _FfmpegRun(utime + stime, rtime, x264)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncoderResult:
    """Throughput and mesh CPU of one size, over ``repeats`` runs of ``frames`` pictures."""

    size: EncoderSize
    frames: int
    #: Pictures per CPU-second, and per second of wall time, of each run.
    ours_fps: tuple[float, ...]
    ours_wall_fps: tuple[float, ...]
    ffmpeg_fps: tuple[float, ...]
    ffmpeg_wall_fps: tuple[float, ...]
    mesh_us_median: float
    mesh_us_mean: float
    mesh_us_p99: float
    #: Mean wall milliseconds per frame in each part of the path (``PARTS``), over every run.
    parts_ms: dict[str, float]
    segments_per_run: int
    proposals: int
    locked: bool
    x264_ours: str | None
    x264_ffmpeg: str | None

    @property
    def ratios(self) -> tuple[float, ...]:
        """Ours / ffmpeg in pictures per CPU-second, for each pair of alternating runs."""
        return tuple(o / f for o, f in zip(self.ours_fps, self.ffmpeg_fps, strict=True))

    @property
    def wall_ratios(self) -> tuple[float, ...]:
        """Ours / ffmpeg in pictures per second of wall time, per pair of runs."""
        return tuple(o / f for o, f in zip(self.ours_wall_fps, self.ffmpeg_wall_fps, strict=True))

    @property
    def mesh_share(self) -> float:
        """The median mesh CPU per frame as a fraction of the frame period."""
        return self.mesh_us_median / 1e6 / FRAME_RATE.period

    def as_dict(self) -> dict[str, Any]:
        return {
            "size": self.size.name,
            "bitrate_kbps": self.size.bitrate_kbps,
            "frames": self.frames,
            "repeats": len(self.ours_fps),
            "ours_fps_per_cpu_second": Spread.of(self.ours_fps).as_dict(),
            "ffmpeg_fps_per_cpu_second": Spread.of(self.ffmpeg_fps).as_dict(),
            "ratio": Spread.of(self.ratios).as_dict(),
            "ours_wall_fps": Spread.of(self.ours_wall_fps).as_dict(),
            "ffmpeg_wall_fps": Spread.of(self.ffmpeg_wall_fps).as_dict(),
            "wall_ratio": Spread.of(self.wall_ratios).as_dict(),
            "runs": {
                "ours_fps_per_cpu_second": list(self.ours_fps),
                "ffmpeg_fps_per_cpu_second": list(self.ffmpeg_fps),
                "ours_wall_fps": list(self.ours_wall_fps),
                "ffmpeg_wall_fps": list(self.ffmpeg_wall_fps),
            },
            "mesh_cpu_us": {
                "median": self.mesh_us_median,
                "mean": self.mesh_us_mean,
                "p99": self.mesh_us_p99,
                "share_of_frame_period": self.mesh_share,
            },
            "parts_wall_ms_per_frame": self.parts_ms,
            "segments_per_run": self.segments_per_run,
            "proposals": self.proposals,
            "locked": self.locked,
            "x264": {"ours": self.x264_ours, "ffmpeg": self.x264_ffmpeg},
        }


def measure_encoder(
    size: EncoderSize,
    frames: int,
    repeats: int,
    *,
    progress: Progress = quiet,
) -> EncoderResult:
    """Alternate ``repeats`` runs of our path and of the ffmpeg baseline on the same stream.

    Raises:
        BenchError: ffmpeg is missing, fails or is too slow, or the stream lost pictures.
    """
    binary = ffmpeg_binary()
    if frames < 1 or repeats < 1:
        raise BenchError("frames and repeats must be at least 1")
    ours: list[float] = []
    ours_wall: list[float] = []
    theirs: list[float] = []
    theirs_wall: list[float] = []
    mesh: list[float] = []
    runs: list[_PathRun] = []
    x264_ffmpeg: str | None = None
    with tempfile.TemporaryDirectory(prefix="meshenc-bench-") as scratch:
        work = Path(scratch)
        stream, ts = work / "in.ts", work / "out.ts"
        progress(f"{size.name}: encoding the {frames}-picture source stream ...")
        write_stream(size, frames, stream, audio=False)
        command = ffmpeg_command(binary, size, stream, ts)
        # Untimed warm-up: library loading and first-use costs are not the steady state.
        with tempfile.TemporaryDirectory(dir=work) as segments:
            run_path(size, stream, Path(segments))
        for repeat in range(1, repeats + 1):
            progress(f"{size.name}: run {repeat}/{repeats} (ours, then ffmpeg) ...")
            with tempfile.TemporaryDirectory(dir=work) as segments:
                run = run_path(size, stream, Path(segments))
            if run.frames != frames:
                raise BenchError(f"decoded {run.frames} of the stream's {frames} pictures")
            runs.append(run)
            ours.append(frames / run.cpu_seconds)
            ours_wall.append(frames / run.seconds)
            mesh.extend(run.mesh_seconds)
            baseline = run_ffmpeg(command, frames, ts)
            theirs.append(frames / baseline.cpu_seconds)
            theirs_wall.append(frames / baseline.transcode_seconds)
            x264_ffmpeg = baseline.x264
    mesh_us = [s * 1e6 for s in mesh]
    return EncoderResult(
        size=size,
        frames=frames,
        ours_fps=tuple(ours),
        ours_wall_fps=tuple(ours_wall),
        ffmpeg_fps=tuple(theirs),
        ffmpeg_wall_fps=tuple(theirs_wall),
        mesh_us_median=statistics.median(mesh_us),
        mesh_us_mean=statistics.fmean(mesh_us),
        mesh_us_p99=percentile(mesh_us, 99),
        parts_ms={
            part: math.fsum(r.parts[part] for r in runs) * 1e3 / (frames * len(runs))
            for part in PARTS
        },
        segments_per_run=runs[-1].segments,
        proposals=sum(r.proposals for r in runs),
        locked=all(r.locked for r in runs),
        x264_ours=runs[-1].x264,
        x264_ffmpeg=x264_ffmpeg,
    )


# --- 3: ESP latency over gRPC ------------------------------------------------------------------


class _LatencyNode:
    """A MeshHandler that only notes when each ESP arrived (host clock)."""

    def __init__(self, node_id: str, peer: str) -> None:
        self.node_id = node_id
        self.peer = peer
        #: (sent_at, received_at) per ESP, host clock seconds.
        self.arrivals: list[tuple[float, float]] = []

    def is_neighbour(self, node_id: str) -> bool:
        return node_id == self.peer

    def on_esp(self, esp: EncodingStatePacket) -> None:
        self.arrivals.append((esp.sent_at, time.time()))

    def on_proposal(self, proposal: ResyncProposal) -> None:
        del proposal

    def on_vote(self, vote: ResyncVote) -> None:
        del vote

    def state(self) -> mesh_pb2.EncoderState:
        return mesh_pb2.EncoderState(
            encoder_id=self.node_id,
            protocol_version=PROTOCOL_VERSION,
            frame_rate=convert.frame_rate_to_proto(FRAME_RATE),
            gop_length=GOP,
        )

    def hello(self) -> mesh_pb2.Hello:
        return _hello(self.node_id)

    def set_parameters(self, bitrate_kbps: int, size: tuple[int, int] | None) -> tuple[int, int]:
        raise ValueError("the latency benchmark changes no parameters")


def latency_esp(sender: str, sequence: int, now: float) -> EncodingStatePacket:
    """A valid ESP of ``sender`` stamped ``now`` (host clock) as it is sent."""
    return EncodingStatePacket(
        sender=sender,
        sequence=sequence,
        topology_epoch=0,
        timecode=FRAME_RATE.slot(now),
        frame_hash=bytes(32),
        fingerprint=sequence,
        label=now,
        correction=0.0,
        correction_rate=0.0,
        encode_latency=0.0,
        rtt=0.0,
        jitter=0.0,
        confidence=1.0,
        sent_at=now,
    )


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """ESP send→receive latency over gRPC on loopback, both directions pooled."""

    sent: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "rate_per_s": FRAME_RATE.fps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
        }


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _send_at_rate(links: MeshLinks, sender: str, peer: str, count: int) -> int:
    """Send ``count`` ESPs at the frame rate on an absolute schedule; returns how many queued."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    queued = 0
    for sequence in range(1, count + 1):
        delay = start + (sequence - 1) * FRAME_RATE.period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queued += links.send(peer, latency_esp(sender, sequence, time.time()))
    return queued


@dataclass(frozen=True, slots=True)
class LinkedPair:
    """Two mesh nodes, "a" and "b", linked over real gRPC on 127.0.0.1 (see :func:`linked_pair`)."""

    nodes: tuple[_LatencyNode, _LatencyNode]
    links: tuple[MeshLinks, MeshLinks]


@contextlib.asynccontextmanager
async def linked_pair(tls: Mapping[str, TlsFiles] | None = None) -> AsyncIterator[LinkedPair]:
    """Serve and link two mesh nodes as encoders are ("a" dials "b"); mutual TLS with
    ``tls["a"]`` and ``tls["b"]`` (certificates naming "a" and "b"), plaintext without.

    Raises:
        BenchError: they did not link up within ``LINK_TIMEOUT``.
    """
    nodes = (_LatencyNode("a", "b"), _LatencyNode("b", "a"))
    links = tuple(MeshLinks(n, tls=None if tls is None else tls[n.node_id]) for n in nodes)
    servers = [
        MeshServer(node, link, tls=None if tls is None else tls[node.node_id])
        for node, link in zip(nodes, links, strict=True)
    ]
    try:
        ports = [await server.start("127.0.0.1:0") for server in servers]
        links[0].set_peers({"b": f"127.0.0.1:{ports[1]}"})
        links[1].set_peers({"a": f"127.0.0.1:{ports[0]}"})
        if not await _until(
            lambda: links[0].connected("b") and links[1].connected("a"), LINK_TIMEOUT
        ):
            raise BenchError(f"the two mesh nodes did not link up within {LINK_TIMEOUT:.0f} s")
        yield LinkedPair(nodes, (links[0], links[1]))
    finally:
        for link in links:
            await link.close()
        for server in servers:
            await server.stop(grace=0.5)


async def esp_delays(pair: LinkedPair, count: int) -> list[float]:
    """Send ``count`` ESPs each way at the frame rate; the send→receive delays (ms) of those
    that arrived (the nodes' earlier arrivals are forgotten first)."""
    for node in pair.nodes:
        node.arrivals.clear()
    queued = await asyncio.gather(
        _send_at_rate(pair.links[0], "a", "b", count), _send_at_rate(pair.links[1], "b", "a", count)
    )
    await _until(lambda: sum(len(n.arrivals) for n in pair.nodes) >= sum(queued), DRAIN_TIMEOUT)
    return [(received - sent) * 1e3 for node in pair.nodes for sent, received in node.arrivals]


async def _latency(count: int) -> LatencyResult:
    async with linked_pair() as pair:
        delays = await esp_delays(pair, count)
    if not delays:
        raise BenchError("no ESP arrived over gRPC")
    return LatencyResult(
        sent=2 * count,
        received=len(delays),
        p50_ms=percentile(delays, 50),
        p99_ms=percentile(delays, 99),
        max_ms=max(delays),
        mean_ms=statistics.fmean(delays),
    )


def measure_latency(count: int) -> LatencyResult:
    """Send ``count`` ESPs each way between two linked mesh nodes at the frame rate.

    Raises:
        BenchError: the nodes did not link up, nothing arrived, or the run overran its bound.
    """
    if count < 1:
        raise BenchError("at least one ESP must be sent")
    bound = LINK_TIMEOUT + count * FRAME_RATE.period + DRAIN_TIMEOUT + 10.0
    try:
        return asyncio.run(asyncio.wait_for(_latency(count), bound))
    except TimeoutError:
        raise BenchError(f"the gRPC latency run overran its {bound:.0f} s bound") from None


def results_dict(
    encoders: Iterable[EncoderResult], latency: LatencyResult | None
) -> dict[str, Any]:
    """The JSON document ``--json`` prints and ``--out`` writes."""
    return {
        "benchmark": "encoder",
        "settings": {
            "frame_rate": str(FRAME_RATE),
            "gop": GOP,
            "preset": PRESET,
            "neighbours": len(NEIGHBOURS),
            "hot_path": hot_path.describe(),
        },
        "machine": machine(),
        "encoder": [e.as_dict() for e in encoders],
        "esp_latency": None if latency is None else latency.as_dict(),
    }


# --- the benchmark: every size, then the latency ------------------------------------------------


def _spread(values: Sequence[float], digits: int = 0, unit: str = "") -> str:
    s = Spread.of(values)
    return f"{s.low:,.{digits}f}–{s.high:,.{digits}f}{unit}"


def _versions(results: Sequence[EncoderResult]) -> str:
    """Which libx264 builds were compared (from the bitstreams' SEI)."""
    ours = sorted({r.x264_ours for r in results if r.x264_ours is not None}) or ["?"]
    theirs = sorted({r.x264_ffmpeg for r in results if r.x264_ffmpeg is not None}) or ["?"]
    return f"libx264: ours (PyAV) {', '.join(ours)}; ffmpeg's {', '.join(theirs)}."


@dataclass(frozen=True, slots=True)
class EncoderBench:
    """``meshenc bench encoder``: each size's throughput and mesh CPU, and the ESP latency."""

    results: tuple[EncoderResult, ...]
    latency: LatencyResult
    frames: int
    repeats: int

    def payload(self) -> dict[str, Any]:
        return results_dict(self.results, self.latency)

    def table(self) -> Table:
        """Throughput, baseline, ratio and mesh CPU per size, then the gRPC latency."""
        title = (
            f"Encoder benchmark: {FRAME_RATE} fps, GOP {GOP}, preset {PRESET}, mesh of 3"
            f" neighbours, mesh hot path {hot_path.describe()}; median of {self.repeats} runs"
            f" × {self.frames} frames, no pacing"
        )
        table = results_table(
            title,
            ("measurement", "size", "value", "spread", "note"),
            left={"measurement", "size", "note"},
        )
        period_ms = FRAME_RATE.period * 1e3
        for r in self.results:
            size = f"{r.size.name} {r.size.bitrate_kbps} kbps"
            ours, theirs = Spread.of(r.ours_fps), Spread.of(r.ffmpeg_fps)
            table.add_row(
                "ours: decode + full path, mesh on",
                size,
                f"{ours.median:,.0f} fps/CPU-s",
                _spread(r.ours_fps),
                f"wall {Spread.of(r.ours_wall_fps).median:,.0f} fps; wall ms/frame: "
                + ", ".join(f"{k} {v:.2f}" for k, v in r.parts_ms.items()),
            )
            table.add_row(
                "ffmpeg CLI, same stream",
                size,
                f"{theirs.median:,.0f} fps/CPU-s",
                _spread(r.ffmpeg_fps),
                f"wall {Spread.of(r.ffmpeg_wall_fps).median:,.0f} fps; same libx264 settings;"
                " decoder and encoder 1 thread each; one context (no per-GOP restart: ours alone)",
            )
            table.add_row(
                "ours / ffmpeg",
                size,
                f"{Spread.of(r.ratios).median:.2f}×",
                _spread(r.ratios, 2, "×"),
                f"per CPU-second, per pair of alternating runs (wall:"
                f" {Spread.of(r.wall_ratios).median:.2f}×)",
            )
            table.add_row(
                "mesh protocol CPU per frame",
                size,
                f"{r.mesh_us_median:,.0f} µs",
                f"mean {r.mesh_us_mean:,.0f}, p99 {r.mesh_us_p99:,.0f}",
                f"{r.mesh_share:.2%} of the {period_ms:.1f} ms frame period; engine steps,"
                " ESP→proto once (×3 when it echoes), check+proto→ESP+EspReceived ×3",
            )
            table.add_section()
        latency = self.latency
        table.add_row(
            "ESP send→receive, gRPC",
            "127.0.0.1",
            f"p50 {latency.p50_ms:.2f} ms",
            f"p99 {latency.p99_ms:.2f}, max {latency.max_ms:.2f} ms",
            f"{latency.received}/{latency.sent} ESPs, {FRAME_RATE.fps:g}/s each way;"
            " both nodes in one event loop, one host clock",
        )
        cpus = machine()["cpus"]
        table.caption = (
            "Both decode the same H.264 MPEG-TS file of the test pattern. Ours: demux + decode"
            " (PyAV) + the ingest's picture conversion (named by its timestamp), engine steps,"
            " encode (fresh libx264 context per GOP), segment files, ESP→proto for 3"
            " neighbours and their ESPs checked and fed back (building them is the"
            " neighbours' work, left out). CPU time: ours the process's, ffmpeg's from its"
            f" -benchmark utime + stime. {cpus} CPUs. {_versions(self.results)}"
        )
        return table


def run_encoder_bench(
    sizes: Sequence[EncoderSize],
    frames: int,
    repeats: int,
    esps: int,
    *,
    progress: Progress = quiet,
) -> EncoderBench:
    """:func:`measure_encoder` at every size, then :func:`measure_latency` with ``esps`` ESPs.

    Raises:
        BenchError: ffmpeg is missing or a measurement failed.
    """
    ffmpeg_binary()
    results = [measure_encoder(size, frames, repeats, progress=progress) for size in sizes]
    progress(f"ESP latency: {esps} ESPs each way over gRPC at {FRAME_RATE.fps:g}/s ...")
    latency = measure_latency(esps)
    return EncoderBench(tuple(results), latency, frames, repeats)
