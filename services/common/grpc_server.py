"""The gRPC server shell every meshenc service runs in, and the channel options that match it.

Theory of operation: a service hands :class:`GrpcServer` the full names of its services and a
function per service that adds its servicer to a ``grpc.aio`` server. ``start`` creates the
server inside the running event loop (grpc.aio binds servers and channels to the loop that
creates them), adds those servicers, the standard health service (``grpc.health.v1.Health``)
and server reflection, binds the listen address and reports every service, and the server as
a whole (``""``), SERVING. ``stop`` first reports everything NOT_SERVING, so that probes and
load balancers stop sending new work, then stops the server, letting running calls finish for
``grace`` seconds.

Every server gets, outermost, ``StreamEnd`` (a stream the server ends reaches a client
that is still sending with its status, not INTERNAL), then the tracing and metrics interceptors
of ``services.common.telemetry`` (health checks left out), then ``PeerLimiter`` (per-peer open
streams and messages per second beyond its :class:`~services.common.peer_limits.PeerLimits`
end with RESOURCE_EXHAUSTED) and, innermost, ``ParseGuard`` (a request whose bytes do not
parse ends its call with INVALID_ARGUMENT and a rate-limited log line). Every channel made by
:func:`open_channel` gets the tracing ones, so each RPC is one trace from client to server and
is counted by method and status code.

Message sizes are bounded on both ends: a request may be at most :data:`MAX_REQUEST_BYTES`
(a server refuses a larger one with RESOURCE_EXHAUSTED before parsing it, a channel will not
send it), an answer at most :data:`MAX_RESPONSE_BYTES` (the whole mesh's topology is the
largest).

Given :class:`~services.common.tls.TlsFiles`, a server speaks mutual TLS only (client
certificates required, ``IdentityRequired`` right after ``StreamEnd``) and a channel
presents its certificate; without them both speak plaintext. Kubernetes' gRPC probes cannot
present a certificate, so a TLS server may also serve the health service alone, in plaintext,
on a port of its own (``health_listen``); the application services are never reachable there.

Keepalive is set on both ends from one set of constants: a client that pings more often than
the server permits is sent GOAWAY ``too_many_pings`` and loses every call on the connection.
The invariant, checked at import, is that the client's ping interval is at least the minimum
interval the server accepts. Long-lived streams (the mesh Exchange) carry data most of the
time; pings matter on idle or silently dead connections, where they end the calls within
``keepalive time + keepalive timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

from services.common import telemetry
from services.common.parse_guard import ParseGuard
from services.common.peer_limits import PeerLimiter, PeerLimits
from services.common.stream_end import StreamEnd
from services.common.tls import IdentityRequired, TlsFiles, channel_credentials, server_credentials

__all__ = [
    "CHANNEL_OPTIONS",
    "CLIENT_KEEPALIVE_TIMEOUT_MS",
    "CLIENT_KEEPALIVE_TIME_MS",
    "MAX_RECONNECT_BACKOFF_MS",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MESSAGE_SIZE_OPTIONS",
    "SERVER_KEEPALIVE_TIMEOUT_MS",
    "SERVER_KEEPALIVE_TIME_MS",
    "SERVER_MIN_PING_INTERVAL_MS",
    "SERVER_OPTIONS",
    "GrpcServer",
    "Registrar",
    "insecure_channel",
    "open_channel",
]

log = logging.getLogger("meshenc.grpc")

CLIENT_KEEPALIVE_TIME_MS: Final = 10_000
"""A client pings its connection after this long (ms) and keeps pinging at this interval."""
CLIENT_KEEPALIVE_TIMEOUT_MS: Final = 5_000
"""A client closes its connection when a ping is not answered within this time (ms)."""
SERVER_MIN_PING_INTERVAL_MS: Final = 5_000
"""The shortest interval (ms) between client pings that the server tolerates; half the
client's interval, so that timer jitter never counts as a strike."""
SERVER_KEEPALIVE_TIME_MS: Final = 30_000
"""The server pings each connection after this long (ms), to find clients that vanished."""
SERVER_KEEPALIVE_TIMEOUT_MS: Final = 10_000
"""The server closes a connection whose ping is not answered within this time (ms)."""
MAX_RECONNECT_BACKOFF_MS: Final = 2_000
"""Upper bound (ms) of a channel's own reconnect backoff (gRPC's default is 120 s)."""

if CLIENT_KEEPALIVE_TIME_MS < SERVER_MIN_PING_INTERVAL_MS:  # pragma: no cover - a constant
    raise AssertionError("clients would ping more often than servers permit (too_many_pings)")

MAX_REQUEST_BYTES: Final = 1 << 20
"""The largest request message (1 MiB) a server takes and a channel sends; the largest valid
one, an escalation with every vote and trace context at its maximum, is about a third of it."""
MAX_RESPONSE_BYTES: Final = 16 << 20
"""The largest answer (16 MiB) a server sends and a channel takes: the topology of a mesh of
tens of thousands of encoders."""

Option = tuple[str, int]

SERVER_OPTIONS: Final[tuple[Option, ...]] = (
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client pings at the clients' interval, with or without calls and data.
    ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
    ("grpc.http2.min_time_between_pings_ms", SERVER_MIN_PING_INTERVAL_MS),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
)
"""Options of every meshenc server (``grpc.aio.server(options=...)``)."""

MIN_CONNECT_TIMEOUT_MS: Final = 2_000
"""How long one connection attempt may take at least (``grpc.min_reconnect_backoff_ms``, which
gRPC also takes as the shortest connection attempt), on every channel: a TCP and HTTP/2
handshake needs a round trip or more, and at 100 ms a server far enough away was never
reached, since every new channel started over at 100 ms. Measured twice: an etcd 150 ms away
(encoders never held a session, no leader was elected), and mesh links over bridges of 120
and 150 ms one way (``meshenc bench regions``' world: two of its six bridges never came up,
``connection attempt timed out before receiving SETTINGS frame``). A refused connection still
fails at once; the reconnect backoff still starts at 100 ms."""

CHANNEL_OPTIONS: Final[tuple[Option, ...]] = (
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    # gRPC also takes this as the shortest time one connection attempt may take: servers may
    # be far away (MIN_CONNECT_TIMEOUT_MS).
    ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
)
"""Options of every channel (to a meshenc server, and to etcd); they match
:data:`SERVER_OPTIONS`."""

MESSAGE_SIZE_OPTIONS: Final[tuple[Option, ...]] = (
    ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
)
"""The message sizes of every channel to a meshenc server (:func:`open_channel`)."""

Registrar = Callable[[Any], None]
"""Adds one servicer to a ``grpc.aio.Server`` (e.g. a bound ``add_XServicer_to_server``)."""


def insecure_channel(target: str, *, interceptors: Sequence[Any] = ()) -> Any:
    """A ``grpc.aio`` channel to ``target`` with :data:`CHANNEL_OPTIONS`, traced.

    Call it inside the running event loop that will use the channel. ``interceptors`` run
    after the tracing ones (``services.common.telemetry``).
    """
    return open_channel(target, interceptors=interceptors)


def open_channel(
    target: str,
    *,
    tls: TlsFiles | None = None,
    server_name: str | None = None,
    interceptors: Sequence[Any] = (),
) -> Any:
    """A ``grpc.aio`` channel to ``target`` with :data:`CHANNEL_OPTIONS`, traced; mutual TLS
    with ``tls``'s files, plaintext without.

    Call it inside the running event loop that will use the channel. ``server_name`` is the
    identity the server's certificate must carry (a DNS name of it), when the caller knows
    whom it dials (a neighbour's id, :data:`~services.common.tls.MANAGER`); otherwise the
    certificate must be valid for the host in ``target``. ``interceptors`` run after the
    tracing ones (``services.common.telemetry``).
    """
    every = [*telemetry.client_interceptors(), *interceptors]
    options: list[tuple[str, Any]] = [*CHANNEL_OPTIONS, *MESSAGE_SIZE_OPTIONS]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=every)
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        target, channel_credentials(tls), options=options, interceptors=every
    )


class GrpcServer:
    """A ``grpc.aio`` server with health and reflection, started and stopped as one.

    Args:
        services: full service name (e.g. ``"meshenc.v1.EncoderMesh"``) to the function that
            adds its servicer to the server. Each name gets its own health status.
        interceptors: ``grpc.aio.ServerInterceptor`` instances, run after the tracing and
            metrics ones every server gets (``services.common.telemetry``).
        options: server options; :data:`SERVER_OPTIONS` unless a test needs otherwise.
        tls: serve mutual TLS with these files (client certificates required); plaintext
            when None.
        limits: what one peer may open and send (:class:`PeerLimits`' defaults when None).
        weigh: how many messages a request counts for against ``limits`` (one that carries
            several, like a mesh batch, counts each); 1 each when None.
    """

    def __init__(
        self,
        services: Mapping[str, Registrar],
        *,
        interceptors: Sequence[Any] = (),
        options: Sequence[Option] = SERVER_OPTIONS,
        tls: TlsFiles | None = None,
        limits: PeerLimits | None = None,
        weigh: Callable[[object], int] | None = None,
    ) -> None:
        self._services = dict(services)
        first = [IdentityRequired()] if tls is not None else []
        #: The per-peer limits in force (its ``refused`` counts the refusals).
        self.limiter = PeerLimiter(limits, weigh=weigh)
        self._interceptors = [
            StreamEnd(),
            *first,
            *telemetry.server_interceptors(),
            *interceptors,
            self.limiter,
            ParseGuard(),
        ]
        self._options = list(options)
        self._tls = tls
        self._server: Any = None
        self._health_server: Any = None
        self._health: Any = None
        self._port: int | None = None
        self._health_port: int | None = None

    @property
    def port(self) -> int | None:
        """The bound port while the server runs; ``None`` before ``start`` and after ``stop``."""
        return self._port

    @property
    def health_port(self) -> int | None:
        """The bound plaintext health-only port while the server runs, if it has one."""
        return self._health_port

    @property
    def service_names(self) -> tuple[str, ...]:
        """The application services this server carries (health and reflection excluded)."""
        return tuple(self._services)

    async def start(self, listen: str, *, health_listen: str | None = None) -> int:
        """Bind ``listen`` (``host:port``; port 0 picks a free one) and start serving.

        ``0.0.0.0:PORT`` or ``[::]:PORT`` serve every interface, as Kubernetes probes, which
        reach the pod IP, need. ``health_listen``, when given, serves the health service alone
        in plaintext (for probes that cannot speak TLS); see :attr:`health_port`.

        Returns:
            The bound port.

        Raises:
            RuntimeError: already started, or an address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("server already started")
        server = grpc.aio.server(interceptors=self._interceptors, options=self._options)
        for register in self._services.values():
            register(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        credentials = server_credentials(self._tls) if self._tls is not None else None
        port = _bind(server, listen, credentials)
        health_server = None
        if health_listen is not None:
            health_server = grpc.aio.server(options=self._options)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            self._health_port = _bind(health_server, health_listen, None)
        await server.start()
        if health_server is not None:
            await health_server.start()
        for name in ("", *self._services):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._health, self._port = server, health_servicer, port
        self._health_server = health_server
        log.info(
            "serving %s on port %d (%s)%s",
            ", ".join(self._services) or "nothing",
            port,
            "mutual TLS" if self._tls is not None else "plaintext",
            f", health alone on port {self._health_port}" if health_server is not None else "",
        )
        return port

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report one service (``""`` for the whole server) SERVING or NOT_SERVING."""
        if self._health is None:
            raise RuntimeError("server not started")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set(service, status)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, then stop, giving running calls ``grace`` seconds to finish.

        Safe to call when the server never started or already stopped.
        """
        server, health_servicer, health_server = self._server, self._health, self._health_server
        if server is None:
            return
        self._server = self._health = self._port = None
        self._health_server = self._health_port = None
        await health_servicer.enter_graceful_shutdown()
        if health_server is not None:
            await health_server.stop(0)
        await server.stop(grace)


def _bind(server: Any, listen: str, credentials: Any) -> int:
    """Add ``listen`` to ``server`` (TLS with ``credentials``, else plaintext); the port."""
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {listen!r}: {exc}") from exc
    if not port:  # older grpcio reports a failed bind as port 0
        raise RuntimeError(f"cannot listen on {listen!r}")
    return int(port)
