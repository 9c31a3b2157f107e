"""``meshenc bench ingest``: what ingesting a live stream costs, against ``ffmpeg`` decoding it.

The measuring lives in :mod:`services.encoder.ingest_bench` (its docstring says what is timed);
this module parses options and prints the table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.table import Table

from meshenc.cli.bench_output import emit, output_options
from meshenc.cli.sim import console
from services.encoder.bench import BenchError, EncoderSize, ffmpeg_binary, parse_sizes
from services.encoder.ingest_bench import IngestResult, measure_ingest, median

__all__ = ["bench_ingest"]


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> list[EncoderSize]:
    try:
        return parse_sizes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def ingest_table(results: list[IngestResult], repeats: int) -> Table:
    table = Table(
        title=f"Ingest CPU per picture (median of {repeats} alternating runs)",
        title_justify="left",
    )
    for column in (
        "size",
        "ours: demux+decode+scale+fingerprint",
        "+ UDP TS scan",
        "ffmpeg -f null",
        "ratio",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.size,
            f"{median(r.ours_us):,.0f} µs",
            f"{median(r.scan_us):,.0f} µs",
            f"{median(r.ffmpeg_us):,.0f} µs",
            f"{median(r.ratios):.2f}×",
        )
    return table


@click.command("ingest")
@click.option("--frames", type=click.IntRange(30, 36_000), default=600, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option(
    "--sizes",
    default="640x360,1280x720",
    show_default=True,
    callback=_sizes,
    help="Picture sizes: WxH[@kbps],...",
)
@output_options
def bench_ingest(
    frames: int, repeats: int, sizes: list[EncoderSize], as_json: bool, out: Path | None
) -> None:
    """CPU per picture of the encoder's ingest path against ffmpeg decoding the same stream.

    Needs Debian's ffmpeg as the baseline (`make bench` installs it).
    """
    log = console(stderr=True)
    try:
        binary = ffmpeg_binary()
        with tempfile.TemporaryDirectory(prefix="meshenc-ingest-") as folder:
            results = []
            for size in sizes:
                log.log(f"ingest {size.name}: {repeats} × {frames} pictures ...")
                results.append(measure_ingest(binary, size, frames, repeats, Path(folder)))
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    payload = {
        "frames": frames,
        "repeats": repeats,
        "results": [
            {
                "size": r.size,
                "ours_us": r.ours_us,
                "scan_us": r.scan_us,
                "ffmpeg_us": r.ffmpeg_us,
                "ratio_median": median(r.ratios),
            }
            for r in results
        ],
    }
    if emit(payload, out, as_json):
        return
    console().print(ingest_table(results, repeats))
