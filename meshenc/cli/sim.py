"""``meshenc sim`` and ``meshenc bench sim``: run the simulator and print what it scored."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from meshenc.cli.bench_output import emit, output_options
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from meshenc.sim.metrics import Score, score
from meshenc.sim.runner import run
from meshenc.sim.scenario import Scenario, ScenarioError
from meshenc.sim.worlds import BROADCAST_RATES, SEGMENT_S, rate_worlds, wan_worlds

STRATEGIES = [s.value for s in Strategy]


def packaged_scenarios() -> list[str]:
    folder = resources.files("meshenc.sim") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_scenario(name_or_path: str) -> Scenario:
    """A packaged scenario by name (``standard``) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
        source = str(path)
    else:
        entry = resources.files("meshenc.sim") / "scenarios" / f"{name_or_path}.toml"
        if not entry.is_file():
            known = ", ".join(packaged_scenarios())
            raise click.BadParameter(f"no scenario {name_or_path!r} (packaged: {known})")
        text = entry.read_text(encoding="utf-8")
        source = f"scenario {name_or_path}"
    try:
        return Scenario.from_toml(text, source=source)
    except ScenarioError as exc:
        raise click.BadParameter(str(exc)) from exc


def _delay_range(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        low, high = (float(part) for part in value.split("-", 1))
    except ValueError as exc:
        raise click.BadParameter("expected MIN-MAX in milliseconds, e.g. 20-120") from exc
    return [low, high]


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def console(*, stderr: bool = False) -> Console:
    """A console that keeps tables whole when output goes to a file or a pipe."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


def score_table(scores: Iterable[Score], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in (
        "encoders",
        "strategy",
        "misaligned frames",
        "max |offset| ms",
        "corrections slew/drop/dup/param",
        "median lead ms",
        "lock-in s",
        "wall s",
        "events/s",
    ):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for s in scores:
        c = s.corrections
        table.add_row(
            _fmt(s.encoders),
            s.strategy,
            _fmt(s.misaligned_frames),
            _fmt(s.max_abs_offset_ms),
            f"{c['slew']}/{c['drop']}/{c['duplicate']}/{c['parameter']}",
            _fmt(s.median_lead_ms, 0),
            _fmt(s.lock_in_s),
            _fmt(s.wall_s),
            _fmt(s.events_per_s, 0),
        )
    return table


def describe(scenario: Scenario) -> str:
    m, c, i, n = scenario.mesh, scenario.clocks, scenario.ingest, scenario.network
    return (
        f"{m.encoders} encoders, degree {m.neighbors}, {m.fps} fps, {m.duration_s:g} s "
        f"(warm-up {m.warmup_s:g} s), drift ±{c.drift_ppm:g} ppm, offsets ±{c.offset_ms:g} ms, "
        f"jitter {_jitter(scenario)}, ingest {i.delay_ms[0]:g}–{i.delay_ms[1]:g} ms "
        f"(swing {i.swing_ms:g} ms), links {n.delay_ms[0]:g}–{n.delay_ms[1]:g} ms "
        f"(jitter {n.jitter_ms:g} ms){_regions(scenario)}, loss {n.loss:g}, "
        f"liars {scenario.liars.count}, "
        f"seed {scenario.seed}" + ("" if scenario.source.timestamps else ", no source timestamps")
    )


def _regions(scenario: Scenario) -> str:
    n = scenario.network
    if n.regions == 1:
        return ""
    cuts = "".join(
        f", region {c.region} cut off at {c.at_s:g} s for {c.duration_s:g} s" for c in n.cuts
    )
    return (
        f" in {n.regions} regions ({n.bridges} bridges of "
        f"{n.between_delay_ms[0]:g}–{n.between_delay_ms[1]:g} ms between each two{cuts})"
    )


def _jitter(scenario: Scenario) -> str:
    ms = scenario.capture_jitter_s * 1000.0
    frames = scenario.clocks.jitter_frames
    return f"{ms:.3g} ms" if frames is None else f"{frames:g} frame ({ms:.3g} ms)"


@click.command()
@click.option(
    "--scenario",
    "scenario_name",
    default="standard",
    show_default=True,
    help="Packaged scenario name or path to a scenario TOML file.",
)
@click.option(
    "--strategy",
    type=click.Choice([*STRATEGIES, "all"]),
    default="predictive",
    show_default=True,
    help="Resync strategy every encoder runs ('all' compares).",
)
@click.option("--encoders", type=int, help="Number of encoders.")
@click.option("--duration", type=float, help="Simulated seconds.")
@click.option("--fps", help="Frame rate: 30, 25, 30000/1001, 29.97 ...")
@click.option("--warmup", type=float, help="Seconds excluded from misaligned_frames.")
@click.option("--seed", type=int, help="Seed of every random draw.")
@click.option("--drift-ppm", type=float, help="Clock drift drawn in ±this many ppm.")
@click.option("--offset-ms", type=float, help="Clock offset drawn in ±this many ms.")
@click.option(
    "--ingest-delay-ms",
    callback=_delay_range,
    metavar="MIN-MAX",
    help="Range of per-encoder mean ingest delay, ms.",
)
@click.option("--jitter-ms", type=float, help="Std-dev of capture timestamp noise, ms.")
@click.option(
    "--jitter-frames", type=float, help="Std-dev of capture timestamp noise, in frame periods."
)
@click.option(
    "--source-timestamps/--no-source-timestamps",
    default=None,
    help="Whether encoders pass the source's period count (PTS) to the engine.",
)
@click.option("--loss", type=float, help="Probability that a mesh message is lost.")
@click.option(
    "--link-delay-ms",
    callback=_delay_range,
    metavar="MIN-MAX",
    help="Range of each mesh link's one-way delay, ms (inside a region, with --regions).",
)
@click.option("--link-jitter-ms", type=float, help="Std-dev of a mesh message's extra delay, ms.")
@click.option("--regions", type=int, help="Split the encoders into this many regions.")
@click.option(
    "--between-delay-ms",
    callback=_delay_range,
    metavar="MIN-MAX",
    help="Range of the one-way delay of links between regions, ms.",
)
@click.option("--neighbors", type=int, help="Neighbours per encoder.")
@click.option("--liars", type=int, help="Encoders that lie about labels, hashes and votes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def sim(
    scenario_name: str,
    strategy: str,
    encoders: int | None,
    duration: float | None,
    fps: str | None,
    warmup: float | None,
    seed: int | None,
    drift_ppm: float | None,
    offset_ms: float | None,
    ingest_delay_ms: list[float] | None,
    jitter_ms: float | None,
    jitter_frames: float | None,
    source_timestamps: bool | None,
    loss: float | None,
    link_delay_ms: list[float] | None,
    link_jitter_ms: float | None,
    regions: int | None,
    between_delay_ms: list[float] | None,
    neighbors: int | None,
    liars: int | None,
    as_json: bool,
) -> None:
    """Simulate a mesh and score how well its outputs stay locked.

    Defaults are the standard scenario; every flag overrides one part of it. Figures are
    computed from the timecodes the run recorded (see meshenc.sim.metrics for definitions).
    """
    scenario = load_scenario(scenario_name)
    try:
        scenario = scenario.with_overrides(
            **{
                "mesh.encoders": encoders,
                "mesh.duration_s": duration,
                "mesh.fps": fps,
                "mesh.warmup_s": warmup,
                "mesh.neighbors": neighbors,
                "seed": seed,
                "clocks.drift_ppm": drift_ppm,
                "clocks.offset_ms": offset_ms,
                "clocks.jitter_ms": jitter_ms,
                "clocks.jitter_frames": jitter_frames,
                "source.timestamps": source_timestamps,
                "ingest.delay_ms": ingest_delay_ms,
                "network.loss": loss,
                "network.delay_ms": link_delay_ms,
                "network.jitter_ms": link_jitter_ms,
                "network.regions": regions,
                "network.between_delay_ms": between_delay_ms,
                "liars.count": liars,
            }
        )
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    chosen = STRATEGIES if strategy == "all" else [strategy]
    scores = [score(run(scenario, Strategy(s))) for s in chosen]
    if as_json:
        if len(scores) == 1:
            click.echo(json.dumps(scores[0].as_dict()))
        else:
            payload = {"scenario": scenario.name, "results": [s.as_dict() for s in scores]}
            click.echo(json.dumps(payload))
        return
    console().print(score_table(scores, f"{scenario.name}: {describe(scenario)}"))


@click.group()
def bench() -> None:
    """Benchmarks: each prints a table and can write machine-readable results."""


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> Sequence[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter("expected a comma-separated list of integers") from exc
    if not sizes or min(sizes) < 2:
        raise click.BadParameter("sizes must be at least 2")
    return sizes


@bench.command("sim")
@click.option(
    "--sizes", default="10,100,1000", show_default=True, callback=_sizes, help="Mesh sizes to run."
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
    base = load_scenario("standard")
    scores: list[Score] = []
    log = console(stderr=True)
    for size in sizes:
        scenario = base.with_overrides(
            **{"mesh.encoders": size, "mesh.duration_s": duration, "seed": seed}
        )
        for strategy in STRATEGIES:
            log.log(f"{size} encoders, {strategy} ...")
            scores.append(score(run(scenario, Strategy(strategy))))
    results = [s.as_dict() for s in scores]
    if emit({"benchmark": "sim", "results": results}, out, as_json):
        return
    title = f"Strategy comparison, standard scenario, {duration:g} simulated s, seed {seed}"
    console().print(score_table(scores, title))


#: (encoders, degree, seeds, simulated seconds) of the lock-in sweep.
LOCKIN_WORLDS: tuple[tuple[int, int, range, float], ...] = (
    (10, 4, range(1, 21), 120.0),
    (100, 4, range(1, 6), 60.0),
    (16, 3, range(1, 8), 60.0),
    (20, 5, range(1, 5), 60.0),
    (30, 7, range(1, 4), 60.0),
)


def _rates(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    rates = [v.strip() for v in value.split(",") if v.strip()]
    try:
        for rate in rates:
            FrameRate.parse(rate)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not rates:
        raise click.BadParameter("expected a comma-separated list of frame rates")
    return rates


@bench.command("lockin")
@click.option(
    "--rates",
    callback=_rates,
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_lockin(rates: list[str] | None, worlds: int, duration: float, as_json: bool) -> None:
    """Seeded worlds of several sizes and degrees: does predictive lock within the warm-up?

    Each world runs predictive and reactive on the standard scenario's faults; a row is one
    world. Reports misaligned frames after the warm-up, lock-in time and corrections. With
    --rates, worlds at each frame rate instead, where the warm-up is two segments and epoch
    runs beside the mesh strategies.
    """
    if rates is not None:
        _bench_rates(rates, worlds, duration, as_json)
        return
    base = load_scenario("standard")
    rows = []
    log = console(stderr=True)
    for encoders, degree, seeds, seconds in LOCKIN_WORLDS:
        for seed in seeds:
            scenario = base.with_overrides(
                **{
                    "mesh.encoders": encoders,
                    "mesh.neighbors": degree,
                    "mesh.duration_s": seconds,
                    "seed": seed,
                }
            )
            log.log(f"{encoders} encoders, degree {degree}, seed {seed} ...")
            p = score(run(scenario, Strategy.PREDICTIVE))
            r = score(run(scenario, Strategy.REACTIVE))
            rows.append((encoders, degree, seed, p, r))
    if as_json:
        payload = [
            {
                "encoders": n,
                "degree": d,
                "seed": s,
                "predictive": p.as_dict(),
                "reactive": r.as_dict(),
            }
            for n, d, s, p, r in rows
        ]
        click.echo(json.dumps({"benchmark": "lockin", "results": payload}))
        return
    table = Table(title="Lock-in across seeded worlds (warm-up 10 s)", title_justify="left")
    for column in (
        "encoders",
        "degree",
        "seed",
        "predictive misaligned",
        "predictive lock-in s",
        "predictive corrections",
        "reactive misaligned",
        "reactive corrections",
    ):
        table.add_column(column, justify="right")
    for n, d, seed, p, r in rows:
        table.add_row(
            str(n),
            str(d),
            str(seed),
            _fmt(p.misaligned_frames),
            _fmt(p.lock_in_s),
            _fmt(p.corrections_total),
            _fmt(r.misaligned_frames),
            _fmt(r.corrections_total),
        )
    locked = sum(1 for *_, p, _r in rows if p.misaligned_frames == 0)
    table.caption = f"predictive: {locked} of {len(rows)} worlds without a misaligned frame"
    console().print(table)


def _bench_rates(rates: list[str], worlds: int, duration: float, as_json: bool) -> None:
    _compare_worlds(
        [
            (
                {
                    "fps": w.fps,
                    "seed": w.seed,
                    "jitter_frames": w.jitter_frames,
                    "jitter_ms": round(w.scenario.capture_jitter_s * 1000, 2),
                },
                w.scenario,
            )
            for w in rate_worlds(rates, worlds, duration_s=duration)
        ],
        name="lockin-rates",
        title=(
            f"Lock-in at broadcast frame rates: 10 encoders, degree 4, {duration:g} s, jitter up "
            "to 1/4 frame, ±200 ppm, ±1 s offsets, ingest 20–320 ms; misaligned frames after "
            f"2 segments ({2 * SEGMENT_S:g} s)"
        ),
        as_json=as_json,
    )


_COMPARED = (Strategy.PREDICTIVE, Strategy.REACTIVE, Strategy.EPOCH)


def _compare_worlds(
    worlds: Sequence[tuple[dict[str, object], Scenario]],
    *,
    name: str,
    title: str,
    as_json: bool,
) -> None:
    """Run every world with predictive, reactive and epoch; print a row per world (its keys,
    then each strategy's figures) and how many worlds each strategy locked within the warm-up
    (two segments) without a misaligned frame after it."""
    rows: list[tuple[dict[str, object], dict[Strategy, Score]]] = []
    log = console(stderr=True)
    for keys, scenario in worlds:
        log.log(", ".join(f"{k} {v}" for k, v in keys.items()) + " ...")
        rows.append((keys, {s: score(run(scenario, s)) for s in _COMPARED}))
    if as_json:
        payload = [
            {**keys, **{s.value: scores[s].as_dict() for s in _COMPARED}} for keys, scores in rows
        ]
        click.echo(json.dumps({"benchmark": name, "results": payload}))
        return
    table = Table(title=title, title_justify="left")
    key_columns = list(rows[0][0]) if rows else []
    for column in (
        *(key.replace("_", " ") for key in key_columns),
        "predictive misaligned",
        "predictive lock-in s",
        "predictive corrections",
        "reactive misaligned",
        "reactive lock-in s",
        "epoch misaligned",
    ):
        table.add_column(column, justify="right")
    for keys, scores in rows:
        p, r, e = (scores[s] for s in _COMPARED)
        table.add_row(
            *(
                f"{keys[key]:g}" if isinstance(keys[key], float) else str(keys[key])
                for key in key_columns
            ),
            _fmt(p.misaligned_frames),
            _fmt(p.lock_in_s, 2),
            _fmt(p.corrections_total),
            _fmt(r.misaligned_frames),
            _fmt(r.lock_in_s, 2),
            _fmt(e.misaligned_frames),
        )

    def passed(s: Score) -> bool:
        # The warm-up is exactly two segments of frames (at 30000/1001 that is 4.004 s), so
        # no misaligned frame after it is lock-in within two segments.
        return s.misaligned_frames == 0 and s.lock_in_s is not None

    counts = {s: sum(1 for _, scores in rows if passed(scores[s])) for s in _COMPARED}
    table.caption = "worlds locked within 2 segments and without a misaligned frame after: " + (
        ", ".join(f"{s.value} {counts[s]} of {len(rows)}" for s in _COMPARED)
    )
    console().print(table)


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench_wan(worlds: int, duration: float, as_json: bool) -> None:
    """Seeded worlds whose mesh links range from a LAN to long-haul links and regions.

    Every kind of link (one-way delay, jitter, loss; regions with fast links inside and
    long-haul bridges between) runs on the same 30-encoder worlds of degree 5, ±150 ppm,
    ±500 ms offsets and ingest delays 20–220 ms, with predictive, reactive and epoch. A world
    passes when no picture is misaligned after two segments.
    """
    rows = []
    for w in wan_worlds(worlds=worlds, duration_s=duration):
        links = w.links
        between = (
            f"{links.between_delay_ms[0]:g}–{links.between_delay_ms[1]:g}"
            if links.regions > 1
            else "—"
        )
        keys: dict[str, object] = {
            "links": links.name,
            "delay_ms": f"{links.delay_ms[0]:g}–{links.delay_ms[1]:g}",
            "regions": links.regions,
            "between_ms": between,
            "jitter_ms": links.jitter_ms,
            "loss": links.loss,
            "seed": w.seed,
        }
        rows.append((keys, w.scenario))
    _compare_worlds(
        rows,
        name="wan",
        title=(
            f"Lock-in over mesh links of every kind: 30 encoders, degree 5, {duration:g} s, "
            "±150 ppm, ±500 ms offsets, ingest 20–220 ms; misaligned frames after 2 segments "
            f"({2 * SEGMENT_S:g} s)"
        ),
        as_json=as_json,
    )
