"""``meshenc health-check``: ask a server's standard gRPC health service whether it is SERVING.

The Helm chart's ``helm test`` hook runs it against every service of a release, and on-call can
run it from any pod of the image, which carries no grpcurl. One ``grpc.health.v1.Health/Check``
over an insecure channel, no retries: a probe that answers "not now" is the answer.

Exit status: 0 SERVING; 1 the server answered, but not SERVING (NOT_SERVING, an unknown
service, no health service); 3 no answer (unreachable, timed out, any other RPC failure);
2 bad arguments.
"""

from __future__ import annotations

import click

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
@click.pass_context
def health_check(ctx: click.Context, address: str, service: str, timeout: float) -> None:
    """Exit 0 when the server at ADDRESS (HOST:PORT) reports SERVICE SERVING.

    SERVICE is a full gRPC service name such as meshenc.v1.EncoderMesh; without it the server
    as a whole is checked. Exit 1: answered, not SERVING; 3: no answer; 2: bad arguments.
    """
    status, message = check_health(address, service, timeout)
    click.echo(message, err=status != EXIT_SERVING)
    ctx.exit(status)
