"""``meshenc manager``: run the Mesh Manager.

Every flag has an environment variable of the same meaning (shown in ``--help``); the Helm chart
sets the variables. Values are validated once, at start, with errors that name the setting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from pydantic import ValidationError

from meshenc.cli.service_options import (
    configure_logging,
    etcd_options,
    etcd_settings,
    health_listen_option,
    log_level_option,
    metrics_listen_option,
    peer_limit_options,
    peer_limits,
    service_telemetry,
    settings_error,
    tls_files,
    tls_options,
)
from services.manager.server import run_manager
from services.manager.settings import (
    DEFAULT_LISTEN,
    ActuatorKind,
    ManagerSettings,
    parse_work_units,
)


@click.command()
@click.option(
    "--listen",
    envvar="MESHENC_LISTEN",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="HOST:PORT to serve MeshManager on.",
)
@click.option(
    "--actuator",
    envvar="MESHENC_ACTUATOR",
    required=True,
    type=click.Choice([a.value for a in ActuatorKind]),
    help="Where decisions go: etcd keys (embedded) or per-encoder ConfigMaps (kubernetes).",
)
@etcd_options("the decisions in embedded mode, and the active/standby election in both modes")
@click.option(
    "--namespace",
    envvar="MESHENC_NAMESPACE",
    default="default",
    show_default=True,
    help="Namespace of the encoder StatefulSet and its ConfigMaps (kubernetes).",
)
@click.option(
    "--encoder-statefulset",
    envvar="MESHENC_ENCODER_STATEFULSET",
    default=None,
    help="Name of the encoder StatefulSet (kubernetes).",
)
@click.option(
    "--autoscale-min",
    envvar="MESHENC_AUTOSCALE_MIN",
    type=int,
    default=None,
    help="Fewest encoders the manager scales to (with --autoscale-max it turns autoscaling on: "
    "the StatefulSet's replicas, or in embedded mode a wish the launcher follows).",
)
@click.option(
    "--autoscale-max",
    envvar="MESHENC_AUTOSCALE_MAX",
    type=int,
    default=None,
    help="Most encoders the manager scales to.",
)
@click.option(
    "--autoscale-high-water",
    envvar="MESHENC_AUTOSCALE_HIGH_WATER",
    type=float,
    default=0.75,
    show_default=True,
    help="Mean encoder load (CPU, or encode time over the frame budget) at which the "
    "manager adds encoders.",
)
@click.option(
    "--autoscale-low-water",
    envvar="MESHENC_AUTOSCALE_LOW_WATER",
    type=float,
    default=0.30,
    show_default=True,
    help="Mean encoder load below which it drains the highest ordinal and removes it.",
)
@click.option(
    "--autoscale-cooldown",
    envvar="MESHENC_AUTOSCALE_COOLDOWN",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds between two scaling decisions (and after the manager starts).",
)
@click.option(
    "--autoscale-drain-grace",
    envvar="MESHENC_AUTOSCALE_DRAIN_GRACE",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a drained encoder stays after its work moved, before it is removed.",
)
@click.option(
    "--autoscale-drain-timeout",
    envvar="MESHENC_AUTOSCALE_DRAIN_TIMEOUT",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds after which a drain whose work found no room elsewhere is given up.",
)
@click.option(
    "--frame-budget",
    envvar="MESHENC_FRAME_BUDGET",
    type=float,
    default=0.040,
    show_default=True,
    help="Encode time per frame, seconds, that counts as a full encoder: one frame interval of"
    " the encoders (1/fps). The encoders' measured capacities and the autoscaler's load are"
    " read against it.",
)
@click.option("--degree-min", envvar="MESHENC_DEGREE_MIN", type=int, default=3, show_default=True)
@click.option("--degree-max", envvar="MESHENC_DEGREE_MAX", type=int, default=7, show_default=True)
@click.option(
    "--report-timeout",
    envvar="MESHENC_REPORT_TIMEOUT",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds without a health report before an encoder is taken out.",
)
@click.option(
    "--reconnect-grace",
    envvar="MESHENC_RECONNECT_GRACE",
    type=float,
    default=0.5,
    show_default=True,
    help="Seconds an encoder whose health stream ended may take to open a new one.",
)
@click.option(
    "--work-units",
    envvar="MESHENC_WORK_UNITS",
    default="",
    help="Work to place, CHANNEL/RENDITION,... (each on --redundancy encoders).",
)
@click.option(
    "--redundancy",
    envvar="MESHENC_REDUNDANCY",
    type=int,
    default=2,
    show_default=True,
    help="Encoders each work unit runs on (1-16).",
)
@health_listen_option
@peer_limit_options
@tls_options
@metrics_listen_option
@log_level_option
def manager(
    listen: str,
    actuator: str,
    etcd_endpoints: str,
    etcd_prefix: str,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_user: str | None,
    etcd_password: str | None,
    namespace: str,
    encoder_statefulset: str | None,
    autoscale_min: int | None,
    autoscale_max: int | None,
    autoscale_high_water: float,
    autoscale_low_water: float,
    autoscale_cooldown: float,
    autoscale_drain_grace: float,
    autoscale_drain_timeout: float,
    frame_budget: float,
    degree_min: int,
    degree_max: int,
    report_timeout: float,
    reconnect_grace: float,
    work_units: str,
    redundancy: int,
    health_listen: str | None,
    max_streams_per_peer: int,
    max_messages_per_peer: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    metrics_listen: str | None,
    log_level: str,
) -> None:
    """Run the Mesh Manager: collect health, plan the topology, rewire around failures.

    It follows the encoders (registration keys in etcd, or the StatefulSet's pods), plans a
    mesh that survives any single failure, writes each encoder's neighbours (etcd keys or
    ConfigMaps), with --work-units also the units placed on it (each on --redundancy
    encoders), and judges escalated resync proposals. With --autoscale-min/--autoscale-max it
    scales the encoders with their load: the encoder StatefulSet (kubernetes), or the number
    of encoders `meshenc up` runs (embedded: a key in etcd it follows). SIGTERM stops it
    cleanly. Mutual TLS needs the three --tls-* files (the manager presents the "manager"
    identity); --insecure serves plaintext.
    """
    configure_logging(log_level, "manager")
    tls = tls_files(tls_ca, tls_cert, tls_key, insecure)
    try:
        settings = ManagerSettings(
            listen=listen,
            actuator=ActuatorKind(actuator),
            etcd=etcd_settings(
                etcd_endpoints,
                etcd_prefix,
                etcd_ca,
                etcd_cert,
                etcd_key,
                etcd_user,
                etcd_password,
            ),
            namespace=namespace,
            encoder_statefulset=encoder_statefulset,
            autoscale_min=autoscale_min,
            autoscale_max=autoscale_max,
            autoscale_high_water=autoscale_high_water,
            autoscale_low_water=autoscale_low_water,
            autoscale_cooldown=autoscale_cooldown,
            autoscale_drain_grace=autoscale_drain_grace,
            autoscale_drain_timeout=autoscale_drain_timeout,
            frame_budget=frame_budget,
            degree_min=degree_min,
            degree_max=degree_max,
            report_timeout=report_timeout,
            reconnect_grace=reconnect_grace,
            work_units=parse_work_units(work_units),
            redundancy=redundancy,
            metrics_listen=metrics_listen,
            tls=tls,
            health_listen=health_listen or None,
            peer_limits=peer_limits(max_streams_per_peer, max_messages_per_peer),
        )
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from exc
    with service_telemetry("meshenc-manager", metrics_listen=settings.metrics_listen):
        asyncio.run(run_manager(settings))
