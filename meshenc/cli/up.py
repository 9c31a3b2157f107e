"""``meshenc up``: run the local mesh (embedded mode) with a live view, then write its report.

The run itself is :mod:`meshenc.local.demo`; this module is its command line and its view: a
rich ``Live`` panel of encoders (injected clock, timecode, segment, lock, error now and
predicted, leader, corrections), the newest segments' byte identity, the groups and their
leaders, and a feed of kills, joins, leader changes and voted corrections. When the output is
not a terminal, the feed is printed line by line instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from meshenc.cli.encoder import encoder as encoder_command
from meshenc.cli.sim import console as make_console
from meshenc.core.planner.topology import MAX_DEGREE
from services.common.tls import TlsFiles
from services.encoder.media.ladder import MAX_RUNGS, parse_ladder, top_rung
from services.encoder.settings import MAX_CHANNELS, SegmentFormat, parse_size

if TYPE_CHECKING:
    from collections.abc import Callable

    from meshenc.local.demo import DemoConfig, DemoRun, DemoState, Note, RunPlan
    from meshenc.local.launcher import Launcher
    from meshenc.report import Summary

__all__ = ["render", "up"]

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""
_REFRESH = 0.25
_STRIP = 12
#: The terminal's colour of each playback verdict (the report's is in meshenc.report.html).
_PLAYBACK_STYLE = {"smooth": "green", "skipped": "yellow", "not smooth": "bold red"}


def _size(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


@click.command()
@click.option(
    "--encoders",
    "encoder_count",
    type=click.IntRange(min=2, max=64),
    default=6,
    show_default=True,
    help="Encoders at start (one more joins midway unless --no-faults).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=5.0, max=86_400.0),
    default=90.0,
    show_default=True,
    help="Seconds the mesh runs (Ctrl-C ends it earlier, still with a report).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Run folder: per-encoder HLS, logs, events.jsonl, report.html, summary.json.",
)
@click.option(
    "--source",
    default=None,
    help="What the mesh ingests: a file, played live by `meshenc source` to every encoder over"
    " its own path, or a stream URL every encoder opens itself; default: the test pattern, live.",
)
@click.option(
    "--no-sync",
    is_flag=True,
    help="Encoders keep no lock (timecodes from each one's drifting clock): drift unopposed.",
)
@click.option("--no-faults", is_flag=True, help="No kill -9 midway and no join.")
@click.option(
    "--origin/--no-origin",
    default=True,
    show_default=True,
    help="Run a real HTTP origin (nginx) the encoders publish to; it keeps what it got in"
    " OUT/origin/.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice([f.value for f in SegmentFormat]),
    default=SegmentFormat.TS.value,
    show_default=True,
    help="The encoders' segments: ts (MPEG-TS) or cmaf (fMP4, with an HLS playlist and a DASH"
    " manifest.mpd).",
)
@click.option(
    "--player/--no-player",
    default=None,
    help="Play the origin's stream in headless Chromium with hls.js for the whole run and"
    " report stalls and errors; beside it, the master playlist of redundant encoders (through"
    " the kill of the encoder it plays from), with --format cmaf the DASH manifest with"
    " dash.js, and with placed rungs channel 0's master, switching rungs every 4 s; needs"
    " --origin [default: when chromium, hls.js and Playwright are installed;"
    " when not, the run says why].",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the injected clock faults."
)
@click.option(
    "--size", default="640x360", show_default=True, callback=_size, help="Output WIDTHxHEIGHT."
)
@click.option(
    "--ladder",
    default=None,
    help="Every encoder encodes this ABR ladder instead of --size: WIDTHxHEIGHT@KBPS,... (see"
    " meshenc encoder --ladder); the source runs at its largest rung's size. With the manager"
    " planning the links, each rung is placed on --redundancy encoders, which alone write it.",
)
@click.option(
    "--redundancy",
    type=click.IntRange(min=1, max=16),
    default=None,
    help="With --ladder: encoders each rung is placed on (at most --encoders).  [default: 2]",
)
@click.option(
    "--rung-threads",
    type=click.IntRange(min=1, max=MAX_RUNGS),
    default=None,
    help="With --ladder: rungs of each picture every encoder encodes at once (meshenc encoder"
    " --rung-threads).  [default: 1]",
)
@click.option(
    "--channels",
    type=click.IntRange(min=1, max=MAX_CHANNELS),
    default=1,
    show_default=True,
    help="Live channels every encoder takes in (meshenc encoder --channel 0=... --channel"
    " 1=...): channel 0 is --source, each further one a test clip of its own, looped, sent over"
    " the same paths. Each channel keeps its own timeline and segment leader and writes into"
    " OUT/<encoder>/<channel>/; with --ladder each channel's rungs are the work units placed.",
)
@click.option(
    "--gop",
    type=click.IntRange(min=1, max=10_000),
    default=60,
    show_default=True,
    help="Frames per GOP (= per segment).",
)
@click.option("--fps", default="30", show_default=True, help="Frame rate: 30, 25, 30000/1001 ...")
@click.option(
    "--registries",
    type=click.IntRange(min=0, max=16),
    default=3,
    show_default=True,
    help="Registry replicas (the DHT).",
)
@click.option(
    "--max-drift-ppm",
    type=click.FloatRange(min=0.0, max=10_000.0),
    default=100.0,
    show_default=True,
    help="Injected clock drifts are spread over ±this, each encoder different.",
)
@click.option(
    "--jitter-ms",
    type=click.FloatRange(min=0.0, max=1_000.0),
    default=2.0,
    show_default=True,
    help="Arrival jitter of every encoder's path from the live source (its delay line).",
)
@click.option(
    "--kill-at",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Second of the kill -9 of the segment leader [default: 35 % of --duration].",
)
@click.option(
    "--join-at",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Second a new encoder joins [default: 55 % of --duration].",
)
@click.option(
    "--abr-link-kbps",
    type=click.IntRange(min=16, max=1_000_000),
    default=None,
    help="With a placed ladder (--ladder under the manager) and --player: one more hls.js"
    " player of channel 0's master, through the origin over a link of this many kbit/s"
    " (nginx's limit_rate), choosing rungs by its own rate adaptation ('player (abr)').",
)
@click.option(
    "--change",
    default="",
    help="An operator's mesh-wide parameter change at --change-at: WIDTHxHEIGHT@KBPS,"
    " WIDTHxHEIGHT or @KBPS (SetParameters to one running encoder; every encoder switches at"
    " the GOP boundary the mesh agrees on; a ladder takes a bitrate only).",
)
@click.option(
    "--change-at",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Second of --change [default: none].",
)
@click.option(
    "--starve-at",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Second at which one encoder (the first running one that does not lead the first"
    " group) has its CPU taken for --starve-for seconds: stopped and continued in turn,"
    " mostly stopped, as on a machine that cannot carry it. It falls behind its input and"
    " sheds; the report shows what the origin got [default: none].",
)
@click.option(
    "--starve-for",
    type=click.FloatRange(min=0.0, min_open=True),
    default=4.0,
    show_default=True,
    help="Seconds of --starve-at's starvation (at most 30).",
)
@click.option(
    "--links",
    type=click.Choice(["managed", "static"]),
    default="managed",
    show_default=True,
    help="managed: the manager plans the mesh links and rewires them; static: the run's own "
    "plan, fixed from start (the newcomer's neighbours expect it from the beginning).",
)
@click.option(
    "--degree-max",
    type=click.IntRange(min=2, max=MAX_DEGREE),
    default=None,
    help="The most neighbours an encoder gets (the manager's --degree-max, and the static plan"
    "'s): fewer links, fewer mesh messages per frame [default: the planner's 3-7].",
)
@click.option(
    "--autoscale-max",
    type=click.IntRange(min=3, max=64),
    default=None,
    help="Let the manager scale the mesh with its load, between --encoders and this many "
    "encoders: spares are started and stopped as it asks [default: off].",
)
@click.option(
    "--autoscale-high-water",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=0.75,
    show_default=True,
    help="Mean encoder pressure (CPU share of a core, or encode time over the frame budget) "
    "at which the manager asks for more encoders.",
)
@click.option(
    "--autoscale-low-water",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True),
    default=0.30,
    show_default=True,
    help="Mean pressure below which it drains and stops the highest-numbered encoder.",
)
@click.option(
    "--autoscale-cooldown",
    type=click.FloatRange(min=0.0, max=3600.0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds between two scaling decisions (and before the first).",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="Live terminal view [default: when the output is a terminal].",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext gRPC between the processes [default: mutual TLS, certificates in OUT/certs].",
)
@click.pass_context
def up(
    ctx: click.Context,
    encoder_count: int,
    duration: float,
    out: Path,
    source: str | None,
    no_sync: bool,
    no_faults: bool,
    origin: bool,
    output_format: str,
    player: bool | None,
    seed: int,
    size: str,
    ladder: str | None,
    redundancy: int | None,
    rung_threads: int | None,
    channels: int,
    gop: int,
    fps: str,
    registries: int,
    max_drift_ppm: float,
    jitter_ms: float,
    kill_at: float | None,
    join_at: float | None,
    change: str,
    change_at: float | None,
    starve_at: float | None,
    starve_for: float,
    abr_link_kbps: int | None,
    links: str,
    degree_max: int | None,
    autoscale_max: int | None,
    autoscale_high_water: float,
    autoscale_low_water: float,
    autoscale_cooldown: float,
    live: bool | None,
    insecure: bool,
) -> None:
    """Run a local mesh: real etcd, registry replicas, a live source, encoders on drifting clocks.

    A live source (`meshenc source`) sends one MPEG-TS stream to every encoder over its own
    UDP path (different delays, jitter and swing); every encoder stamps the measured arrivals
    with its own injected clock drift (spread over ±--max-drift-ppm), and the mesh keeps their
    outputs frame-locked. Midway the segment leader is killed with kill -9 and later a new
    encoder joins (unless --no-faults). With --origin the encoders publish to a real nginx,
    each serves its own output over HTTP too, and OUT/origin/redundant.m3u8 lists them as
    redundant variants. At the end: HLS per encoder in --out (MPEG-TS, or CMAF with a DASH
    manifest too with --format cmaf), out/report.html with plots and out/summary.json. Every
    process started is stopped at the end, on Ctrl-C and on errors. The processes speak mutual
    TLS with certificates the run makes in OUT/certs (one per encoder, registry, manager,
    operator) unless --insecure. With --autoscale-max the manager scales the mesh with the
    encoders' load: it asks for more encoders (spares the run planned start) or drains and
    stops the highest-numbered one.
    """
    # The run pulls in etcd, the planner and the report (matplotlib): only `up` pays for them.
    from meshenc.local.demo import DemoConfig, DemoRun  # noqa: PLC0415
    from meshenc.local.launcher import ChildFailedError  # noqa: PLC0415
    from meshenc.local.player import unavailable  # noqa: PLC0415

    if player:
        if not origin:
            raise click.UsageError("--player plays the origin's stream: it needs --origin")
        if (reason := unavailable()) is not None:
            raise click.UsageError(f"--player: {reason}")

    if ladder:
        if ctx.get_parameter_source("size") is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--ladder gives every rung its size: leave out --size")
        try:
            top = top_rung(parse_ladder(ladder))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--ladder'") from exc
        size = top.name
    elif redundancy is not None:
        raise click.UsageError("--redundancy places the rungs of --ladder: give a ladder")
    elif rung_threads is not None:
        raise click.UsageError("--rung-threads encodes the rungs of --ladder: give a ladder")
    root = ctx.find_root()
    # Listed, not looked up: the group imports a command only when it runs.
    commands = root.command.list_commands(root) if isinstance(root.command, click.Group) else []
    try:
        config = DemoConfig(
            encoders=encoder_count,
            duration=duration,
            out=out,
            source=source,
            sync=not no_sync,
            faults=not no_faults,
            origin=origin,
            player=player,
            seed=seed,
            size=size,
            ladder=ladder or "",
            redundancy=2 if redundancy is None else redundancy,
            rung_threads=1 if rung_threads is None else rung_threads,
            channels=channels,
            fps=fps,
            gop=gop,
            registries=registries,
            max_drift_ppm=max_drift_ppm,
            jitter_ms=jitter_ms,
            kill_at=kill_at,
            join_at=join_at,
            change=change,
            change_at=change_at,
            starve_at=starve_at,
            starve_for=starve_for,
            abr_link_kbps=abr_link_kbps,
            manager="manager" in commands,
            managed_topology=links == "managed",
            degree_max=degree_max,
            autoscale_max=autoscale_max,
            autoscale_high_water=autoscale_high_water,
            autoscale_low_water=autoscale_low_water,
            autoscale_cooldown=autoscale_cooldown,
            output_format=SegmentFormat(output_format),
            encoder_options=frozenset(
                opt for param in encoder_command.params for opt in param.opts
            ),
            tls=not insecure,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    console = make_console()
    show_live = console.is_terminal if live is None else live
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    run = DemoRun(config, on_note=None if show_live else _printer(console))
    console.print(_intro(config, run.plan, run.operator_tls))
    try:
        summary = asyncio.run(_main(run, console, show_live))
    except (asyncio.CancelledError, KeyboardInterrupt):
        # A second Ctrl-C: every process of the run was killed; no report.
        console.print("stopped at once: every process of the run was killed", style="bold red")
        ctx.exit(EXIT_INTERRUPTED)
    except ChildFailedError as exc:
        raise click.ClickException(str(exc)) from exc
    except FileExistsError as exc:
        raise click.UsageError(str(exc)) from exc
    style = "bold green" if summary.locked else "bold red"
    console.print(Text(summary.line, style=style))
    for rung in summary.rungs:
        console.print(Text(f"  {rung.line}", style="green" if rung.locked else "bold red"))
    for switch in summary.size_switches:
        on_time = switch.on_time and all(switch.on_time.values())
        console.print(Text(f"  {switch.line}", style="green" if on_time else "bold red"))
    if summary.playback is not None:
        style = _PLAYBACK_STYLE[summary.playback.verdict]
        console.print(Text(summary.playback.line, style=style))
        for watched in summary.watched:
            when = "while the browser played" if watched.during_playback else "before/after play"
            console.print(f"  {watched.kind} {watched.encoder}: {when}", highlight=False)
    if summary.redundant is not None:
        console.print(Text(summary.redundant.line), highlight=False)
    if summary.player_failover is not None:
        failover = summary.player_failover
        ok = failover.on_killed and failover.switch_ms is not None
        console.print(Text(failover.line, style="green" if ok else "bold red"))
    for played in (summary.dash, summary.channel, summary.abr):
        if played is not None:
            console.print(Text(played.line, style="green" if played.smooth else "bold red"))
    if summary.recording is not None:
        continuous = summary.recording.continuous
        console.print(Text(summary.recording.line, style="green" if continuous else "bold red"))
    console.print(
        f"report: {out / 'report.html'}   summary: {out / 'summary.json'}   "
        f"check: meshenc verify {out}"
    )
    if run.state.stop_requested:
        ctx.exit(EXIT_INTERRUPTED)


async def _main(run: DemoRun, console: Console, show_live: bool) -> Summary:
    def hook(launcher: Launcher) -> None:
        launcher.handle_signals(run.request_stop)

    if not show_live:
        return await run.run(launcher_ready=hook)
    with Live(render(run.state), console=console, auto_refresh=False) as view:
        task = asyncio.create_task(run.run(launcher_ready=hook))
        while not task.done():
            view.update(render(run.state), refresh=True)
            await asyncio.wait({task}, timeout=_REFRESH)
        view.update(render(run.state), refresh=True)
        return task.result()


def _printer(console: Console) -> Callable[[Note], None]:
    def show(note: Note) -> None:
        console.print(
            f"{time.strftime('%H:%M:%S', time.localtime(note.t))} {note.text}",
            style=note.style or None,
            highlight=False,
        )

    return show


def _intro(config: DemoConfig, plan: RunPlan, tls: TlsFiles | None) -> RenderableType:
    """What is about to run, and the commands to look at it from another terminal (with the
    operator's certificate when the run speaks TLS)."""
    addresses = ",".join(e.address for e in plan.encoders)
    first = plan.encoders[0].address
    joiner = plan.joiner
    lines = [
        Text.assemble(
            ("meshenc up", "bold"),
            f": {config.encoders} encoders"
            + (f" (+{joiner.name} joining at {config.join_time:.0f} s)" if joiner else "")
            + (
                f" (up to {config.autoscale_max} as the manager asks)"
                if config.autoscale_max is not None
                else ""
            )
            + (f", {config.channels} channels each" if config.channels > 1 else "")
            + (
                f", {config.change} asked at {config.change_at:.0f} s"
                if config.change_at is not None
                else ""
            )
            + f", real etcd, {len(plan.registry_ports)} registry replicas"
            + (", the manager" if plan.manager_address else "")
            + f", {config.duration:.0f} s; output in {config.out}/",
        ),
        Text("Inspect the running mesh from another terminal:", style="dim"),
        Text(f"  export MESHENC_ENCODERS={addresses}"),
    ]
    if tls is None:
        lines.append(Text("  export MESHENC_INSECURE=1"))
        grpcurl = "grpcurl -plaintext"
    else:
        lines.append(
            Text(
                f"  export MESHENC_TLS_CA={tls.ca} MESHENC_TLS_CERT={tls.cert} "
                f"MESHENC_TLS_KEY={tls.key}"
            )
        )
        grpcurl = f"grpcurl -cacert {tls.ca} -cert {tls.cert} -key {tls.key}"
    if plan.manager_address:
        lines.append(Text(f"  export MESHENC_MANAGER={plan.manager_address}"))
    lines.append(Text(f"  meshenc status --encoders {addresses}"))
    if config.channels > 1:
        lines.append(Text(f"  meshenc status --encoders {addresses} --channel 1"))
    lines.append(Text("  meshenc events --follow"))
    if plan.manager_address:
        lines += [Text("  meshenc topology"), Text("  meshenc segments")]
    lines += [
        Text(f"  {grpcurl} {first} list"),
        Text(f"  {grpcurl} {first} meshenc.v1.EncoderMesh/GetState"),
    ]
    if "--serve-output" in config.encoder_options:
        lines.append(Text("Each encoder's own output over HTTP (redundant variants):", style="dim"))
        channel = "/0" if config.channels > 1 else ""
        lines += [Text(f"  {e.name}: {e.output_url}{channel}/index.m3u8") for e in plan.encoders]
    return Group(*lines)


# --- the live view ----------------------------------------------------------------------------


def render(state: DemoState) -> RenderableType:
    """The whole view for one moment of the run."""
    return Group(_header(state), _encoders(state), _strip(state), _groups(state), _feed(state))


def _header(state: DemoState) -> RenderableType:
    config = state.config
    elapsed = min(state.elapsed, config.duration)
    bar = ProgressBar(total=config.duration, completed=elapsed, width=40)
    upcoming = ""
    if config.faults and state.started_at is not None:
        if elapsed < config.kill_time:
            upcoming = f"kill -9 of the leader at {config.kill_time:.0f} s"
        elif elapsed < config.join_time:
            upcoming = f"a new encoder joins at {config.join_time:.0f} s"
    line = Table.grid(padding=(0, 2))
    line.add_row(
        bar,
        Text(f"{elapsed:4.0f} / {config.duration:.0f} s", style="bold"),
        Text(state.phase, style="cyan"),
        Text(f"next: {upcoming}" if upcoming else "", style="dim"),
    )
    mode = "mesh sync ON" if config.sync else "mesh sync OFF (--no-sync)"
    title = f"meshenc up — {mode}, drift injected: ±{config.max_drift_ppm:g} ppm"
    return Panel(line, title=title, title_align="left")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:+7.2f}"


def _encoders(state: DemoState) -> RenderableType:
    table = Table(title="Encoders", title_justify="left", expand=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("id", "left"),
        ("process", "left"),
        ("drift ppm", "right"),
        ("offset ms", "right"),
        ("timecode", "right"),
        ("segment", "right"),
        ("lock", "center"),
        ("error ms", "right"),
        ("predicted ms", "right"),
        ("leader", "left"),
        ("slew/drop/dup", "right"),
        ("voted", "right"),
        ("links", "right"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify)
    now = time.time()
    for name, view in state.encoders.items():
        plan, answer = view.plan, view.state
        process = {
            "planned": Text(
                "spare" if plan.spare else "joins later" if plan.joins_later else "starting",
                style="dim",
            ),
            "running": Text("running", style="green"),
            "killed": Text("killed -9", style="bold red"),
            "stopped": Text("stopped", style="dim"),
            "exited": Text("exited", style="bold red"),
        }[view.status]
        fresh = answer is not None and view.status == "running" and now - view.state_at < 3.0
        if answer is None or not fresh:
            table.add_row(
                name, process, f"{plan.drift_ppm:+.1f}", f"{plan.offset_ms:+.1f}", *[""] * 9
            )
            continue
        counts = answer["corrections"]
        links = answer["neighbours"]
        up_links = sum(1 for n in links if n["connected"])
        leader = answer["leader"]
        table.add_row(
            name,
            process,
            f"{plan.drift_ppm:+.1f}",
            f"{plan.offset_ms:+.1f}",
            str(answer["timecode"]),
            str(answer["segment_number"]),
            Text("locked", style="green") if answer["locked"] else Text("locking", "yellow"),
            _ms(answer["error_ns"]),
            _ms(answer["predicted_error_ns"]),
            Text(leader or "—", style="bold cyan" if leader == name else ""),
            f"{counts.get('slew', 0)}/{counts.get('drop', 0)}/{counts.get('duplicate', 0)}",
            str(view.voted),
            Text(f"{up_links}/{len(links)}", style="" if up_links == len(links) else "yellow"),
        )
    return table


def _strip(state: DemoState) -> RenderableType:
    """The newest segments, per encoder: the same bytes as the majority (=) or not (≠)."""
    identity = state.identity
    if identity is None or not identity.segments:
        return Text("Segments: waiting for the first whole segments ...", style="dim")
    checks = identity.segments[-_STRIP:]
    table = Table(
        title="Newest segments: = same bytes as the others, ≠ differs, ~ lock-in, · none",
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    table.add_column("")
    for check in checks:
        table.add_column(str(check.segment % 10_000), justify="center")
    for output in identity.encoders:
        cells: list[Text] = []
        for check in checks:
            copy = next((c for c in check.copies if c.encoder == output.name), None)
            if copy is None:
                cells.append(Text("·", style="dim"))
            elif copy.lock_in:
                cells.append(Text("~", style="green" if copy.matches else "yellow"))
            else:
                cells.append(
                    Text(
                        "=" if copy.matches else "≠", style="green" if copy.matches else "bold red"
                    )
                )
        table.add_row(output.name, *cells)
    judged = identity.judged
    verdict = (
        f"{identity.agreed}/{judged} compared segments identical on every encoder"
        if judged
        else "no segment to compare yet"
    )
    style = "green" if judged and identity.agreed == judged else ("red" if judged else "dim")
    return Group(table, Text(verdict, style=style))


def _groups(state: DemoState) -> RenderableType:
    table = Table(title="Groups (segment leaders elected in etcd)", title_justify="left")
    for column in ("group", "members", "leader", "revision", "terms"):
        table.add_column(column)
    for group in state.plan.groups:
        members = [e.name for e in state.plan.encoders if e.group == group]
        leader, revision = state.leaders.get(group, ("—", 0))
        table.add_row(
            group,
            " ".join(members),
            Text(leader, style="bold cyan"),
            str(revision or "—"),
            str(state.leader_terms.get(group, 0)),
        )
    return table


def _feed(state: DemoState) -> RenderableType:
    table = Table(title="Events", title_justify="left", box=None, show_header=False)
    table.add_column("t", justify="right", style="dim")
    table.add_column("what")
    start = state.started_at
    for note in state.notes:
        when = "" if start is None else f"{note.t - start:+6.1f} s"
        table.add_row(when, Text(note.text, style=note.style))
    corrections = ", ".join(f"{k} {v}" for k, v in sorted(state.corrections.items()))
    footer = Text(f"corrections so far: {corrections or 'none'}", style="dim")
    return Group(table, footer)
