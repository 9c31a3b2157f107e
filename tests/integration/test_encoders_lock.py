"""Three real encoder processes on 127.0.0.1, each on its own drifting clock, for 60 s.

With the mesh on, every segment after lock-in (the first two segments) must be
byte-identical on all three encoders; with the mesh off (same clocks, same ingest paths) they
must not be. Midway, an operator asks one encoder of the mesh for a much lower bitrate: the
change must take effect on all three at the same segment (still byte-identical, and smaller
from that segment on). The verdict comes from the segment files on disk, never from the
encoders' claims. Both meshes run at the same time to keep the suite short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from meshenc.local.ports import free_ports
from meshenc.local.verify import SegmentCheck, verify
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc

DURATION = 62.0
GOP = 60  # 2 s segments at 30 fps
#: Segments (the first, partial one included) allowed for lock-in; every later one must be
#: identical.
LOCK_IN_SEGMENTS = 2
#: The synthetic pattern at 320x180 needs about 400 kbit/s; this is far below it.
LOW_BITRATE_KBPS = 100
#: When (s after start) the operator asks for it.
CHANGE_AT = 25.0
#: Per encoder: injected drift (ppm), clock offset (ms), ingest delay (ms).
FAULTS = {"a": (80.0, 40.0, 20.0), "b": (-60.0, -30.0, 60.0), "c": (0.0, 0.0, 100.0)}


def _start_mesh(out: Path, *, sync: bool) -> tuple[list[subprocess.Popen[bytes]], dict[str, int]]:
    ports = dict(zip(FAULTS, free_ports(len(FAULTS)), strict=True))
    processes = []
    for name, (drift, offset, delay) in FAULTS.items():
        peers = ",".join(f"{p}=127.0.0.1:{ports[p]}" for p in FAULTS if p != name)
        command = [
            sys.executable, "-m", "meshenc", "encoder",
            "--id", name,
            "--listen", f"127.0.0.1:{ports[name]}",
            "--peers", peers,
            "--out", str(out / name),
            "--size", "320x180",
            "--gop", str(GOP),
            "--duration", str(DURATION),
            "--drift-ppm", str(drift),
            "--offset-ms", str(offset),
            "--ingest-delay-ms", str(delay),
            "--jitter-ms", "1",
            "--seed", str(ord(name)),
        ]  # fmt: skip
        if not sync:
            command.append("--no-sync")
        with (out / f"{name}.log").open("wb") as log:
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return processes, ports


def _ask_for_bitrate(port: int, bitrate_kbps: int) -> int:
    """What an operator's tool does: SetParameters on one encoder; the effective segment."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = mesh_pb2_grpc.EncoderMeshStub(channel).SetParameters(
            mesh_pb2.SetParametersRequest(bitrate_kbps=bitrate_kbps), timeout=5.0
        )
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
    with_mesh, ports = _start_mesh(on, sync=True)
    without_mesh, _ = _start_mesh(off, sync=False)
    processes = with_mesh + without_mesh
    try:
        time.sleep(CHANGE_AT)
        effective = _ask_for_bitrate(ports["a"], LOW_BITRATE_KBPS)
    finally:
        codes = _wait(processes, DURATION + 30.0)
    logs = {p.name: p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*/*.log")}
    assert codes == [0] * len(processes), logs

    on_result = verify([on / name for name in FAULTS], lock_in=LOCK_IN_SEGMENTS)
    common = [s for s in on_result.segments if len(s.copies) == len(FAULTS)]
    assert len(common) >= 25, f"too few segments written: {len(common)}"
    # The first segment (partial: the encoders start mid-GOP) and the next may differ while
    # the mesh locks in; from the third on, every segment must be identical.
    after_lock = [s for s in on_result.segments if s.judged]
    differing = [s for s in after_lock if not s.agreed]
    identical = len(after_lock) - len(differing)
    print(f"mesh on: {identical} of {len(after_lock)} segments after lock byte-identical")
    assert not differing, _explain(on, differing)

    # The bitrate change: every encoder switched at the agreed segment, no earlier, no later.
    a_output = next(e for e in on_result.encoders if e.name == "a")
    sizes = {
        s.segment: a_output.path(s.segment).stat().st_size
        for s in after_lock
        if s.segment in a_output.digests
    }
    before = [size for number, size in sizes.items() if number < effective]
    after = [size for number, size in sizes.items() if number >= effective]
    print(f"bitrate change at segment {effective}: {before} -> {after} bytes")
    assert len(before) >= 3 and len(after) >= 3
    assert max(after) < 0.6 * min(before)

    off_result = verify([off / name for name in FAULTS], lock_in=0)
    off_common = [s for s in off_result.segments if len(s.copies) == len(FAULTS)]
    off_identical = [s for s in off_common if s.identical]
    print(f"mesh off: {len(off_identical)} of {len(off_common)} segments byte-identical")
    assert len(off_identical) < len(off_common) // 2

    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert not leftovers, leftovers
    assert all(not os.path.exists(on / n / "index.m3u8.tmp") for n in FAULTS)


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
