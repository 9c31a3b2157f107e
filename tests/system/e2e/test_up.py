"""``meshenc up`` as a user runs it: a real subprocess starting real etcd, registry replicas,
the manager and encoders, judged afterwards from the files it left (and by ``meshenc verify``,
also a subprocess), and checked to leave no process behind. The faulted run is the session's
(conftest), which test_player.py judges as a viewer."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from meshenc.local.launcher import pid_alive, read_pids
from meshenc.report.recorder import read_events
from meshenc.report.verify import picture_size, verify
from services.encoder.media.segments import segment_number

from .conftest import CHANGED_SIZE
from .support import MESHENC, UpRun, left_behind, meshenc_up

pytestmark = pytest.mark.slow


def test_up_stays_locked_through_a_kill_and_a_join_and_leaves_nothing_running(
    faulted_run: UpRun,
) -> None:
    out, output = faulted_run.out, faulted_run.output
    assert faulted_run.returncode == 0, output

    started = {name: pid for name, pid in read_pids(out)}
    assert {"etcd", "origin", "registry-0", "e0", "e1", "e2", "e3"} <= set(started), started
    assert not left_behind(out), "processes left behind"

    # What a newcomer is told to run while the mesh is up: with the operator's certificate.
    assert "meshenc status --encoders 127.0.0.1:" in output
    assert f"grpcurl -cacert {out / 'certs' / 'ca.crt'} -cert " in output
    assert "MESHENC_TLS_CERT=" in output and "operator.crt" in output

    # Every service ran with mutual TLS, with the certificates the run made.
    for name in ("registry-0", "manager", "e0", "e1", "e2", "e3"):
        log = (out / "logs" / f"{name}.log").read_text(errors="replace")
        assert "(mutual TLS)" in log and "--tls-cert" in log, name

    events = read_events(out / "events.jsonl")
    lifecycle = Counter(e["kind"] for e in events.lifecycle())
    assert lifecycle["started"] == 3 and lifecycle["joined"] == 1
    assert events.leaders(), "no leader election was recorded"
    kill, *also = [e for e in events.lifecycle() if e["kind"] == "killed"]
    killed = kill["encoder"]
    leaders_before = [e["leader"] for e in events.leaders() if e["t"] <= kill["t"]]
    assert leaders_before and killed == leaders_before[-1], "the leader should be killed"

    summary = json.loads((out / "summary.json").read_text())
    print(summary["line"])
    if also:
        # The browser's redundant player was on another encoder than the leader (the lead
        # moved after it started): that one was killed too, at once (docs/demo.md).
        (second,) = also
        assert second["t"] - kill["t"] < 1.0 and second["encoder"] != killed
        assert summary["redundant"]["failover"]["killed"] == second["encoder"]
    assert summary["encoder_count"] == 4
    assert summary["judged_segments"] >= 10
    assert summary["locked"], summary["line"]
    assert summary["misaligned_frames"] == 0
    (failover,) = summary["failovers"]
    assert failover["killed"] == killed and failover["ms"] is not None
    (join,) = summary["joins"]
    assert join["encoder"] == "e3" and join["ms"] is not None

    # The operator's size change: every encoder that wrote the segment it was agreed for and
    # the one before took the new size exactly there (from their decoded pictures); the
    # joiner, started after it, writes the new size too (its segments agreed, above).
    (switch,) = summary["size_switches"]
    print(switch["line"])
    assert tuple(switch["size"]) == CHANGED_SIZE
    assert len(switch["on_time"]) >= 2 and all(switch["on_time"].values()), switch
    joined = sorted((out / "e3").glob("seg-*.ts"))
    assert joined and picture_size(joined[-1]) == CHANGED_SIZE

    verdict = subprocess.run(
        [*MESHENC, "verify", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    checked = json.loads(verdict.stdout)
    assert checked["locked"] is True
    assert checked["judged_segments"] == summary["judged_segments"]
    assert checked["agreed_segments"] == summary["agreed_segments"]

    # What the origin received: only segments the encoders could vouch for, each one the
    # bytes every locked encoder wrote (the reference), and a playlist listing served segments.
    served = sorted((out / "origin").glob("seg-*.ts"))
    assert len(served) >= 8, "the origin received too few segments"
    references = {s.segment: s.reference for s in verify([out]).segments}
    for path in served:
        number = segment_number(path.name)
        assert number is not None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert references.get(number) == digest, f"{path.name} on the origin is not the reference"
    listed = [
        line
        for line in (out / "origin" / "index.m3u8").read_text().splitlines()
        if line.startswith("seg-")
    ]
    assert listed and all((out / "origin" / name).is_file() for name in listed)

    for name in ("e0", "e1", "e2", "e3"):
        assert (out / name / "index.m3u8").is_file()
    assert (out / "report.html").is_file()
    assert len(list((out / "plots").glob("*.png"))) >= 4


def test_ctrl_c_stops_up_and_everything_it_started(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("--encoders", "2", "--no-faults", "--registries", "1", "--duration", "600")
    with meshenc_up(out, *args, "--size", "160x96", "--gop", "15", "--insecure") as up:
        # Until both encoders have written a whole segment (half a second each).
        deadline = time.monotonic() + 60.0
        while not all(list((out / name).glob("*.ts")) for name in ("e0", "e1")):
            assert up.poll() is None, up.communicate()[0]
            assert time.monotonic() < deadline, "the encoders did not start"
            time.sleep(0.2)
        running = [(n, p) for n, p in read_pids(out) if pid_alive(p)]
        assert {"etcd", "registry-0", "e0", "e1"} <= {n for n, _ in running}
        # Ctrl-C in a terminal: SIGINT to the foreground process group.
        os.killpg(up.pid, signal.SIGINT)
        output = up.communicate(timeout=90.0)[0]
    assert up.returncode == 130, output
    assert "stop requested" in output
    assert not left_behind(out), "processes left behind"
    # The run still ends in order: each encoder stopped, and the report is written.
    lifecycle = read_events(out / "events.jsonl").lifecycle()
    stopped = {e["encoder"] for e in lifecycle if e["kind"] == "stopped"}
    assert stopped == {"e0", "e1"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoders"] == ["e0", "e1"]
    # --insecure: plaintext everywhere, no certificates made.
    assert "grpcurl -plaintext 127.0.0.1:" in output
    assert not (out / "certs").exists()
    for name in ("registry-0", "e0", "e1"):
        log = (out / "logs" / f"{name}.log").read_text(errors="replace")
        assert "(plaintext)" in log and "--insecure" in log, name
