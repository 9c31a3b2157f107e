"""``meshenc report``: (re)build a finished run's report from its folder."""

from __future__ import annotations

from pathlib import Path

import click

from meshenc.cli.verify import judging_options
from meshenc.report.verify import count_frames, find_outputs, unit_folders


@click.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@judging_options
def report(out_dir: Path, lock_in: int, gop: int | None) -> None:
    """Write OUT_DIR/report.html, OUT_DIR/plots/*.png and OUT_DIR/summary.json.

    OUT_DIR is a run's folder: one subfolder of segment files per encoder and the recorder's
    events.jsonl. Every figure is computed from those files, never from the run's settings.
    """
    # matplotlib takes about a second to import: only this command pays for it.
    from meshenc.report import REPORT_NAME, SUMMARY_NAME, write_report  # noqa: PLC0415

    # A run of channels or placed rungs keeps its segments a folder or two deeper (units).
    if not find_outputs([out_dir]) and not unit_folders(out_dir):
        raise click.UsageError(f"no encoder folders with segment files in {out_dir}")
    summary = write_report(out_dir, lock_in=lock_in, frames=count_frames if gop is None else gop)
    if summary.skipped_event_lines:
        click.echo(f"{summary.skipped_event_lines} lines of events.jsonl skipped", err=True)
    click.echo(summary.line)
    for switch in summary.size_switches:
        click.echo(f"  {switch.line}")
    click.echo(f"wrote {out_dir / REPORT_NAME} and {out_dir / SUMMARY_NAME}")
