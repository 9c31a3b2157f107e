"""The core's written-out ``__init__``s are the ones ``dataclasses`` would generate.

Some frozen dataclasses spell out their ``__init__`` so that mypyc compiles it (see
``meshenc.core.messages``). Written by hand, one could miss a field, store it under another
name, or disagree with the class on an order or a default; a field added to the class later
would be missing from it. Every such class of the core is found here from the source, not
listed, so that a new one is checked too; the checks run on the classes as imported, so the
copy that ``scripts/compile-hot-path.sh`` compiles can be tested with them as well.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import meshenc.core
from tests.core.samples import every_field, field_types, sample

_MISSING: Any = dataclasses.MISSING


@dataclass(frozen=True)
class _Written:
    cls: type[Any]
    #: The ``__init__``'s parameters after ``self``: name, default (``_MISSING``: none) and
    #: whether it is keyword-only.
    parameters: tuple[tuple[str, object, bool], ...]


def _is_store(statement: ast.stmt) -> bool:
    """``object.__setattr__(...)``: the only statement a written-out ``__init__`` has."""
    match statement:
        case ast.Expr(ast.Call(ast.Attribute(ast.Name("object"), "__setattr__"))):
            return True
    return False


def _is_dataclass_decorator(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "dataclass"


def _written(module: str, node: ast.ClassDef) -> _Written | None:
    """The class's written-out ``__init__``, if it has one that does nothing but store (one
    with checks of its own, such as ``FrameRate``'s, is not a stand-in for the generated
    one)."""
    if not any(_is_dataclass_decorator(d) for d in node.decorator_list):
        return None
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            if not all(_is_store(statement) for statement in item.body):
                return None
            args = item.args
            positional = args.args[1:]
            defaults = [_MISSING] * (len(positional) - len(args.defaults)) + [
                ast.literal_eval(d) for d in args.defaults
            ]
            parameters = [(a.arg, d, False) for a, d in zip(positional, defaults, strict=True)]
            keyword = [
                (a.arg, _MISSING if d is None else ast.literal_eval(d), True)
                for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
            ]
            cls = getattr(importlib.import_module(module), node.name)
            return _Written(cls, (*parameters, *keyword))
    return None


def _written_inits() -> list[_Written]:
    root = Path(meshenc.core.__path__[0])
    found = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("meshenc", "core", *path.relative_to(root).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (written := _written(module, node)):
                found.append(written)
    return found


WRITTEN = _written_inits()


def _name(written: _Written) -> str:
    return written.cls.__name__


def test_the_hot_messages_are_among_them() -> None:
    """The search finds them (every other test here would pass on an empty list)."""
    names = {written.cls.__name__ for written in WRITTEN}
    assert {"EncodingStatePacket", "EspReceived", "SendEsp", "Anchor"} <= names


@pytest.mark.parametrize("written", WRITTEN, ids=_name)
def test_the_parameters_are_the_fields(written: _Written) -> None:
    """In order, with the class's defaults, keyword-only exactly where the field is."""
    fields = [field for field in dataclasses.fields(written.cls) if field.init]
    assert written.parameters == tuple(
        (field.name, field.default, field.kw_only) for field in fields
    )


@pytest.mark.parametrize("written", WRITTEN, ids=_name)
def test_every_argument_lands_in_its_field(written: _Written) -> None:
    """Each field in turn given a value unlike the others', by keyword and by position: a
    store forgotten or made to another field shows."""
    cls, types = written.cls, field_types(written.cls)
    base = {name: sample(tp, 0) for name, tp in types.items()}
    for changed, tp in types.items():
        given = {**base, changed: sample(tp, 1)}
        for made in (cls(**given), cls(*given.values())):
            assert {name: getattr(made, name) for name in types} == given, changed


@pytest.mark.parametrize("written", WRITTEN, ids=_name)
def test_it_stays_frozen(written: _Written) -> None:
    made = every_field(written.cls, 0)
    first = dataclasses.fields(written.cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, getattr(made, first))
