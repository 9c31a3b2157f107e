"""The core's messages: what their own copying methods keep."""

from __future__ import annotations

import dataclasses

from meshenc.core.messages import EncodingStatePacket

#: A value unlike each field type's default, by the type as the dataclass declares it.
_SAMPLES: dict[str, object] = {
    "str": "sample",
    "int": 7,
    "float": 0.25,
    "bytes": b"\x01" * 32,
    "bool": True,
    "tuple[str, ...]": ("a", "b"),
    "tuple[int, int] | None": (320, 180),
}


def _every_field_set() -> EncodingStatePacket:
    values = {}
    for field in dataclasses.fields(EncodingStatePacket):
        assert field.type in _SAMPLES, f"no sample for {field.name}: {field.type}"
        values[field.name] = _SAMPLES[field.type]
    return EncodingStatePacket(**values)  # type: ignore[arg-type]


def test_an_echo_keeps_every_field_but_the_echo() -> None:
    """``echoing`` lists the fields itself (it is on the engine's per-frame path); a field it
    forgot, or one added later, would fall back to its default in every echoed ESP."""
    esp = _every_field_set()
    echoed = esp.echoing(41, 1_700_000_000.5, 0.003)
    assert echoed == dataclasses.replace(
        esp, echo_sequence=41, echo_sent_at=1_700_000_000.5, echo_hold=0.003
    )
    assert echoed != esp
