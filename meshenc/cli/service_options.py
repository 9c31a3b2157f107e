"""What the service commands (``meshenc encoder``, ``registry``, ``manager``) share.

- :func:`etcd_options` and :func:`etcd_settings`: the etcd flags, the same for every service
  that uses etcd, into one :class:`~services.common.etcd.EtcdSettings`;
- :func:`settings_error`: a settings model's validation errors as one usage error that names
  each setting;
- :data:`metrics_listen_option`, :data:`log_level_option` and :func:`configure_logging`: the
  flags every service has, and its log format (each line names the service or node);
- :func:`service_telemetry`: tracing and the metrics endpoint around the service, with an
  address that cannot be served (a taken port) reported as a clean error, not a traceback;
- :func:`tls_options` and :func:`tls_files`: mutual TLS (``--tls-ca``, ``--tls-cert``,
  ``--tls-key``) or, only when asked for, plaintext (``--insecure``), for services and for the
  commands that call them; :func:`tls_file_options` and :func:`optional_tls_files`, the same
  three files for a command that is plaintext without them (``meshenc health-check``);
  :data:`health_listen_option`, the plaintext health-only port;
- :func:`peer_limit_options` and :func:`peer_limits`: what one peer may open and send
  (``--max-streams-per-peer``, ``--max-messages-per-peer``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from services.common import telemetry
from services.common.etcd import DEFAULT_ETCD_PREFIX, EtcdSettings, parse_endpoints
from services.common.peer_limits import (
    DEFAULT_MAX_MESSAGES_PER_SECOND,
    DEFAULT_MAX_STREAMS,
    PeerLimits,
)
from services.common.tls import TlsFiles

__all__ = [
    "configure_logging",
    "etcd_options",
    "etcd_settings",
    "health_listen_option",
    "log_level_option",
    "metrics_listen_option",
    "optional_tls_files",
    "peer_limit_options",
    "peer_limits",
    "service_telemetry",
    "settings_error",
    "tls_file_options",
    "tls_files",
    "tls_options",
]

F = TypeVar("F", bound=Callable[..., Any])

metrics_listen_option = click.option(
    "--metrics-listen",
    envvar="MESHENC_METRICS_LISTEN",
    default=None,
    help="HOST:PORT to serve Prometheus metrics on, e.g. 0.0.0.0:9464 (off when unset). "
    "Traces follow the standard OTEL_* variables.",
)
"""``--metrics-listen``: where the service serves Prometheus metrics."""

log_level_option = click.option(
    "--log-level",
    envvar="MESHENC_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
"""``--log-level``: the least severe log lines the service writes."""


health_listen_option = click.option(
    "--health-listen",
    envvar="MESHENC_HEALTH_LISTEN",
    default=None,
    help="HOST:PORT to serve the gRPC health service alone on, in plaintext, for probes that "
    "cannot present a certificate (e.g. Kubernetes grpc probes); off when unset.",
)
"""``--health-listen``: the plaintext port that serves ``grpc.health.v1.Health`` and nothing
else."""


def peer_limit_options(command: F) -> F:
    """``--max-streams-per-peer`` and ``--max-messages-per-peer`` (read by
    :func:`peer_limits`)."""
    options = [
        click.option(
            "--max-streams-per-peer",
            envvar="MESHENC_MAX_STREAMS_PER_PEER",
            type=int,
            default=DEFAULT_MAX_STREAMS,
            show_default=True,
            help="Streams one peer (a certificate's identity at an IP address; in plaintext, "
            "the IP address) may have open at once; more are refused with RESOURCE_EXHAUSTED.",
        ),
        click.option(
            "--max-messages-per-peer",
            envvar="MESHENC_MAX_MESSAGES_PER_PEER",
            type=float,
            default=DEFAULT_MAX_MESSAGES_PER_SECOND,
            show_default=True,
            help="Request messages per second one peer may send (bursts of two seconds' "
            "worth); a call that goes beyond ends with RESOURCE_EXHAUSTED.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_TLS_FILE_OPTIONS = (
    click.option(
        "--tls-ca",
        envvar="MESHENC_TLS_CA",
        type=click.Path(dir_okay=False, path_type=Path),
        help="CA certificate that signs every meshenc certificate (mutual TLS).",
    ),
    click.option(
        "--tls-cert",
        envvar="MESHENC_TLS_CERT",
        type=click.Path(dir_okay=False, path_type=Path),
        help="This process's certificate (its identity: meshenc://NAME).",
    ),
    click.option(
        "--tls-key",
        envvar="MESHENC_TLS_KEY",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The certificate's private key.",
    ),
)
_INSECURE_OPTION = click.option(
    "--insecure",
    envvar="MESHENC_INSECURE",
    is_flag=True,
    default=False,
    help="Plaintext gRPC: no certificates, no identity checks (instead of the --tls-* files).",
)


def tls_file_options(command: F) -> F:
    """``--tls-ca``, ``--tls-cert`` and ``--tls-key`` alone, for a command whose default is
    plaintext (read by :func:`optional_tls_files`)."""
    for option in reversed(_TLS_FILE_OPTIONS):
        command = option(command)
    return command


def peer_limits(max_streams_per_peer: int, max_messages_per_peer: float) -> PeerLimits:
    """The limits the flags name.

    Raises:
        ValidationError: a limit out of range (see :func:`settings_error`).
    """
    return PeerLimits(
        max_streams=max_streams_per_peer, max_messages_per_second=max_messages_per_peer
    )


def tls_options(command: F) -> F:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--insecure`` (read by
    :func:`tls_files`)."""
    return tls_file_options(_INSECURE_OPTION(command))


def tls_files(
    tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None, insecure: bool
) -> TlsFiles | None:
    """The TLS files the flags name, or None with ``--insecure``.

    Raises:
        click.UsageError: neither all three files nor ``--insecure``, or both.
    """
    given = [f for f in (tls_ca, tls_cert, tls_key) if f is not None]
    if insecure:
        if given:
            raise click.UsageError("--insecure and --tls-* files exclude each other")
        return None
    if tls_ca is None or tls_cert is None or tls_key is None:
        raise click.UsageError(
            "give --tls-ca, --tls-cert and --tls-key (mutual TLS), or --insecure for plaintext"
        )
    return _existing(TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key))


def optional_tls_files(
    tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> TlsFiles | None:
    """The TLS files of :func:`tls_file_options`, or None (plaintext) when none is given.

    Raises:
        click.UsageError: some of the three files but not all, or one that does not exist.
    """
    if tls_ca is None and tls_cert is None and tls_key is None:
        return None
    if tls_ca is None or tls_cert is None or tls_key is None:
        raise click.UsageError("--tls-ca, --tls-cert and --tls-key go together")
    return _existing(TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key))


def _existing(files: TlsFiles) -> TlsFiles:
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise click.UsageError(f"no such TLS file: {path}")
    return files


def configure_logging(log_level: str, label: str) -> None:
    """Log at ``log_level``, each line naming ``label`` (the service, or the encoder's id)."""
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s"
    )


def etcd_options(what: str) -> Callable[[F], F]:
    """The etcd flags (``--etcd``, ``--etcd-prefix``, TLS files, user and password) and their
    variables; ``what`` says what the service uses etcd for (in ``--etcd``'s help)."""
    options = [
        click.option(
            "--etcd",
            "etcd_endpoints",
            envvar="MESHENC_ETCD_ENDPOINTS",
            default="",
            help=f"etcd endpoints http(s)://HOST:PORT,... (tried in turn): {what}.",
        ),
        click.option(
            "--etcd-prefix",
            envvar="MESHENC_ETCD_PREFIX",
            default=DEFAULT_ETCD_PREFIX,
            show_default=True,
            help="Key prefix of meshenc's keys in etcd.",
        ),
        click.option(
            "--etcd-ca",
            envvar="MESHENC_ETCD_CA",
            type=click.Path(dir_okay=False, path_type=Path),
            help="CA certificate that signed etcd's certificate (TLS).",
        ),
        click.option(
            "--etcd-cert",
            envvar="MESHENC_ETCD_CERT",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Client certificate for etcd (TLS, with --etcd-key).",
        ),
        click.option(
            "--etcd-key",
            envvar="MESHENC_ETCD_KEY",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The client certificate's private key.",
        ),
        click.option("--etcd-user", envvar="MESHENC_ETCD_USER", default=None, help="etcd user."),
        click.option(
            "--etcd-password", envvar="MESHENC_ETCD_PASSWORD", default=None, help="etcd password."
        ),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def etcd_settings(
    etcd_endpoints: str,
    etcd_prefix: str,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_user: str | None,
    etcd_password: str | None,
    **extra: Any,
) -> EtcdSettings | None:
    """The settings the etcd flags describe; None when no endpoint is given.

    Raises:
        ValueError, ValidationError: a flag is malformed (see :func:`settings_error`).
    """
    endpoints = parse_endpoints(etcd_endpoints)
    if not endpoints:
        return None
    return EtcdSettings(
        endpoints=endpoints,
        prefix=etcd_prefix,
        ca=etcd_ca,
        cert=etcd_cert,
        key=etcd_key,
        user=etcd_user,
        password=etcd_password,
        **extra,
    )


def settings_error(exc: ValidationError | ValueError) -> click.UsageError:
    """The usage error for settings that do not validate, naming each bad setting."""
    if isinstance(exc, ValidationError):
        return click.UsageError(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                for e in exc.errors()
            )
        )
    return click.UsageError(str(exc))


@contextlib.contextmanager
def service_telemetry(
    service_name: str, *, instance_id: str | None = None, metrics_listen: str | None = None
) -> Iterator[None]:
    """``telemetry.running`` around the service; a metrics address that cannot be served
    stops the command with a one-line error (exit status 1) before the service starts."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                telemetry.running(
                    service_name, instance_id=instance_id, metrics_listen=metrics_listen
                )
            )
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        yield
