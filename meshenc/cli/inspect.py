"""``meshenc status``, ``topology``, ``segments`` and ``events``: look at a running mesh.

Each command talks gRPC to the services and prints rich tables (``--json``: JSON instead).
Addresses come from flags or the environment: ``--encoders HOST:PORT,...`` /
``MESHENC_ENCODERS`` for the encoders (``ID=HOST:PORT`` is accepted too, as in ``--peers``),
``--manager HOST:PORT`` / ``MESHENC_MANAGER`` for the Mesh Manager. ``meshenc up`` prints both
for the mesh it runs. Each command calls with the operator's certificate (``--tls-ca``,
``--tls-cert``, ``--tls-key`` / ``MESHENC_TLS_*``), or in plaintext with ``--insecure``; an
encoder's certificate must be valid for the host of the address it is asked at, the manager's
must name ``manager``.

- ``status``: ``GetState`` of every encoder, one row each;
- ``topology``: the manager's ``GetTopology``, one row per encoder and its neighbours;
- ``segments``: the manager's ``GetSegments``, one row per encoder group with its leader;
- ``events``: what changes: the manager's ``WatchTopology`` stream and, from the encoders'
  ``GetState`` (polled by the run recorder's own code, :class:`meshenc.report.recorder.Recorder`),
  each new correction once, lock gained or lost, and each new leader of a group. Without
  ``--follow`` it prints what is there now (recent corrections, current topology) and exits.

Strings that come from the network are printed as text, never as markup. Exit status: 0 every
service answered; 1 some did not; 3 none did (as ``meshenc health-check``); 2 usage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.table import Table
from rich.text import Text
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from meshenc.cli.service_options import tls_files, tls_options
from meshenc.cli.sim import console
from meshenc.core.parameters import size_name
from meshenc.report.recorder import Event, Recorder
from meshenc.v1 import manager_pb2, manager_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from meshenc.wire.address import parse_address_list
from meshenc.wire.validation import (
    InvalidMessage,
    check_channel_name,
    validate_get_segments_request,
    validate_get_topology_request,
    validate_watch_topology_request,
)
from services.common.grpc_server import open_channel
from services.common.health_check import EXIT_NO_ANSWER
from services.common.tls import MANAGER, TlsFiles

__all__ = ["events", "segments", "status", "topology"]

EXIT_SOME_UNANSWERED: Final = 1
DEFAULT_TIMEOUT: Final = 2.0
DEFAULT_INTERVAL: Final = 0.5


# --- addresses and shared options -----------------------------------------------------------


def parse_addresses(text: str) -> list[str]:
    """``"127.0.0.1:7400,e1=127.0.0.1:7401"`` → addresses (an ``ID=`` prefix is dropped).

    Raises:
        ValueError: an item is not HOST:PORT with a port in 1..65535.
    """
    items = (part.strip() for part in text.split(","))
    return list(parse_address_list((item.rpartition("=")[2] for item in items), "address"))


def _encoder_addresses(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    try:
        return parse_addresses(value or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _manager_address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return None
    try:
        (address,) = parse_addresses(value)
    except ValueError as exc:
        raise click.BadParameter(f"one HOST:PORT: {exc}") from exc
    return address


_ENCODERS = click.option(
    "--encoders",
    envvar="MESHENC_ENCODERS",
    default="",
    callback=_encoder_addresses,
    help="Encoders to ask: HOST:PORT,... (or ID=HOST:PORT,...).",
)
_MANAGER = click.option(
    "--manager",
    envvar="MESHENC_MANAGER",
    default=None,
    callback=_manager_address,
    help="The Mesh Manager: HOST:PORT.",
)
_TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(min=0.0, max=3600.0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for each answer.",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


def _to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _fail(ctx: click.Context, message: str, status: int = EXIT_NO_ANSWER) -> None:
    click.echo(message, err=True)
    ctx.exit(status)


def _no_answer(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details() or ''}".strip()


# --- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One encoder's GetState, or why there is none."""

    address: str
    state: mesh_pb2.EncoderState | None
    problem: str = ""


async def ask_states(
    addresses: Sequence[str], timeout: float, tls: TlsFiles | None = None, channel: str = ""
) -> list[Answer]:
    """GetState of every address at once (mutual TLS with ``tls``), of ``channel`` (empty:
    each encoder's first)."""

    async def ask(address: str) -> Answer:
        async with open_channel(address, tls=tls) as grpc_channel:
            try:
                state = await mesh_pb2_grpc.EncoderMeshStub(grpc_channel).GetState(
                    mesh_pb2.GetStateRequest(channel=channel), timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                return Answer(address, None, _no_answer(exc))
        return Answer(address, state)

    return list(await asyncio.gather(*(ask(a) for a in addresses)))


def _ms(ns: int) -> str:
    return f"{ns / 1e6:+.2f}"


def status_table(answers: Sequence[Answer], channel: str = "") -> Table:
    title = f"Encoders (GetState, channel {channel})" if channel else "Encoders (GetState)"
    table = Table(title=title, title_justify="left")
    for column in (
        "encoder",
        "address",
        "timecode",
        "segment",
        "locked",
        "error ms",
        "predicted ms",
        "confidence",
        "group",
        "leader",
        "output",
        "slew/drop/dup/param",
        "escalations",
        "links",
    ):
        table.add_column(column, no_wrap=column in ("encoder", "address"))
    for answer in answers:
        state = answer.state
        if state is None:
            code = answer.problem.partition(":")[0]
            table.add_row(Text("?", style="red"), answer.address, Text(code, style="red"))
            continue
        counts = state.corrections
        up = sum(1 for n in state.neighbours if n.connected)
        table.add_row(
            Text(state.encoder_id, style="bold"),
            answer.address,
            str(state.timecode),
            str(state.segment_number),
            Text("yes", style="green") if state.locked else Text("no", style="yellow"),
            _ms(state.error_ns),
            _ms(state.predicted_error_ns),
            f"{state.confidence:.2f}",
            Text(state.segment_id or "—"),
            Text(state.leader_id or "—", style="cyan"),
            _output(state),
            "/".join(str(counts.get(k, 0)) for k in ("slew", "drop", "duplicate", "parameter")),
            str(state.escalations),
            f"{up}/{len(state.neighbours)}",
        )
    return table


def _output(state: mesh_pb2.EncoderState) -> str:
    """The size and bitrate of the segment being encoded, and a change agreed for a later one:
    ``320x180 1500k -> 192x108 400k at 898211677``."""
    shown = f"{size_name((state.width, state.height))} {state.bitrate_kbps}k"
    if state.HasField("pending_parameters"):
        pending = state.pending_parameters
        shown += (
            f" -> {size_name((pending.width, pending.height))} {pending.bitrate_kbps}k"
            f" at {pending.effective_segment}"
        )
    return shown


def _channel(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        check_channel_name(value, allow_empty=True)
    except InvalidMessage as exc:
        raise click.BadParameter(exc.reason) from exc
    return value


@click.command()
@_ENCODERS
@click.option(
    "--channel",
    default="",
    callback=_channel,
    help="The channel to show, of encoders that encode several (meshenc encoder --channel);"
    " default: each encoder's first.",
)
@_TIMEOUT
@_JSON
@tls_options
@click.pass_context
def status(
    ctx: click.Context,
    encoders: list[str],
    channel: str,
    timeout: float,
    as_json: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
) -> None:
    """Each encoder's state: timecode, segment, lock, error, confidence, leader, corrections.

    Exit 0: every encoder answered; 1: some did not; 3: none did.
    """
    tls = tls_files(tls_ca, tls_cert, tls_key, insecure)
    if not encoders:
        raise click.UsageError("no encoders: give --encoders HOST:PORT,... or MESHENC_ENCODERS")
    answers = asyncio.run(ask_states(encoders, timeout, tls, channel))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"address": a.address, "state": _to_dict(a.state)}
                    if a.state is not None
                    else {"address": a.address, "error": a.problem}
                    for a in answers
                ]
            )
        )
    else:
        out = console()
        out.print(status_table(answers, channel))
        for answer in answers:
            if answer.state is None:
                out.print(Text(f"{answer.address}: no answer: {answer.problem}", style="red"))
    unanswered = sum(1 for a in answers if a.state is None)
    if unanswered == len(answers):
        ctx.exit(EXIT_NO_ANSWER)
    if unanswered:
        ctx.exit(EXIT_SOME_UNANSWERED)


# --- topology and segments ------------------------------------------------------------------


async def _ask_manager(
    address: str, method: str, request: Message, timeout: float, tls: TlsFiles | None
) -> Any:
    """One unary call of the MeshManager service (``method``: ``GetTopology``...)."""
    async with open_channel(address, tls=tls, server_name=MANAGER) as channel:
        call = getattr(manager_pb2_grpc.MeshManagerStub(channel), method)
        return await call(request, timeout=timeout)


def topology_table(topology: manager_pb2.Topology) -> Table:
    table = Table(title=f"Topology, epoch {topology.epoch}", title_justify="left")
    for column in ("encoder", "degree", "neighbours"):
        table.add_column(column)
    for entry in sorted(topology.adjacency, key=lambda a: a.encoder_id):
        table.add_row(
            Text(entry.encoder_id, style="bold"),
            str(len(entry.neighbour_ids)),
            Text(" ".join(sorted(entry.neighbour_ids))),
        )
    return table


def segments_table(segment_map: manager_pb2.SegmentMap) -> Table:
    table = Table(
        title=f"Segments (topology epoch {segment_map.topology_epoch})", title_justify="left"
    )
    for column in ("segment", "size", "leader", "leader revision", "members"):
        table.add_column(column)
    for segment in sorted(segment_map.segments, key=lambda s: s.segment_id):
        table.add_row(
            Text(segment.segment_id, style="bold"),
            str(len(segment.member_ids)),
            Text(segment.leader_id or "—", style="cyan"),
            str(segment.leader_revision or "—"),
            Text(" ".join(sorted(segment.member_ids))),
        )
    return table


def _need_manager(manager: str | None) -> str:
    if manager is None:
        raise click.UsageError("no manager: give --manager HOST:PORT or MESHENC_MANAGER")
    return manager


def _show_manager_answer(
    ctx: click.Context,
    manager: str | None,
    method: str,
    request: Message,
    *,
    validate: Callable[[Any], None],
    param_hint: str,
    timeout: float,
    as_json: bool,
    render: Callable[[Any], Any],
    tls: TlsFiles | None,
) -> None:
    """Validate ``request`` (a bad filter is the ``param_hint`` option's fault), ask the
    manager, and print its answer as JSON or as ``render`` draws it."""
    address = _need_manager(manager)
    try:
        validate(request)
    except InvalidMessage as exc:
        raise click.BadParameter(exc.reason, param_hint=param_hint) from exc
    try:
        answer = asyncio.run(_ask_manager(address, method, request, timeout, tls))
    except grpc.aio.AioRpcError as exc:
        _fail(ctx, f"manager {address}: {_no_answer(exc)}")
        return
    if as_json:
        click.echo(json.dumps(_to_dict(answer)))
    else:
        console().print(render(answer))


@click.command()
@_MANAGER
@click.option("--encoder", "encoder_id", default="", help="Only this encoder's neighbours.")
@_TIMEOUT
@_JSON
@tls_options
@click.pass_context
def topology(
    ctx: click.Context,
    manager: str | None,
    encoder_id: str,
    timeout: float,
    as_json: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
) -> None:
    """The mesh topology the manager planned: every encoder's neighbours (GetTopology)."""
    _show_manager_answer(
        ctx,
        manager,
        "GetTopology",
        manager_pb2.GetTopologyRequest(encoder_id=encoder_id),
        validate=validate_get_topology_request,
        param_hint="--encoder",
        timeout=timeout,
        as_json=as_json,
        tls=tls_files(tls_ca, tls_cert, tls_key, insecure),
        render=topology_table,
    )


@click.command()
@_MANAGER
@click.option("--segment", "segment_id", default="", help="Only this segment (encoder group).")
@_TIMEOUT
@_JSON
@tls_options
@click.pass_context
def segments(
    ctx: click.Context,
    manager: str | None,
    segment_id: str,
    timeout: float,
    as_json: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
) -> None:
    """The encoder groups (segments), their members and elected leaders (GetSegments)."""
    _show_manager_answer(
        ctx,
        manager,
        "GetSegments",
        manager_pb2.GetSegmentsRequest(segment_id=segment_id),
        validate=validate_get_segments_request,
        param_hint="--segment",
        timeout=timeout,
        as_json=as_json,
        tls=tls_files(tls_ca, tls_cert, tls_key, insecure),
        render=segments_table,
    )


# --- events ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _LastSeen:
    """What the event feed last saw of each encoder, to report changes only."""

    locked: dict[str, bool] = field(default_factory=dict)
    leaders: dict[str, str] = field(default_factory=dict)


class _Feed(Recorder):
    """The recorder's polling, with its events going to the terminal instead of a file.

    Corrections arrive as the recorder's ``correction`` records (each once); a ``state`` answer
    becomes a ``locked``/``unlocked`` line when the encoder's lock changed and a ``leader``
    line when its group's leader (or the leader's fencing token) changed.
    """

    def __init__(
        self, emit: Callable[[dict[str, Any]], None], interval: float, tls: TlsFiles | None
    ) -> None:
        # No file: ``record`` below replaces the writing, and ``start`` is never called.
        super().__init__(
            Path(), interval=interval, rpc_timeout=min(interval, DEFAULT_TIMEOUT), tls=tls
        )
        self._emit = emit
        self._last = _LastSeen()

    def record(self, event: Event) -> None:
        if event["kind"] != "state":
            self._emit(dict(event))
            return
        name = event["encoder"]
        locked = event["locked"]
        if self._last.locked.get(name) != locked:
            if name in self._last.locked or locked:
                self._emit(
                    {"t": event["t"], "kind": "locked" if locked else "unlocked", "encoder": name}
                )
            self._last.locked[name] = locked
        group, leader = event["segment"], event["leader"]
        if group and leader and self._last.leaders.get(group) != leader:
            self._last.leaders[group] = leader
            self._emit(
                {
                    "t": event["t"],
                    "kind": "leader",
                    "segment": group,
                    "leader": leader,
                    "seen_by": name,
                }
            )


def describe_event(event: dict[str, Any]) -> Text:
    """One event as a line of text."""
    clock = time.strftime("%H:%M:%S", time.localtime(event["t"]))
    millis = f"{event['t'] % 1:.3f}"[1:]
    kind = event["kind"]
    if kind == "correction":
        voted = event["proposal_id"] > 0
        what = f"{event['encoder']}: {event['correction']} {event['shift_ns'] / 1e6:+.2f} ms, " + (
            f"approved by vote (proposal {event['proposal_id']})" if voted else "no vote"
        )
        style = "magenta" if voted or event["correction"] != "slew" else ""
    elif kind in ("locked", "unlocked"):
        what, style = f"{event['encoder']}: {kind}", "green" if kind == "locked" else "yellow"
    elif kind == "leader":
        what, style = f"{event['leader']} leads {event['segment']}", "cyan"
    elif kind == "topology":
        what = (
            f"topology epoch {event['epoch']}: {len(event['adjacency'])} encoders, "
            f"{event['links']} links" + (f" ({event['reason']})" if event["reason"] else "")
        )
        style = "bold"
    else:
        what, style = f"{kind}: {event.get('detail', '')}", "red"
    return Text.assemble((f"{clock}{millis} ", "dim"), (what, style))


async def _watch_topology(
    address: str,
    emit: Callable[[dict[str, Any]], None],
    follow: bool,
    timeout: float,
    tls: TlsFiles | None,
) -> None:
    """The manager's WatchTopology: the current topology, then (``follow``) every new one;
    reconnects after a broken stream, asking only for epochs it has not seen."""
    seen_epoch = 0
    request = manager_pb2.WatchTopologyRequest()
    validate_watch_topology_request(request)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(grpc.aio.AioRpcError),
        wait=wait_exponential(multiplier=0.5, max=5.0),
        reraise=True,
    ):
        with attempt:
            async with open_channel(address, tls=tls, server_name=MANAGER) as channel:
                stub = manager_pb2_grpc.MeshManagerStub(channel)
                stream = stub.WatchTopology(
                    manager_pb2.WatchTopologyRequest(after_epoch=seen_epoch),
                    timeout=None if follow else timeout,
                )
                try:
                    async for update in _updates(stream):
                        seen_epoch = max(seen_epoch, update.topology.epoch)
                        emit(_topology_event(update))
                        if not follow:
                            return
                except grpc.aio.AioRpcError as exc:
                    emit({"t": time.time(), "kind": "manager", "detail": _no_answer(exc)})
                    if not follow:
                        return
                    raise
                finally:
                    stream.cancel()


async def _updates(stream: Any) -> AsyncIterator[manager_pb2.TopologyUpdate]:
    async for update in stream:
        yield update


def _topology_event(update: manager_pb2.TopologyUpdate) -> dict[str, Any]:
    adjacency = {a.encoder_id: sorted(a.neighbour_ids) for a in update.topology.adjacency}
    links = sum(len(ns) for ns in adjacency.values()) // 2
    return {
        "t": time.time(),
        "kind": "topology",
        "epoch": update.topology.epoch,
        "reason": update.reason[:256],
        "adjacency": adjacency,
        "links": links,
    }


async def _follow_encoders(
    addresses: Sequence[str],
    emit: Callable[[dict[str, Any]], None],
    follow: bool,
    interval: float,
    timeout: float,
    tls: TlsFiles | None,
) -> None:
    """Poll the encoders through the recorder; addresses not answering yet are asked again
    every round (an encoder that joins later shows up)."""
    feed = _Feed(emit, interval, tls)
    pending = list(addresses)
    try:
        while True:
            answers = await ask_states(pending, min(timeout, interval * 2), tls)
            for answer in answers:
                if answer.state is not None and answer.state.encoder_id:
                    feed.add(answer.state.encoder_id, answer.address)
                    pending.remove(answer.address)
            await feed.poll_once()
            if not follow:
                for answer in answers:
                    if answer.state is None:
                        emit({"t": time.time(), "kind": "no answer", "detail": answer.address})
                return
            await asyncio.sleep(interval)
    finally:
        await feed.stop()


async def run_events(
    encoders: Sequence[str],
    manager: str | None,
    emit: Callable[[dict[str, Any]], None],
    *,
    follow: bool,
    interval: float = DEFAULT_INTERVAL,
    timeout: float = DEFAULT_TIMEOUT,
    duration: float | None = None,
    tls: TlsFiles | None = None,
) -> None:
    """The event feed (see the module docstring) until cancelled or ``duration`` is over;
    mutual TLS with ``tls``, plaintext without."""
    tasks = [_follow_encoders(encoders, emit, follow, interval, timeout, tls)] if encoders else []
    if manager is not None:
        tasks.append(_watch_topology(manager, emit, follow, timeout, tls))
    work = asyncio.gather(*tasks)
    try:
        if duration is None:
            await work
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work, timeout=duration)
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


@click.command()
@_ENCODERS
@_MANAGER
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=60.0),
    default=DEFAULT_INTERVAL,
    show_default=True,
    help="Seconds between two polls of the encoders.",
)
@click.option(
    "--for",
    "duration",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="With --follow: stop after this many seconds.",
)
@_TIMEOUT
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@tls_options
def events(
    encoders: list[str],
    manager: str | None,
    follow: bool,
    interval: float,
    duration: float | None,
    timeout: float,
    as_json: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
) -> None:
    """Corrections (and whether a vote approved them), lock changes, leaders and topology.

    Without --follow: the encoders' recent corrections and current state, and the manager's
    current topology, then exit. With --follow: every new event as it happens.
    """
    tls = tls_files(tls_ca, tls_cert, tls_key, insecure)
    if not encoders and manager is None:
        raise click.UsageError(
            "nothing to watch: give --encoders/MESHENC_ENCODERS and/or --manager/MESHENC_MANAGER"
        )
    out = console()

    def emit(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event, separators=(",", ":")))
        else:
            out.print(describe_event(event), highlight=False)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_events(
                encoders,
                manager,
                emit,
                follow=follow,
                interval=interval,
                timeout=timeout,
                duration=duration,
                tls=tls,
            )
        )
