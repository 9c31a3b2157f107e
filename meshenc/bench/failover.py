"""``meshenc bench failover``: how long a segment is without an acting leader after a crash.

:func:`measure_failover` runs one series on a fresh etcd: per trial it waits until the segment
(:class:`~meshenc.local.segment.LocalSegment`) is settled (every member running, its links up
and one leader acting), kills -9 the leader and measures the wall time from the kill until the
first fenced act of another member, observed by a watch in this process -- the moment a new
leader *acts*, not merely the moment it is named. Then it restarts the killed member for the
next trial. At the end it audits the etcd history (:mod:`services.encoder.leadership_audit`).
:func:`run_failover_bench` runs it twice -- fenced fast failover, then lease expiry alone, on
the same setup -- and summarises both.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from meshenc.bench.results import Progress, percentile, quiet, results_table
from meshenc.local.etcd import EtcdProcess
from meshenc.local.segment import LocalSegment, SegmentWatch
from services.common.etcd import (
    DEFAULT_ETCD_PREFIX,
    DEFAULT_LEASE_TTL,
    EtcdSettings,
    connect_client,
)
from services.encoder.leadership import SegmentKeys
from services.encoder.leadership_audit import AuditReport, audit, read_history

__all__ = [
    "FailoverBench",
    "FailoverResult",
    "failover_summary",
    "measure_failover",
    "run_failover_bench",
]


@dataclass(frozen=True, slots=True)
class FailoverResult:
    """One benchmark run: failover times (ms; None = no new leader acted in time)."""

    fast_failover: bool
    members: int
    lease_ttl: int
    times_ms: tuple[float | None, ...]
    audit: AuditReport


async def _wait_until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _run(
    etcd: EtcdProcess,
    folder: Path,
    trials: int,
    members: int,
    fast: bool,
    lease_ttl: int,
    progress: Progress,
) -> FailoverResult:
    settings = EtcdSettings(endpoints=(etcd.endpoint,), prefix=DEFAULT_ETCD_PREFIX)
    keys = SegmentKeys(settings.prefix, "bench")
    client = connect_client(settings)
    watch = SegmentWatch(keys)
    times: list[float | None] = []
    segment = LocalSegment(etcd.endpoint, members, folder, lease_ttl=lease_ttl, fast_failover=fast)
    follower = asyncio.create_task(watch.follow(client, 1))
    try:
        with segment:
            segment.start_all()
            for trial in range(1, trials + 1):
                await _wait_until(segment.settled, 60.0, "the segment did not settle")
                await asyncio.sleep(0.5)  # let a freshly restarted member's rank settle too
                victim = watch.leader
                if victim is None or victim not in segment.names:
                    await asyncio.sleep(0.2)
                    victim = watch.leader
                assert victim is not None, "no leader to kill"
                killed_at = time.monotonic()
                segment.kill(victim)
                acted = await watch.first_act_after(
                    killed_at, not_by=victim, timeout=lease_ttl * 3 + 10.0
                )
                elapsed = None if acted is None else (acted - killed_at) * 1000.0
                times.append(elapsed)
                outcome = "no new leader acted" if elapsed is None else f"{elapsed:,.0f} ms"
                mode = "fast" if fast else "lease-only"
                progress(f"{mode} trial {trial}/{trials}: killed {victim}, new leader: {outcome}")
                segment.start(victim)
        report = audit(await read_history(client, keys), keys)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower
        await client.close()
    return FailoverResult(fast, members, lease_ttl, tuple(times), report)


def measure_failover(
    trials: int,
    *,
    members: int = 3,
    fast_failover: bool = True,
    lease_ttl: int = DEFAULT_LEASE_TTL,
    progress: Progress = quiet,
) -> FailoverResult:
    """Run one benchmark series on a fresh etcd (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="meshenc-failover-") as tmp:
        folder = Path(tmp)
        with EtcdProcess(log_path=folder / "etcd.log") as etcd:
            return asyncio.run(
                _run(etcd, folder, trials, members, fast_failover, lease_ttl, progress)
            )


# --- two series, summarised -------------------------------------------------------------------


def _stats(times: Sequence[float | None]) -> dict[str, Any]:
    done = [t for t in times if t is not None]
    if not done:
        return {"median_ms": None, "p95_ms": None, "max_ms": None, "failed": len(times)}
    return {
        "median_ms": round(statistics.median(done), 1),
        "p95_ms": round(percentile(done, 95), 1),
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


@dataclass(frozen=True, slots=True)
class FailoverBench:
    """Fenced fast failover and, unless left out, lease expiry alone on the same setup."""

    fast: FailoverResult
    baseline: FailoverResult | None

    def payload(self) -> dict[str, Any]:
        return failover_summary(self.fast, self.baseline)

    def table(self) -> Table:
        summary = self.payload()
        table = results_table(
            f"Failover after kill -9 of the leader: {summary['members']} encoders, one segment,"
            f" lease TTL {summary['lease_ttl_s']} s, {summary['trials']} trials each",
            ("failover", "median", "p95", "max", "no leader", "dual-leader intervals"),
            left={"failover"},
        )

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
            "Time from kill -9 of the leader's process to the first fenced act of its successor,"
            " as a watch on etcd sees it. Dual-leader intervals: from the etcd history audit of"
            f" both runs ({summary['acts_audited']} acts)."
            + (f" Lease expiry only is {ratio}× slower (medians)." if ratio else "")
        )
        return table


def run_failover_bench(
    trials: int,
    *,
    members: int = 3,
    lease_ttl: int = DEFAULT_LEASE_TTL,
    baseline: bool = True,
    progress: Progress = quiet,
) -> FailoverBench:
    """:func:`measure_failover` with fenced fast failover, then (with ``baseline``) without.

    Raises:
        EtcdNotInstalledError: there is no etcd to run.
        RuntimeError, TimeoutError: the segment did not start or settle.
    """
    fast = measure_failover(trials, members=members, lease_ttl=lease_ttl, progress=progress)
    lease_only = (
        measure_failover(
            trials, members=members, lease_ttl=lease_ttl, fast_failover=False, progress=progress
        )
        if baseline
        else None
    )
    return FailoverBench(fast, lease_only)
