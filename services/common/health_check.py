"""Ask a server's standard gRPC health service (``grpc.health.v1.Health``) whether it is SERVING.

The probe next to the health service every server carries (``services.common.grpc_server``):
one ``Check`` over a plaintext channel (a server's main port in ``--insecure`` mode, or its
plaintext health-only port) or, given TLS files, a mutual TLS one; no retries — a server that
answers "not now" has answered. ``meshenc health-check``, the local launcher's readiness wait
and the chart's ``helm test`` hook all ask through it.

Exit statuses (also the command's): 0 SERVING; 1 the server answered, but not SERVING
(NOT_SERVING, an unknown service, no health service); 3 no answer (unreachable, timed out, any
other RPC failure).
"""

from __future__ import annotations

from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from services.common.grpc_server import MESSAGE_SIZE_OPTIONS
from services.common.tls import TlsFiles, channel_credentials

__all__ = ["EXIT_NOT_SERVING", "EXIT_NO_ANSWER", "EXIT_SERVING", "check_health"]

EXIT_SERVING: Final = 0
EXIT_NOT_SERVING: Final = 1
"""The server answered, and the service is not SERVING (or unknown to it)."""
EXIT_NO_ANSWER: Final = 3
"""No answer from the server: unreachable, timed out or failed (2 is click's usage error)."""

_ANSWERED_WITHOUT_STATUS: Final = {
    grpc.StatusCode.NOT_FOUND: "does not know the service",
    grpc.StatusCode.UNIMPLEMENTED: "serves no grpc.health.v1.Health",
}


def check_health(
    address: str, service: str, timeout: float, tls: TlsFiles | None = None
) -> tuple[int, str]:
    """One health check of ``service`` (``""``: the whole server) at ``address``; with
    ``tls``, over mutual TLS (the certificate must be valid for the host of ``address``).

    Returns:
        The exit status (:data:`EXIT_SERVING`, :data:`EXIT_NOT_SERVING` or
        :data:`EXIT_NO_ANSWER`) and a one-line message that says what was found.
    """
    subject = f"{address} {service or '(server)'}"
    # gRPC's default channel options, not the mesh links' fast-reconnect ones: a connection
    # that does not complete within the timeout is "no answer", not "cannot reach". The
    # message sizes are every meshenc channel's.
    options = list(MESSAGE_SIZE_OPTIONS)
    channel = (
        grpc.insecure_channel(address, options=options)
        if tls is None
        else grpc.secure_channel(address, channel_credentials(tls), options=options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code in _ANSWERED_WITHOUT_STATUS:
                return EXIT_NOT_SERVING, f"{subject}: {_ANSWERED_WITHOUT_STATUS[code]}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return EXIT_NO_ANSWER, f"{subject}: no answer within {timeout:g} s"
            if code == grpc.StatusCode.UNAVAILABLE:
                return EXIT_NO_ANSWER, f"{subject}: cannot reach the server: {details}"
            return EXIT_NO_ANSWER, f"{subject}: health check failed: {code.name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING, f"{subject}: {status}"
    return EXIT_NOT_SERVING, f"{subject}: {status}"
