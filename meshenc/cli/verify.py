"""``meshenc verify``: are these encoders' outputs locked? A verdict from the files on disk.

Exit codes: 0 locked, 1 not locked, 2 usage error (fewer than two encoder folders, a path
that is not a folder). The definitions are in :mod:`meshenc.report.verify`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from meshenc.cli.sim import console
from meshenc.report.verify import (
    DEFAULT_LOCK_IN,
    ORIGIN_DIR,
    Verification,
    count_frames,
    find_outputs,
    rendition_folder,
    scan_output,
)
from meshenc.report.verify import compare as compare_outputs
from meshenc.wire.validation import InvalidMessage, check_channel_name

NOT_LOCKED = 1
DIGEST_CHARS = 8


def _range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}–{last}"


def segment_table(result: Verification) -> Table:
    """One row per segment number, one column per encoder: the digest, coloured by verdict."""
    table = Table(
        title=f"Segments (lock-in window: first {result.lock_in} of every run)",
        title_justify="left",
    )
    table.add_column("segment (+ from first)", justify="right")
    first = result.segments[0].segment if result.segments else 0
    for output in result.encoders:
        table.add_column(output.name)
    table.add_column("verdict")
    for check in result.segments:
        copies = {c.encoder: c for c in check.copies}
        cells: list[Text] = []
        for output in result.encoders:
            copy = copies.get(output.name)
            if copy is None:
                gap = output.name in check.gaps
                cells.append(Text("gap" if gap else "", style="bold magenta" if gap else ""))
                continue
            style = "green" if copy.matches else ("yellow" if copy.lock_in else "bold red")
            mark = "~" if copy.lock_in else ("=" if copy.matches else "≠")
            cells.append(Text(f"{mark} {copy.digest[:DIGEST_CHARS]}", style=style))
        if not check.judged:
            verdict = Text("lock-in" if len(check.copies) >= 2 else "one copy", style="dim")
        elif check.agreed:
            verdict = Text("agreed", style="green")
        elif check.reference is None:
            verdict = Text(f"split, {check.misaligned_frames} frames", style="bold red")
        else:
            verdict = Text(f"differs, {check.misaligned_frames} frames", style="bold red")
        table.add_row(f"{check.segment} (+{check.segment - first})", *cells, verdict)
    return table


def verdict_line(result: Verification) -> str:
    fraction = result.locked_fraction
    share = "no segment to judge" if fraction is None else f"{fraction:.0%} agreed"
    after = result.locked_after
    lock = "never locked" if after is None else f"locked after {after} segment(s)"
    state = "LOCKED" if result.locked else "NOT LOCKED"
    return (
        f"{state}: {len(result.encoders)} encoders, {result.judged} judged segments, {share}, "
        f"{lock}, {result.misaligned_frames} misaligned frames "
        f"(+{result.lock_in_misaligned_frames} in lock-in)"
    )


def judging_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--lock-in`` and ``--gop``: how segments are judged, the same for every command that
    judges a run's outputs."""
    command = click.option(
        "--gop",
        type=click.IntRange(min=1),
        default=None,
        help="Frames per segment for the misaligned count (default: count them in the files).",
    )(command)
    return click.option(
        "--lock-in",
        type=click.IntRange(min=0),
        default=DEFAULT_LOCK_IN,
        show_default=True,
        help="Segments at the start of every encoder's run allowed to differ.",
    )(command)


def _channel(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            check_channel_name(value)
        except InvalidMessage as exc:
            raise click.BadParameter(exc.reason) from exc
    return value


def _channel_folders(folders: tuple[Path, ...], channel: str) -> list[tuple[Path, str]]:
    """Each encoder's folder of ``channel`` with the encoder's name: ``FOLDER/channel`` of each
    folder given, or of each subfolder of a run's folder (the origin's recording aside)."""
    found: list[tuple[Path, str]] = []
    for folder in folders:
        if (folder / channel).is_dir():
            found.append((folder / channel, folder.name))
            continue
        for encoder in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != ORIGIN_DIR):
            if (encoder / channel).is_dir():
                found.append((encoder / channel, encoder.name))
    return found


@click.command()
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@judging_options
@click.option(
    "--rung",
    default=None,
    help="With an ABR ladder: judge this rung (WIDTHxHEIGHT) among the encoders that wrote it"
    " (default: the rung each encoder's master lists first; needed when the manager placed the"
    " rungs on different encoders).",
)
@click.option(
    "--channel",
    default=None,
    callback=_channel,
    help="Encoders of several channels (meshenc encoder --channel): judge this channel's"
    " folder (FOLDER/NAME) of each encoder, named after the encoder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def verify(
    folders: tuple[Path, ...],
    lock_in: int,
    gop: int | None,
    rung: str | None,
    channel: str | None,
    as_json: bool,
) -> None:
    """Compare encoders' output folders segment by segment; exit 1 unless they are locked.

    FOLDERS are encoder output folders, or a run's output folder whose subfolders are the
    encoders'. Each segment is judged from the SHA-256 of its files: which encoders hold the
    majority's bytes, which differ, which have a gap; the first --lock-in segments of every
    encoder's run (after a start or a gap) may differ.
    """
    named = (
        [(f, f.name) for f in find_outputs(folders)]
        if channel is None
        else _channel_folders(folders, channel)
    )
    encoders = [f for f, _ in named]
    if rung is not None:
        outputs = [scan_output(f / rung, name) for f, name in named if (f / rung).is_dir()]
    else:
        judged = {rendition_folder(f) for f in encoders}
        if len({f.name for f in judged if f not in encoders}) > 1:
            every = sorted({p.name for f in encoders for p in f.iterdir() if p.is_dir()})
            raise click.UsageError(
                "the encoders' masters list different rungs first (the manager placed the "
                f"rungs): judge one rung at a time with --rung ({', '.join(every)})"
            )
        outputs = [scan_output(folder, name) for folder, name in named]
    if len(outputs) < 2:
        raise click.UsageError(
            f"need at least two encoder folders with segment files, found {len(outputs)}"
        )
    try:
        result = compare_outputs(
            outputs, lock_in=lock_in, frames=count_frames if gop is None else gop
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        out = console()
        out.print(segment_table(result))
        for output in result.encoders:
            for first, last in output.gaps:
                out.print(f"[magenta]{output.name}: gap, segment(s) {_range(first, last)}[/]")
            for problem in output.playlist_problems:
                out.print(f"[magenta]{output.name}: {problem}[/]")
        if result.uncounted:
            out.print(
                f"[magenta]{len(result.uncounted)} differing segment(s) could not be demuxed: "
                "their frames are not in the misaligned count (give --gop)[/]"
            )
        out.print(verdict_line(result), style="green" if result.locked else "bold red")
    if not result.locked:
        raise SystemExit(NOT_LOCKED)
