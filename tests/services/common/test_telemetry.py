"""``services.common.telemetry`` in one process: trace context, set-up, interceptors, endpoint.

Spans are recorded by the OpenTelemetry SDK's own in-memory exporter where a test looks at the
span tree, and sent to a real OTLP/gRPC receiver (``tests.otlp``) over a socket where
a test checks the environment-driven exporter. gRPC calls go over real sockets on 127.0.0.1;
the metrics endpoint is scraped over real HTTP. Registry nodes are the real ones. The
process-wide tracer provider is never installed here (OpenTelemetry allows one per process);
every test builds its own provider.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshenc.core.messages import CorrectionKind, ResyncProposal
from meshenc.v1 import mesh_pb2, registry_pb2, registry_pb2_grpc
from meshenc.wire import convert
from services.common import telemetry
from services.registry.node import RegistryNode
from services.registry.settings import RegistrySettings
from tests.otlp import OtlpReceiver
from tests.services.traces import over_the_wire, parent_id, span_id, trace_id

# -- trace context helpers ----------------------------------------------------------------------


def test_trace_context_round_trips_and_passes_wire_validation(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    with provider.get_tracer("test").start_as_current_span("origin") as origin:
        headers = telemetry.inject_trace_context()
    assert [key for key, _ in headers] == ["traceparent"]
    proposal = ResyncProposal("a", 7, CorrectionKind.SLEW, 0.004, 1)
    wire = convert.proposal_to_proto(proposal, headers)
    msg = over_the_wire(mesh_pb2.MeshMessage(proposal=wire), "b")
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
