"""Traces and metrics for every meshenc service, set up in one place.

Theory of operation
-------------------
*Tracing* follows OpenTelemetry's standard environment variables, read once at start by
:func:`setup_tracing` (``running`` calls it): ``OTEL_TRACES_EXPORTER`` (``otlp``, the default,
``console``, or ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
(OTLP over gRPC), ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and the batch processor's
``OTEL_BSP_*``. Nothing is exported when the exporter is ``none``, when ``OTEL_SDK_DISABLED`` is
true, or when OTLP is asked for but no endpoint is set: the API then stays the no-op it is by
default, so instrumented code costs next to nothing. :func:`shutdown` flushes what is still
buffered; a service calls it once, on its way out.

gRPC servers and channels get OpenTelemetry's ``grpc.aio`` interceptors
(:func:`server_interceptors`, :func:`client_interceptors`); the standard health service
(``grpc.health.v1.Health``), which probes call every few seconds, is left out. A server
interceptor sees a streaming method only if the servicer is an async generator; the mesh's
``Exchange`` is written that way. Trace context rides in metadata once per call, so a
long-lived ``Exchange`` stream is one span, and whatever happens on it must carry its own
context: resync proposals and votes do, in their ``trace_context`` fields, as W3C
``traceparent``/``tracestate`` pairs (:func:`inject_trace_context`,
:func:`extract_trace_context`).

One resync is one trace across encoders (:class:`EncoderTelemetry`):

- ``resync`` (proposer, the root): from the proposal to its outcome; the prediction that
  triggered it (error and predicted error) and the verdict are attributes;
- ``resync.vote`` (each voter): a child of the proposal's context, which travels in the
  proposal; the vote carries the context of this span back;
- ``resync.vote.count`` (proposer): a child of the vote's span, when the vote is counted;
- ``resync.correct`` (proposer): the applied correction, a child of ``resync``.

Other spans: ``topology.change`` (a neighbour set replaced), ``leader.change`` (a segment's
leader seen to change), ``segment.write`` (a segment muxed and written), ``manager.plan``.

*Metrics* are Prometheus metrics, all defined in this module, grouped by service, named
``meshenc_*`` with their unit in the name, in one registry (:data:`REGISTRY`, which also carries
the process collectors); a group joins the registry when its service first uses it, so a
process shows its own service's metrics only. :func:`start_metrics_server` serves the
registry over HTTP at ``HOST:PORT`` (``MESHENC_METRICS_LISTEN``). Event counts (segments,
corrections, proposals, votes) are counted where they happen; state (offsets, predictions,
links, lock) is copied once a second from the event loop into an immutable view that a
collector reads at scrape time, so the scrape thread never touches the engine.

Invariants: nothing here changes what a service decides; every hook is safe to call with
tracing off; spans still open when an encoder stops are ended (``abandoned``) by
:meth:`EncoderTelemetry.close`, never leaked; at most ``max_open`` resyncs are tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import grpc
import opentelemetry.instrumentation.grpc as _otel_grpc_typed
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc.filters import health_check, negate
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshenc.core.election import ElectionSnapshot, Role
from meshenc.core.engine import (
    Action,
    CorrectionApplied,
    EngineSnapshot,
    Escalate,
    NeighbourSnapshot,
    ParametersAgreed,
    SendProposal,
)
from meshenc.core.messages import ResyncProposal, ResyncVote
from meshenc.core.votes import Verdict
from meshenc.v1 import mesh_pb2
from meshenc.wire.address import parse_address

__all__ = [
    "REGISTRY",
    "TRACER_NAME",
    "EncoderTelemetry",
    "MetricsServer",
    "Plan",
    "TraceContext",
    "client_interceptors",
    "extract_trace_context",
    "inject_trace_context",
    "parse_listen",
    "planning",
    "running",
    "server_interceptors",
    "setup_tracing",
    "shutdown",
    "start_metrics_server",
    "topology_changed",
    "tracer_provider_from_env",
    "watch_registry",
]

log = logging.getLogger("meshenc.telemetry")

TRACER_NAME: Final = "meshenc"
"""The instrumentation scope of meshenc's own spans."""

TraceContext = tuple[tuple[str, str], ...]
"""W3C trace headers as the core carries them (``ResyncProposal.trace_context``)."""

_tracer: Final = trace.get_tracer(TRACER_NAME)
"""A proxy until :func:`setup_tracing` installs a provider; then it records for real."""

_otel_grpc: Any = _otel_grpc_typed  # its interceptor factories carry no annotations
_W3C: Final = TraceContextTextMapPropagator()
_EXCLUDED_FROM_TRACING: Final = health_check()

# ---------------------------------------------------------------------------------------------
# Tracing set-up
# ---------------------------------------------------------------------------------------------

_provider: TracerProvider | None = None
_provider_lock = threading.Lock()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def service_resource(service_name: str, instance_id: str | None = None) -> Resource:
    """The resource spans are reported under.

    ``service_name`` and ``instance_id`` are defaults: ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` override them, as operators expect.
    """
    defaults: dict[str, str] = {SERVICE_NAME: service_name}
    if instance_id:
        defaults[SERVICE_INSTANCE_ID] = instance_id
    # The SDK's resource (sdk version, a random instance id, ...), then our defaults, then what
    # the operator set in OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME.
    configured = OTELResourceDetector().detect()
    return Resource.create().merge(Resource(defaults)).merge(configured)


def tracer_provider_from_env(
    service_name: str, *, instance_id: str | None = None
) -> TracerProvider | None:
    """A tracer provider configured by the ``OTEL_*`` variables, or None when nothing is exported.

    Does not install it (see :func:`setup_tracing`), so tests may build one of their own.
    """
    if _truthy(os.environ.get("OTEL_SDK_DISABLED")):
        return None
    wanted = {
        name.strip().lower()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    }
    if not wanted or "none" in wanted:
        return None
    unknown = wanted - {"otlp", "console"}
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: ignoring unknown exporter(s) %s", sorted(unknown))
    exporters: list[SpanExporter] = []
    if "otlp" in wanted:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if endpoint:
            # Imported here: the exporter pulls in a gRPC client that a service without an
            # endpoint never needs.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            exporters.append(OTLPSpanExporter())
        else:
            log.info("tracing off: no OTEL_EXPORTER_OTLP_ENDPOINT set")
    if "console" in wanted:
        exporters.append(ConsoleSpanExporter())
    if not exporters:
        return None
    provider = TracerProvider(resource=service_resource(service_name, instance_id))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def setup_tracing(service_name: str, *, instance_id: str | None = None) -> bool:
    """Install the process's tracer provider from the ``OTEL_*`` variables, once.

    Returns:
        Whether spans are exported. Once a provider is installed, later calls change nothing
        (OpenTelemetry allows one global provider per process).
    """
    global _provider  # noqa: PLW0603 -- the process-wide provider, as OpenTelemetry has it
    with _provider_lock:
        if _provider is not None:
            return True
        provider = tracer_provider_from_env(service_name, instance_id=instance_id)
        if provider is None:
            return False
        trace.set_tracer_provider(provider)
        _provider = provider
    resource = provider.resource.attributes
    log.info(
        "tracing on: service %s, instance %s",
        resource.get(SERVICE_NAME),
        resource.get(SERVICE_INSTANCE_ID, "-"),
    )
    return True


def shutdown(timeout: float = 5.0) -> None:
    """Flush buffered spans (waiting at most ``timeout`` seconds) and stop exporting."""
    provider = _provider
    if provider is None:
        return
    if not provider.force_flush(timeout_millis=int(timeout * 1000)):
        log.warning("some spans could not be exported within %.1f s", timeout)
    provider.shutdown()


# ---------------------------------------------------------------------------------------------
# Trace context in messages
# ---------------------------------------------------------------------------------------------


def inject_trace_context(ctx: otel_context.Context | None = None) -> TraceContext:
    """The W3C headers of ``ctx`` (default: the current context), sorted; () when no span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return tuple(sorted(carrier.items()))


def extract_trace_context(entries: Iterable[tuple[str, str]]) -> otel_context.Context:
    """The context a message's W3C headers name; an empty context when they name none.

    Header names are matched case-insensitively; malformed values are ignored (the span
    started from the result is then a new root), never raised: they come from the network.
    """
    carrier = {key.lower(): value for key, value in entries}
    return _W3C.extract(carrier, context=otel_context.Context())


def _has_span(ctx: otel_context.Context) -> bool:
    return trace.get_current_span(ctx).get_span_context().is_valid


# ---------------------------------------------------------------------------------------------
# Metrics registry and HTTP endpoint
# ---------------------------------------------------------------------------------------------

REGISTRY: Final = CollectorRegistry()
"""Every meshenc metric, plus the process, platform and garbage-collector collectors."""
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

_enabled_groups: set[str] = set()
_groups_lock = threading.Lock()


def _enable(group: str, *collectors: Collector) -> None:
    """Register a service's metrics in :data:`REGISTRY`, once per process.

    Metrics are defined once, below, but only the groups a process uses are exposed: an
    encoder's endpoint shows no registry metrics stuck at zero.
    """
    with _groups_lock:
        if group in _enabled_groups:
            return
        for collector in collectors:
            REGISTRY.register(collector)
        _enabled_groups.add(group)


def parse_listen(value: str) -> tuple[str, int]:
    """``"0.0.0.0:9464"`` or ``"[::]:9464"`` → (host, port); port 0 picks a free one.

    Raises:
        ValueError: naming the expected form.
    """
    host, port = parse_address(value.strip(), lowest_port=0)
    return host.strip("[]"), port


class MetricsServer:
    """The Prometheus scrape endpoint (``/metrics``), served from a daemon thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(listen: str, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve ``registry`` for Prometheus at ``listen`` (``HOST:PORT``).

    Raises:
        ValueError: a malformed address.
        RuntimeError: the address cannot be bound.
    """
    host, port = parse_listen(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise RuntimeError(f"cannot serve metrics on {listen!r}: {exc}") from exc
    metrics = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", host, metrics.port)
    return metrics


@contextlib.contextmanager
def running(
    service_name: str, *, instance_id: str | None = None, metrics_listen: str | None = None
) -> Iterator[MetricsServer | None]:
    """A service process's telemetry: tracing and the metrics endpoint while the body runs.

    Spans are flushed and the endpoint closed on the way out, whatever the body raised.
    """
    setup_tracing(service_name, instance_id=instance_id)
    metrics = None if metrics_listen is None else start_metrics_server(metrics_listen)
    try:
        yield metrics
    finally:
        if metrics is not None:
            metrics.close()
        shutdown()


# ---------------------------------------------------------------------------------------------
# gRPC: tracing and metrics interceptors
# ---------------------------------------------------------------------------------------------

GRPC_HANDLED: Final = Counter(
    "meshenc_grpc_server_handled_total",
    "RPCs completed by this server, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    registry=None,
)
GRPC_HANDLING_SECONDS: Final = Histogram(
    "meshenc_grpc_server_handling_seconds",
    "Time from an RPC's start to its end (a stream's whole life), by service and method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 600.0),
    registry=None,
)


def _method_of(details: Any) -> str:
    method = getattr(details, "method", "")
    return method.decode() if isinstance(method, bytes) else str(method)


def _code_name(context: Any, fallback: grpc.StatusCode) -> str:
    code = None
    with contextlib.suppress(Exception):
        code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # some grpcio versions report the numeric code
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return str(candidate.name)
    return str(fallback.name)


class _GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC but health checks (servicers must be ``async``)."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or _EXCLUDED_FROM_TRACING(details):
            return handler
        service, _, method = _method_of(details).lstrip("/").rpartition("/")
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            behavior = _timed_call(handler.unary_unary, service, method)
            return grpc.unary_unary_rpc_method_handler(behavior, **codecs)
        if handler.stream_unary is not None:
            behavior = _timed_call(handler.stream_unary, service, method)
            return grpc.stream_unary_rpc_method_handler(behavior, **codecs)
        if handler.unary_stream is not None:
            behavior = _timed_stream(handler.unary_stream, service, method)
            return grpc.unary_stream_rpc_method_handler(behavior, **codecs)
        if handler.stream_stream is not None:
            behavior = _timed_stream(handler.stream_stream, service, method)
            return grpc.stream_stream_rpc_method_handler(behavior, **codecs)
        return handler


def _record_rpc(service: str, method: str, code: str, started: float) -> None:
    GRPC_HANDLED.labels(service, method, code).inc()
    GRPC_HANDLING_SECONDS.labels(service, method).observe(time.perf_counter() - started)


def _timed_call(behavior: Any, service: str, method: str) -> Any:
    async def timed(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN.name
        try:
            response = await behavior(request, context)
            code = _code_name(context, grpc.StatusCode.OK)
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED.name
            raise
        except BaseException:
            code = _code_name(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            _record_rpc(service, method, code, started)

    return timed


def _timed_stream(behavior: Any, service: str, method: str) -> Any:
    async def timed(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN.name
        try:
            async for response in behavior(request, context):
                yield response
            code = _code_name(context, grpc.StatusCode.OK)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED.name
            raise
        except BaseException:
            code = _code_name(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            _record_rpc(service, method, code, started)

    return timed


def server_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """Tracing, then metrics, for a ``grpc.aio`` server; health checks are left out of both.

    Spans go to ``tracer_provider``, by default the process's (see :func:`setup_tracing`).
    """
    _enable("grpc", GRPC_HANDLED, GRPC_HANDLING_SECONDS)
    tracing = _otel_grpc.aio_server_interceptor(
        tracer_provider, filter_=negate(_EXCLUDED_FROM_TRACING)
    )
    return [tracing, _GrpcMetricsInterceptor()]


def client_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """Tracing for a ``grpc.aio`` channel (the context travels in the call's metadata)."""
    return list(
        _otel_grpc.aio_client_interceptors(tracer_provider, filter_=negate(_EXCLUDED_FROM_TRACING))
    )


# ---------------------------------------------------------------------------------------------
# Encoder: metrics
# ---------------------------------------------------------------------------------------------

ENCODER_SEGMENTS_WRITTEN: Final = Counter(
    "meshenc_segments_written_total", "Media segments written to disk.", registry=None
)
ENCODER_SEGMENT_WRITE_SECONDS: Final = Histogram(
    "meshenc_segment_write_seconds",
    "Time to mux and durably write one segment (and its playlist).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=None,
)
ENCODER_SEGMENT_BYTES: Final = Histogram(
    "meshenc_segment_size_bytes",
    "Size of each segment written.",
    buckets=(16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6),
    registry=None,
)
ENCODER_CORRECTIONS: Final = Counter(
    "meshenc_corrections_total",
    "Corrections applied, by kind (slew, drop, duplicate, parameter).",
    ["kind"],
    registry=None,
)
ENCODER_PROPOSALS: Final = Counter(
    "meshenc_resync_proposals_total",
    "Resync proposals this encoder put to its neighbours' vote, by kind.",
    ["kind"],
    registry=None,
)
ENCODER_OUTCOMES: Final = Counter(
    "meshenc_resync_outcomes_total",
    "How this encoder's proposals ended (accepted, rejected, expired).",
    ["verdict"],
    registry=None,
)
ENCODER_DECISION_SECONDS: Final = Histogram(
    "meshenc_resync_decision_seconds",
    "Time from a proposal to its outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
    registry=None,
)
ENCODER_VOTES_CAST: Final = Counter(
    "meshenc_resync_votes_cast_total",
    "Votes this encoder cast on neighbours' proposals, by verdict (approve, reject).",
    ["verdict"],
    registry=None,
)
ENCODER_VOTES_RECEIVED: Final = Counter(
    "meshenc_resync_votes_received_total",
    "Votes received on this encoder's proposals, by verdict (approve, reject).",
    ["verdict"],
    registry=None,
)
ENCODER_LEADER_CHANGES: Final = Counter(
    "meshenc_leader_changes_total",
    "Times this encoder saw its segment's leader change (including to or from none).",
    registry=None,
)
ENCODER_TOPOLOGY_CHANGES: Final = Counter(
    "meshenc_topology_changes_total",
    "Times this encoder's neighbour set changed (the first set included).",
    registry=None,
)
ENCODER_LINK_CHANGES: Final = Counter(
    "meshenc_link_changes_total",
    "Exchange streams with neighbours that came up or went down, by state.",
    ["state"],
    registry=None,
)


@dataclass(frozen=True, slots=True)
class _EncoderView:
    """The encoder's state, copied on the event loop for the scrape thread to read."""

    snapshot: EngineSnapshot
    connected: frozenset[str]
    per_neighbour_counts: Mapping[str, Mapping[str, int]]
    frames: int
    skipped: int
    cpu_load: float
    encode_latency: float
    leader: bool | None
    #: The live input (None: the encoder did not say).
    source: mesh_pb2.InputStatus | None = None
    #: What the encoder's publisher did for each origin it PUTs to (none: not publishing).
    origins: tuple[_Origin, ...] = ()


class _Origin(Protocol):
    """What the scrape reads of one origin's publishing counters
    (``services.encoder.media.publish.OriginStats``)."""

    @property
    def url(self) -> str: ...

    @property
    def put(self) -> int: ...

    @property
    def failed(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def retries(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def reachable(self) -> bool: ...


#: Per-origin publishing series: name, help, the value of one origin's counters.
_ORIGIN_SERIES: Final[tuple[tuple[str, str, Callable[[_Origin], float]], ...]] = (
    ("meshenc_origin_puts_total", "Objects PUT to the origin and accepted.", lambda o: o.put),
    (
        "meshenc_origin_put_failures_total",
        "Objects given up on after their tries (the origin refused them or was unreachable).",
        lambda o: o.failed,
    ),
    (
        "meshenc_origin_dropped_total",
        "Objects pushed out of a full queue without a try.",
        lambda o: o.dropped,
    ),
    (
        "meshenc_origin_retries_total",
        "Tries after the first, over all objects.",
        lambda o: o.retries,
    ),
    ("meshenc_origin_queued", "Objects waiting to be PUT now.", lambda o: o.queued),
    (
        "meshenc_origin_reachable",
        "1 while the origin answers; 0 from a try that could not reach it until it does again.",
        lambda o: float(o.reachable),
    ),
)


_NEIGHBOUR_GAUGES: Final[tuple[tuple[str, str, Callable[[NeighbourSnapshot], float]], ...]] = (
    (
        "meshenc_neighbour_offset_seconds",
        "Estimated label deviation from each neighbour (ours minus theirs), now.",
        lambda n: n.deviation,
    ),
    (
        "meshenc_neighbour_predicted_offset_seconds",
        "The Kalman filter's prediction of that deviation one horizon ahead.",
        lambda n: n.predicted,
    ),
    (
        "meshenc_neighbour_offset_rate_ratio",
        "Rate of change of that deviation (seconds per second).",
        lambda n: n.rate,
    ),
    (
        "meshenc_neighbour_rtt_seconds",
        "ESP round-trip time to each neighbour (smoothed, from echoed ESPs).",
        lambda n: n.rtt,
    ),
    (
        "meshenc_neighbour_jitter_seconds",
        "ESP arrival jitter from each neighbour.",
        lambda n: n.jitter,
    ),
    (
        "meshenc_neighbour_esp_loss_ratio",
        "Share of each neighbour's ESPs that never arrived (sequence gaps).",
        lambda n: n.loss,
    ),
    (
        "meshenc_neighbour_trusted",
        "1 while a neighbour counts towards the timeline, 0 while it is suspect.",
        lambda n: float(n.trusted),
    ),
)
_NEIGHBOUR_COUNTERS: Final = {
    "meshenc_mesh_messages_sent_total": "Messages written to each neighbour.",
    "meshenc_mesh_messages_received_total": "Valid messages received from each neighbour.",
    "meshenc_esp_dropped_total": "ESPs to each neighbour dropped (queue full or no live stream).",
    "meshenc_mesh_control_dropped_total": (
        "Proposals and votes to each neighbour refused or lost with their link."
    ),
}
_ENCODER_GAUGES: Final[tuple[tuple[str, str, Callable[[_EncoderView], float | None]], ...]] = (
    ("meshenc_locked", "1 while this encoder holds a lock.", lambda v: float(v.snapshot.locked)),
    (
        "meshenc_timeline_error_seconds",
        "Distance of this encoder's label from the timeline its neighbours agree on.",
        lambda v: v.snapshot.error,
    ),
    (
        "meshenc_predicted_error_seconds",
        "That distance, predicted one horizon ahead.",
        lambda v: v.snapshot.predicted_error,
    ),
    (
        "meshenc_correction_seconds",
        "The correction term added to this encoder's clock.",
        lambda v: v.snapshot.correction,
    ),
    (
        "meshenc_correction_rate_ratio",
        "The rate at which the correction term slews (seconds per second).",
        lambda v: v.snapshot.correction_rate,
    ),
    (
        "meshenc_confidence_ratio",
        "This encoder's confidence score (0..1).",
        lambda v: v.snapshot.confidence,
    ),
    (
        "meshenc_bitrate_kbps",
        "Bitrate of the segment being encoded.",
        lambda v: float(v.snapshot.bitrate_kbps),
    ),
    ("meshenc_cpu_load_ratio", "Process CPU time over wall time.", lambda v: v.cpu_load),
    (
        "meshenc_encode_latency_seconds",
        "Mean time to encode one frame over the last second.",
        lambda v: v.encode_latency,
    ),
    (
        "meshenc_leader",
        "1 while this encoder leads its segment (absent without leader election).",
        lambda v: None if v.leader is None else float(v.leader),
    ),
    ("meshenc_frames_total", "Source frames captured.", lambda v: float(v.frames)),
    (
        "meshenc_frames_skipped_total",
        "Source frames skipped after falling too far behind.",
        lambda v: float(v.skipped),
    ),
    (
        "meshenc_input_live",
        "1 while pictures arrive from the input; 0 while waiting for it or filling in a loss.",
        lambda v: None if v.source is None else float(v.source.state == "live"),
    ),
    (
        "meshenc_input_losses_total",
        "Times the input stopped for longer than the configured number of frame periods.",
        lambda v: None if v.source is None else float(v.source.losses),
    ),
    (
        "meshenc_input_errors_total",
        "Corrupt input packets and undecodable pictures skipped.",
        lambda v: (
            None if v.source is None else float(v.source.corrupt_packets + v.source.decode_errors)
        ),
    ),
    (
        "meshenc_input_arrival_jitter_seconds",
        "Arrival jitter against the source's own timestamps (RFC 3550 interarrival jitter).",
        lambda v: None if v.source is None else v.source.arrival_jitter_us / 1e6,
    ),
)


class _EncoderCollector:
    """Turns the latest :class:`_EncoderView` into metric families at scrape time.

    Values that are not finite (an estimate not made yet) are left out rather than exported
    as NaN.
    """

    def __init__(self) -> None:
        self.view: _EncoderView | None = None

    def describe(self) -> list[Metric]:
        return []  # which series exist depends on the view; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        view = self.view  # one read: the loop replaces the view whole, never mutates it
        if view is None:
            return
        for name, doc, value_of in _NEIGHBOUR_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["neighbour"])
            for neighbour in view.snapshot.neighbours:
                if math.isfinite(value := value_of(neighbour)):
                    gauge.add_metric([neighbour.neighbour], value)
            yield gauge
        connected = GaugeMetricFamily(
            "meshenc_neighbour_connected",
            "1 while an Exchange stream with the neighbour is up.",
            labels=["neighbour"],
        )
        for neighbour in view.snapshot.neighbours:
            connected.add_metric(
                [neighbour.neighbour], float(neighbour.neighbour in view.connected)
            )
        yield connected
        for name, doc in _NEIGHBOUR_COUNTERS.items():
            counter = CounterMetricFamily(name, doc, labels=["neighbour"])
            for peer, count in sorted(view.per_neighbour_counts[name].items()):
                counter.add_metric([peer], float(count))
            yield counter
        for name, doc, read in _ENCODER_GAUGES:
            reading = read(view)
            if reading is None:
                continue
            family: GaugeMetricFamily | CounterMetricFamily = (
                CounterMetricFamily(name, doc)
                if name.endswith("_total")
                else GaugeMetricFamily(name, doc)
            )
            if math.isfinite(reading):
                family.add_metric([], reading)
            yield family
        yield from _origin_families(view.origins)


def _origin_families(origins: tuple[_Origin, ...]) -> Iterator[Metric]:
    """The publishing series, one per origin URL (none while the encoder publishes nothing)."""
    for name, doc, count in _ORIGIN_SERIES if origins else ():
        series: GaugeMetricFamily | CounterMetricFamily = (
            CounterMetricFamily(name, doc, labels=["origin"])
            if name.endswith("_total")
            else GaugeMetricFamily(name, doc, labels=["origin"])
        )
        for origin in origins:
            series.add_metric([origin.url], float(count(origin)))
        yield series


_ENCODER_COLLECTOR: Final = _EncoderCollector()
_ENCODER_METRICS: Final[tuple[Collector, ...]] = (
    ENCODER_SEGMENTS_WRITTEN,
    ENCODER_SEGMENT_WRITE_SECONDS,
    ENCODER_SEGMENT_BYTES,
    ENCODER_CORRECTIONS,
    ENCODER_PROPOSALS,
    ENCODER_OUTCOMES,
    ENCODER_DECISION_SECONDS,
    ENCODER_VOTES_CAST,
    ENCODER_VOTES_RECEIVED,
    ENCODER_LEADER_CHANGES,
    ENCODER_TOPOLOGY_CHANGES,
    ENCODER_LINK_CHANGES,
    _ENCODER_COLLECTOR,
)


# ---------------------------------------------------------------------------------------------
# Encoder: spans and hooks
# ---------------------------------------------------------------------------------------------


class _Stats(Protocol):
    """What :meth:`EncoderTelemetry.observe` reads of the runtime's counters."""

    @property
    def frames(self) -> int: ...

    @property
    def skipped(self) -> int: ...


class _Links(Protocol):
    """What :meth:`EncoderTelemetry.observe` reads of the mesh links."""

    @property
    def sent(self) -> Mapping[str, int]: ...

    @property
    def received(self) -> Mapping[str, int]: ...

    @property
    def dropped_esps(self) -> Mapping[str, int]: ...

    @property
    def dropped_control(self) -> Mapping[str, int]: ...

    @property
    def peers(self) -> frozenset[str]: ...

    def connected(self, peer_id: str) -> bool: ...


@dataclass(slots=True)
class _OpenResync:
    span: Span
    context: otel_context.Context
    started: float


class EncoderTelemetry:
    """One encoder's spans and metrics; the runtime calls it at each point worth seeing.

    Args:
        node_id: the encoder's id (an attribute of every span).
        snapshot: returns the engine's snapshot now (read when a proposal is sent and once a
            second by :meth:`observe`).
        tracer: where spans go; default, the process's provider.
        max_open: resyncs tracked at once; the oldest is ended as ``abandoned`` beyond it.
    """

    def __init__(
        self,
        node_id: str,
        snapshot: Callable[[], EngineSnapshot],
        *,
        tracer: Tracer | None = None,
        max_open: int = 64,
    ) -> None:
        self.node_id = node_id
        self._snapshot = snapshot
        self._tracer = tracer or _tracer
        self._max_open = max_open
        self._open: dict[int, _OpenResync] = {}
        self._leader: str | None = None
        self._leads: bool | None = None
        _enable("encoder", *_ENCODER_METRICS)

    # -- resync: the proposer's side ----------------------------------------------------------

    def on_action(self, action: Action) -> Action:
        """Record an engine action; a SendProposal comes back with its trace context."""
        if isinstance(action, SendProposal):
            return replace(action, proposal=self._proposed(action.proposal, action.to))
        if isinstance(action, CorrectionApplied):
            ENCODER_CORRECTIONS.labels(action.kind.value).inc()
            self._correct(
                action.proposal_id,
                {
                    "meshenc.correction.kind": action.kind.value,
                    "meshenc.correction.shift_seconds": action.shift,
                    "meshenc.correction.new_rate": action.new_rate,
                    "meshenc.correction.lead_seconds": action.lead,
                },
            )
        elif isinstance(action, ParametersAgreed):
            ENCODER_CORRECTIONS.labels("parameter").inc()
            self._correct(
                action.proposal_id,
                {
                    "meshenc.correction.kind": "parameter",
                    "meshenc.parameters.bitrate_kbps": action.change.bitrate_kbps,
                    "meshenc.parameters.effective_segment": action.change.effective_segment,
                },
            )
        elif isinstance(action, Escalate):
            outcome = action.outcome
            self._finish(
                outcome.proposal.proposal_id,
                outcome.verdict.value,
                {
                    "meshenc.resync.approvals": sorted(outcome.approvals),
                    "meshenc.resync.rejections": sorted(outcome.rejections),
                },
            )
        return action

    def _proposed(self, proposal: ResyncProposal, to: tuple[str, ...]) -> ResyncProposal:
        ENCODER_PROPOSALS.labels(proposal.kind.value).inc()
        snap = self._snapshot()
        span = self._tracer.start_span(
            "resync",
            context=otel_context.Context(),  # a root: not part of the stream it may arrive on
            kind=SpanKind.INTERNAL,
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.resync.proposer": proposal.proposer,
                "meshenc.resync.proposal_id": proposal.proposal_id,
                "meshenc.resync.kind": proposal.kind.value,
                "meshenc.resync.shift_seconds": proposal.shift,
                "meshenc.resync.electorate": list(to),
                "meshenc.resync.error_seconds": snap.error,
                "meshenc.resync.predicted_error_seconds": snap.predicted_error,
                "meshenc.resync.locked": snap.locked,
                "meshenc.topology.epoch": proposal.topology_epoch,
            },
        )
        if proposal.bitrate_kbps:
            span.set_attribute("meshenc.parameters.bitrate_kbps", proposal.bitrate_kbps)
            span.set_attribute("meshenc.parameters.effective_segment", proposal.effective_segment)
        ctx = trace.set_span_in_context(span, otel_context.Context())
        stale = self._open.pop(proposal.proposal_id, None)
        if stale is not None:  # an id reused while still tracked: cannot happen in the engine
            stale.span.set_attribute("meshenc.resync.verdict", "abandoned")
            stale.span.end()
        self._open[proposal.proposal_id] = _OpenResync(span, ctx, time.perf_counter())
        while len(self._open) > self._max_open:
            oldest = next(iter(self._open))
            self._finish(oldest, "abandoned", {})
        return replace(proposal, trace_context=inject_trace_context(ctx))

    def vote_received(self, vote: ResyncVote) -> None:
        """A neighbour's vote on one of this encoder's proposals arrived."""
        verdict = "approve" if vote.approve else "reject"
        ENCODER_VOTES_RECEIVED.labels(verdict).inc()
        resync = self._open.get(vote.proposal_id)
        if resync is None or vote.proposer != self.node_id:
            return
        parent = extract_trace_context(vote.trace_context)
        span = self._tracer.start_span(
            "resync.vote.count",
            context=parent if _has_span(parent) else resync.context,
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.resync.proposal_id": vote.proposal_id,
                "meshenc.resync.voter": vote.voter,
                "meshenc.resync.approve": vote.approve,
                "meshenc.resync.reason": vote.reason,
            },
        )
        span.end()

    def _correct(self, proposal_id: int, attributes: dict[str, Any]) -> None:
        resync = self._open.get(proposal_id) if proposal_id else None
        if resync is None:
            return  # a correction small enough to need no vote: counted, not traced
        span = self._tracer.start_span(
            "resync.correct",
            context=resync.context,
            attributes={"meshenc.node": self.node_id, **attributes},
        )
        span.end()
        self._finish(proposal_id, Verdict.ACCEPTED.value, {})

    def _finish(self, proposal_id: int, verdict: str, attributes: dict[str, Any]) -> None:
        if verdict != "abandoned":
            ENCODER_OUTCOMES.labels(verdict).inc()
        resync = self._open.pop(proposal_id, None)
        if resync is None:
            return
        if verdict != "abandoned":
            ENCODER_DECISION_SECONDS.observe(time.perf_counter() - resync.started)
        span = resync.span
        span.set_attributes({"meshenc.resync.verdict": verdict, **attributes})
        if verdict == Verdict.EXPIRED.value:
            span.set_status(Status(StatusCode.ERROR, "no majority answered in time"))
        span.end()

    # -- resync: the voter's side -------------------------------------------------------------

    def vote_cast(self, proposal: ResyncProposal, vote: ResyncVote) -> ResyncVote:
        """This encoder voted on a neighbour's proposal; the vote to send, with its context."""
        ENCODER_VOTES_CAST.labels("approve" if vote.approve else "reject").inc()
        span = self._tracer.start_span(
            "resync.vote",
            context=extract_trace_context(proposal.trace_context),
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.resync.proposer": proposal.proposer,
                "meshenc.resync.proposal_id": proposal.proposal_id,
                "meshenc.resync.kind": proposal.kind.value,
                "meshenc.resync.shift_seconds": proposal.shift,
                "meshenc.resync.approve": vote.approve,
                "meshenc.resync.estimated_deviation_seconds": vote.estimated_deviation,
                "meshenc.resync.reason": vote.reason,
            },
        )
        span.end()
        ctx = trace.set_span_in_context(span, otel_context.Context())
        return replace(vote, trace_context=inject_trace_context(ctx))

    # -- other events -------------------------------------------------------------------------

    def leader_changed(self, election: ElectionSnapshot) -> None:
        """The election reported its state; a new leader is a span and a count."""
        self._leads = election.role is Role.LEADER
        if election.leader == self._leader:
            return
        previous, self._leader = self._leader, election.leader
        ENCODER_LEADER_CHANGES.inc()
        span = self._tracer.start_span(
            "leader.change",
            context=otel_context.Context(),
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.leader.previous": previous or "",
                "meshenc.leader.current": election.leader or "",
                "meshenc.leader.role": election.role.value,
                "meshenc.leader.token": election.token,
                "meshenc.leader.degraded": election.degraded,
            },
        )
        span.end()

    def link_changed(self, peer: str, up: bool) -> None:
        """An Exchange stream with ``peer`` came up or went down."""
        ENCODER_LINK_CHANGES.labels("up" if up else "down").inc()

    def segment_written(self, path: Path, started_ns: int, ended_ns: int) -> None:
        """A segment file appeared; the write took from ``started_ns`` to ``ended_ns``."""
        seconds = (ended_ns - started_ns) / 1e9
        ENCODER_SEGMENTS_WRITTEN.inc()
        ENCODER_SEGMENT_WRITE_SECONDS.observe(seconds)
        size = -1
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            ENCODER_SEGMENT_BYTES.observe(size)
        span = self._tracer.start_span(
            "segment.write",
            context=otel_context.Context(),
            start_time=started_ns,
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.segment.file": path.name,
                "meshenc.segment.bytes": size,
            },
        )
        span.end(end_time=ended_ns)

    def observe(
        self,
        links: _Links,
        stats: _Stats,
        load: tuple[float, float],
        source: mesh_pb2.InputStatus | None = None,
        origins: Sequence[_Origin] = (),
    ) -> None:
        """Copy the encoder's state for the next scrapes (call about once a second)."""
        _ENCODER_COLLECTOR.view = _EncoderView(
            snapshot=self._snapshot(),
            connected=frozenset(p for p in links.peers if links.connected(p)),
            per_neighbour_counts={
                "meshenc_mesh_messages_sent_total": dict(links.sent),
                "meshenc_mesh_messages_received_total": dict(links.received),
                "meshenc_esp_dropped_total": dict(links.dropped_esps),
                "meshenc_mesh_control_dropped_total": dict(links.dropped_control),
            },
            frames=stats.frames,
            skipped=stats.skipped,
            cpu_load=load[0],
            encode_latency=load[1],
            leader=self._leads,
            source=source,
            origins=tuple(origins),
        )

    def close(self) -> None:
        """End the resync spans still open (the encoder is stopping)."""
        for proposal_id in list(self._open):
            self._finish(proposal_id, "abandoned", {})


def topology_changed(node_id: str, before: frozenset[str], after: frozenset[str]) -> None:
    """An encoder's neighbour set changed from ``before`` to ``after`` (no-op if equal)."""
    if before == after:
        return
    ENCODER_TOPOLOGY_CHANGES.inc()
    span = _tracer.start_span(
        "topology.change",
        context=otel_context.Context(),
        attributes={
            "meshenc.node": node_id,
            "meshenc.topology.added": sorted(after - before),
            "meshenc.topology.removed": sorted(before - after),
            "meshenc.topology.neighbours": len(after),
        },
    )
    span.end()


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

REGISTRY_CONTACTS: Final = Gauge(
    "meshenc_registry_contacts",
    "Registry nodes in this node's Kademlia routing table.",
    registry=None,
)
REGISTRY_RECORDS: Final = Gauge(
    "meshenc_registry_records",
    "Encoder records this registry node holds.",
    registry=None,
)


def watch_registry(contacts: Callable[[], int], records: Callable[[], int]) -> None:
    """Report a registry node's routing-table and record counts at every scrape.

    The callables run on the scrape thread: they must only read sizes (``len`` of a dict is
    atomic in CPython), never walk structures the event loop changes.
    """
    _enable("registry", REGISTRY_CONTACTS, REGISTRY_RECORDS)
    REGISTRY_CONTACTS.set_function(lambda: float(contacts()))
    REGISTRY_RECORDS.set_function(lambda: float(records()))


# ---------------------------------------------------------------------------------------------
# Manager
# ---------------------------------------------------------------------------------------------

MANAGER_PLAN_SECONDS: Final = Histogram(
    "meshenc_manager_plan_seconds",
    "Time the Mesh Manager took to compute one plan (topology, segments, placement).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
    registry=None,
)
MANAGER_PLANS: Final = Counter(
    "meshenc_manager_plans_total",
    "Plans the Mesh Manager computed, by outcome (ok, error).",
    ["outcome"],
    registry=None,
)


MANAGER_DECISIONS: Final = Counter(
    "meshenc_manager_decisions_total",
    "Decisions the Mesh Manager's plans produced, by kind (TopologyChanged, ...).",
    ["kind"],
    registry=None,
)


_D = TypeVar("_D", bound=Sequence[object])


class Plan:
    """One planning step in progress; :meth:`record` notes what it decided."""

    __slots__ = ("decisions",)

    def __init__(self) -> None:
        self.decisions: tuple[str, ...] = ()

    def record(self, decisions: _D) -> _D:
        """Note the decisions (by type name) and hand them back unchanged."""
        self.decisions = tuple(type(decision).__name__ for decision in decisions)
        return decisions


@contextlib.contextmanager
def planning(trigger: str) -> Iterator[Plan]:
    """Time one Mesh Manager planning step (``trigger``: ``tick``, ``escalation``, ...).

    Every step is timed and counted; a step that decided something, or failed, is also a
    ``manager.plan`` span (a tick that changes nothing every second would only be noise).
    """
    _enable("manager", MANAGER_PLAN_SECONDS, MANAGER_PLANS, MANAGER_DECISIONS)
    plan = Plan()
    started_ns = time.time_ns()
    started = time.perf_counter()
    outcome = "error"
    try:
        yield plan
        outcome = "ok"
    finally:
        MANAGER_PLAN_SECONDS.observe(time.perf_counter() - started)
        MANAGER_PLANS.labels(outcome).inc()
        for kind in plan.decisions:
            MANAGER_DECISIONS.labels(kind).inc()
        if plan.decisions or outcome == "error":
            span = _tracer.start_span(
                "manager.plan",
                context=otel_context.Context(),
                start_time=started_ns,
                attributes={
                    "meshenc.plan.trigger": trigger,
                    "meshenc.plan.decisions": list(plan.decisions),
                },
            )
            if outcome == "error":
                span.set_status(Status(StatusCode.ERROR, "the planning step raised"))
            span.end()
