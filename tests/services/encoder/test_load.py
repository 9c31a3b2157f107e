"""The CPU load an encoder reports is per core it may use: the process's CPU time over wall
time, divided by one core, or with ``--rung-threads`` by as many cores as it runs rung threads,
at most as many as the rungs it writes. The manager's autoscaling and the election's ranking
read it: an encoder that encodes three rungs at once on three cores is not three times
overloaded. A real ``EncoderRuntime`` is built (nothing is started); its load meter is a
stand-in that reports a fixed process load, since what is tested is what the runtime makes of
it, not the meter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.encoder.media.ladder import Holdings, parse_ladder, renditions_for
from services.encoder.runtime import EncoderRuntime
from services.encoder.settings import EncoderSettings, SegmentFormat

LADDER = "160x96@300,128x72@200,96x54@100"
PROCESS_LOAD = 0.9  # cores' worth of CPU time the process used over the last second (a report is
# capped at 1: a full core)
ENCODE_SECONDS = 0.004


class _FixedLoad:
    """A load meter whose every sample is the same process load and encode time."""

    def sample(self) -> tuple[float, float]:
        return PROCESS_LOAD, ENCODE_SECONDS

    def encoded(self, seconds: float) -> None:
        pass


@pytest.mark.parametrize(
    ("rung_threads", "rungs_written", "cores"),
    [
        pytest.param(1, 3, 1, id="one-thread"),
        pytest.param(2, 3, 2, id="two-threads-three-rungs"),
        pytest.param(3, 3, 3, id="a-thread-per-rung"),
        pytest.param(3, 1, 1, id="threads-beyond-the-rungs-written-are-idle"),
    ],
)
def test_the_load_reported_is_per_core_the_encoder_may_use(
    tmp_path: Path, rung_threads: int, rungs_written: int, cores: int
) -> None:
    settings = EncoderSettings.model_validate(
        {"id": "e1", "out": tmp_path, "ladder": LADDER, "rung_threads": rung_threads}
    )

    async def scenario() -> tuple[float, float]:
        runtime = EncoderRuntime(settings)
        try:
            renditions = renditions_for(
                tmp_path,
                settings.frame_rate,
                settings.gop,
                parse_ladder(LADDER),
                size=(0, 0),
                bitrate_kbps=0,
                fmt=SegmentFormat.TS,
            )
            # The rungs it writes now, as ``run`` (or a placement) leaves them.
            runtime._holdings = Holdings.fixed(renditions[:rungs_written], runtime._segments)
            runtime._load = _FixedLoad()  # type: ignore[assignment]
            runtime.picture_done()
            report = runtime.health_report()
            return report.cpu_load, runtime.encode_latency
        finally:
            await runtime.links.close()

    cpu_load, encode_latency = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert cpu_load == pytest.approx(PROCESS_LOAD / cores)
    assert encode_latency == pytest.approx(ENCODE_SECONDS)  # a time, not divided
