"""``meshenc bench failover``: how long a segment is without an acting leader after a crash.

The measuring lives in :mod:`meshenc.local.failover` (its docstring says what is timed); this
module runs it twice -- fenced fast failover, then lease expiry alone, on the same setup --
and prints the table.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from meshenc.cli.bench_output import emit, output_options
from meshenc.cli.sim import console
from meshenc.local.etcd import EtcdNotInstalledError
from meshenc.local.failover import FailoverResult, measure_failover
from services.common.etcd import DEFAULT_LEASE_TTL

__all__ = ["bench_failover", "failover_summary"]


def _stats(times: Sequence[float | None]) -> dict[str, Any]:
    done = [t for t in times if t is not None]
    if not done:
        return {"median_ms": None, "p95_ms": None, "max_ms": None, "failed": len(times)}
    return {
        "median_ms": round(statistics.median(done), 1),
        "p95_ms": round(float(np.percentile(done, 95)), 1),
        "max_ms": round(max(done), 1),
        "failed": len(times) - len(done),
    }


def failover_summary(fast: FailoverResult, baseline: FailoverResult | None) -> dict[str, Any]:
    """The benchmark's machine-readable result (``--json``, ``--out``)."""
    ours = _stats(fast.times_ms)
    summary: dict[str, Any] = {
        "trials": len(fast.times_ms),
        "members": fast.members,
        "lease_ttl_s": fast.lease_ttl,
        **ours,
        "times_ms": [None if t is None else round(t, 1) for t in fast.times_ms],
        "dual_leader_intervals": fast.audit.dual_leader_intervals,
        "acts_outside_tenure": fast.audit.acts_outside_tenure,
        "acts_audited": fast.audit.acts,
        "tenures": len(fast.audit.tenures),
    }
    if baseline is not None:
        theirs = _stats(baseline.times_ms)
        summary.update({f"baseline_{k}": v for k, v in theirs.items()})
        summary["baseline_times_ms"] = [
            None if t is None else round(t, 1) for t in baseline.times_ms
        ]
        summary["dual_leader_intervals"] += baseline.audit.dual_leader_intervals
        summary["acts_outside_tenure"] += baseline.audit.acts_outside_tenure
        summary["acts_audited"] += baseline.audit.acts
        if ours["median_ms"] and theirs["median_ms"]:
            summary["ratio"] = round(theirs["median_ms"] / ours["median_ms"], 1)
    return summary


def failover_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"Failover after kill -9 of the leader: {summary['members']} encoders, one segment,"
            f" lease TTL {summary['lease_ttl_s']} s, {summary['trials']} trials each"
        ),
        title_justify="left",
    )
    for column in ("failover", "median", "p95", "max", "no leader", "dual-leader intervals"):
        table.add_column(column, justify="left" if column == "failover" else "right")

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:,.0f} ms"

    table.add_row(
        "fenced fast failover (mesh + majority)",
        ms(summary["median_ms"]),
        ms(summary["p95_ms"]),
        ms(summary["max_ms"]),
        str(summary["failed"]),
        str(summary["dual_leader_intervals"]),
    )
    if "baseline_median_ms" in summary:
        table.add_row(
            "lease expiry only",
            ms(summary["baseline_median_ms"]),
            ms(summary["baseline_p95_ms"]),
            ms(summary["baseline_max_ms"]),
            str(summary["baseline_failed"]),
            "",
        )
    ratio = summary.get("ratio")
    table.caption = (
        "Time from kill -9 of the leader's process to the first fenced act of its successor, "
        "as a watch on etcd sees it. Dual-leader intervals: from the etcd history audit of both "
        f"runs ({summary['acts_audited']} acts)."
        + (f" Lease expiry only is {ratio}× slower (medians)." if ratio else "")
    )
    return table


@click.command("failover")
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
    log = console(stderr=True)
    try:
        fast = measure_failover(trials, members=members, lease_ttl=lease_ttl, progress=log.log)
        baseline = (
            None
            if no_baseline
            else measure_failover(
                trials,
                members=members,
                lease_ttl=lease_ttl,
                fast_failover=False,
                progress=log.log,
            )
        )
    except (EtcdNotInstalledError, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    summary = failover_summary(fast, baseline)
    if emit(summary, out, as_json):
        return
    console().print(failover_table(summary))
