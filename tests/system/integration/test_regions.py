"""Six real encoder processes in three "regions" over slow links; one region cut off and back.

Each region is two encoders joined by a direct loopback link. Every two regions are joined by
two bridges, each from a different encoder on either side, and every bridge passes through a
``DelayRelay`` (a user-space TCP relay: 40-150 ms one way, 5 ms of jitter, order kept; there is
no netem here). All six ingest one live stream, each over its own path, on its own drifting
clock. Once the mesh has locked, region 2 loses all four of its bridges for ``CUT_S`` seconds
(a partition: nothing forwarded, nothing closed), then gets them back. The verdict comes from
the segment files: every segment after each encoder's lock-in is byte-identical on all six,
through the cut and after it — each side holds the timeline by prediction alone while apart.
The world and its run are ``meshenc.bench.regions`` (``meshenc bench regions`` runs the cut
for a minute, or as long as asked).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from meshenc.bench.live import spawn_logged
from meshenc.bench.regions import FAULTS, encoder_command, run_region_cut
from meshenc.local.etcd import EtcdProcess
from meshenc.local.ports import free_ports
from meshenc.local.relay import DelayRelay
from meshenc.report.verify import verify
from tests.conftest import LiveSource

DURATION = 56.0
LOCK_IN_SEGMENTS = 2
#: Region 2 is cut off from CUT_AT to CUT_AT + CUT_S seconds after the encoders started (the
#: minute-long cut is a benchmark: ``meshenc bench regions``).
CUT_AT = 16.0
CUT_S = 20.0


@pytest.mark.slow
def test_regions_over_slow_links_stay_identical_through_a_cut(tmp_path: Path) -> None:
    run = run_region_cut(tmp_path, duration=DURATION, cut_at=CUT_AT, cut_s=CUT_S)
    logs = {p.name: p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log")}
    assert run.exit_codes == (0,) * len(FAULTS), logs
    # The cut spans segments CUT_AT/2 .. (CUT_AT + CUT_S)/2; enough on both sides of it.
    assert len(run.judged) >= 20, f"too few segments on all six: {len(run.judged)}"
    print(f"{len(run.judged) - len(run.differing)} of {len(run.judged)} identical on all six")
    assert not run.differing, run.differing


FAR_ETCD_S = 26.0
#: One-way delay (s) between the encoders and an etcd in another region.
ETCD_DELAY_S = 0.15


@pytest.mark.slow
def test_an_etcd_far_away_does_not_slow_the_frame_path(
    tmp_path: Path, live_source: LiveSource, etcd: EtcdProcess
) -> None:
    """Segment leaders are elected in an etcd 150 ms away (each way, through a relay): the
    election works, no encoder falls behind its input, and the outputs stay identical — etcd's
    latency is off the frame path."""
    names = ["e0", "e1", "e2"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    sources = live_source.start([FAULTS[name][2] for name in names])
    host, port = etcd.endpoint.removeprefix("http://").rsplit(":", 1)
    processes: list[subprocess.Popen[bytes]] = []
    with DelayRelay((host, int(port)), ETCD_DELAY_S, jitter_s=0.005) as relay:
        relay.start()
        far = f"http://127.0.0.1:{relay.port}"
        try:
            for name, source in zip(names, sources, strict=True):
                peers = {p: f"127.0.0.1:{ports[p]}" for p in names if p != name}
                command = encoder_command(
                    tmp_path, name, ports[name], peers, source, FAR_ETCD_S, "--etcd", far
                )
                processes.append(spawn_logged(command, tmp_path / f"{name}.log"))
            codes = _finish(processes, FAR_ETCD_S + 30.0)
        finally:
            _kill(processes)
    logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in names}
    assert codes == [0] * len(names), {n: log[-2000:] for n, log in logs.items()}
    assert any(" leader e" in log for log in logs.values()), "no leader was elected"
    for name, log in logs.items():
        assert f"{name}: " in log and " 0 skipped" in log, log[-1000:]
    result = verify([tmp_path / name for name in names], lock_in=LOCK_IN_SEGMENTS)
    judged = [
        s
        for s in result.segments
        if len(s.copies) == len(names) and not any(c.lock_in for c in s.copies)
    ]
    assert len(judged) >= 8, f"too few segments on all three: {len(judged)}"
    differing = {s.segment: [c.encoder for c in s.copies if not c.matches] for s in judged}
    differing = {segment: who for segment, who in differing.items() if who}
    corrections = {
        name: [line for line in log.splitlines() if " correction " in line]
        for name, log in logs.items()
    }
    assert not differing, (differing, corrections)


def _kill(processes: list[subprocess.Popen[bytes]]) -> None:
    """Whatever is still running when a test ends, whatever ended it."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _finish(processes: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Wait for every encoder to end on its own (--duration); SIGTERM what is still running."""
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            codes.append(process.wait(timeout=10.0))
    return codes
