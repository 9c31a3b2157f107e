"""The core's messages: what their own copying methods keep."""

from __future__ import annotations

import dataclasses

from meshenc.core.messages import EncodingStatePacket
from tests.core.samples import every_field


def test_an_echo_keeps_every_field_but_the_echo() -> None:
    """``echoing`` lists the fields itself (it is on the engine's per-frame path); a field it
    forgot, or one added later, would fall back to its default in every echoed ESP."""
    esp = every_field(EncodingStatePacket, 1)
    echoed = esp.echoing(41, 1_700_000_000.5, 0.003)
    assert echoed == dataclasses.replace(
        esp, echo_sequence=41, echo_sent_at=1_700_000_000.5, echo_hold=0.003
    )
    assert echoed != esp
