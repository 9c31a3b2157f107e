"""``meshenc bench live``: real encoder processes on a live network source, across frame rates.

The worlds and how they are judged are in :mod:`meshenc.local.live_bench`; this module parses
options, runs the worlds one after another and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from meshenc.cli.bench_output import emit, output_options
from meshenc.cli.sim import console
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from meshenc.local.live_bench import LOCK_IN_SEGMENTS, WorldResult, plan_world, run_world

__all__ = ["bench_live"]

DEFAULT_RATES = "25,30000/1001,50,60000/1001,60"


def _rates(_ctx: click.Context, _param: click.Parameter, value: str) -> list[FrameRate]:
    try:
        return [FrameRate.parse(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _strategies(_ctx: click.Context, _param: click.Parameter, value: str) -> list[Strategy]:
    try:
        return [Strategy(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _cell(results: list[WorldResult]) -> str:
    """Misaligned frames after lock-in, summed, and the worst lock-in in segments."""
    misaligned = sum(r.misaligned_frames for r in results)
    lock = [r.locked_after for r in results]
    worst = "never" if any(x is None for x in lock) else f"{max(x for x in lock if x is not None)}"
    return f"{misaligned:,} / {worst}"


@click.command("live")
@click.option("--rates", default=DEFAULT_RATES, show_default=True, callback=_rates)
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
    log = console(stderr=True)
    table_rows: dict[str, dict[Strategy, list[WorldResult]]] = {}
    payload = []
    for rate in rates:
        row = table_rows.setdefault(str(rate), {s: [] for s in strategies})
        for seed in range(seeds):
            world = plan_world(rate, seed, encoders=encoders)
            for result in run_world(world, strategies, duration, progress=log.log):
                row[result.strategy].append(result)
                payload.append(
                    {
                        "rate": str(rate),
                        "seed": seed,
                        "strategy": result.strategy.value,
                        "judged_segments": result.judged,
                        "misaligned_frames": result.misaligned_frames,
                        "locked_after_segments": result.locked_after,
                    }
                )
    if emit(payload, out, as_json):
        return
    table = Table(
        title=(
            f"Real encoders on a live source: {encoders} per world, {seeds} world(s) per rate,"
            f" {duration:g} s; cells: misaligned frames after lock-in"
            f" (each encoder's first {LOCK_IN_SEGMENTS} segments) / longest lock-in, segments"
        ),
        title_justify="left",
    )
    table.add_column("fps")
    for strategy in strategies:
        table.add_column(strategy.value, justify="right")
    for name, row in table_rows.items():
        table.add_row(name, *(_cell(row[s]) for s in strategies))
    console().print(table)
