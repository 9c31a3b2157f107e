"""``meshenc registry``: run one registry node of the DHT.

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
from meshenc.core.kademlia import DEFAULT_ALPHA, DEFAULT_K
from services.registry.node import RegistryNode
from services.registry.settings import RegistrySettings, parse_seeds


@click.command()
@click.option(
    "--listen",
    envvar="MESHENC_LISTEN",
    default="0.0.0.0:7500",
    show_default=True,
    help="HOST:PORT to serve the Registry service on.",
)
@click.option(
    "--advertise",
    envvar="MESHENC_ADVERTISE",
    default=None,
    help="HOST:PORT other nodes and clients reach this node at "
    "(default: the listen address, with this host's name for a wildcard host).",
)
@click.option(
    "--seeds",
    envvar="MESHENC_SEEDS",
    default="",
    help="Registry nodes to join through: HOST:PORT,... (none: the first node of a network).",
)
@click.option(
    "--node-id",
    envvar="MESHENC_NODE_ID",
    default=None,
    help="This node's Kademlia id, 40 hex digits (default: random at every start).",
)
@click.option(
    "--k",
    "k",
    envvar="MESHENC_REGISTRY_K",
    type=int,
    default=DEFAULT_K,
    show_default=True,
    help="Bucket size and replication factor (the same on every node).",
)
@click.option(
    "--alpha",
    envvar="MESHENC_REGISTRY_ALPHA",
    type=int,
    default=DEFAULT_ALPHA,
    show_default=True,
    help="Lookup requests in flight.",
)
@health_listen_option
@peer_limit_options
@tls_options
@metrics_listen_option
@log_level_option
def registry(
    listen: str,
    advertise: str | None,
    seeds: str,
    node_id: str | None,
    k: int,
    alpha: int,
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
    """Run one registry node: encoders store and resolve their records through it.

    Registry nodes form a Kademlia network over gRPC; each record is kept on the k nodes
    closest to its key and survives the loss of any k-1 of them. SIGTERM stops the node
    gracefully. Mutual TLS needs the three --tls-* files (the node presents the
    "registry" identity); --insecure serves plaintext.
    """
    configure_logging(log_level, "registry")
    tls = tls_files(tls_ca, tls_cert, tls_key, insecure)
    try:
        settings = RegistrySettings(
            listen=listen,
            advertise=advertise or None,
            seeds=parse_seeds(seeds),
            node_id=node_id or None,
            k=k,
            alpha=alpha,
            metrics_listen=metrics_listen or None,
            tls=tls,
            health_listen=health_listen or None,
            peer_limits=peer_limits(max_streams_per_peer, max_messages_per_peer),
        )
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from exc
    with service_telemetry(
        "meshenc-registry", instance_id=settings.advertise, metrics_listen=settings.metrics_listen
    ):
        asyncio.run(_serve(settings))


async def _serve(settings: RegistrySettings) -> None:
    node = RegistryNode(settings)
    try:
        await node.start()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    await node.run()
