"""``meshenc chaos``: the local mesh under seeded faults, judged from its files and etcd."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from meshenc.cli.encoder import encoder as encoder_command
from meshenc.cli.sim import console as make_console
from meshenc.cli.up import _size
from meshenc.report.chaos import FaultKind

if TYPE_CHECKING:
    from meshenc.local.chaos import ChaosRun
    from meshenc.local.demo import Note
    from meshenc.report.chaos import ChaosReport

__all__ = ["chaos", "report_table"]


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=20.0, max=86_400.0),
    default=120.0,
    show_default=True,
    help="Seconds the mesh runs.",
)
@click.option(
    "--encoders",
    "encoder_count",
    type=click.IntRange(min=3, max=32),
    default=4,
    show_default=True,
    help="Encoders (all in one segment group up to 10).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out-chaos"),
    show_default=True,
    help="Run folder (as `meshenc up`'s, plus chaos.json).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault plan.")
@click.option(
    "--spacing",
    type=click.FloatRange(min=4.0),
    default=15.0,
    show_default=True,
    help="Seconds between the starts of two faults (one at a time).",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0.0),
    default=12.0,
    show_default=True,
    help="Seconds before the first fault, and before the first judged segment.",
)
@click.option(
    "--hold",
    type=(click.FloatRange(min=0.1), click.FloatRange(min=0.1)),
    default=(2.0, 5.0),
    show_default=True,
    help="Each fault lasts between MIN and MAX seconds (drawn from the seed).",
)
@click.option(
    "--kinds",
    default=",".join(k.value for k in FaultKind),
    show_default=True,
    help="The kinds of fault to draw from, comma-separated.",
)
@click.option(
    "--size", default="160x96", show_default=True, callback=_size, help="Output WIDTHxHEIGHT."
)
@click.option(
    "--gop",
    type=click.IntRange(min=1, max=600),
    default=30,
    show_default=True,
    help="Frames per GOP (= per segment).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON (chaos.json).")
@click.option(
    "--tls/--insecure",
    default=False,
    show_default=True,
    help="Mutual TLS between the processes (certificates in OUT/certs), or plaintext.",
)
def chaos(
    duration: float,
    encoder_count: int,
    out: Path,
    seed: int,
    spacing: float,
    warmup: float,
    hold: tuple[float, float],
    kinds: str,
    size: str,
    gop: int,
    as_json: bool,
    tls: bool,
) -> None:
    """Run the local mesh (real etcd, registry replicas, manager, origin, a live network source)
    and inject faults on a seeded schedule, one at a time: kill -9 and SIGSTOP/SIGCONT of a
    random encoder, of the segment leader, of a registry replica and of the manager; etcd
    stopped and started again; one encoder's input cut. Judged from the files, the origin's
    copies and etcd's leader history: lost and mismatched segments, dual leaders, segments
    each re-lock took, crashes. Exits 1 when the run was not clean.
    """
    from meshenc.local.chaos import CHAOS_NAME, ChaosConfig, ChaosRun  # noqa: PLC0415
    from meshenc.local.launcher import ChildFailedError  # noqa: PLC0415

    try:
        chosen = tuple(FaultKind(k.strip()) for k in kinds.split(",") if k.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--kinds") from exc
    try:
        config = ChaosConfig(
            duration=duration,
            encoders=encoder_count,
            out=out,
            seed=seed,
            size=size,
            gop=gop,
            warmup=warmup,
            spacing=spacing,
            min_hold=hold[0],
            max_hold=hold[1],
            kinds=chosen,
            tls=tls,
            encoder_options=frozenset(
                opt for param in encoder_command.params for opt in param.opts
            ),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    console = make_console(stderr=as_json)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def show(note: Note) -> None:
        console.print(
            f"{time.strftime('%H:%M:%S', time.localtime(note.t))} {note.text}",
            style=note.style or None,
            highlight=False,
        )

    run = ChaosRun(config, on_note=show)
    try:
        asyncio.run(_run(run))
    except ChildFailedError as exc:
        raise click.ClickException(str(exc)) from exc
    except FileExistsError as exc:
        raise click.UsageError(str(exc)) from exc
    report = run.report
    if report is None:
        raise click.ClickException("the run ended before it could be judged")
    document = report.to_json()
    (out / CHAOS_NAME).write_text(json.dumps(document, indent=1))
    console.print(report_table(report))
    if as_json:
        click.echo(json.dumps(document, indent=1))
    if not report.clean:
        raise SystemExit(1)


async def _run(run: ChaosRun) -> None:
    await run.run()


def report_table(report: ChaosReport) -> Table:
    """The verdict as a table: the figures first, then one row per fault."""
    table = Table(title=f"chaos: segments {report.first}-{report.last} judged")
    table.add_column("figure")
    table.add_column("value", justify="right")
    relocks = [r.segments for r in report.relocks]
    rows = [
        ("faults", str(len(report.faults))),
        ("judged segments", str(report.judged)),
        ("lost segments", _listed(report.lost_segments)),
        ("mismatched segments", _listed(report.mismatched_segments)),
        ("  of which on the origin", _listed(report.origin_mismatched)),
        ("dual-leader intervals", str(report.dual_leader_intervals)),
        ("leader tenures", ", ".join(f"{g.group}: {g.tenures}" for g in report.groups) or "-"),
        ("max re-lock (segments)", str(report.max_relock_segments)),
        ("re-locks (segments each)", ", ".join(map(str, relocks)) or "-"),
        ("not re-locked", str(sum(not r.recovered for r in report.relocks))),
        ("crashes", "; ".join(report.crashes) or "0"),
        *(("note", note) for note in report.notes),
    ]
    for figure, value in rows:
        table.add_row(figure, value)
    kinds: dict[str, int] = {}
    for fault in report.faults:
        kinds[fault.kind.value] = kinds.get(fault.kind.value, 0) + 1
    table.add_row("faults by kind", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return table


def _listed(numbers: tuple[int, ...]) -> str:
    if not numbers:
        return "0"
    shown = ", ".join(map(str, numbers[:12]))
    return f"{len(numbers)}: {shown}{' …' if len(numbers) > 12 else ''}"
