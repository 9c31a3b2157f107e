"""What every benchmark command shares: ``--json`` and ``--out``, and where its results go."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["emit", "output_options"]

_F = TypeVar("_F", bound=Callable[..., Any])


def output_options(command: _F) -> _F:
    """Add ``--json`` (print JSON instead of a table) and ``--out FILE`` (also write it)."""
    command = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the results as JSON to this file.",
    )(command)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        command
    )


def emit(payload: object, out: Path | None, as_json: bool) -> bool:
    """Write the results to ``out`` when given, and print them as JSON with ``--json``.

    Returns:
        True when the JSON was printed (the caller prints no table then).
    """
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(payload))
    return as_json
