"""Every packaged scenario file, run with the strategies its ``[expect]`` table names.

The expectations are data in the scenario files (see meshenc/sim/scenarios/*.toml), so a
scenario documents what it demonstrates and this test holds it to that. Supported keys:

- ``zero_misaligned = [strategy, ...]``: no honest encoder misaligns after the warm-up;
- ``misaligned = [strategy, ...]``: the strategy does misalign after the warm-up;
- ``fewer_corrections = [[a, b], ...]``: ``a`` corrects less often than ``b`` after warm-up;
- ``fewer_misaligned = [[a, b], ...]``;
- ``lock_in_within_s = {strategy = seconds}``: no misaligned frame after that time;
- ``steady_regions = {strategy = [region, ...]}``: the encoders of those regions neither drop
  nor repeat a picture after the warm-up (the side of a merge that keeps its timeline).
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

import pytest

from meshenc.core.policy import Strategy
from meshenc.sim.metrics import Score, score
from meshenc.sim.runner import Recording, run
from meshenc.sim.scenario import Scenario

KNOWN_KEYS = {
    "zero_misaligned",
    "misaligned",
    "fewer_corrections",
    "fewer_misaligned",
    "lock_in_within_s",
    "steady_regions",
}


def _scenario_files() -> list[str]:
    folder = resources.files("meshenc.sim") / "scenarios"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml"))


@cache
def _scenario(name: str) -> Scenario:
    entry = resources.files("meshenc.sim") / "scenarios" / name
    return Scenario.from_toml(entry.read_text(encoding="utf-8"), source=name)


@cache
def _run(name: str, strategy: str) -> Recording:
    return run(_scenario(name), Strategy(strategy))


@cache
def _score(name: str, strategy: str) -> Score:
    return score(_run(name, strategy))


def _describe(name: str, s: Score) -> str:
    return (
        f"{name} seed={s.seed} {s.strategy}: misaligned={s.misaligned_frames} "
        f"corrections={s.corrections} lock_in={s.lock_in_s} max_offset_ms={s.max_abs_offset_ms}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", _scenario_files())
def test_scenario_meets_its_expectations(name: str) -> None:
    expect = _scenario(name).expect
    assert expect, f"{name} states no expectations"
    assert set(expect) <= KNOWN_KEYS, f"{name}: unknown expectation keys {set(expect) - KNOWN_KEYS}"
    for strategy in expect.get("zero_misaligned", []):
        s = _score(name, strategy)
        assert s.misaligned_frames == 0, _describe(name, s)
    for strategy in expect.get("misaligned", []):
        s = _score(name, strategy)
        assert s.misaligned_frames > 0, _describe(name, s)
    for better, worse in expect.get("fewer_corrections", []):
        a, b = _score(name, better), _score(name, worse)
        assert a.corrections_total < b.corrections_total, (
            f"{_describe(name, a)}\n{_describe(name, b)}"
        )
    for better, worse in expect.get("fewer_misaligned", []):
        a, b = _score(name, better), _score(name, worse)
        assert a.misaligned_frames < b.misaligned_frames, (
            f"{_describe(name, a)}\n{_describe(name, b)}"
        )
    for strategy, limit in expect.get("lock_in_within_s", {}).items():
        s = _score(name, strategy)
        assert s.lock_in_s is not None and s.lock_in_s <= limit, _describe(name, s)
    for strategy, regions in expect.get("steady_regions", {}).items():
        rec = _run(name, strategy)
        fr = rec.scenario.frame_rate
        warm = math.ceil(rec.scenario.mesh.warmup_s * fr.num / fr.den)
        rows = [i for i, region in enumerate(rec.world.region) if region in regions]
        assert rows, f"{name}: no encoder in regions {regions}"
        repeated = int(rec.repeats[rows, warm:].sum())
        dropped = int((rec.timecodes[rows, warm:] < 0).sum())
        assert (repeated, dropped) == (0, 0), (
            f"{name} {strategy}: regions {regions} repeated {repeated} and dropped {dropped}"
        )
