"""``meshenc health-check``: ask a server's standard gRPC health service whether it is SERVING.

The Helm chart's ``helm test`` hook runs it against every service of a release, and on-call can
run it from any pod of the image, which carries no grpcurl. One ``grpc.health.v1.Health/Check``
over a plaintext channel (a service's ``--health-listen`` port, or its main port under
``--insecure``), or over mutual TLS with ``--tls-ca``, ``--tls-cert`` and ``--tls-key``; no
retries: a probe that answers "not now" is the answer.

Exit status: 0 SERVING; 1 the server answered, but not SERVING (NOT_SERVING, an unknown
service, no health service); 3 no answer (unreachable, timed out, any other RPC failure);
2 bad arguments.
"""

from __future__ import annotations

from pathlib import Path

import click

from meshenc.cli.service_options import optional_tls_files, tls_file_options
from meshenc.wire.address import check_address
from services.common.health_check import EXIT_SERVING, check_health

__all__ = ["health_check"]


def _address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_address(value, "address")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("health-check")
@click.argument("address", callback=_address)
@click.argument("service", default="")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0, max=3600.0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
@tls_file_options
@click.pass_context
def health_check(
    ctx: click.Context,
    address: str,
    service: str,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Exit 0 when the server at ADDRESS (HOST:PORT) reports SERVICE SERVING.

    SERVICE is a full gRPC service name such as meshenc.v1.EncoderMesh; without it the server
    as a whole is checked. Plaintext (a --health-listen port) unless the three --tls-* files
    are given. Exit 1: answered, not SERVING; 3: no answer; 2: bad arguments.
    """
    tls = optional_tls_files(tls_ca, tls_cert, tls_key)
    status, message = check_health(address, service, timeout, tls)
    click.echo(message, err=status != EXIT_SERVING)
    ctx.exit(status)
