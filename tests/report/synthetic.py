"""Made-up encoder output folders: real segment names, made-up bytes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from services.encoder.media.segments import segment_name

FIRST = 1_000
"""The first segment number of a made-up run."""


def write_folder(folder: Path, contents: dict[int, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, data in contents.items():
        (folder / segment_name(number)).write_bytes(data)
    return folder


def same(number: int) -> bytes:
    return f"segment {number}".encode()


def run_of(
    first: int = FIRST, count: int = 10, different: Mapping[int, bytes] | None = None
) -> dict[int, bytes]:
    """Segments ``first`` .. ``first+count-1``: the bytes every encoder agrees on, except
    those given in ``different``."""
    return {n: same(n) for n in range(first, first + count)} | dict(different or {})


def make_run(root: Path, folders: dict[str, dict[int, bytes]]) -> list[Path]:
    return [write_folder(root / name, contents) for name, contents in folders.items()]
