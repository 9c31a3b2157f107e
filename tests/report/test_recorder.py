"""The run recorder over real gRPC, and the whole chain on real encoder processes.

Two kinds of peers:

- ``StandInEncoder``: a stand-in EncoderMesh server (real grpc.aio server on 127.0.0.1) whose
  GetState answers are set by the test, because a real encoder cannot be made to answer as
  another encoder, report an unknown correction kind or repeat chosen corrections on cue. The
  tests using it say so in their names.
- Real encoder processes (``python -m meshenc encoder``, 160x96, 1 s segments): two from the
  start and one that joins, polled by the recorder for the whole run; the report is then built
  from their folders and events.jsonl and checked against a count made here from the files.

Every test runs its own event loop under a timeout and stops what it started; processes are
killed in ``finally`` if they outlive their deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pydantic
import pytest

from meshenc.local.ports import free_ports
from meshenc.report import PLOTS_DIR, REPORT_NAME, SUMMARY_NAME, write_report
from meshenc.report.recorder import EVENTS_NAME, Recorder, read_events
from meshenc.report.verify import count_frames
from meshenc.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc
from services.common.grpc_server import GrpcServer
from services.encoder.media.segments import ASIDE_PREFIX, segment_name
from services.encoder.mesh import SERVICE_NAME
from tests.conftest import LiveSource

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class StandInEncoder(mesh_pb2_grpc.EncoderMeshServicer):
    """Answers GetState with whatever ``state`` the test put there."""

    def __init__(self, encoder_id: str) -> None:
        self.state = mesh_pb2.EncoderState(
            encoder_id=encoder_id,
            frame_rate=common_pb2.FrameRate(num=30, den=1),
            gop_length=30,
            timecode=30 * 1_000,
            segment_number=1_000,
            error_ns=250_000,
            predicted_error_ns=300_000,
            leader_id=encoder_id,
            segment_id="g1",
        )
        self.state.neighbours.add(neighbour_id="n1", connected=True, measured_deviation_ns=7)
        self.state.corrections["slew"] = 0
        self.server = GrpcServer(
            {SERVICE_NAME: lambda s: mesh_pb2_grpc.add_EncoderMeshServicer_to_server(self, s)}
        )

    async def GetState(  # noqa: N802 -- the gRPC method's name
        self, request: mesh_pb2.GetStateRequest, context: Any
    ) -> mesh_pb2.EncoderState:
        return self.state

    def Exchange(  # noqa: N802
        self, request_iterator: Any, context: Any
    ) -> Iterator[mesh_pb2.MeshMessage]:
        return iter(())  # a stand-in has no mesh

    async def SetParameters(self, request: Any, context: Any) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a stand-in has no mesh")

    async def start(self) -> str:
        return f"127.0.0.1:{await self.server.start('127.0.0.1:0')}"

    def correct(self, at_ns: int, kind: int = common_pb2.CORRECTION_KIND_SLEW) -> None:
        self.state.recent_corrections.add(at_ns=at_ns, kind=kind, shift_ns=-1_000_000)


def test_recorder_records_each_correction_once_from_a_standin_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        encoder = StandInEncoder("s1")
        address = await encoder.start()
        try:
            async with Recorder(tmp_path, interval=60.0) as recorder:
                recorder.add("s1", address)
                encoder.correct(1_700_000_000_000_000_000)
                assert await recorder.poll_once() == 1
                encoder.correct(1_700_000_000_500_000_000)
                encoder.correct(1_700_000_000_600_000_000, kind=99)  # not a known kind
                assert await recorder.poll_once() == 1
                assert await recorder.poll_once() == 1  # repeats everything: nothing new
                recorder.remove("s1")
                recorder.add("s1", address)  # back again: what it repeats is still not new
                assert await recorder.poll_once() == 1
        finally:
            await encoder.server.stop(0)

    with caplog.at_level(logging.WARNING, logger="meshenc.recorder"):
        run(scenario())
    log = read_events(tmp_path / EVENTS_NAME)
    assert log.skipped_lines == 0
    assert [e["kind"] for e in log.events if e["kind"] != "state"] == ["correction"] * 2
    assert [c["at"] for c in log.corrections()] == [1_700_000_000.0, 1_700_000_000.5]
    assert len(log.states()) == 4
    first = log.states()[0]
    assert (first["encoder"], first["leader"], first["segment"]) == ("s1", "s1", "g1")
    assert (first["gop"], first["fps"], first["error_ns"]) == (30, 30.0, 250_000)
    assert first["neighbours"] == [
        {"id": "n1", "measured_ns": 7, "predicted_ns": 0, "connected": True}
    ]
    assert "unknown kind 99" in caplog.text


def test_recorder_ignores_impostor_and_unreachable_standin_encoders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        impostor = StandInEncoder("someone-else")
        real = StandInEncoder("s2")
        impostor_address, real_address = await impostor.start(), await real.start()
        (nobody,) = free_ports(1)
        try:
            async with Recorder(tmp_path, interval=60.0, rpc_timeout=0.3) as recorder:
                recorder.add("s1", impostor_address)
                recorder.add("ghost", f"127.0.0.1:{nobody}")
                recorder.add("s2", impostor_address)  # the wrong place
                started = time.monotonic()
                assert await recorder.poll_once() == 0
                assert time.monotonic() - started < 5.0  # bounded by rpc_timeout, not hung
                recorder.add("s2", real_address)  # moved (a restart on another port)
                assert await recorder.poll_once() == 1  # only s2 counts
                recorder.remove("s2")
                recorder.remove("never-added")
                assert await recorder.poll_once() == 0
                assert set(recorder.encoders) == {"s1", "ghost"}
        finally:
            await impostor.server.stop(0)
            await real.server.stop(0)

    with caplog.at_level(logging.WARNING, logger="meshenc.recorder"):
        run(scenario())
    states = read_events(tmp_path / EVENTS_NAME).states()
    assert [s["encoder"] for s in states] == ["s2"]
    assert "answers as 'someone-else'" in caplog.text


class _SilentStandIn(StandInEncoder):
    """A stand-in whose GetState never answers within the test: its call stays in flight."""

    async def GetState(  # noqa: N802 -- the gRPC method's name
        self, request: mesh_pb2.GetStateRequest, context: Any
    ) -> mesh_pb2.EncoderState:
        await asyncio.sleep(60.0)
        return self.state


def test_recorder_keeps_polling_after_a_standin_encoder_is_removed_while_asked(
    tmp_path: Path,
) -> None:
    """A launcher removes a killed encoder whatever the recorder is doing: here while a round
    waits on it. Its channel closes under the call, and the round (and every round after it)
    must go on with the others. Before, the call's CancelledError ended the polling task, and
    nothing more was recorded for the rest of the run."""

    async def scenario() -> float:
        silent, answering = _SilentStandIn("gone"), StandInEncoder("s1")
        silent_address, address = await silent.start(), await answering.start()
        try:
            async with Recorder(tmp_path, interval=0.1, rpc_timeout=10.0) as recorder:
                recorder.add("gone", silent_address)
                recorder.add("s1", address)
                await asyncio.sleep(0.3)  # the first round waits on "gone"
                removed = time.time()
                recorder.remove("gone")
                await asyncio.sleep(1.0)
            return removed
        finally:
            await silent.server.stop(0)
            await answering.server.stop(0)

    removed = run(scenario())
    states = read_events(tmp_path / EVENTS_NAME).states()
    assert {s["encoder"] for s in states} == {"s1"}
    assert sum(s["t"] > removed for s in states) >= 3, states  # rounds every 0.1 s went on


def test_recorder_polls_in_the_background_and_keeps_launcher_events_in_order(
    tmp_path: Path,
) -> None:
    async def scenario() -> int:
        encoder = StandInEncoder("s1")
        address = await encoder.start()
        try:
            async with Recorder(tmp_path, interval=0.05) as recorder:
                recorder.lifecycle("started", "s1", t=100.0)
                recorder.add("s1", address)
                deadline = time.monotonic() + 10.0
                while recorder.rounds < 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                recorder.leader("g1", "s1", revision=7)
                recorder.lifecycle("killed", "s1")
                with pytest.raises(pydantic.ValidationError):
                    recorder.record({"t": 1.0, "kind": "killed"})  # type: ignore[arg-type]
                return recorder.rounds
        finally:
            await encoder.server.stop(0)

    rounds = run(scenario())
    assert rounds >= 4
    log = read_events(tmp_path / EVENTS_NAME)
    kinds = [e["kind"] for e in log.events]
    assert kinds[0] == "started" and kinds.count("state") >= 4
    assert kinds.index("killed") == kinds.index("leader") + 1  # lines never interleave
    assert log.leaders()[0]["revision"] == 7
    assert log.skipped_lines == 0


# -- real encoders ----------------------------------------------------------------------------

GOP = 30  # 1 s segments at 30 fps
DURATION = 11.0
JOIN_AFTER = 3.0
#: Per encoder: injected drift (ppm), clock offset (ms), path from the live source.
FAULTS = {
    "a": (80.0, 40.0, "delay_ms=20&jitter_ms=1"),
    "b": (-60.0, -30.0, "delay_ms=60&jitter_ms=1"),
    "c": (20.0, 15.0, "delay_ms=40&jitter_ms=1"),
}


def _encoder(
    name: str, ports: dict[str, int], out: Path, duration: float, source: str
) -> list[str]:
    drift, offset, _ = FAULTS[name]
    peers = ",".join(f"{p}=127.0.0.1:{ports[p]}" for p in FAULTS if p != name)
    return [
        sys.executable, "-m", "meshenc", "encoder", "--insecure",
        "--id", name,
        "--listen", f"127.0.0.1:{ports[name]}",
        "--peers", peers,
        "--out", str(out / name),
        "--size", "160x96",
        "--gop", str(GOP),
        "--duration", str(duration),
        "--drift-ppm", str(drift),
        "--offset-ms", str(offset),
        "--source", source,
    ]  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


def _digests(folder: Path) -> dict[str, str]:
    """Every segment the encoder wrote, by its shared name, also those it wrote aside."""
    return {
        p.name.removeprefix(ASIDE_PREFIX): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.glob("*seg-*.ts")
    }


@pytest.mark.slow
def test_recorder_and_report_on_real_encoders(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], live_source: LiveSource
) -> None:
    ports = dict(zip(FAULTS, free_ports(len(FAULTS)), strict=True))
    inputs = dict(zip(FAULTS, live_source.start([p for *_, p in FAULTS.values()]), strict=True))

    def launch(name: str, duration: float) -> None:
        with (tmp_path / f"{name}.log").open("wb") as log:
            command = _encoder(name, ports, tmp_path, duration, inputs[name])
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))

    async def scenario() -> None:
        async with Recorder(tmp_path) as recorder:
            for name in ("a", "b"):
                launch(name, DURATION)
                recorder.add(name, f"127.0.0.1:{ports[name]}")
                recorder.lifecycle("started", name)
            await asyncio.sleep(JOIN_AFTER)
            launch("c", DURATION - JOIN_AFTER)
            recorder.add("c", f"127.0.0.1:{ports['c']}")
            recorder.lifecycle("joined", "c")
            deadline = time.monotonic() + DURATION + 20.0
            while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            for name in FAULTS:
                recorder.lifecycle("stopped", name)

    run(scenario(), timeout=DURATION + 30.0)
    logs = {p.name: p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("*.log")}
    assert [p.returncode for p in processes] == [0, 0, 0], logs

    # What the recorder wrote.
    log = read_events(tmp_path / EVENTS_NAME)
    assert log.skipped_lines == 0
    lifecycle = [(e["kind"], e["encoder"]) for e in log.lifecycle()]
    assert lifecycle[:3] == [("started", "a"), ("started", "b"), ("joined", "c")]
    for name in FAULTS:
        states = [s for s in log.states() if s["encoder"] == name]
        assert len(states) >= 3, f"{name}: {len(states)} answers recorded"
        timecodes = [s["timecode"] for s in states]
        assert timecodes == sorted(timecodes) and timecodes[-1] > timecodes[0]
        assert all(s["segment_number"] == s["timecode"] // GOP for s in states if s["timecode"])
        assert {(s["gop"], s["fps"]) for s in states} == {(GOP, 30.0)}
        assert {n["id"] for s in states for n in s["neighbours"]} <= set(FAULTS) - {name}
        # Each correction recorded once: never more records than the encoder applied.
        recorded = sum(1 for c in log.corrections() if c["encoder"] == name)
        applied = sum(states[-1]["corrections"].values())
        assert recorded <= applied, (name, recorded, applied)
        assert recorded > 0 or applied == 0

    # The report, checked against a count made here from the files (lock-in 0, so every
    # segment with two copies or more is judged).
    summary = write_report(tmp_path, lock_in=0)
    data = json.loads((tmp_path / SUMMARY_NAME).read_text())
    digests = {name: _digests(tmp_path / name) for name in FAULTS}
    numbers = set().union(*digests.values())
    assert data["encoders"] == sorted(FAULTS)
    assert data["segments"] == len(numbers)
    shared = [s for s in numbers if sum(s in d for d in digests.values()) >= 2]
    assert data["judged_segments"] == len(shared)
    misaligned_copies = 0
    agreed = 0
    for number in shared:
        groups = Counter(d[number] for d in digests.values() if number in d)
        misaligned_copies += sum(groups.values()) - max(groups.values())
        agreed += len(groups) == 1
    assert data["agreed_segments"] == agreed
    assert data["misaligned_frames"] == misaligned_copies * GOP  # whole GOPs, by the writer
    assert count_frames(min((tmp_path / "a").glob("*seg-*.ts"))) == GOP
    assert data["line"] == summary.line
    (join,) = data["joins"]
    if join["first_agreed_segment"] is not None:
        name = segment_name(join["first_agreed_segment"])
        assert digests["c"][name] in {digests["a"].get(name), digests["b"].get(name)}
    print(summary.line)

    page = (tmp_path / REPORT_NAME).read_text()
    for png in sorted((tmp_path / PLOTS_DIR).glob("*.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert f'src="{PLOTS_DIR}/{png.name}"' in page
    assert len(list((tmp_path / PLOTS_DIR).glob("*.png"))) == 4
