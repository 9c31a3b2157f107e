"""The layering rules hold, so a plain `pytest` enforces them as well as `make lint`.

Two independent checks of one list: the import-linter contracts of pyproject.toml (the core
is sans-IO, the simulator drives only the core, the benchmarks parse no options, the services
stay apart, each floor imports only the floors below it), and a reading of every import in
meshenc/core with `ast`, against the core contract's own `forbidden_modules` (so the two can
never disagree). The core owns no randomness and no environment either: `random` and `os` are
on that list, both arrive as inputs.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE_DIR = REPO_ROOT / "meshenc" / "core"

CORE_CONTRACT = "The core is sans-IO"


def core_contract_forbids() -> tuple[str, ...]:
    """What pyproject.toml's core contract forbids: the one list both checks read."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"].startswith(CORE_CONTRACT)]
    return tuple(contract["forbidden_modules"])


FORBIDDEN_IN_CORE = core_contract_forbids()

LINT_IMPORTS_TIMEOUT_S = 120


def test_import_linter_contracts_are_kept() -> None:
    # import-linter's public Python API only reads the configuration; checking the contracts
    # goes through its command, the one installed beside this interpreter.
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail(
            f"lint-imports is not installed beside {sys.executable}: "
            "install the dev extras (`make test` does)"
        )
    result = subprocess.run(
        [
            executable,
            "--config",
            str(REPO_ROOT / "pyproject.toml"),
            # No cache: nothing is written into the repository, and no stale graph is reused.
            "--no-cache",
            "--no-logo",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=LINT_IMPORTS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, (
        f"lint-imports exited {result.returncode}: a layering contract in pyproject.toml is "
        f"broken.\n{result.stdout}\n{result.stderr}"
    )


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted module name of a source file under ``root``, and whether it is a package."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imported_names(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``, relative ones resolved.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c``, since ``c`` may be a submodule.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                if node.level > len(package):
                    raise ValueError(
                        f"{module} line {node.lineno}: relative import beyond the top package"
                    )
                parent = package[: len(package) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def forbidden_match(name: str) -> str | None:
    """The entry of FORBIDDEN_IN_CORE that ``name`` is, or lies inside; None if allowed."""
    for forbidden in FORBIDDEN_IN_CORE:
        if name == forbidden or name.startswith(f"{forbidden}."):
            return forbidden
    return None


def forbidden_imports(source: str, module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """(line, imported name, forbidden entry) for each forbidden import in ``source``."""
    found: list[tuple[int, str, str]] = []
    seen: set[tuple[int, str]] = set()  # `from os import path` is one finding, not two
    for line, name in imported_names(source, module, is_package):
        forbidden = forbidden_match(name)
        if forbidden is not None and (line, forbidden) not in seen:
            seen.add((line, forbidden))
            found.append((line, name, forbidden))
    return found


def test_the_core_imports_nothing_forbidden() -> None:
    files = sorted(CORE_DIR.rglob("*.py"))
    assert files, f"no module files under {CORE_DIR}"
    violations: list[str] = []
    for path in files:
        module, is_package = module_name(path, REPO_ROOT)
        source = path.read_text(encoding="utf-8")
        for line, name, forbidden in forbidden_imports(source, module, is_package):
            violations.append(
                f"{path.relative_to(REPO_ROOT).as_posix()}:{line}: imports {name} "
                f"(forbidden in the core: {forbidden})"
            )
    assert not violations, "meshenc/core must stay sans-IO:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("import os.path", "meshenc.core.clock", False, ["os"]),
        ("import time as _time", "meshenc.core.clock", False, ["time"]),
        ("from random import Random", "meshenc.core.clock", False, ["random"]),
        ("from os import path, environ", "meshenc.core.clock", False, ["os"]),
        ("from meshenc import v1", "meshenc.core.clock", False, ["meshenc.v1"]),
        ("from meshenc.wire.convert import x", "meshenc.core.clock", False, ["meshenc.wire"]),
        ("from .. import sim", "meshenc.core.clock", False, ["meshenc.sim"]),
        ("from ..cli.main import cli", "meshenc.core.clock", False, ["meshenc.cli"]),
        ("from ..sim import run", "meshenc.core", True, ["meshenc.sim"]),
        ("from ...wire import convert", "meshenc.core.sub.mod", False, ["meshenc.wire"]),
        ("def f() -> None:\n    import asyncio\n", "meshenc.core.clock", False, ["asyncio"]),
        ("import datetime, dataclasses, timeit", "meshenc.core.clock", False, []),
        ("from . import timecode, votes", "meshenc.core.clock", False, []),
        ("from .robust import huber", "meshenc.core.kalman", False, []),
        ("from meshenc.core import time", "meshenc.core.clock", False, []),
        ("from typing import TYPE_CHECKING", "meshenc.core.clock", False, []),
    ],
)
def test_the_core_import_check_catches_what_it_should(
    source: str, module: str, is_package: bool, expected: list[str]
) -> None:
    found = [forbidden for _, _, forbidden in forbidden_imports(source, module, is_package)]
    assert found == expected


def test_the_core_import_check_rejects_a_relative_import_beyond_the_top_package() -> None:
    with pytest.raises(ValueError, match="beyond the top package"):
        forbidden_imports("from ... import anything", "meshenc.core.clock", False)
