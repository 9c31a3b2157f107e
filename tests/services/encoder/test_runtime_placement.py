"""What an encoder process takes from the placement in its documents: the rungs of its ladder
placed on it (units ``0/<rung>``), every rung without a placement, nothing from units it cannot
run. A real ``EncoderRuntime`` is built (nothing is started: no socket, no etcd, no picture) and
handed documents as its topology source hands them; what the rungs then do at a GOP boundary is
``media/test_placement.py``'s."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from meshenc.wire.adjacency import AdjacencyDocument
from services.encoder.runtime import EncoderRuntime
from services.encoder.settings import EncoderSettings

LADDER = "160x96@300,96x64@150"


def _document(work: tuple[str, ...] | None, version: int) -> AdjacencyDocument:
    return AdjacencyDocument(2, "e", {}, work=work, work_version=version if work is not None else 0)


def test_a_ladder_that_follows_the_manager_holds_the_rungs_placed_on_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshenc.encoder")

    async def scenario() -> list[frozenset[str] | None]:
        settings = EncoderSettings.model_validate(
            {"id": "e", "out": tmp_path, "ladder": LADDER, "topology": "kubernetes"}
        )
        runtime = EncoderRuntime(settings)
        held = []
        try:
            for work, version in (
                (("0/96x64", "1/160x96", "0/1x1"), 1),  # another channel, a rung it lacks
                (("0/96x64", "1/160x96", "0/1x1"), 2),  # the same again: logged once
                ((), 3),  # nothing placed on it
                (None, 0),  # a manager without a placement: every rung
            ):
                runtime.apply_topology(_document(work, version))
                held.append(runtime._placed)
        finally:
            await runtime.links.close()
        return held

    held = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert held == [frozenset({"96x64"}), frozenset({"96x64"}), frozenset(), None]
    cannot = [r.getMessage() for r in caplog.records if "cannot run" in r.getMessage()]
    assert len(cannot) == 1 and cannot[0].endswith(": 0/1x1, 1/160x96")


def test_without_the_managers_documents_a_ladder_takes_no_placement(tmp_path: Path) -> None:
    """``--peers`` (static topology): the documents are the encoder's own, every rung is
    written, and the ESPs keep hashing the encoded bytes."""

    async def scenario() -> frozenset[str] | None:
        settings = EncoderSettings.model_validate({"id": "e", "out": tmp_path, "ladder": LADDER})
        assert not settings.follows_placement
        runtime = EncoderRuntime(settings)
        try:
            runtime.apply_topology(_document(("0/96x64",), 1))
            return runtime._placed
        finally:
            await runtime.links.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 10.0)) is None
