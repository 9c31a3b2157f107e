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
from services.encoder.process import EncoderProcess
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


def _two_channels(out: Path) -> EncoderProcess:
    """A process of channels 0 and 1 with the ladder, following the manager's documents."""
    settings = EncoderSettings.model_validate(
        {
            "id": "e",
            "out": out,
            "ladder": LADDER,
            "topology": "kubernetes",
            "channels": {"0": "udp://127.0.0.1:5000", "1": "udp://127.0.0.1:5002"},
        }
    )
    return EncoderProcess(settings)


def test_each_channel_of_a_process_holds_its_own_units(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process of channels 0 and 1: each takes the rungs placed on its channel; a rung a
    channel lacks is logged by that channel, a channel the process does not encode by the
    first."""
    caplog.set_level(logging.INFO, logger="meshenc.encoder")

    async def scenario() -> dict[str, frozenset[str] | None]:
        process = _two_channels(tmp_path)
        try:
            work = ("0/96x64", "1/160x96", "1/96x64", "1/1x1", "2/96x64")
            process._apply_topology(_document(work, 1))
            return {r.settings.channel: r._placed for r in process.channels}
        finally:
            for runtime in process.channels:
                await runtime.links.close()

    held = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert held == {"0": frozenset({"96x64"}), "1": frozenset({"96x64", "160x96"})}
    # Each line comes from its channel's own logger.
    cannot = sorted(
        (r.name, r.getMessage()) for r in caplog.records if "cannot run" in r.getMessage()
    )
    assert [name for name, _ in cannot] == [
        "meshenc.encoder.channel.0",
        "meshenc.encoder.channel.1",
    ]
    assert cannot[0][1].endswith(": 2/96x64") and cannot[1][1].endswith(": 1/1x1"), cannot


def test_a_process_of_several_channels_reports_the_encode_time_of_all_of_them(
    tmp_path: Path,
) -> None:
    """The manager divides a report's encode time per frame by the units it placed on the
    encoder, of every channel: so the process reports every channel's time together (each
    encodes its own frame of a slot), beside its one CPU load, not its first channel's."""

    async def scenario() -> tuple[int, float, list[int]]:
        process = _two_channels(tmp_path)
        try:
            # What each channel's load meter sampled: the process's CPU, its own encode time.
            for runtime, latency in zip(process.channels, (0.002, 0.003), strict=True):
                runtime._load_sample = (0.5, latency)
            report = process._health_report()
            alone = [r.health_report().encode_latency_us for r in process.channels]
            return report.encode_latency_us, report.cpu_load, alone
        finally:
            for runtime in process.channels:
                await runtime.links.close()

    together, cpu, alone = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert together == 5_000 and alone == [2_000, 3_000]
    assert cpu == pytest.approx(0.5)
