"""``meshenc bench dht``: the registry's Kademlia network in the simulator, under churn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.table import Table

from meshenc.cli.bench_output import emit, output_options
from meshenc.cli.sim import console
from meshenc.sim.dht import DhtSimConfig, DhtSimResult, run_dht


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> Sequence[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter("expected a comma-separated list of integers") from exc
    if not sizes or min(sizes) < 2:
        raise click.BadParameter("network sizes must be at least 2")
    return sizes


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def result_table(results: Sequence[DhtSimResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in (
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
    ):
        table.add_column(column, justify="right")
    for r in results:
        d = r.as_dict()
        table.add_row(
            f"{r.config.nodes:,}",
            f"{r.config.churn:.0%}",
            f"{r.lookups:,}",
            _fmt(100.0 * r.success_rate, 2),
            _fmt(r.hops_median),
            _fmt(r.hops_p99),
            _fmt(d["requests_median"]),
            _fmt(None if d["latency_p99_s"] is None else 1000.0 * d["latency_p99_s"], 0),
            f"{r.timeouts:,}",
            _fmt(r.wall_s),
        )
    return table


@click.command("dht")
@click.option(
    "--nodes",
    "sizes",
    default="1000,10000",
    show_default=True,
    callback=_sizes,
    help="Network sizes to simulate.",
)
@click.option(
    "--churn",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Fraction of the nodes that leave (kill -9 style) and are replaced by joins.",
)
@click.option("--lookups", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--records", type=click.IntRange(1), default=200, show_default=True, help="Records stored."
)
@click.option("--k", "k", type=click.IntRange(1, 64), default=20, show_default=True)
@click.option("--alpha", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option(
    "--bootstrap",
    type=click.Choice(["fast", "join"]),
    default="fast",
    show_default=True,
    help="How the initial network is built (see meshenc.sim.dht); churn always joins.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@output_options
def bench_dht(
    sizes: Sequence[int],
    churn: float,
    lookups: int,
    records: int,
    k: int,
    alpha: int,
    bootstrap: str,
    seed: int,
    as_json: bool,
    out: Path | None,
) -> None:
    """Lookup hops and success rate of the registry DHT at several sizes, with churn.

    Each size runs the real Kademlia core in the discrete-event simulator: records are
    published, then churn replaces that fraction of the nodes while value lookups run from
    random nodes for random records. Wall time is for one core; the simulator is
    single-threaded.
    """
    if alpha > k:
        raise click.BadParameter(f"alpha ({alpha}) must not exceed k ({k})", param_hint="--alpha")
    log = console(stderr=True)
    results: list[DhtSimResult] = []
    for size in sizes:
        log.log(f"{size:,} nodes, churn {churn:.0%} ...")
        config = DhtSimConfig(
            nodes=size,
            churn=churn,
            lookups=lookups,
            records=records,
            k=k,
            alpha=alpha,
            bootstrap="join" if bootstrap == "join" else "fast",
            seed=seed,
        )
        results.append(run_dht(config))
    payload = {"benchmark": "dht", "results": [r.as_dict() for r in results]}
    if emit(payload, out, as_json):
        return
    first = results[0].config
    title = (
        f"registry DHT: k={first.k}, alpha={first.alpha}, {first.records} records, "
        f"{first.duration:g} s simulated, delay {first.delay_ms[0]:g}–{first.delay_ms[1]:g} ms, "
        f"bootstrap {first.bootstrap}, seed {first.seed}"
    )
    console().print(result_table(results, title))
