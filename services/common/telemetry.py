"""Traces and metrics plumbing that every meshenc service shares.

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
context as W3C ``traceparent``/``tracestate`` pairs (:func:`inject_trace_context`,
:func:`extract_trace_context`): the encoder's resync proposals and votes do.

*Metrics* are Prometheus metrics named ``meshenc_*`` with their unit in the name, in one
registry (:data:`REGISTRY`, which also carries the process collectors). Each service defines
its own next to it (``services.<service>.telemetry``) and enables them with
:func:`enable_metrics` when it first uses them, so a process shows its own service's metrics
only; the gRPC ones are here. :func:`start_metrics_server` serves the registry over HTTP at
``HOST:PORT`` (``MESHENC_METRICS_LISTEN``).

Invariants: nothing here changes what a service decides; every hook is safe to call with
tracing off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Final

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
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
    start_http_server,
)
from prometheus_client.registry import Collector

from meshenc.wire.address import parse_address

__all__ = [
    "REGISTRY",
    "TRACER",
    "TRACER_NAME",
    "MetricsServer",
    "TraceContext",
    "client_interceptors",
    "enable_metrics",
    "extract_trace_context",
    "has_span",
    "inject_trace_context",
    "parse_listen",
    "running",
    "server_interceptors",
    "setup_tracing",
    "shutdown",
    "start_metrics_server",
    "tracer_provider_from_env",
]

log = logging.getLogger("meshenc.telemetry")

TRACER_NAME: Final = "meshenc"
"""The instrumentation scope of meshenc's own spans."""

TraceContext = tuple[tuple[str, str], ...]
"""W3C trace headers as messages carry them (``ResyncProposal.trace_context``)."""

TRACER: Final[Tracer] = trace.get_tracer(TRACER_NAME)
"""meshenc's own spans: a proxy until :func:`setup_tracing` installs a provider, then real."""

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


def has_span(ctx: otel_context.Context) -> bool:
    """Whether ``ctx`` names a span (a parent worth starting a child of)."""
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


def enable_metrics(group: str, *collectors: Collector) -> None:
    """Register a service's metrics in :data:`REGISTRY`, once per process.

    Each service defines its metrics next to it, but only the groups a process uses are
    exposed: an encoder's endpoint shows no registry metrics stuck at zero.
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
    enable_metrics("grpc", GRPC_HANDLED, GRPC_HANDLING_SECONDS)
    tracing = _otel_grpc.aio_server_interceptor(
        tracer_provider, filter_=negate(_EXCLUDED_FROM_TRACING)
    )
    return [tracing, _GrpcMetricsInterceptor()]


def client_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """Tracing for a ``grpc.aio`` channel (the context travels in the call's metadata)."""
    return list(
        _otel_grpc.aio_client_interceptors(tracer_provider, filter_=negate(_EXCLUDED_FROM_TRACING))
    )
