"""Sample values for a dataclass's fields, made from the types it declares.

``sample(tp, 0)`` and ``sample(tp, 1)`` are two different values of type ``tp``, and
``sample(tp, 1)`` differs from the zero, empty or false default a field of the core usually
has. They are real values of the declared types (a compiled class, ``scripts/compile-hot-path.sh``,
checks the types it is given), built recursively for a field whose type is another dataclass.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from meshenc.core.parameters import Parameters

#: Values of types whose own checks a made-up value would not pass.
_CHECKED: dict[Any, tuple[Any, Any]] = {
    Parameters: (Parameters(1000), Parameters(2000, (640, 360))),
}


def sample(tp: Any, which: int) -> Any:
    """Value ``which`` (0 or 1) of type ``tp``."""
    if tp in _CHECKED:
        return _CHECKED[tp][which]
    if tp is bool:
        return bool(which)
    if tp in (int, float):
        return tp(1 + which)
    if tp is str:
        return "ab"[which]
    if tp is bytes:
        return bytes([which + 1]) * 32
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return list(tp)[which]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return every_field(tp, which)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return sample(next(arg for arg in args if arg is not type(None)), which)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (sample(args[0], which),)
        return tuple(sample(arg, which) for arg in args)
    raise AssertionError(f"no sample of {tp!r}: add one")


def field_types(cls: type[Any]) -> dict[str, Any]:
    """Each field's type as the class's source declares it, resolved in its module.

    From the source, not from ``typing.get_type_hints``: a class compiled by mypyc keeps only
    erased annotations (``tuple``, ``type``), and its source still sits beside the extension.
    """
    module = sys.modules[cls.__module__]
    source = Path(module.__file__ or "").with_name(cls.__module__.rpartition(".")[2] + ".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    declared = {
        item.target.id: eval(ast.unparse(item.annotation), vars(module))
        for item in node.body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    }
    return {field.name: declared[field.name] for field in dataclasses.fields(cls)}


def every_field(cls: type[Any], which: int) -> Any:
    """An instance of ``cls`` with every field set to its value ``which``."""
    return cls(**{name: sample(tp, which) for name, tp in field_types(cls).items()})
