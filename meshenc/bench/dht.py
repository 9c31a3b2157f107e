"""``meshenc bench dht``: the registry's Kademlia network in the simulator, under churn.

The simulation itself is :mod:`meshenc.sim.dht` (the real Kademlia core, a simulated network
and clock); this benchmark runs it once per network size and tabulates lookup hops, success
rate, requests and latency. Wall time is for one core; the simulator is single-threaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

from meshenc.bench.results import Progress, cell, quiet, results_table
from meshenc.sim.dht import Bootstrap, DhtSimConfig, DhtSimResult, run_dht

__all__ = ["DhtBench", "run_sizes"]


def _decimal(value: float | None, digits: int = 1) -> str:
    """A cell that always shows ``digits`` places (a median of whole hops may be whole)."""
    return cell(None if value is None else float(value), digits)


@dataclass(frozen=True, slots=True)
class DhtBench:
    """One simulated run per network size, in the order asked."""

    results: tuple[DhtSimResult, ...]

    def payload(self) -> dict[str, object]:
        return {"benchmark": "dht", "results": [r.as_dict() for r in self.results]}

    def table(self) -> Table:
        first = self.results[0].config
        title = (
            f"registry DHT: k={first.k}, alpha={first.alpha}, {first.records} records, "
            f"{first.duration:g} s simulated, delay {first.delay_ms[0]:g}–{first.delay_ms[1]:g}"
            f" ms, bootstrap {first.bootstrap}, seed {first.seed}"
        )
        table = results_table(
            title,
            (
                "nodes",
                "churn",
                "lookups",
                "success %",
                "hops median",
                "hops p99",
                "requests median",
                "latency p99 ms",
                "timeouts",
                "wall s",
            ),
        )
        for r in self.results:
            d = r.as_dict()
            latency_p99_s = d["latency_p99_s"]
            table.add_row(
                f"{r.config.nodes:,}",
                f"{r.config.churn:.0%}",
                f"{r.lookups:,}",
                _decimal(100.0 * r.success_rate, 2),
                _decimal(r.hops_median),
                _decimal(r.hops_p99),
                _decimal(d["requests_median"]),
                _decimal(None if latency_p99_s is None else 1000.0 * latency_p99_s, 0),
                f"{r.timeouts:,}",
                _decimal(r.wall_s),
            )
        return table


def run_sizes(
    sizes: Sequence[int],
    *,
    churn: float,
    lookups: int,
    records: int,
    k: int,
    alpha: int,
    bootstrap: Bootstrap,
    seed: int,
    progress: Progress = quiet,
) -> DhtBench:
    """Per size: publish the records, then run the lookups while ``churn`` of the nodes are
    replaced (see :mod:`meshenc.sim.dht` for the run and how the network is bootstrapped)."""
    results = []
    for size in sizes:
        progress(f"{size:,} nodes, churn {churn:.0%} ...")
        config = DhtSimConfig(
            nodes=size,
            churn=churn,
            lookups=lookups,
            records=records,
            k=k,
            alpha=alpha,
            bootstrap=bootstrap,
            seed=seed,
        )
        results.append(run_dht(config))
    return DhtBench(tuple(results))
