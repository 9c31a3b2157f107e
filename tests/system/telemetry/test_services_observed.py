"""Real service processes, observed as an operator would: traces over OTLP, metrics by scraping.

Two encoders (``meshenc encoder``, small 160x96 frames, one-second segments) run on 127.0.0.1
with injected clock offsets, so that they must lock in through resync proposals and votes, as
in ``tests/system/integration/test_encoders_lock.py``. Their spans go to a real OTLP/gRPC receiver
(``tests.otlp``) named by ``OTEL_EXPORTER_OTLP_ENDPOINT``; the metrics test also runs a
registry node and a Mesh Manager (embedded actuator, on the real etcd binary) and scrapes every
process's ``/metrics`` twice over HTTP. Every process is started and stopped by the test and
killed if it overstays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from meshenc.local.etcd import EtcdProcess
from meshenc.local.ports import free_ports
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.conftest import LiveSource
from tests.otlp import OtlpReceiver, ReceivedSpan

#: Per encoder: injected clock offset (ms). 70 ms apart: two frames at 30 fps.
OFFSETS = {"a": 40.0, "b": -30.0}
DURATION = 6.0
#: How long an encoder may take beyond its duration: the last segment, the span flush.
EXIT_GRACE = 30.0

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _encoder_command(
    name: str,
    ports: dict[str, int],
    out: Path,
    duration: float,
    source: str,
    metrics: int | None = None,
) -> list[str]:
    peers = ",".join(f"{p}=127.0.0.1:{ports[p]}" for p in OFFSETS if p != name)
    command = [
        sys.executable, "-m", "meshenc", "encoder", "--insecure",
        "--id", name,
        "--listen", f"127.0.0.1:{ports[name]}",
        "--peers", peers,
        "--out", str(out / name),
        "--size", "160x96",
        "--gop", "30",
        "--duration", str(duration),
        "--offset-ms", str(OFFSETS[name]),
        "--source", source,
    ]  # fmt: skip
    if metrics is not None:
        command += ["--metrics-listen", f"127.0.0.1:{metrics}"]
    return command


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the body starts; on the way out, whatever still runs is stopped, then killed."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for process in started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start(
    processes: list[subprocess.Popen[bytes]], command: list[str], log: Path, **env: str
) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    processes.append(process)
    return process


def _logs(folder: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in folder.glob("*.log")
    )


# -- traces ---------------------------------------------------------------------------------------


def _resync_trees(spans: list[ReceivedSpan]) -> list[dict[str, list[ReceivedSpan]]]:
    """Each resync's trace, its spans grouped by name (``resync`` holds its root)."""
    trees = []
    for root in (s for s in spans if s.name == "resync"):
        tree: dict[str, list[ReceivedSpan]] = {}
        for span in spans:
            if span.trace_id == root.trace_id:
                tree.setdefault(span.name, []).append(span)
        trees.append(tree)
    return trees


@pytest.mark.slow
def test_one_resync_is_one_trace_across_two_encoders(
    tmp_path: Path, live_source: LiveSource
) -> None:
    inputs = dict(zip(OFFSETS, live_source.start(["", "delay_ms=20"]), strict=True))

    async def scenario() -> tuple[OtlpReceiver, list[int | None]]:
        receiver = OtlpReceiver()
        await receiver.start()
        ports = dict(zip(OFFSETS, free_ports(len(OFFSETS)), strict=True))
        try:
            with _processes() as processes:
                for name in OFFSETS:
                    _start(
                        processes,
                        _encoder_command(name, ports, tmp_path, DURATION, inputs[name]),
                        tmp_path / f"{name}.log",
                        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                        OTEL_TRACES_EXPORTER="otlp",
                        OTEL_BSP_SCHEDULE_DELAY="200",
                    )
                await asyncio.sleep(DURATION / 2)
                # What an operator's tool does; only the GetState call may become a span. (A
                # busy machine may still be starting the encoder: wait for it to serve.)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['a']}") as channel:
                    await mesh_pb2_grpc.EncoderMeshStub(channel).GetState(
                        mesh_pb2.GetStateRequest(), timeout=15.0, wait_for_ready=True
                    )
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=5.0
                    )
                deadline = time.monotonic() + DURATION + EXIT_GRACE
                while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                codes = [p.poll() for p in processes]
        finally:
            await receiver.stop()
        return receiver, codes

    # Each wait above is bounded (about 70 s in all); this bounds the receiver's start and stop
    # and the channel's close too, so that the test fails rather than waits.
    receiver, codes = asyncio.run(asyncio.wait_for(scenario(), 120.0))
    assert codes == [0, 0], _logs(tmp_path)
    spans = receiver.spans
    services = {(s.service, s.instance) for s in spans}
    assert services == {("meshenc-encoder", "a"), ("meshenc-encoder", "b")}, services

    trees = _resync_trees(spans)
    assert trees, f"no resync traced: {sorted({s.name for s in spans})}\n{_logs(tmp_path)}"
    complete = 0
    for tree in trees:
        (root,) = tree["resync"]
        assert root.parent_id == ""
        assert root.attributes["meshenc.resync.verdict"] in {
            "accepted", "rejected", "expired", "abandoned",
        }  # fmt: skip
        for vote in tree.get("resync.vote", []):
            # The vote was cast by the other encoder, as a child of the proposal's span.
            assert vote.instance != root.instance
            assert vote.parent_id == root.span_id
            assert (
                vote.attributes["meshenc.resync.proposal_id"]
                == (root.attributes["meshenc.resync.proposal_id"])
            )
        for count in tree.get("resync.vote.count", []):
            assert count.instance == root.instance
            assert count.parent_id in {vote.span_id for vote in tree["resync.vote"]}
        for correct in tree.get("resync.correct", []):
            assert correct.instance == root.instance and correct.parent_id == root.span_id
        if tree.get("resync.vote") and tree.get("resync.vote.count") and tree.get("resync.correct"):
            complete += 1
    proposers = sorted(tree["resync"][0].instance for tree in trees)
    print(f"{len(trees)} resyncs traced (proposers {proposers}), {complete} complete")
    assert complete >= 1, f"no resync with proposal, vote, count and correction: {trees}"

    names = {(s.instance, s.name) for s in spans}
    for name in OFFSETS:
        assert (name, "segment.write") in names
        assert (name, "topology.change") in names
    assert ("a", "/meshenc.v1.EncoderMesh/GetState") in names
    assert not [s for s in spans if "grpc.health" in s.name]
    # Each accepted Exchange stream continues the trace of the call its dialer made (a busy
    # machine may have made the dialer try more than once).
    exchange = [s for s in spans if s.name == "/meshenc.v1.EncoderMesh/Exchange"]
    calls = {s.span_id: s for s in exchange if s.kind == "CLIENT"}
    accepted = [s for s in exchange if s.kind == "SERVER"]
    assert {s.instance for s in accepted} == {"b"}, exchange  # "a" < "b": a dials
    joined = [(calls[s.parent_id], s) for s in accepted if s.parent_id in calls]
    assert joined, exchange
    assert all(call.trace_id == stream.trace_id for call, stream in joined)
    assert {call.instance for call, _ in joined} == {"a"}


# -- metrics --------------------------------------------------------------------------------------


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _scrape_when_up(port: int, logs: Path, timeout: float = 20.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _scrape(port)
        except OSError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"no metrics on port {port}: {exc}\n{_logs(logs)}")
            time.sleep(0.2)


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.mark.slow
def test_each_service_serves_plausible_metrics(tmp_path: Path, live_source: LiveSource) -> None:
    duration = 12.0
    inputs = dict(zip(("a", "b"), live_source.start(["", ""]), strict=True))
    free = iter(free_ports(8))
    ports = {"a": next(free), "b": next(free)}
    metrics_ports = {name: next(free) for name in ("a", "b", "registry", "manager")}
    registry_port, manager_port = next(free), next(free)
    registry_command = [
        sys.executable, "-m", "meshenc", "registry", "--insecure",
        "--listen", f"127.0.0.1:{registry_port}",
        "--metrics-listen", f"127.0.0.1:{metrics_ports['registry']}",
    ]  # fmt: skip
    quiet = {"OTEL_TRACES_EXPORTER": "none"}
    with (
        EtcdProcess(log_path=tmp_path / "etcd.log") as etcd,
        _processes() as processes,
    ):
        manager_command = [
            sys.executable, "-m", "meshenc", "manager", "--insecure",
            "--actuator", "embedded",
            "--etcd", etcd.endpoint,
            "--listen", f"127.0.0.1:{manager_port}",
            "--metrics-listen", f"127.0.0.1:{metrics_ports['manager']}",
        ]  # fmt: skip
        encoders = [
            _start(
                processes,
                _encoder_command(
                    name, ports, tmp_path, duration, inputs[name], metrics_ports[name]
                ),
                tmp_path / f"{name}.log",
                **quiet,
            )
            for name in ("a", "b")
        ]
        _start(processes, registry_command, tmp_path / "registry.log", **quiet)
        _start(processes, manager_command, tmp_path / "manager.log", **quiet)
        for port in metrics_ports.values():
            _scrape_when_up(port, tmp_path)
        time.sleep(2.0)  # every encoder has observed its state, the manager has planned
        first = {name: _scrape(port) for name, port in metrics_ports.items()}
        time.sleep(duration / 4)
        # The encoders lock in once their live input flows and each has measured the other:
        # wait (bounded) until one of them has corrected (one may simply come to the other),
        # then take the second scrape.
        until = time.monotonic() + duration / 2
        while time.monotonic() < until and not any(
            _scrape(metrics_ports[n]).get("meshenc_corrections_total") for n in ("a", "b")
        ):
            time.sleep(0.25)
        with grpc.insecure_channel(f"127.0.0.1:{registry_port}") as channel:
            registry_pb2_grpc.RegistryStub(channel).Ping(registry_pb2.PingRequest(), timeout=5.0)
        try:
            second = {name: _scrape(port) for name, port in metrics_ports.items()}
        except OSError as exc:
            pytest.fail(f"a service stopped serving metrics: {exc}\n{_logs(tmp_path)}")
        for encoder in encoders:
            encoder.wait(timeout=duration + EXIT_GRACE)
    assert [e.returncode for e in encoders] == [0, 0], _logs(tmp_path)

    for name, peer in (("a", "b"), ("b", "a")):
        before, after = first[name], second[name]
        written = _value(after, "meshenc_segments_written_total")
        assert 0 < written <= duration + 1  # one-second segments
        assert written > before.get("meshenc_segments_written_total", {}).get((), 0.0)
        frames = _value(after, "meshenc_frames_total")
        assert _value(before, "meshenc_frames_total") < frames < 31 * duration  # 30 fps
        assert _value(after, "meshenc_mesh_messages_sent_total", neighbour=peer) > frames / 2
        assert _value(after, "meshenc_neighbour_connected", neighbour=peer) == 1.0
        # Locked within a frame of each other despite 70 ms of injected offset.
        assert abs(_value(after, "meshenc_neighbour_offset_seconds", neighbour=peer)) < 1 / 30
        assert (
            abs(_value(after, "meshenc_neighbour_predicted_offset_seconds", neighbour=peer)) < 0.1
        )
        assert 0 < _value(after, "meshenc_neighbour_rtt_seconds", neighbour=peer) < 1.0
        assert 0 < _value(after, "meshenc_segment_write_seconds_count") == written
        assert _value(after, "meshenc_topology_changes_total") == 1.0

    # The 70 ms between them was corrected, by one of them at least.
    corrections = [sum(second[n].get("meshenc_corrections_total", {}).values()) for n in "ab"]
    assert sum(corrections) >= 1, corrections

    registry = second["registry"]
    assert _value(registry, "meshenc_registry_contacts") == 0.0  # a network of one
    assert _value(registry, "meshenc_registry_records") == 0.0
    handled = {"grpc_service": "meshenc.v1.Registry", "grpc_method": "Ping", "grpc_code": "OK"}
    assert _value(registry, "meshenc_grpc_server_handled_total", **handled) == 1.0
    assert "meshenc_segments_written_total" not in registry

    plans_before = first["manager"]["meshenc_manager_plan_seconds_count"][()]
    plans_after = second["manager"]["meshenc_manager_plan_seconds_count"][()]
    assert 0 < plans_before < plans_after
    assert _value(second["manager"], "meshenc_manager_plans_total", outcome="ok") == plans_after
    for name in ("a", "b", "registry", "manager"):
        assert second[name]["process_resident_memory_bytes"][()] > 0
