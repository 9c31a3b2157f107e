"""Three real encoder processes fed one live network stream of ordinary content, for 60 s.

A clip made for the purpose (hard cuts, 3 s of black, a 3 s freeze, a still slate, a fade,
low-motion noise, a tone: ``meshenc clip``) is played live and looped by ``meshenc source``
over UDP, to every encoder over its own path (different delay, jitter and swing), and the
encoders start 5 s apart, each on its own drifting clock. With the mesh on, every segment after
each encoder's lock-in (its first two segments) must be byte-identical on all three, audio
included; with the mesh off (same clocks, same paths) they must not be. Midway, an operator asks
one encoder of the mesh for a much lower bitrate and a smaller picture: the change must take
effect on all three at the same segment (still byte-identical, every picture before it decoded
at the started size and every one from it on at the new one, and smaller in bytes). The
verdict comes from the segment files on disk, never from the encoders' claims. Both meshes run
at the same time, from one source, to keep the suite short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import grpc
import pytest

from meshenc.core.timecode import FrameRate
from meshenc.local.ports import free_ports
from meshenc.report.verify import SegmentCheck, verify
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from services.source.clip import write_test_clip

DURATION = 62.0
GOP = 60  # 2 s segments at 30 fps
#: Segments (the first, partial one included) allowed for lock-in; every later one must be
#: identical.
LOCK_IN_SEGMENTS = 2
#: The clip at 320x180 needs several hundred kbit/s; this is far below it.
LOW_BITRATE_KBPS = 100
#: The encoders' size, and the smaller one asked for with it.
STARTED_SIZE = (320, 180)
CHANGED_SIZE = (192, 108)
#: When (s after the first encoder started) the operator asks for them.
CHANGE_AT = 25.0
#: Encoders start this far apart.
STAGGER = 5.0
#: Per encoder: injected drift (ppm), clock offset (ms), and its path from the source.
FAULTS = {
    "a": (80.0, 40.0, "delay_ms=20&jitter_ms=2"),
    "b": (-60.0, -30.0, "delay_ms=120&jitter_ms=4&swing_ms=8&swing_period_s=60"),
    "c": (0.0, 0.0, "delay_ms=280&jitter_ms=6&swing_ms=5&swing_period_s=45"),
}


def _start_source(out: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    """The clip, live and looped, to every encoder of both meshes over its path."""
    clip = out / "clip.ts"
    write_test_clip(clip, seconds=30.0, frame_rate=FrameRate(30), width=320, height=180)
    paths = [path for _, _, path in FAULTS.values()] * 2
    command = [sys.executable, "-m", "meshenc", "source", "--input", str(clip), "--loop"]
    for port, (i, path) in zip(ports, enumerate(paths), strict=True):
        command += ["--to", f"udp://127.0.0.1:{port}?{path}&seed={i}"]
    with (out / "source.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _start_encoder(
    out: Path, name: str, ports: dict[str, int], input_port: int, *, sync: bool, duration: float
) -> subprocess.Popen[bytes]:
    drift, offset, _ = FAULTS[name]
    peers = ",".join(f"{p}=127.0.0.1:{ports[p]}" for p in FAULTS if p != name)
    command = [
        sys.executable, "-m", "meshenc", "encoder", "--insecure",
        "--id", name,
        "--listen", f"127.0.0.1:{ports[name]}",
        "--peers", peers,
        "--out", str(out / name),
        "--source", f"udp://127.0.0.1:{input_port}",
        "--size", "{}x{}".format(*STARTED_SIZE),
        "--gop", str(GOP),
        "--duration", str(duration),
        "--drift-ppm", str(drift),
        "--offset-ms", str(offset),
        "--seed", str(ord(name)),
    ]  # fmt: skip
    if not sync:
        command.append("--no-sync")
    with (out / f"{name}.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _ask_for_parameters(port: int, bitrate_kbps: int, size: tuple[int, int]) -> int:
    """What an operator's tool does: SetParameters on one encoder; the effective segment."""
    request = mesh_pb2.SetParametersRequest(
        bitrate_kbps=bitrate_kbps, width=size[0], height=size[1]
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = mesh_pb2_grpc.EncoderMeshStub(channel).SetParameters(request, timeout=5.0)
    return int(answer.effective_segment)


def _wait(processes: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in processes:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    return codes


@pytest.mark.slow
def test_three_encoders_write_identical_segments_only_with_the_mesh(tmp_path: Path) -> None:
    on, off = tmp_path / "mesh-on", tmp_path / "mesh-off"
    on.mkdir()
    off.mkdir()
    names = list(FAULTS)
    grpc_on = dict(zip(names, free_ports(3), strict=True))
    grpc_off = dict(zip(names, free_ports(3), strict=True))
    inputs = free_ports(6)
    source = _start_source(tmp_path, inputs)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = time.monotonic()
        for i, name in enumerate(names):
            if i:
                time.sleep(started + i * STAGGER - time.monotonic())
            duration = DURATION - i * STAGGER
            processes.append(
                _start_encoder(on, name, grpc_on, inputs[i], sync=True, duration=duration)
            )
            processes.append(
                _start_encoder(off, name, grpc_off, inputs[3 + i], sync=False, duration=duration)
            )
        time.sleep(max(0.0, started + CHANGE_AT - time.monotonic()))
        effective = _ask_for_parameters(grpc_on["a"], LOW_BITRATE_KBPS, CHANGED_SIZE)
    finally:
        codes = _wait(processes, DURATION + 30.0)
        source.send_signal(signal.SIGTERM)
        _wait([source], 10.0)
    logs = {p.name: p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*/*.log")}
    assert codes == [0] * len(processes), logs

    on_result = verify([on / name for name in FAULTS], lock_in=LOCK_IN_SEGMENTS)
    common = [s for s in on_result.segments if len(s.copies) == len(FAULTS)]
    assert len(common) >= 20, f"too few segments written: {len(common)}"
    # Each encoder's first segment (partial: it starts mid-GOP) and the next may differ while
    # it locks in; from its third on, every segment must be identical.
    after_lock = [s for s in on_result.segments if s.judged]
    differing = [s for s in after_lock if not s.agreed]
    identical = len(after_lock) - len(differing)
    print(f"mesh on: {identical} of {len(after_lock)} segments after lock byte-identical")
    assert not differing, _explain(on, differing)
    a_output = next(e for e in on_result.encoders if e.name == "a")
    # The clip's audio is in every judged segment, re-timed alike (the bytes are equal).
    for check in [s for s in after_lock if s.segment in a_output.digests][::4]:
        with av.open(str(a_output.path(check.segment))) as container:
            assert container.streams.audio, f"segment {check.segment} has no audio"
            sound = container.streams.audio[0]
            assert sum(1 for p in container.demux(sound) if p.size) > 30

    # The change: every encoder switched at the agreed segment, no earlier, no later (the
    # segments are byte-identical, so one encoder's pictures are every encoder's).
    for check in [s for s in after_lock if s.segment in a_output.digests]:
        pictures = _picture_sizes(a_output.path(check.segment))
        expected = CHANGED_SIZE if check.segment >= effective else STARTED_SIZE
        assert pictures == {expected}, (check.segment, effective, pictures)
    sizes = {
        s.segment: _video_bytes(a_output.path(s.segment))
        for s in after_lock
        if s.segment in a_output.digests
    }
    before = [size for number, size in sizes.items() if number < effective]
    after = [size for number, size in sizes.items() if number >= effective]
    print(f"bitrate change at segment {effective}: video {before} -> {after} bytes")
    assert len(before) >= 3 and len(after) >= 3
    # libx264's VBV holds a segment near the bitrate: twice it is a generous bound. The clip's
    # black, frozen and still stretches are small at any bitrate, so only its moving scenes
    # show the old rate: several segments before the change must exceed the new bound.
    bound = 2 * LOW_BITRATE_KBPS * 1000 / 8 * GOP / 30
    assert max(after) <= bound
    assert sum(size > bound for size in before) >= 3

    off_result = verify([off / name for name in FAULTS], lock_in=0)
    off_common = [s for s in off_result.segments if len(s.copies) == len(FAULTS)]
    off_identical = [s for s in off_common if s.identical]
    print(f"mesh off: {len(off_identical)} of {len(off_common)} segments byte-identical")
    assert len(off_identical) < len(off_common) // 2

    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert not leftovers, leftovers
    assert all(not os.path.exists(on / n / "index.m3u8.tmp") for n in FAULTS)


def _picture_sizes(path: Path) -> set[tuple[int, int]]:
    """The sizes of a segment's pictures as a decoder sees them."""
    with av.open(str(path)) as container:
        return {(f.width, f.height) for f in container.decode(container.streams.video[0])}


def _video_bytes(path: Path) -> int:
    """Bytes of the video access units in one segment (the audio passes through unchanged)."""
    with av.open(str(path)) as container:
        return sum(p.size for p in container.demux(container.streams.video[0]))


def _explain(out: Path, differing: list[SegmentCheck]) -> str:
    """Which encoder differs on which segment, and what each encoder's log says it did."""
    lines = [f"segments differ after lock-in: {[s.segment for s in differing]}"]
    for check in differing:
        lines.append(
            f"  {check.segment}: "
            + ", ".join(
                f"{c.encoder}={c.digest[:8]}{'' if c.matches else '*'}" for c in check.copies
            )
        )
    for name in FAULTS:
        log = (out / f"{name}.log").read_text(errors="replace").splitlines()
        notable = [
            line
            for line in log
            if any(
                word in line for word in ("correction", "skipped", "agreed", "expired", "rejected")
            )
        ]
        lines.append(f"  {name}: " + "\n    ".join(notable[-15:]))
    return "\n".join(lines)
