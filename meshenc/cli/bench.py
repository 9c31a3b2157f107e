"""``meshenc bench``: the benchmarks' commands.

Each command parses its options, runs its benchmark from :mod:`meshenc.bench` (one module
each: what is measured and how is said there) with progress on stderr, and prints the result's
table, or its JSON with ``--json``; ``--out FILE`` also writes the JSON to a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from meshenc.bench import (
    arrivals,
    dht,
    encoder,
    esp,
    failover,
    ingest,
    live,
    plan,
    regions,
    rungs,
    scale,
    simspeed,
    tls,
)
from meshenc.bench.results import BenchError, BenchResult, Progress
from meshenc.bench.strategies import compare_sizes, lockin_at_rates, lockin_sweep, wan_comparison
from meshenc.bench.worlds import BROADCAST_RATES
from meshenc.cli.encoder import encoder as encoder_command
from meshenc.cli.sim import console
from meshenc.core.planner.topology import MAX_DEGREE
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from meshenc.local.demo import MAX_STARVE
from meshenc.local.etcd import EtcdNotInstalledError
from meshenc.sim.scenario import ScenarioError
from services.common.etcd import DEFAULT_LEASE_TTL
from services.encoder.media.ladder import MAX_RUNGS, Rung, parse_ladder
from services.encoder.settings import parse_size

__all__ = ["bench"]

_F = TypeVar("_F", bound=Callable[..., Any])


@click.group()
def bench() -> None:
    """Benchmarks: each prints a table and can write machine-readable results."""


# --- what every command shares ------------------------------------------------------------------


def output_options(command: _F) -> _F:
    """Add ``--json`` (print JSON instead of a table) and ``--out FILE`` (also write it)."""
    command = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the results as JSON to this file.",
    )(command)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        command
    )


_pictures_per_run = click.option(
    "--frames",
    type=click.IntRange(30, 36_000),
    default=300,
    show_default=True,
    help="Pictures per run.",
)
_repeats = click.option(
    "--repeats",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Runs per measurement (the median is reported).",
)


def _progress() -> Progress:
    """Progress lines go to stderr, so that stdout holds only the results."""
    return console(stderr=True).log


@contextlib.contextmanager
def _scenario_usage() -> Iterator[None]:
    """A scenario the options make invalid (a run no longer than its warm-up) is a usage
    error, said in one line."""
    try:
        yield
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc


def _show(result: BenchResult, out: Path | None = None, *, as_json: bool) -> None:
    """Write the JSON to ``out`` when given; print it with ``--json``, else print the table."""
    payload = result.payload()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(payload))
    else:
        console().print(result.table())


def _counts(noun: str, most: int | None = None, *, least: int = 2) -> Callable[..., list[int]]:
    """A callback reading ``10,100,1000``: at least ``least`` each, at most ``most`` if given."""
    bounds = f"at least {least}" if most is None else f"between {least} and {most:,}"

    def parse(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
        try:
            counts = [int(v) for v in value.split(",") if v.strip()]
        except ValueError as exc:
            raise click.BadParameter("expected a comma-separated list of integers") from exc
        if not counts or min(counts) < least or (most is not None and max(counts) > most):
            raise click.BadParameter(f"{noun} must be {bounds}")
        return counts

    return parse


def _frame_rates(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> list[FrameRate] | None:
    """A callback reading ``25,30000/1001,...`` (None when the option is not given)."""
    if value is None:
        return None
    try:
        rates = [FrameRate.parse(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not rates:
        raise click.BadParameter("expected a comma-separated list of frame rates")
    return rates


def _picture_sizes(
    _ctx: click.Context, _param: click.Parameter, value: str
) -> list[encoder.EncoderSize]:
    try:
        return encoder.parse_sizes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


# --- in the simulator ---------------------------------------------------------------------------


@bench.command("sim")
@click.option(
    "--sizes",
    default="10,100,1000",
    show_default=True,
    callback=_counts("sizes"),
    help="Mesh sizes to run.",
)
@click.option(
    "--duration", type=float, default=60.0, show_default=True, help="Simulated seconds per run."
)
@click.option("--seed", type=int, default=1, show_default=True)
@output_options
def bench_sim(
    sizes: Sequence[int], duration: float, seed: int, as_json: bool, out: Path | None
) -> None:
    """Every strategy on the standard scenario at several mesh sizes, side by side.

    Each size runs all four strategies in the same simulated world (same seed). Wall time is
    for one core; the simulator is single-threaded.
    """
    with _scenario_usage():
        result = compare_sizes(sizes, duration, seed, progress=_progress())
    _show(result, out, as_json=as_json)


@bench.command("simspeed")
@click.option(
    "--sizes",
    default="1000",
    show_default=True,
    callback=_counts("sizes"),
    help="Mesh sizes to time (e.g. 1000,10000: ten thousand takes minutes per run).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0, min_open=True),
    default=60.0,
    show_default=True,
    help="Simulated seconds per run.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Runs per world (the median is reported).",
)
@output_options
def bench_simspeed(
    sizes: Sequence[int], duration: float, repeats: int, as_json: bool, out: Path | None
) -> None:
    """How fast the simulator runs: events per second, wall and CPU time, peak memory.

    Each run is the standard scenario (predictive, seed 1) in a process of its own; a
    reference world of 100 encoders × 20 s is timed in the same invocation,
    interleaved with the sizes, so that a noisy machine can be read off the ratio.
    """
    with _scenario_usage():
        result = simspeed.measure_speed(sizes, duration, repeats, progress=_progress())
    _show(result, out, as_json=as_json)


@bench.command("lockin")
@click.option(
    "--rates",
    callback=_frame_rates,
    metavar="FPS,...",
    help=(
        "Instead of the size/degree sweep, run seeded worlds at these frame rates "
        f"(e.g. {','.join(BROADCAST_RATES)}) with capture jitter up to a quarter frame, "
        "±200 ppm, ±1 s offsets and ingest delays spread over 300 ms."
    ),
)
@click.option(
    "--worlds",
    type=click.IntRange(1, 1000),
    default=8,
    show_default=True,
    help="With --rates: seeded worlds per rate.",
)
@click.option(
    "--duration",
    type=float,
    default=30.0,
    show_default=True,
    help="With --rates: simulated seconds per world.",
)
@output_options
def bench_lockin(
    rates: list[FrameRate] | None, worlds: int, duration: float, as_json: bool, out: Path | None
) -> None:
    """Seeded worlds of several sizes and degrees: does predictive lock within the warm-up?

    Each world runs predictive and reactive on the standard scenario's faults; a row is one
    world. Reports misaligned frames after the warm-up, lock-in time and corrections. With
    --rates, worlds at each frame rate instead, where the warm-up is two segments and epoch
    runs beside the mesh strategies.
    """
    result: BenchResult
    if rates is not None:
        with _scenario_usage():
            result = lockin_at_rates(
                [str(rate) for rate in rates], worlds, duration, progress=_progress()
            )
    else:
        result = lockin_sweep(progress=_progress())
    _show(result, out, as_json=as_json)


@bench.command("wan")
@click.option(
    "--worlds",
    type=click.IntRange(1, 1000),
    default=4,
    show_default=True,
    help="Seeded worlds per kind of link.",
)
@click.option(
    "--duration", type=float, default=60.0, show_default=True, help="Simulated seconds per world."
)
@output_options
def bench_wan(worlds: int, duration: float, as_json: bool, out: Path | None) -> None:
    """Seeded worlds whose mesh links range from a LAN to long-haul links and regions.

    Every kind of link (one-way delay, jitter, loss; regions with fast links inside and
    long-haul bridges between) runs on the same 30-encoder worlds of degree 5, ±150 ppm,
    ±500 ms offsets and ingest delays 20–220 ms, with predictive, reactive and epoch. A world
    passes when no picture is misaligned after two segments.
    """
    with _scenario_usage():
        result = wan_comparison(worlds, duration, progress=_progress())
    _show(result, out, as_json=as_json)


@bench.command("dht")
@click.option(
    "--nodes",
    "sizes",
    default="1000,10000",
    show_default=True,
    callback=_counts("network sizes"),
    help="Network sizes to simulate.",
)
@click.option(
    "--churn",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Fraction of the nodes that leave (kill -9 style) and are replaced by joins.",
)
@click.option("--lookups", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--records", type=click.IntRange(1), default=200, show_default=True, help="Records stored."
)
@click.option("--k", "k", type=click.IntRange(1, 64), default=20, show_default=True)
@click.option("--alpha", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option(
    "--bootstrap",
    type=click.Choice(["fast", "join"]),
    default="fast",
    show_default=True,
    help="How the initial network is built (see meshenc.sim.dht); churn always joins.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@output_options
def bench_dht(
    sizes: Sequence[int],
    churn: float,
    lookups: int,
    records: int,
    k: int,
    alpha: int,
    bootstrap: str,
    seed: int,
    as_json: bool,
    out: Path | None,
) -> None:
    """Lookup hops and success rate of the registry DHT at several sizes, with churn.

    Each size runs the real Kademlia core in the discrete-event simulator: records are
    published, then churn replaces that fraction of the nodes while value lookups run from
    random nodes for random records. Wall time is for one core; the simulator is
    single-threaded.
    """
    if alpha > k:
        raise click.BadParameter(f"alpha ({alpha}) must not exceed k ({k})", param_hint="--alpha")
    result = dht.run_sizes(
        sizes,
        churn=churn,
        lookups=lookups,
        records=records,
        k=k,
        alpha=alpha,
        bootstrap="join" if bootstrap == "join" else "fast",
        seed=seed,
        progress=_progress(),
    )
    _show(result, out, as_json=as_json)


@bench.command("plan")
@click.option(
    "--encoders",
    default="100,1000,10000",
    show_default=True,
    callback=_counts("sizes", most=200_000),
    help="Mesh sizes to plan, comma-separated.",
)
@click.option(
    "--channels",
    type=click.IntRange(1, 1_000_000),
    default=plan.DEFAULT_CHANNELS,
    show_default=True,
    help="Channels to place (fewer where their copies would take over half the capacity).",
)
@click.option(
    "--rungs",
    type=click.IntRange(1, 16),
    default=plan.DEFAULT_RUNGS,
    show_default=True,
    help="Renditions per channel (one work unit each).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Synthetic mesh seed.")
@_repeats
@output_options
def bench_plan(
    encoders: list[int],
    channels: int,
    rungs: int,
    seed: int,
    repeats: int,
    as_json: bool,
    out: Path | None,
) -> None:
    """Plan, placement and replan times, placement balance and moves per event, at several
    mesh sizes."""
    _show(
        plan.run_sizes(
            encoders, seed, repeats, channels=channels, rungs=rungs, progress=_progress()
        ),
        out,
        as_json=as_json,
    )


# --- on this machine, with media and real processes ---------------------------------------------


@bench.command("encoder")
@_pictures_per_run
@_repeats
@click.option(
    "--sizes",
    default="640x360,1280x720",
    show_default=True,
    callback=_picture_sizes,
    help="WxH[@KBPS],... (default bitrate: 1500 kbps at 640x360, 4000 at 1280x720).",
)
@click.option(
    "--esps",
    type=click.IntRange(10, 18_000),
    default=300,
    show_default=True,
    help="ESPs sent each way at 30/s for the gRPC latency.",
)
@output_options
def bench_encoder(
    frames: int,
    repeats: int,
    sizes: list[encoder.EncoderSize],
    esps: int,
    as_json: bool,
    out: Path | None,
) -> None:
    """Encoder throughput with the mesh on, against ffmpeg; mesh CPU; ESP latency over gRPC.

    Both sides decode the same H.264 stream and are compared in pictures per CPU-second. Needs
    Debian's ffmpeg as the baseline (`make bench` installs it). Runs of ours and of ffmpeg
    alternate so that machine noise hits both; medians are reported.
    """
    try:
        result = encoder.run_encoder_bench(sizes, frames, repeats, esps, progress=_progress())
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


def _ladder(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[Rung, ...]:
    try:
        return parse_ladder(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@bench.command("rungs")
@_pictures_per_run
@_repeats
@click.option(
    "--ladder",
    default=rungs.DEFAULT_LADDER,
    show_default=True,
    callback=_ladder,
    help="The ladder, as meshenc encoder --ladder reads it; the stream is at its top rung.",
)
@click.option(
    "--threads",
    default="1,2,4",
    show_default=True,
    callback=_counts("thread counts", MAX_RUNGS, least=1),
    help="Rung thread counts to run (meshenc encoder --rung-threads); 1 always runs.",
)
@output_options
def bench_rungs(
    frames: int,
    repeats: int,
    ladder: tuple[Rung, ...],
    threads: list[int],
    as_json: bool,
    out: Path | None,
) -> None:
    """Wall and CPU time per picture of a ladder with its rungs encoded one after another
    against several at once (--rung-threads); every run must write the same files."""
    try:
        result = rungs.run_rungs_bench(ladder, threads, frames, repeats, progress=_progress())
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


@bench.command("ingest")
@click.option("--frames", type=click.IntRange(30, 36_000), default=600, show_default=True)
@_repeats
@click.option(
    "--sizes",
    default="640x360,1280x720",
    show_default=True,
    callback=_picture_sizes,
    help="Picture sizes: WxH[@kbps],...",
)
@output_options
def bench_ingest(
    frames: int, repeats: int, sizes: list[encoder.EncoderSize], as_json: bool, out: Path | None
) -> None:
    """CPU per picture of the encoder's ingest path against ffmpeg decoding the same stream.

    Needs Debian's ffmpeg as the baseline (`make bench` installs it).
    """
    try:
        result = ingest.run_ingest_bench(sizes, frames, repeats, progress=_progress())
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


@bench.command("arrivals")
@_repeats
@click.option(
    "--frames",
    type=click.IntRange(60, 36_000),
    default=300,
    show_default=True,
    help="Pictures sent per run, at 30/s.",
)
@output_options
def bench_arrivals(repeats: int, frames: int, as_json: bool, out: Path | None) -> None:
    """How late the encoder's receiver stamps each picture's arrival, against its send time.

    The encoder's own UDP receiver, a sender process at 30 pictures/s, quiet, with busy Python
    threads beside the receiver, and with the receiving process stopped for half a second;
    stamps from the kernel's receive time against the clock read when the datagram was read
    (the baseline), in alternating runs.
    """
    try:
        result = arrivals.run_arrivals_bench(frames, repeats, progress=_progress())
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


@bench.command("tls")
@_repeats
@click.option(
    "--esps",
    type=click.IntRange(10, 18_000),
    default=150,
    show_default=True,
    help="ESPs sent each way at 30/s per run, for the latency.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(0.2, 60.0),
    default=2.0,
    show_default=True,
    help="Seconds of sending with an outbox's worth of ESPs in flight, per run (throughput).",
)
@output_options
def bench_tls(repeats: int, esps: int, seconds: float, as_json: bool, out: Path | None) -> None:
    """ESP throughput and send→receive latency between two mesh nodes, mutual TLS off and on.

    Real MeshServer and MeshLinks over gRPC on 127.0.0.1, runs of each mode interleaved;
    medians and percentiles per mode, and the ratio on/off.
    """
    try:
        result = tls.run_tls_bench(repeats, esps, seconds, progress=_progress())
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


@bench.command("esp")
@_repeats
@click.option(
    "--frames",
    type=click.IntRange(10, 36_000),
    default=600,
    show_default=True,
    help=f"Frames measured per run (each node sends one ESP per frame to each neighbour, "
    f"{esp.FRAMES_PER_SECOND}/s).",
)
@click.option(
    "--nodes",
    type=click.IntRange(2, 16),
    default=esp.NODES,
    show_default=True,
    help="Mesh nodes (a full mesh: each a neighbour of every other).",
)
@click.option(
    "--topology",
    type=click.Choice(esp.TOPOLOGIES),
    default="full",
    show_default=True,
    help="full: every pair of nodes linked; star: the first node linked to each other (the "
    "latency of one node's links and its CPU, its neighbours costing the machine little).",
)
@click.option(
    "--baseline",
    default=esp.BASELINE,
    show_default=True,
    help="Git revision measured as the baseline, in interleaved runs; 'none' for none.",
)
@output_options
def bench_esp(
    repeats: int,
    frames: int,
    nodes: int,
    topology: str,
    baseline: str,
    as_json: bool,
    out: Path | None,
) -> None:
    """ESP send→receive latency and mesh CPU per frame among real nodes.

    Each node is a process of its own (MeshServer and MeshLinks over gRPC on 127.0.0.1),
    in a full mesh or a star, all sending to each neighbour at 60 frames/s; this tree
    against a baseline revision, in interleaved runs.
    """
    try:
        result = esp.run_esp_bench(
            repeats,
            frames,
            nodes=nodes,
            topology=topology,
            baseline=None if baseline.lower() == "none" else baseline,
            progress=_progress(),
        )
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


@bench.command("failover")
@click.option(
    "--trials", type=click.IntRange(1, 500), default=20, show_default=True, help="Kills per run."
)
@click.option(
    "--members",
    type=click.IntRange(2, 10),
    default=3,
    show_default=True,
    help="Encoders in the segment.",
)
@click.option(
    "--lease-ttl",
    type=click.IntRange(1, 60),
    default=DEFAULT_LEASE_TTL,
    show_default=True,
    help="etcd lease TTL of every encoder (s).",
)
@click.option("--no-baseline", is_flag=True, help="Skip the lease-expiry-only run.")
@output_options
def bench_failover(
    trials: int, members: int, lease_ttl: int, no_baseline: bool, as_json: bool, out: Path | None
) -> None:
    """Kill -9 the segment leader N times; time until a new leader acts; audit etcd.

    Real etcd (Debian's etcd-server), real encoder processes at 160x96 in a full static mesh.
    First with fenced fast failover, then (unless --no-baseline) with lease expiry alone.
    """
    try:
        result = failover.run_failover_bench(
            trials,
            members=members,
            lease_ttl=lease_ttl,
            baseline=not no_baseline,
            progress=_progress(),
        )
    except (EtcdNotInstalledError, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    _show(result, out, as_json=as_json)


def _strategies(_ctx: click.Context, _param: click.Parameter, value: str) -> list[Strategy]:
    try:
        return [Strategy(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@bench.command("regions")
@click.option(
    "--cut-s",
    type=click.FloatRange(1.0, 3600.0),
    default=60.0,
    show_default=True,
    help="How long region 2 is cut off.",
)
@click.option(
    "--cut-at",
    type=click.FloatRange(8.0, 600.0),
    default=16.0,
    show_default=True,
    help="When the cut begins, seconds after the encoders start (after lock-in).",
)
@click.option(
    "--after-s",
    type=click.FloatRange(8.0, 600.0),
    default=24.0,
    show_default=True,
    help="How long the run goes on after the cut heals.",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the encoders' segments and logs in this folder (default: a temporary one).",
)
@output_options
def bench_regions(
    cut_s: float, cut_at: float, after_s: float, keep: Path | None, as_json: bool, out: Path | None
) -> None:
    """Six real encoders in three regions over 40-150 ms bridges; region 2 cut off and back.

    Each region is two encoders on a direct link; every two regions are joined by two bridges
    through delay relays. Region 2 loses its four bridges for --cut-s seconds. Judged from the
    segment files: segments identical on all six before, during and after the cut.
    """
    result = regions.run_region_cut(
        keep,
        duration=cut_at + cut_s + after_s,
        cut_at=cut_at,
        cut_s=cut_s,
        progress=_progress(),
    )
    _show(result, out, as_json=as_json)


@bench.command("live")
@click.option(
    "--rates", default="25,30000/1001,50,60000/1001,60", show_default=True, callback=_frame_rates
)
@click.option("--seeds", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option("--encoders", type=click.IntRange(2, 8), default=3, show_default=True)
@click.option("--duration", type=click.FloatRange(10.0, 600.0), default=30.0, show_default=True)
@click.option(
    "--strategies", default="predictive,reactive,epoch", show_default=True, callback=_strategies
)
@output_options
def bench_live(
    rates: list[FrameRate],
    seeds: int,
    encoders: int,
    duration: float,
    strategies: list[Strategy],
    as_json: bool,
    out: Path | None,
) -> None:
    """Real encoders on a live UDP source: lock across frame rates, strategy by strategy.

    Each world draws drifts within ±200 ppm, offsets within ±1 s, path delays spread over
    300 ms and arrival jitter up to a quarter frame period; every strategy runs on the same
    world at the same time. Judged from the segment files: misaligned frames after each
    encoder's first two segments, and the longest lock-in in segments.
    """
    result = live.run_live_bench(rates, seeds, encoders, duration, strategies, progress=_progress())
    _show(result, out, as_json=as_json)


def _trials(_ctx: click.Context, _param: click.Parameter, value: str) -> list[scale.TrialPlan]:
    """A callback reading ``6,12,24,24:12,12~4``: N encoders, N overloading and then M kept,
    or N with one starved for S seconds."""
    plans = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        rest, _, starved = part.partition("~")
        started, _, kept = rest.partition(":")
        try:
            plan = scale.TrialPlan(
                int(started),
                int(kept) if kept else None,
                starve_for=float(starved) if starved else None,
            )
        except ValueError as exc:
            raise click.BadParameter(f"{part!r}: expected N, N:M or N~S") from exc
        if not 2 <= plan.encoders <= 64 or (
            plan.keep is not None and not 2 <= plan.keep < plan.encoders
        ):
            raise click.BadParameter(f"{part!r}: 2 to 64 encoders, and 2 <= M < N")
        if plan.starve_for is not None and (
            plan.keep is not None or not 0 < plan.starve_for <= MAX_STARVE
        ):
            raise click.BadParameter(f"{part!r}: N~S starves one for 0 < S <= {MAX_STARVE:g} s")
        plans.append(plan)
    if not plans:
        raise click.BadParameter("expected at least one trial")
    return plans


@bench.command("scale")
@click.option(
    "--trials",
    "plans",
    default="6,12,24,24:4",
    show_default=True,
    callback=_trials,
    help="One run each, in this order: N encoders; N:M for N started and all but M of them "
    "killed at --relief-at (the overload trial); N~S for N with one of them starved of CPU for "
    "S seconds from --relief-at (the starvation trial).",
)
@click.option("--size", default="160x90", show_default=True, help="Picture size WIDTHxHEIGHT.")
@click.option("--fps", default="30", show_default=True)
@click.option("--gop", type=click.IntRange(1, 600), default=30, show_default=True)
@click.option("--duration", type=click.FloatRange(20.0, 3600.0), default=60.0, show_default=True)
@click.option(
    "--relief-at",
    type=click.FloatRange(5.0, 3600.0),
    default=25.0,
    show_default=True,
    help="Seconds after the encoders start when an N:M trial kills all but M, or an N~S "
    "trial starts to starve one.",
)
@click.option("--registries", type=click.IntRange(0, 16), default=1, show_default=True)
@click.option(
    "--degree-max",
    type=click.IntRange(2, MAX_DEGREE),
    default=None,
    help="The most neighbours the manager gives an encoder (meshenc up --degree-max): fewer "
    "mesh messages per frame [default: the planner's 3-7].",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep every trial's run folder (segments, logs, report) in this folder.",
)
@output_options
def bench_scale(
    plans: list[scale.TrialPlan],
    size: str,
    fps: str,
    gop: int,
    duration: float,
    relief_at: float,
    registries: int,
    degree_max: int | None,
    keep: Path | None,
    as_json: bool,
    out: Path | None,
) -> None:
    """Real encoder processes on this machine: how many lock, and does an overload pass.

    Each trial is a `meshenc up` run (etcd, registry replicas, the manager, a live source)
    without faults, origin or player. An N:M trial starts N encoders and kills all but M of
    them at --relief-at: how many segments until each survivor's copies hold their reference,
    and how long after the relief its last drop or duplicate came. An N~S trial starves one
    encoder of CPU for S seconds from --relief-at and judges it the same way from the
    starvation's end.
    The load average, each encoder's CPU and what each encoder dropped are reported beside
    what the segment files say.
    """
    plans = [p if p.plain else dataclasses.replace(p, relief_at=relief_at) for p in plans]
    if any(relief_at + (p.starve_for or 0.0) >= duration - 10.0 for p in plans if not p.plain):
        raise click.BadParameter(
            "must leave at least 10 s of the run after the relief (a starvation's end)",
            param_hint="--relief-at",
        )
    try:
        parse_size(size)
        FrameRate.parse(fps)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    result = scale.run_scale_bench(
        plans,
        frozenset(opt for param in encoder_command.params for opt in param.opts),
        size=size,
        fps=fps,
        gop=gop,
        duration=duration,
        registries=registries,
        degree_max=degree_max,
        keep=keep,
        progress=_progress(),
    )
    _show(result, out, as_json=as_json)
