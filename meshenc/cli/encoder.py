"""``meshenc encoder``: run one encoder process.

Every flag has an environment variable of the same meaning (shown in ``--help``); the Helm chart
sets the variables. Values are validated once, at start, with errors that name the setting.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

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
from meshenc.core.policy import Strategy
from meshenc.wire.address import parse_address_list
from services.common.certs import certificate_identity
from services.common.etcd import DEFAULT_LEASE_TTL
from services.common.tls import record_signer
from services.encoder.media.ladder import MAX_RUNGS, Rung, parse_ladder
from services.encoder.media.serve import OutputServeError
from services.encoder.process import EncoderProcess
from services.encoder.runtime import EncoderRuntime
from services.encoder.settings import (
    DEFAULT_REGISTRY_TTL,
    MAX_CHANNELS,
    EncoderSettings,
    SegmentFormat,
    TopologyMode,
    parse_channel,
    parse_peers,
    parse_size,
)


def _size(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _channels(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    channels: dict[str, str] = {}
    try:
        for item in value:
            name, source = parse_channel(item)
            if name in channels:
                raise ValueError(f"channel {name!r} is given twice")
            channels[name] = source
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if len(channels) > MAX_CHANNELS:
        raise click.BadParameter(f"at most {MAX_CHANNELS} channels, got {len(channels)}")
    return channels


def _ladder(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[Rung, ...]:
    try:
        return parse_ladder(value) if value else ()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the option was given (flag or variable), not left to its default."""
    return ctx.get_parameter_source(name) not in (
        click.core.ParameterSource.DEFAULT,
        click.core.ParameterSource.DEFAULT_MAP,
        None,
    )


@click.command()
@click.option("--id", "node_id", envvar="MESHENC_ID", required=True, help="This encoder's id.")
@click.option(
    "--listen",
    envvar="MESHENC_LISTEN",
    default="0.0.0.0:7400",
    show_default=True,
    help="HOST:PORT to serve the mesh on.",
)
@click.option(
    "--peers",
    envvar="MESHENC_PEERS",
    default="",
    help="Static neighbours: ID=HOST:PORT,... (used when no registry/manager).",
)
@click.option(
    "--out",
    envvar="MESHENC_OUT",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Segment output folder.",
)
@click.option(
    "--source",
    envvar="MESHENC_SOURCE",
    default=None,
    help="The live input: any URL PyAV reads (udp://, rtp://, rtmp://, http(s)://, tcp://) or a"
    " file (played in real time, looped). Without one the output is black and the encoder"
    " reports its input lost.",
)
@click.option(
    "--channel",
    "channels",
    envvar="MESHENC_CHANNELS",
    multiple=True,
    callback=_channels,
    help="Encode several channels instead of --source: NAME=SOURCE, repeatable (the variable:"
    f" items separated by spaces; at most {MAX_CHANNELS}). Each channel decodes its source once,"
    " keeps a timeline and a segment leader of its own with the same neighbours (one stream"
    " per neighbour and channel, through the one --listen port), and writes into --out/NAME/"
    " (and PUTs to each --publish URL/NAME/); a placement's units NAME/WIDTHxHEIGHT are its."
    " The names are 1-128 characters of A-Z a-z 0-9 . _ -, not '.' or '..'.",
)
@click.option(
    "--format",
    "output_format",
    envvar="MESHENC_FORMAT",
    type=click.Choice([f.value for f in SegmentFormat]),
    default=SegmentFormat.TS.value,
    show_default=True,
    help="Segments: ts (MPEG-TS, HLS) or cmaf (fMP4: init.mp4 and .m4s segments, with an HLS"
    " playlist and a DASH manifest.mpd).",
)
@click.option(
    "--publish",
    envvar="MESHENC_PUBLISH",
    multiple=True,
    help="HTTP origin to PUT segments to (repeatable; the variable: URLs separated by spaces)."
    " Only segments this encoder can vouch for go out, and its playlist while it leads.",
)
@click.option(
    "--serve-output",
    envvar="MESHENC_SERVE_OUTPUT",
    default=None,
    help="HOST:PORT to serve the output folder on over HTTP, read-only (GET and HEAD, with the"
    " origin's content types, no-cache on playlists and CORS), for players and CDNs to read this"
    " encoder directly (off when unset).",
)
@click.option(
    "--input-loss-frames",
    envvar="MESHENC_INPUT_LOSS_FRAMES",
    type=click.IntRange(1, 600),
    default=30,
    show_default=True,
    help="Frame periods without a picture before the input counts as lost.",
)
@click.option(
    "--input-loss-repeat-s",
    envvar="MESHENC_INPUT_LOSS_REPEAT_S",
    type=click.FloatRange(0.0, 3600.0),
    default=1.0,
    show_default=True,
    help="While the input is lost: seconds of repeating the last picture, then black.",
)
@click.option(
    "--size",
    envvar="MESHENC_SIZE",
    default="640x360",
    show_default=True,
    callback=_size,
    help="Output WIDTHxHEIGHT (every encoder of the mesh starts with the same); a mesh-wide"
    " change (SetParameters, agreed at a GOP boundary) replaces it.",
)
@click.option(
    "--fps",
    envvar="MESHENC_FPS",
    default="30",
    show_default=True,
    help="Frame rate: 30, 25, 30000/1001 ...",
)
@click.option(
    "--gop",
    envvar="MESHENC_GOP",
    type=int,
    default=60,
    show_default=True,
    help="Frames per GOP (= per segment).",
)
@click.option(
    "--bitrate-kbps",
    envvar="MESHENC_BITRATE_KBPS",
    type=int,
    default=1500,
    show_default=True,
    help="Output bitrate; a mesh-wide change (SetParameters, agreed at a GOP boundary) replaces"
    " it.",
)
@click.option(
    "--ladder",
    envvar="MESHENC_LADDER",
    default=None,
    callback=_ladder,
    help="An ABR ladder instead of --size/--bitrate-kbps: WIDTHxHEIGHT@KBPS,... (e.g."
    " 640x360@800,480x270@450,320x180@200). One decode, scaled and encoded per rung, every rung"
    " GOP-aligned, each in --out/WIDTHxHEIGHT/ with a master.m3u8 (and for cmaf one"
    " manifest.mpd) above; a mesh-wide bitrate change applies to the largest rung and scales"
    " the others in proportion. Following the manager's documents (--topology etcd|kubernetes),"
    " only the rungs its placement gives this encoder (units 0/WIDTHxHEIGHT) are written.",
)
@click.option(
    "--rung-threads",
    envvar="MESHENC_RUNG_THREADS",
    type=click.IntRange(1, MAX_RUNGS),
    default=1,
    show_default=True,
    help="With --ladder: encode up to this many rungs of each picture at once, each in a thread"
    " (libx264 runs without Python's lock). The bytes are the same; a picture takes about its"
    " largest rung's time instead of the sum of the rungs', on as many cores. 1: one after"
    " another.",
)
@click.option(
    "--strategy",
    envvar="MESHENC_STRATEGY",
    default="predictive",
    show_default=True,
    type=click.Choice([s.value for s in Strategy]),
    help="Resync strategy.",
)
@click.option(
    "--no-sync",
    envvar="MESHENC_NO_SYNC",
    is_flag=True,
    help="No mesh corrections: timecodes straight from this encoder's clock.",
)
@click.option(
    "--drift-ppm",
    envvar="MESHENC_DRIFT_PPM",
    type=float,
    default=0.0,
    help="Injected clock drift (test/demo).",
)
@click.option(
    "--offset-ms",
    envvar="MESHENC_OFFSET_MS",
    type=float,
    default=0.0,
    help="Injected clock offset (test/demo).",
)
@click.option(
    "--jitter-ms",
    envvar="MESHENC_JITTER_MS",
    type=float,
    default=0.0,
    help="Injected capture-timestamp jitter (test/demo).",
)
@click.option(
    "--duration",
    envvar="MESHENC_DURATION",
    type=float,
    default=None,
    help="Stop after this many seconds (default: run until SIGTERM).",
)
@click.option(
    "--seed", envvar="MESHENC_SEED", type=int, default=0, help="Seed of the injected jitter."
)
@click.option(
    "--segment",
    envvar="MESHENC_SEGMENT",
    default="default",
    show_default=True,
    help="The segment (group of encoders) this encoder belongs to until the manager's "
    "topology names one; each segment elects a leader.",
)
@click.option(
    "--region",
    envvar="MESHENC_REGION",
    default="",
    help="This encoder's region (zone): each region elects its own leader of a segment, and "
    "the manager plans bridges between regions (default: none).",
)
@etcd_options("the segment leader election (none when empty)")
@click.option(
    "--lease-ttl",
    envvar="MESHENC_LEASE_TTL",
    type=int,
    default=DEFAULT_LEASE_TTL,
    show_default=True,
    help="Seconds the etcd lease outlives this encoder's last keep-alive.",
)
@click.option(
    "--no-fast-failover",
    envvar="MESHENC_NO_FAST_FAILOVER",
    is_flag=True,
    help="Replace a dead leader only when its lease expires (no mesh-driven takeover).",
)
@metrics_listen_option
@click.option(
    "--manager",
    envvar="MESHENC_MANAGER",
    default=None,
    help="The Mesh Manager, HOST:PORT: health reports and escalations (the mesh runs without).",
)
@click.option(
    "--topology",
    envvar="MESHENC_TOPOLOGY",
    default=None,
    type=click.Choice([m.value for m in TopologyMode]),
    help="Where neighbours come from [default: etcd with --etcd and --manager, else static].",
)
@click.option(
    "--advertise",
    envvar="MESHENC_ADVERTISE",
    default=None,
    help="HOST:PORT neighbours dial (default: the listen address).",
)
@click.option(
    "--registry",
    envvar="MESHENC_REGISTRY",
    default="",
    help="Registry replicas HOST:PORT,... to publish this encoder's record in "
    "(address, segment, capacity, health; signed with --tls-key under mutual TLS); "
    "not published when empty.",
)
@click.option(
    "--capacity",
    envvar="MESHENC_CAPACITY",
    type=int,
    default=4,
    show_default=True,
    help="Work units this encoder can take (one unit: one rendition at the mesh frame rate)"
    " until the manager has measured its load; after that, the most it is given when no"
    " encoder has room left.",
)
@click.option(
    "--registry-ttl",
    envvar="MESHENC_REGISTRY_TTL",
    type=float,
    default=DEFAULT_REGISTRY_TTL,
    show_default=True,
    help="Seconds the registry keeps the record after its last refresh (refreshed every third).",
)
@click.option(
    "--namespace",
    envvar="MESHENC_NAMESPACE",
    default="default",
    show_default=True,
    help="The pod's namespace (--topology kubernetes).",
)
@click.option(
    "--standby",
    envvar="MESHENC_STANDBY",
    is_flag=True,
    help="Load its code and check its settings, then start only when a line arrives on stdin"
    " (at the end of stdin, or on SIGTERM, exit 0 without starting): an encoder ready to join"
    " at once, without the CPU its loading takes landing on the machine's other encoders then"
    " (meshenc up's joiner).",
)
@health_listen_option
@peer_limit_options
@tls_options
@log_level_option
def encoder(
    node_id: str,
    listen: str,
    peers: str,
    out: Path,
    source: str | None,
    channels: dict[str, str],
    output_format: str,
    publish: tuple[str, ...],
    serve_output: str | None,
    input_loss_frames: int,
    input_loss_repeat_s: float,
    size: tuple[int, int],
    fps: str,
    gop: int,
    bitrate_kbps: int,
    ladder: tuple[Rung, ...],
    rung_threads: int,
    strategy: str,
    no_sync: bool,
    drift_ppm: float,
    offset_ms: float,
    jitter_ms: float,
    duration: float | None,
    seed: int,
    segment: str,
    region: str,
    etcd_endpoints: str,
    etcd_prefix: str,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    etcd_user: str | None,
    etcd_password: str | None,
    lease_ttl: int,
    no_fast_failover: bool,
    metrics_listen: str | None,
    manager: str | None,
    topology: str | None,
    advertise: str | None,
    registry: str,
    capacity: int,
    registry_ttl: float,
    namespace: str,
    standby: bool,
    health_listen: str | None,
    max_streams_per_peer: int,
    max_messages_per_peer: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    log_level: str,
) -> None:
    """Run one live encoder of the mesh.

    It ingests the source, stamps frames with its own (optionally fault-injected) clock, keeps
    its timecodes locked with its neighbours over gRPC, and writes segments named by segment
    number into --out (MPEG-TS with an HLS playlist, or with --format cmaf fMP4 with an HLS
    playlist and a DASH MPD); with --ladder, one such folder per rung under --out and a
    master.m3u8 listing them. With --channel, several sources, each a channel of its own
    (timeline, segment leader, --out/NAME/) through one mesh port. SIGTERM finishes the current
    segment and stops cleanly. Mutual TLS needs the three --tls-* files, the certificate naming
    this encoder's id; --insecure runs plaintext.
    """
    configure_logging(log_level, node_id)
    ctx = click.get_current_context()
    if channels and source is not None:
        raise click.UsageError("--channel gives every channel its source: leave out --source")
    if ladder:
        given = [f"--{n.replace('_', '-')}" for n in ("size", "bitrate_kbps") if _given(ctx, n)]
        if given:
            raise click.UsageError(
                f"--ladder gives every rung its size and bitrate: leave out {' and '.join(given)}"
            )
    feed: dict[str, Any] = {"channels": channels} if channels else {"source": source}
    sizing: dict[str, Any] = (
        {"ladder": ladder} if ladder else {"size": size, "bitrate_kbps": bitrate_kbps}
    )
    tls = tls_files(tls_ca, tls_cert, tls_key, insecure)
    if tls is not None:
        # Every neighbour would refuse a Hello that is not the certificate's identity.
        try:
            certified = certificate_identity(tls.cert)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        if certified != node_id:
            raise click.UsageError(
                f"--tls-cert {tls.cert} names {certified!r}, not this encoder's id {node_id!r}"
            )
        if registry:
            # Its registry records are signed with this key (replicas take no other).
            try:
                record_signer(tls)
            except ValueError as exc:
                raise click.UsageError(f"--tls-key cannot sign registry records: {exc}") from exc
    try:
        etcd = etcd_settings(
            etcd_endpoints,
            etcd_prefix,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password,
            lease_ttl=lease_ttl,
        )
        settings = EncoderSettings(
            id=node_id,
            listen=listen,
            peers=parse_peers(peers),
            out=out,
            **feed,
            publish=publish,
            serve_output=serve_output or None,
            output_format=SegmentFormat(output_format),
            input_loss_frames=input_loss_frames,
            input_loss_repeat_s=input_loss_repeat_s,
            fps=fps,
            gop=gop,
            **sizing,
            rung_threads=rung_threads,
            strategy=Strategy.EPOCH if no_sync else Strategy(strategy),
            drift_ppm=drift_ppm,
            offset_ms=offset_ms,
            jitter_ms=jitter_ms,
            duration=duration,
            seed=seed,
            segment=segment,
            region=region,
            etcd=etcd,
            fast_failover=not no_fast_failover,
            registry=parse_address_list(registry, "registry replica"),
            capacity=capacity,
            registry_ttl=registry_ttl,
            metrics_listen=metrics_listen or None,
            manager=manager or None,
            topology=TopologyMode(topology) if topology else None,
            advertise=advertise or None,
            namespace=namespace,
            tls=tls,
            health_listen=health_listen or None,
            peer_limits=peer_limits(max_streams_per_peer, max_messages_per_peer),
        )
    except (ValidationError, ValueError) as exc:
        raise settings_error(exc) from exc
    if standby and not _started_from_stdin(node_id):
        return
    settings.out.mkdir(parents=True, exist_ok=True)
    with service_telemetry(
        "meshenc-encoder", instance_id=settings.id, metrics_listen=settings.metrics_listen
    ):
        try:
            if settings.channels:
                by_channel = asyncio.run(EncoderProcess(settings).run())
            else:
                by_channel = {"": asyncio.run(EncoderRuntime(settings).run())}
        except OutputServeError as exc:  # before anything else started: one line, status 1
            raise click.ClickException(str(exc)) from exc
    for channel, stats in by_channel.items():
        name = f"{settings.id}/{channel}" if channel else settings.id
        click.echo(
            f"{name}: {stats.frames} frames, {stats.segments} segments, "
            f"{stats.skipped} skipped, {stats.escalations} escalations"
        )


class _StandbyStoppedError(Exception):
    """SIGTERM while standing by."""


def _stop_standing_by(_signum: int, _frame: object) -> None:
    raise _StandbyStoppedError


def _started_from_stdin(node_id: str) -> bool:
    """Wait for a line on stdin (``--standby``); False when stdin ends without one or SIGTERM
    comes first (then the process exits 0, as a started encoder stopped by SIGTERM does).

    A stop usually brings both (the launcher closes stdin and sends SIGTERM): once stdin has
    ended, SIGTERM is ignored, so a signal landing while the process exits cannot turn its
    status 0 into death by SIGTERM.
    """
    previous = signal.signal(signal.SIGTERM, _stop_standing_by)  # before the line says so
    click.echo(f"{node_id}: standing by; starts on a line on stdin", err=True)
    try:
        started = bool(sys.stdin.readline())
        if started:
            signal.signal(signal.SIGTERM, previous)
    except _StandbyStoppedError:
        started = False
    if not started:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo(f"{node_id}: stopped while standing by; not started", err=True)
    return started
