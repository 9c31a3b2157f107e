"""What an encoder's runtime does with an operator's parameter request before the mesh sees it.
A real ``EncoderRuntime`` is built (nothing is started: no socket, no picture); the engine's
own rules (a change pending, no frame yet) are ``tests/core/test_parameters.py``'s."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.encoder.runtime import EncoderRuntime
from services.encoder.settings import EncoderSettings


def _refusal(settings: EncoderSettings, bitrate_kbps: int, size: tuple[int, int] | None) -> str:
    async def scenario() -> str:
        runtime = EncoderRuntime(settings)
        try:
            with pytest.raises(ValueError) as refused:
                runtime.set_parameters(bitrate_kbps, size)
            return str(refused.value)
        finally:
            await runtime.links.close()

    return asyncio.run(asyncio.wait_for(scenario(), 10.0))


def test_a_ladder_takes_a_new_bitrate_but_not_a_new_size(tmp_path: Path) -> None:
    ladder = EncoderSettings.model_validate(
        {"id": "e", "out": tmp_path, "ladder": "160x96@300,96x64@150"}
    )
    assert "ladder" in _refusal(ladder, 0, (96, 64))
    # A bitrate goes on to the engine, which has no frame to count segments from yet.
    assert _refusal(ladder, 200, None) == "no frame encoded yet"


def test_a_single_output_passes_a_new_size_on_to_the_engine(tmp_path: Path) -> None:
    single = EncoderSettings.model_validate({"id": "e", "out": tmp_path, "size": (160, 96)})
    assert _refusal(single, 0, (96, 64)) == "no frame encoded yet"
