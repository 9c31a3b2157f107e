"""``services.common.telemetry`` in one process: trace context, resync spans, set-up, metrics.

Spans are recorded by the OpenTelemetry SDK's own in-memory exporter where a test looks at the
span tree, and sent to a real OTLP/gRPC receiver (``tests.telemetry.otlp``) over a socket where
a test checks the environment-driven exporter. gRPC calls go over real sockets on 127.0.0.1;
the metrics endpoint is scraped over real HTTP. Engines, mesh links and registry nodes are the
real ones; the only stand-in is the mesh links' handler in the scrape test, which nothing
calls. The process-wide tracer provider is never installed here (OpenTelemetry allows one per
process); every test builds its own provider.
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from meshenc.core.election import ElectionSnapshot, Role
from meshenc.core.engine import (
    CorrectionApplied,
    EngineConfig,
    Escalate,
    SendProposal,
    SyncEngine,
)
from meshenc.core.messages import CorrectionKind, ResyncProposal
from meshenc.core.timecode import FrameRate
from meshenc.core.votes import Outcome, Verdict, judge_proposal
from meshenc.v1 import common_pb2, mesh_pb2, registry_pb2, registry_pb2_grpc
from meshenc.wire import PROTOCOL_VERSION, convert
from meshenc.wire.validation import ExchangeStreamChecker
from services.common import telemetry
from services.common.telemetry import EncoderTelemetry
from services.encoder.media.publish import OriginStats
from services.encoder.mesh import MeshLinks
from services.encoder.runtime import RunStats
from services.registry.node import RegistryNode
from services.registry.settings import RegistrySettings

from .otlp import OtlpReceiver

FRAME_RATE = FrameRate.parse("30")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()


def encoder(node_id: str, provider: TracerProvider, peers: tuple[str, ...]) -> EncoderTelemetry:
    """Telemetry for an encoder whose engine (a real one) has ``peers`` as neighbours."""
    engine = SyncEngine(node_id, EngineConfig(frame_rate=FRAME_RATE), peers)
    return EncoderTelemetry(
        node_id, lambda: engine.snapshot(0.0), tracer=provider.get_tracer("test")
    )


def over_the_wire(msg: mesh_pb2.MeshMessage, receiver: str) -> mesh_pb2.MeshMessage:
    """What the receiving encoder accepts: serialised, parsed and validated as on a stream."""
    parsed = mesh_pb2.MeshMessage.FromString(msg.SerializeToString())
    checker = ExchangeStreamChecker(receiver)
    sender = parsed.proposal.proposer_id or parsed.vote.voter_id
    checker.check(mesh_pb2.MeshMessage(hello=_hello(sender)))
    checker.check(parsed)
    return parsed


def _hello(sender: str) -> mesh_pb2.Hello:
    return mesh_pb2.Hello(
        sender_id=sender,
        protocol_version=PROTOCOL_VERSION,
        frame_rate=common_pb2.FrameRate(num=30, den=1),
        gop_length=30,
    )


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


# -- trace context helpers ----------------------------------------------------------------------


def test_trace_context_round_trips_and_passes_wire_validation(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    with provider.get_tracer("test").start_as_current_span("origin") as origin:
        headers = telemetry.inject_trace_context()
    assert [key for key, _ in headers] == ["traceparent"]
    proposal = ResyncProposal("a", 7, CorrectionKind.SLEW, 0.004, 1, trace_context=headers)
    msg = over_the_wire(mesh_pb2.MeshMessage(proposal=convert.proposal_to_proto(proposal)), "b")
    carried = convert.proposal_from_proto(msg.proposal).trace_context
    restored = telemetry.extract_trace_context(carried)
    remote = trace.get_current_span(restored).get_span_context()
    assert remote.trace_id == origin.get_span_context().trace_id
    assert remote.span_id == origin.get_span_context().span_id
    assert remote.is_remote


@pytest.mark.parametrize(
    "entries",
    [
        (),
        (("traceparent", "garbage"),),
        (("traceparent", "00-" + "0" * 32 + "-" + "1" * 16 + "-01"),),  # all-zero trace id
        (("tracestate", "k=v"),),
    ],
)
def test_missing_or_malformed_context_names_no_span(entries: tuple[tuple[str, str], ...]) -> None:
    ctx = telemetry.extract_trace_context(entries)
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_no_current_span_injects_nothing() -> None:
    assert telemetry.inject_trace_context() == ()


# -- one resync, one trace ----------------------------------------------------------------------


def test_a_resync_is_one_trace_from_proposal_through_votes_to_the_correction(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    a = encoder("a", provider, ("b", "c"))
    b = encoder("b", provider, ("a",))
    c = encoder("c", provider, ("a",))
    proposal = ResyncProposal("a", 1, CorrectionKind.SLEW, 0.004, 3)
    sent = a.on_action(SendProposal(proposal, ("b", "c")))
    assert isinstance(sent, SendProposal)
    wire = mesh_pb2.MeshMessage(proposal=convert.proposal_to_proto(sent.proposal))
    for voter, telemetry_of_voter in (("b", b), ("c", c)):
        received = convert.proposal_from_proto(over_the_wire(wire, voter).proposal)
        vote = judge_proposal(received, voter, -0.004, 0.008)
        answer = telemetry_of_voter.vote_cast(received, vote)
        back = over_the_wire(mesh_pb2.MeshMessage(vote=convert.vote_to_proto(answer)), "a")
        a.vote_received(convert.vote_from_proto(back.vote))
    a.on_action(CorrectionApplied(0.0, CorrectionKind.SLEW, 0.004, 0.0, math.nan, 1))

    finished = exporter.get_finished_spans()
    (root,) = by_name(finished, "resync")
    votes = by_name(finished, "resync.vote")
    counts = by_name(finished, "resync.vote.count")
    (correct,) = by_name(finished, "resync.correct")
    assert {trace_id(span) for span in finished} == {trace_id(root)}
    assert root.parent is None
    assert root.attributes is not None and root.attributes["meshenc.resync.verdict"] == "accepted"
    assert sorted(str(v.attributes["meshenc.node"]) for v in votes if v.attributes) == ["b", "c"]
    assert all(parent_id(vote) == span_id(root) for vote in votes)
    assert sorted(parent_id(count) or 0 for count in counts) == sorted(map(span_id, votes))
    assert parent_id(correct) == span_id(root)


def test_rejected_and_expired_resyncs_end_with_their_verdict(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    a = encoder("a", provider, ("b",))
    for proposal_id, verdict in ((1, Verdict.REJECTED), (2, Verdict.EXPIRED)):
        proposal = ResyncProposal("a", proposal_id, CorrectionKind.DROP, 0.033, 1)
        a.on_action(SendProposal(proposal, ("b",)))
        outcome = Outcome(proposal, verdict, frozenset(), frozenset({"b"}), 0.0)
        a.on_action(Escalate(outcome, 0.02))
    roots = {
        span.attributes["meshenc.resync.proposal_id"]: span
        for span in by_name(exporter.get_finished_spans(), "resync")
        if span.attributes
    }
    assert roots[1].attributes is not None and roots[2].attributes is not None
    assert roots[1].attributes["meshenc.resync.verdict"] == "rejected"
    assert roots[1].status.status_code is StatusCode.UNSET
    assert roots[2].attributes["meshenc.resync.verdict"] == "expired"
    assert roots[2].status.status_code is StatusCode.ERROR
    assert not by_name(exporter.get_finished_spans(), "resync.correct")


def test_open_resyncs_are_ended_on_close_and_bounded(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    engine = SyncEngine("a", EngineConfig(frame_rate=FRAME_RATE), ("b",))
    a = EncoderTelemetry(
        "a", lambda: engine.snapshot(0.0), tracer=provider.get_tracer("t"), max_open=2
    )
    for proposal_id in (1, 2, 3):
        proposal = ResyncProposal("a", proposal_id, CorrectionKind.SLEW, 0.001, 1)
        a.on_action(SendProposal(proposal, ("b",)))
    # The oldest was ended to stay within max_open; close ends the rest.
    assert [
        s.attributes["meshenc.resync.proposal_id"]
        for s in exporter.get_finished_spans()
        if s.attributes
    ] == [1]
    a.close()
    verdicts = [
        span.attributes["meshenc.resync.verdict"]
        for span in by_name(exporter.get_finished_spans(), "resync")
        if span.attributes
    ]
    assert verdicts == ["abandoned"] * 3


def test_a_vote_on_an_untraced_proposal_starts_its_own_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    b = encoder("b", provider, ("a",))
    proposal = ResyncProposal("a", 4, CorrectionKind.SLEW, 0.002, 1)
    vote = b.vote_cast(proposal, judge_proposal(proposal, "b", None, 0.008))
    (span,) = exporter.get_finished_spans()
    assert span.name == "resync.vote" and span.parent is None
    assert dict(vote.trace_context)["traceparent"].split("-")[2] == f"{span_id(span):016x}"


def test_a_new_leader_is_one_span_and_one_count(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    a = encoder("a", provider, ("b",))
    before = telemetry.REGISTRY.get_sample_value("meshenc_leader_changes_total") or 0.0
    for leader, token in (("b", 1), ("b", 1), ("a", 2)):
        role = Role.LEADER if leader == "a" else Role.FOLLOWER
        a.leader_changed(ElectionSnapshot(role, leader, token, token, False, ("a", "b"), ()))
    changes = by_name(exporter.get_finished_spans(), "leader.change")
    assert [s.attributes["meshenc.leader.current"] for s in changes if s.attributes] == ["b", "a"]
    assert telemetry.REGISTRY.get_sample_value("meshenc_leader_changes_total") == before + 2


# -- set-up from the environment -----------------------------------------------------------------


@pytest.mark.parametrize(
    "environment",
    [
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {},  # OTLP by default, but no endpoint
    ],
)
def test_nothing_is_exported_when_tracing_is_off(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert telemetry.tracer_provider_from_env("meshenc-test") is None


def test_spans_reach_an_otlp_receiver_under_the_configured_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        receiver = OtlpReceiver()
        await receiver.start()
        try:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
            monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
            monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
            monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
            first = telemetry.tracer_provider_from_env("meshenc-encoder", instance_id="enc-7")
            monkeypatch.setenv("OTEL_SERVICE_NAME", "renamed")
            second = telemetry.tracer_provider_from_env("meshenc-encoder", instance_id="enc-8")
            assert first is not None and second is not None
            first.get_tracer("t").start_span("one").end()
            second.get_tracer("t").start_span("two").end()
            # The exporters are synchronous gRPC clients: flush them off the receiver's loop.
            for provider in (first, second):
                assert await asyncio.to_thread(provider.force_flush, 10_000)
                await asyncio.to_thread(provider.shutdown)
        finally:
            await receiver.stop()
        seen = {(s.name, s.service, s.instance) for s in receiver.spans}
        assert seen == {("one", "meshenc-encoder", "enc-7"), ("two", "renamed", "enc-8")}

    asyncio.run(asyncio.wait_for(scenario(), 30.0))


# -- gRPC interceptors ----------------------------------------------------------------------------


def test_grpc_calls_are_traced_across_client_and_server_but_health_checks_are_not(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans

    async def scenario() -> None:
        server = grpc.aio.server(interceptors=telemetry.server_interceptors(provider))
        receiver = OtlpReceiver()  # any real service will do; this one is at hand
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=telemetry.client_interceptors(provider)
        )
        try:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
            )
            await export(trace_service_pb2.ExportTraceServiceRequest(), timeout=5.0)
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5.0
            )
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(asyncio.wait_for(scenario(), 20.0))
    finished = exporter.get_finished_spans()
    names = sorted(span.name for span in finished)
    method = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    assert names == [method, method]
    client = next(s for s in finished if s.kind.name == "CLIENT")
    server_span = next(s for s in finished if s.kind.name == "SERVER")
    assert trace_id(client) == trace_id(server_span)
    assert parent_id(server_span) == span_id(client)


def test_rpcs_are_counted_by_method_and_status_but_health_checks_are_not(
    tmp_path: Path,
) -> None:
    def handled(method: str, code: str) -> float:
        labels = {"grpc_service": "meshenc.v1.Registry", "grpc_method": method, "grpc_code": code}
        value = telemetry.REGISTRY.get_sample_value("meshenc_grpc_server_handled_total", labels)
        return value or 0.0

    def health_series() -> list[str]:
        return [
            str(sample.labels)
            for family in telemetry.REGISTRY.collect()
            for sample in family.samples
            if "grpc.health" in sample.labels.get("grpc_service", "")
        ]

    before = (handled("Ping", "OK"), handled("FindNode", "INVALID_ARGUMENT"))

    async def scenario() -> None:
        node = RegistryNode(RegistrySettings(listen="127.0.0.1:0"))
        port = await node.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                await stub.Ping(registry_pb2.PingRequest(), timeout=5.0)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.FindNode(registry_pb2.FindNodeRequest(target=b"abc"), timeout=5.0)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5.0
                )
                # The node's own gauges, read at scrape time: it knows itself only.
                assert telemetry.REGISTRY.get_sample_value("meshenc_registry_contacts") == 0.0
                assert telemetry.REGISTRY.get_sample_value("meshenc_registry_records") == 0.0
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20.0))
    assert handled("Ping", "OK") == before[0] + 1
    assert handled("FindNode", "INVALID_ARGUMENT") == before[1] + 1
    assert health_series() == []


# -- the metrics endpoint ------------------------------------------------------------------------


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` over HTTP, parsed: sample name → labels → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as answer:
        text = answer.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def test_the_endpoint_serves_the_encoders_state_as_observed(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans

    class Handler:  # stands in for the runtime, which nothing here calls
        node_id = "a"

    links = MeshLinks(Handler())  # type: ignore[arg-type]
    links.sent["b"] += 12
    links.dropped_esps["b"] += 3
    a = encoder("a", provider, ("b",))
    a.observe(links, RunStats(frames=90, skipped=2), (0.25, 0.004))
    server = telemetry.start_metrics_server("127.0.0.1:0")
    try:
        samples = scrape(server.port)
    finally:
        server.close()
    assert samples["meshenc_mesh_messages_sent_total"] == {(("neighbour", "b"),): 12.0}
    assert samples["meshenc_esp_dropped_total"] == {(("neighbour", "b"),): 3.0}
    assert samples["meshenc_neighbour_connected"] == {(("neighbour", "b"),): 0.0}
    assert samples["meshenc_frames_total"] == {(): 90.0}
    assert samples["meshenc_frames_skipped_total"] == {(): 2.0}
    assert samples["meshenc_cpu_load_ratio"] == {(): 0.25}
    assert samples["meshenc_bitrate_kbps"] == {(): 1500.0}
    # No ESP has arrived: the offset estimate does not exist yet and is left out, not NaN.
    assert samples.get("meshenc_neighbour_offset_seconds", {}) == {}
    assert "process_cpu_seconds_total" in samples


@pytest.mark.parametrize("listen", ["9464", "host:", ":9464", "h:70000", "a b:1"])
def test_a_malformed_metrics_address_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        telemetry.start_metrics_server(listen)


def test_a_taken_port_is_a_clear_error() -> None:
    first = telemetry.start_metrics_server("127.0.0.1:0")
    try:
        with pytest.raises(RuntimeError, match="cannot serve metrics"):
            telemetry.start_metrics_server(f"127.0.0.1:{first.port}")
    finally:
        first.close()


def test_a_plan_that_decides_something_is_a_span_and_every_plan_is_timed() -> None:
    count = telemetry.REGISTRY.get_sample_value
    before = count("meshenc_manager_plan_seconds_count") or 0.0
    errors = count("meshenc_manager_plans_total", {"outcome": "error"}) or 0.0
    with telemetry.planning("tick") as plan:
        assert plan.record([]) == []
    with telemetry.planning("tick") as plan:
        plan.record([object(), object()])
    with pytest.raises(ZeroDivisionError), telemetry.planning("tick"):
        _ = 1 / 0
    assert count("meshenc_manager_plan_seconds_count") == before + 3
    assert count("meshenc_manager_plans_total", {"outcome": "error"}) == errors + 1
    assert (count("meshenc_manager_decisions_total", {"kind": "object"}) or 0.0) >= 2


def test_the_endpoint_serves_each_origins_publishing_counters(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans

    class Handler:  # stands in for the runtime, which nothing here calls
        node_id = "a"

    common = {"skipped": 0, "superseded": 0}
    origins = (
        OriginStats("http://o1/live/", 40, 1, 0, retries=3, queued=2, reachable=True,
                    last_error=None, **common),
        OriginStats("http://o2/live/", 12, 5, 7, retries=9, queued=30, reachable=False,
                    last_error="refused", **common),
    )  # fmt: skip
    a = encoder("a", provider, ("b",))
    links = MeshLinks(Handler())  # type: ignore[arg-type]
    a.observe(links, RunStats(frames=1, skipped=0), (0.1, 0.001), None, origins)
    server = telemetry.start_metrics_server("127.0.0.1:0")
    try:
        samples = scrape(server.port)
    finally:
        server.close()
    o1, o2 = (("origin", "http://o1/live/"),), (("origin", "http://o2/live/"),)
    assert samples["meshenc_origin_puts_total"] == {o1: 40.0, o2: 12.0}
    assert samples["meshenc_origin_put_failures_total"] == {o1: 1.0, o2: 5.0}
    assert samples["meshenc_origin_dropped_total"] == {o1: 0.0, o2: 7.0}
    assert samples["meshenc_origin_retries_total"] == {o1: 3.0, o2: 9.0}
    assert samples["meshenc_origin_queued"] == {o1: 2.0, o2: 30.0}
    assert samples["meshenc_origin_reachable"] == {o1: 1.0, o2: 0.0}
