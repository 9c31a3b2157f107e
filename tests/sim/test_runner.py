"""The run loop's effect on the interpreter: it leaves the garbage collector as it found it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meshenc.core.policy import Strategy
from meshenc.sim.runner import run
from meshenc.sim.scenario import Scenario


@pytest.fixture
def odd_threshold() -> Iterator[tuple[int, int, int]]:
    """A collector threshold nobody would set, restored after the test."""
    before = gc.get_threshold()
    odd = (1234, 11, 12)
    gc.set_threshold(*odd)
    try:
        yield odd
    finally:
        gc.set_threshold(*before)


def test_a_run_gives_the_collector_back_its_threshold(odd_threshold: tuple[int, int, int]) -> None:
    """A run holds the young generation to more allocations while it lasts (the engines'
    state makes young collections expensive); the process's setting is its own again after."""
    scenario = Scenario().with_overrides(
        **{"mesh.encoders": 4, "mesh.neighbors": 3, "mesh.duration_s": 6.0, "mesh.warmup_s": 2.0}
    )
    assert run(scenario, Strategy.PREDICTIVE).events > 0
    assert gc.get_threshold() == odd_threshold
