"""What every benchmark repeats: summaries of repeated measurements, result tables, the machine.

A benchmark module measures and hands back one result object with two views of it: the JSON
document its command prints with ``--json`` or writes with ``--out`` (``payload()``) and the
table it prints otherwise (``table()``); see :class:`BenchResult`. How those are printed or
written is the command line's business (:mod:`meshenc.cli.bench`).

Every percentile a benchmark reports (p50, p95, p99) is :func:`percentile`'s nearest rank: a
value that was measured, never one interpolated between two measurements, so a p95 of 20
trials is the 19th fastest and a p99 of few samples is their maximum.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from rich.table import Table

__all__ = [
    "BenchError",
    "BenchResult",
    "Progress",
    "Spread",
    "cell",
    "machine",
    "percentile",
    "quiet",
    "results_table",
    "timed",
]

T = TypeVar("T")

#: Where a benchmark reports what it is doing (one line each); results never go there.
Progress = Callable[[str], None]


def quiet(_line: str) -> None:
    """Progress nobody reads."""


class BenchError(Exception):
    """The benchmark cannot run or a measurement failed (message says which and why)."""


class BenchResult(Protocol):
    """What a benchmark hands back to its command."""

    def payload(self) -> Any:
        """The JSON value ``--json`` prints and ``--out`` writes."""

    def table(self) -> Table:
        """The table printed without ``--json``."""


# --- summaries of repeated measurements ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of repeated measurements (machines are noisy; the median is robust)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(values), min(values), max(values))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0..100) of non-empty ``values``: a value that occurred."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def timed(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    """Median wall time (seconds) of ``repeats`` runs, and the last run's result."""
    times: list[float] = []
    result: T | None = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


def machine() -> dict[str, Any]:
    """What the numbers depend on, without naming the machine."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpus": len(usable) if usable is not None else os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }


# --- tables -------------------------------------------------------------------------------------


def results_table(title: str, columns: Iterable[str], *, left: Collection[str] = ()) -> Table:
    """A table titled on the left whose columns are right-aligned, but for those in ``left``."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    return table


def cell(value: object, digits: int = 1) -> str:
    """A table cell: ``—`` for nothing, thousands separated, floats to ``digits`` places."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)
