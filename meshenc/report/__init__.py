"""The end-of-run report: ``summary.json``, PNG plots and ``report.html`` in the run folder.

Everything is computed from what the run left on disk: the encoders' segment files (one
subfolder per encoder) and the recorder's ``events.jsonl``. ``docs/report.md`` explains every
figure and plot.
"""

from __future__ import annotations

from pathlib import Path

from meshenc.report.html import REPORT_NAME, render_report
from meshenc.report.plots import write_plots
from meshenc.report.summary import SUMMARY_NAME, Summary, load_run, summarize
from meshenc.report.verify import DEFAULT_LOCK_IN, FrameCounter, count_frames

__all__ = ["PLOTS_DIR", "REPORT_NAME", "SUMMARY_NAME", "Summary", "write_report"]

PLOTS_DIR = "plots"
"""The PNGs' folder, inside the run folder."""


def write_report(
    out_dir: Path,
    *,
    lock_in: int = DEFAULT_LOCK_IN,
    frames: FrameCounter | int = count_frames,
) -> Summary:
    """Write ``summary.json``, ``plots/*.png`` and ``report.html`` into ``out_dir``.

    Args:
        out_dir: the run folder: one subfolder of segment files per encoder, ``events.jsonl``.
        lock_in: segments at the start of every encoder's run exempt from the verdict.
        frames: frames per segment, or how to count them in a file (default: demux it).

    Raises:
        NotADirectoryError: ``out_dir`` is not a folder.
    """
    out_dir = Path(out_dir)
    run = load_run(out_dir, lock_in=lock_in, frames=frames)
    summary = summarize(run)
    summary.write(out_dir)
    write_plots(run, out_dir / PLOTS_DIR)
    page = render_report(run, summary, PLOTS_DIR)
    (out_dir / REPORT_NAME).write_text(page, encoding="utf-8")
    return summary
