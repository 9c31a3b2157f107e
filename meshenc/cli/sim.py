"""``meshenc sim``: run the simulator and print what it scored (the benchmarks that compare
strategies over many simulated worlds are ``meshenc bench``, :mod:`meshenc.bench.strategies`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from meshenc.bench.strategies import score_table
from meshenc.core.policy import Strategy
from meshenc.sim.metrics import score
from meshenc.sim.runner import run
from meshenc.sim.scenario import Scenario, ScenarioError, packaged_scenario

STRATEGIES = [s.value for s in Strategy]


def load_scenario(name_or_path: str) -> Scenario:
    """A packaged scenario by name (``standard``) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
        try:
            return Scenario.from_toml(text, source=str(path))
        except ScenarioError as exc:
            raise click.BadParameter(str(exc)) from exc
    try:
        return packaged_scenario(name_or_path)
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


def console(*, stderr: bool = False) -> Console:
    """A console that keeps tables whole when output goes to a file or a pipe."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


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
