"""Whether the mesh's hot path runs compiled.

``scripts/compile-hot-path.sh`` compiles the sync engine, the core modules it runs on every
event and the wire's conversion and validation with mypyc into ``build/compiled``; a process
started with ``PYTHONPATH=build/compiled``, and one in the image built with them, imports those
extensions instead of the sources. The results are the same, the CPU per message less, so
benchmarks and start-up logs say which ran.
"""

from __future__ import annotations

from types import ModuleType

from meshenc.core import engine
from meshenc.wire import convert, validation

MODULES: tuple[ModuleType, ...] = (engine, convert, validation)
"""The modules that tell: an encoder's per-message work is in these."""


def compiled() -> bool:
    """Whether every module of :data:`MODULES` was imported from a compiled extension."""
    return all(not str(module.__file__).endswith(".py") for module in MODULES)


def describe() -> str:
    """``compiled`` or ``pure Python``, for a table or a log line."""
    return "compiled" if compiled() else "pure Python"
