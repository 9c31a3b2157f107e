"""``meshenc certs``: a development CA and a certificate and key per identity (mutual TLS).

Writes ``ca.crt`` and ``ca.key`` (kept, so that running it again for new names signs them with
the same CA) and ``NAME.crt``/``NAME.key`` for each name: an encoder's name is its id, and
``operator``, ``manager`` and ``registry`` are the identities of the command line, the manager
and every registry node (``services.common.tls``). Each certificate carries
``URI:meshenc://NAME`` (the identity the services read), ``DNS:NAME``, and ``localhost``,
``127.0.0.1`` and ``::1``.
"""

from __future__ import annotations

from pathlib import Path

import click

from services.common.certs import DEFAULT_VALID_DAYS, make_certificates

__all__ = ["certs"]


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for ca.crt, ca.key and NAME.crt/NAME.key (created; a CA already there is kept).",
)
@click.option(
    "--names",
    required=True,
    help="Identities to certify, comma-separated: encoder ids, operator, manager, registry.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1, max=3650),
    default=DEFAULT_VALID_DAYS,
    show_default=True,
    help="Days the certificates (and a new CA) are valid.",
)
def certs(out: Path, names: str, days: int) -> None:
    """Make a development CA and one certificate and key per name in --out.

    Services take them as --tls-ca OUT/ca.crt --tls-cert OUT/NAME.crt --tls-key OUT/NAME.key;
    grpcurl as -cacert, -cert and -key. Not for production: the CA key stays in OUT.
    """
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise click.UsageError("--names needs at least one name")
    try:
        made = make_certificates(out, wanted, days=days)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"CA {made.ca}")
    for name in wanted:
        files = made.files(name)
        click.echo(f"{name}: {files.cert} {files.key}")
