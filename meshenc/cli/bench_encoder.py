"""``meshenc bench encoder``: what one encoder costs on this machine, with the mesh on.

The measuring lives in :mod:`services.encoder.bench` (its docstring says what is timed and
how); this module only parses options, reports progress on stderr and prints the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.table import Table

from meshenc.cli.bench_output import emit, output_options
from meshenc.cli.sim import console
from services.encoder.bench import (
    FRAME_RATE,
    GOP,
    PRESET,
    BenchError,
    EncoderResult,
    EncoderSize,
    LatencyResult,
    Spread,
    ffmpeg_binary,
    machine,
    measure_encoder,
    measure_latency,
    parse_sizes,
    results_dict,
)

__all__ = ["bench_encoder"]


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> list[EncoderSize]:
    try:
        return parse_sizes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _spread(values: Sequence[float], digits: int = 0, unit: str = "") -> str:
    s = Spread.of(values)
    return f"{s.low:,.{digits}f}–{s.high:,.{digits}f}{unit}"


def _versions(results: Sequence[EncoderResult]) -> str:
    """Which libx264 builds were compared (from the bitstreams' SEI)."""
    ours = sorted({r.x264_ours for r in results if r.x264_ours is not None}) or ["?"]
    theirs = sorted({r.x264_ffmpeg for r in results if r.x264_ffmpeg is not None}) or ["?"]
    return f"libx264: ours (PyAV) {', '.join(ours)}; ffmpeg's {', '.join(theirs)}."


def encoder_table(
    results: Sequence[EncoderResult], latency: LatencyResult, frames: int, repeats: int
) -> Table:
    """One table: throughput, baseline, ratio and mesh CPU per size, then the gRPC latency."""
    title = (
        f"Encoder benchmark: {FRAME_RATE} fps, GOP {GOP}, preset {PRESET}, mesh of 3 neighbours;"
        f" median of {repeats} runs × {frames} frames, no pacing"
    )
    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("measurement", "left"),
        ("size", "left"),
        ("value", "right"),
        ("spread", "right"),
        ("note", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    period_ms = FRAME_RATE.period * 1e3
    for r in results:
        size = f"{r.size.name} {r.size.bitrate_kbps} kbps"
        ours, theirs = Spread.of(r.ours_fps), Spread.of(r.ffmpeg_fps)
        table.add_row(
            "ours: full path, mesh on",
            size,
            f"{ours.median:,.0f} fps",
            _spread(r.ours_fps),
            "ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in r.parts_ms.items()),
        )
        table.add_row(
            "ffmpeg CLI, same pictures",
            size,
            f"{theirs.median:,.0f} fps",
            _spread(r.ffmpeg_fps),
            f"same libx264 settings, 1 thread; one context (no per-GOP restart: ours alone);"
            f" incl. start-up {Spread.of(r.ffmpeg_wall_fps).median:,.0f} fps",
        )
        table.add_row(
            "ours / ffmpeg",
            size,
            f"{Spread.of(r.ratios).median:.2f}×",
            _spread(r.ratios, 2, "×"),
            "spread: per pair of alternating runs",
        )
        table.add_row(
            "mesh protocol CPU per frame",
            size,
            f"{r.mesh_us_median:,.0f} µs",
            f"mean {r.mesh_us_mean:,.0f}, p99 {r.mesh_us_p99:,.0f}",
            f"{r.mesh_share:.2%} of the {period_ms:.1f} ms frame period; engine steps,"
            " ESP→proto ×3, check+proto→ESP+EspReceived ×3",
        )
        table.add_section()
    table.add_row(
        "ESP send→receive, gRPC",
        "127.0.0.1",
        f"p50 {latency.p50_ms:.2f} ms",
        f"p99 {latency.p99_ms:.2f}, max {latency.max_ms:.2f} ms",
        f"{latency.received}/{latency.sent} ESPs, {FRAME_RATE.fps:g}/s each way;"
        " both nodes in one event loop, one host clock",
    )
    cpus = machine()["cpus"]
    table.caption = (
        "Full path: picture render + fingerprint, engine steps, encode (fresh libx264 context per"
        " GOP), segment files (fsynced), ESP→proto for 3 neighbours and"
        f" their ESPs fed back. {cpus} CPUs. ffmpeg fps from its -benchmark rtime."
        f" {_versions(results)}"
    )
    return table


@click.command("encoder")
@click.option(
    "--frames",
    type=click.IntRange(30, 36_000),
    default=300,
    show_default=True,
    help="Pictures per run.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Runs per measurement (the median is reported).",
)
@click.option(
    "--sizes",
    default="640x360,1280x720",
    show_default=True,
    callback=_sizes,
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
    sizes: list[EncoderSize],
    esps: int,
    as_json: bool,
    out: Path | None,
) -> None:
    """Encoder throughput with the mesh on, against ffmpeg; mesh CPU; ESP latency over gRPC.

    Needs Debian's ffmpeg as the baseline (`make bench` installs it). Runs of ours and of
    ffmpeg alternate so that machine noise hits both; medians are reported.
    """
    log = console(stderr=True)
    try:
        ffmpeg_binary()
        results = [measure_encoder(size, frames, repeats, progress=log.log) for size in sizes]
        log.log(f"ESP latency: {esps} ESPs each way over gRPC at {FRAME_RATE.fps:g}/s ...")
        latency = measure_latency(esps)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    payload = results_dict(results, latency)
    if emit(payload, out, as_json):
        return
    console().print(encoder_table(results, latency, frames, repeats))
