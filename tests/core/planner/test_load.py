"""An encoder's load as the manager reads it: pressure, measured capacity, hysteresis.

The manager-level properties run the real :class:`MeshManager` with simulated encoders whose
reports follow from a true cost model: an encoder holding ``h`` units reports the CPU load
``overhead + h x per_unit`` and the encode time ``h x per_unit x frame budget``, ``h`` being
what the manager's current placement gives it. Nothing else is simulated.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshenc.core.machine import Tick
from meshenc.core.planner.autoscale import AutoscaleConfig, ScaleOut
from meshenc.core.planner.health import HealthReported
from meshenc.core.planner.load import LoadConfig, LoadModel, pressure, split
from meshenc.core.planner.manager import (
    CapacityMeasured,
    Decision,
    EncoderJoined,
    ManagerConfig,
    MeshManager,
    PlacementChanged,
    TopologyChanged,
    WorkUnitsSet,
)
from meshenc.core.planner.placement import WorkUnit

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = LoadConfig()
BUDGET = CONFIG.frame_budget


def _fit(level: float, overhead: float, per_unit: float) -> float:
    """Units that keep an encoder at or below ``level`` (real-valued, the test's own sum)."""
    return (level - overhead) / per_unit


def test_pressure_is_the_fuller_of_cpu_and_encode_time_and_splits_into_its_parts() -> None:
    assert pressure(0.2, 0.030, 0.040) == pytest.approx(0.75)
    assert pressure(0.9, 0.010, 0.040) == 0.9
    # 0.9 CPU, 0.25 of it encoding two units: 0.65 overhead, 0.125 a unit.
    assert split(0.9, 0.010, 0.040, 2) == pytest.approx((0.65, 0.125))
    # Encode time over the budget above the CPU load (waiting for a core): no overhead.
    assert split(0.2, 0.030, 0.040, 3) == pytest.approx((0.0, 0.25))


def _report(encoder: str, overhead: float, per_unit: float, held: int) -> HealthReported:
    return HealthReported(
        encoder, 0.9, min(1.0, overhead + held * per_unit), held * per_unit * BUDGET
    )


def test_a_fresh_encoder_has_its_registered_capacity_until_measured() -> None:
    """Registered until ``warmup`` reports count; reports within ``settle`` of a change of the
    units held do not count; then the capacity fills the encoder to ``target``."""
    model = LoadModel()
    assert model.capacity("a", 4) == 4 and model.pressure("a") is None
    now = 0.0
    for _ in range(3):  # held 2 from t=0: these are inside the settle time
        model.observe(now, _report("a", 0.1, 0.1, 2), 2, 4)
        now += 1.0
    assert model.capacity("a", 4) == 4 and model.parts("a") is None
    assert model.pressure("a") == pytest.approx(0.3)
    now = CONFIG.settle
    for _ in range(CONFIG.warmup):
        model.observe(now, _report("a", 0.1, 0.1, 2), 2, 4)
        now += 1.0
    assert model.measured("a")
    assert model.capacity("a", 4) == 6  # 0.1 + 6 x 0.1 <= 0.75 < 0.1 + 7 x 0.1
    model.forget("a")
    assert model.capacity("a", 4) == 4


def test_one_stalled_report_moves_no_capacity_and_a_sustained_rise_does() -> None:
    """One report of an encode time of 17 frame budgets (a stall) leaves the capacity; the
    same cost sustained brings it down to one unit within a few reports."""
    model = LoadModel()
    now = CONFIG.settle
    for _ in range(CONFIG.warmup + 5):
        model.observe(now, _report("a", 0.0, 0.3, 2), 2, 4)
        now += 1.0
    assert model.capacity("a", 4) == 2  # 4 x 0.3 > 0.95, 2 x 0.3 <= 0.75 < 3 x 0.3
    pressure_before = model.pressure("a")
    assert pressure_before is not None
    stall = HealthReported("a", 0.9, 1.0, 17 * BUDGET)
    model.observe(now, stall, 2, 4)
    now += 1.0
    assert model.capacity("a", 4) == 2
    assert model.pressure("a") == pytest.approx(0.6 + CONFIG.smoothing * (1.2 - 0.6))
    for _ in range(10):
        model.observe(now, stall, 2, 4)
        now += 1.0
    assert model.capacity("a", 4) == CONFIG.min_capacity


def test_capacity_stays_within_its_bounds() -> None:
    model = LoadModel()
    for t in range(10):  # a unit costs almost nothing: the document's limit holds
        model.observe(10.0 * t, _report("cheap", 0.0, 0.001, 1), 1, 4)
        model.observe(10.0 * t, _report("full", 0.97, 0.01, 1), 1, 4)
    assert model.capacity("cheap", 4) == CONFIG.max_capacity
    assert model.capacity("full", 4) == CONFIG.min_capacity  # busy without work: one unit


@PROPERTY
@given(
    overhead=st.floats(0.0, 0.9),
    per_unit=st.floats(0.01, 1.0),
    held=st.integers(1, 8),
    registered=st.integers(0, 64),
)
def test_a_measured_capacity_fits_the_encoder(
    overhead: float, per_unit: float, held: int, registered: int
) -> None:
    """Steady reports: the capacity keeps the encoder at or below the ceiling, and is not
    below what fits under the target (bounds aside)."""
    model = LoadModel()
    load = overhead + held * per_unit
    encode = held * per_unit * BUDGET
    if load > 1.0:  # a saturated CPU hides the overhead: not this property's case
        return
    for t in range(CONFIG.warmup + 1):
        model.observe(CONFIG.settle * t, HealthReported("e", 0.9, load, encode), held, registered)
    capacity = model.capacity("e", registered)
    assert CONFIG.min_capacity <= capacity <= CONFIG.max_capacity
    if capacity > CONFIG.min_capacity:
        assert capacity <= _fit(CONFIG.ceiling, overhead, per_unit) + 1e-6
    if capacity < CONFIG.max_capacity:
        assert capacity + 1 > _fit(CONFIG.target, overhead, per_unit) - 1e-6


# --- the manager: placement within measured capacity, no moves on noise ---------------------


@dataclass(frozen=True)
class Cost:
    """One simulated encoder's true cost: pressure paid anyway, and per unit held."""

    overhead: float
    per_unit: float


class Fleet:
    """The real manager and encoders that report what their holdings cost them."""

    def __init__(self, costs: list[Cost], units: int, config: ManagerConfig | None = None) -> None:
        self.manager = MeshManager(config)
        self.costs = {f"enc-{k}": cost for k, cost in enumerate(costs)}
        self.now = 0.0
        self.decisions: list[Decision] = []
        for node in self.costs:
            self.manager.step(0.0, EncoderJoined(node, capacity=4))
        work = tuple(WorkUnit(f"ch{c}", f"r{r}") for c in range(units) for r in range(1))
        self.manager.step(0.0, WorkUnitsSet(work))
        self.manager.step(0.0, Tick())
        self.decisions += self.manager.ready()

    def units(self) -> dict[str, frozenset[str]]:
        """The units each encoder runs: what the manager published last (leaving ones too)."""
        published = [d for d in self.decisions if isinstance(d, PlacementChanged)]
        runs: dict[str, set[str]] = {node: set() for node in self.costs}
        for unit, holders in published[-1].assignments.items() if published else ():
            for holder in holders:
                runs.setdefault(holder, set()).add(unit)
        return {node: frozenset(units) for node, units in runs.items()}

    def held(self) -> dict[str, int]:
        """Copies per encoder in the manager's placement (what it plans, hand-overs aside)."""
        plan = self.manager.plan
        assert plan is not None
        return plan.placement.load()

    def second(self, noise: dict[str, Cost] | None = None) -> list[Decision]:
        """Every encoder reports once (its true cost, or ``noise``'s, for the units it runs,
        each of which it serves), then the manager ticks."""
        self.now += 1.0
        runs = self.units()
        for node, true in self.costs.items():
            cost = (noise or {}).get(node, true)
            h = len(runs[node])
            load = min(1.0, cost.overhead + h * cost.per_unit)
            report = HealthReported(node, 0.9, load, h * cost.per_unit * BUDGET, units=runs[node])
            self.manager.step(self.now, report)
        self.manager.step(self.now, Tick())
        decisions = self.manager.ready()
        kinds = [type(d) for d in decisions]
        if CapacityMeasured in kinds:  # why the plan changes: before it
            last = max(i for i, kind in enumerate(kinds) if kind is CapacityMeasured)
            assert not {PlacementChanged, TopologyChanged} & set(kinds[:last])
        self.decisions += decisions
        return decisions

    def run(self, seconds: int) -> None:
        for _ in range(seconds):
            self.second()


costs = st.lists(st.builds(Cost, st.floats(0.0, 0.4), st.floats(0.02, 0.5)), min_size=3, max_size=8)
STEADY = 40  # seconds: settle, warm-up, the sheds they cause, and their settle again


@PROPERTY
@given(costs=costs, units=st.integers(1, 12))
def test_no_encoder_is_planned_beyond_its_measured_capacity(costs: list[Cost], units: int) -> None:
    """After the reports settle, an encoder holds more than its measured capacity only by
    copies no encoder with room could take (then at most its registered capacity); one
    within its capacity holds no more than fits under the ceiling by its true cost (beyond
    the one unit any encoder may hold); and no unit is short of copies when the encoders'
    room under the target is plenty."""
    fleet = Fleet(costs, units)
    fleet.run(STEADY)
    plan = fleet.manager.plan
    assert plan is not None
    held = fleet.held()
    capacity = {node: fleet.manager.load.capacity(node, 4) for node in fleet.costs}

    def room_elsewhere(copies: tuple[str, ...]) -> bool:
        return any(n not in copies and held.get(n, 0) < capacity[n] for n in fleet.costs)

    for node, cost in fleet.costs.items():
        h = held.get(node, 0)
        if h > capacity[node]:
            assert h <= max(capacity[node], 4)
            stuck = [u for u, c in plan.placement.assignments.items() if node in c]
            stuck = [u for u in stuck if not room_elsewhere(plan.placement.assignments[u])]
            assert len(stuck) >= h - capacity[node], (node, h, capacity)
        elif h > CONFIG.min_capacity:
            assert cost.overhead + h * cost.per_unit <= CONFIG.ceiling + 1e-6, (node, h, cost)
    announced = {d.encoder_id: d for d in fleet.decisions if isinstance(d, CapacityMeasured)}
    for node in fleet.costs:
        if fleet.manager.load.measured(node) and fleet.manager.load.capacity(node, 4) != 4:
            assert announced[node].capacity == fleet.manager.load.capacity(node, 4)
    room = sum(
        min(max(math.floor(_fit(CONFIG.target, c.overhead, c.per_unit) - 1e-6), 1), units)
        for c in fleet.costs.values()
    )
    if room >= 2 * 2 * units:
        assert plan.placement.under_replicated == ()


@PROPERTY
@given(costs=costs, units=st.integers(2, 12), rng=st.randoms(use_true_random=False))
def test_costs_that_move_within_the_hysteresis_band_move_no_work(
    costs: list[Cost], units: int, rng: random.Random
) -> None:
    """Once capacities are measured, reports whose cost moves anywhere that keeps each
    encoder's capacity between what fits under the target and under the ceiling change no
    capacity and move no copy (a capacity read without hysteresis would move them)."""
    fleet = Fleet(costs, units)
    fleet.run(STEADY)
    capacity = {node: fleet.manager.load.capacity(node, 4) for node in fleet.costs}
    before = fleet.manager.plan
    assert before is not None
    for _ in range(20):
        noise = {}
        for node, true in fleet.costs.items():
            c = capacity[node]
            per_unit = true.per_unit * rng.uniform(0.8, 1.25)
            low = max(0.0, CONFIG.target - (c + 1) * per_unit) + 1e-6
            high = CONFIG.ceiling - c * per_unit - 1e-6
            if low <= high and c > CONFIG.min_capacity:
                noise[node] = Cost(rng.uniform(low, high), per_unit)
        decisions = fleet.second(noise)
        # A hand-over of the settling's last move may complete (no copy moves then).
        moved = [d for d in decisions if isinstance(d, PlacementChanged) and (d.moves or d.leaving)]
        assert not moved
    assert {n: fleet.manager.load.capacity(n, 4) for n in fleet.costs} == capacity
    after = fleet.manager.plan
    assert after is not None and after.placement.assignments == before.placement.assignments


def test_the_autoscaler_reads_the_smoothed_pressure() -> None:
    """One report of full load from every encoder is a blip the autoscaler does not follow;
    the same load sustained scales out (both read through the load model)."""
    policy = AutoscaleConfig(min_replicas=1, max_replicas=20, low_water=0.05, cooldown=1.0)
    fleet = Fleet([Cost(0.1, 0.05)] * 4, 4, ManagerConfig(autoscale=policy))
    fleet.run(5)
    blip = {node: Cost(0.95, 0.0) for node in fleet.costs}
    assert not [d for d in fleet.second(blip) if isinstance(d, ScaleOut)]
    sustained = [d for _ in range(10) for d in fleet.second(blip) if isinstance(d, ScaleOut)]
    assert sustained and sustained[0].members == 4  # (the fleet in this test never grows)


@PROPERTY
@given(per_unit=st.floats(0.02, 0.08), overhead=st.floats(0.0, 0.2), units=st.integers(4, 12))
def test_a_joiner_in_a_measured_fleet_takes_its_fair_share(
    per_unit: float, overhead: float, units: int
) -> None:
    """Equal encoders measured at capacities above the registered 4: one that joins, not
    measured yet, is planned like them, so it takes its share of the copies, which end within
    one of each other (planned at its registered 4 it took a share of 4 / (4 + the others'
    measured capacities), nothing at all where those were large)."""
    fleet = Fleet([Cost(overhead, per_unit)] * 4, units)
    fleet.run(STEADY)
    assert all(fleet.manager.load.measured(n) for n in fleet.costs)
    fleet.costs["enc-4"] = Cost(overhead, per_unit)
    fleet.manager.step(fleet.now, EncoderJoined("enc-4", capacity=4))
    fleet.run(3)
    held = fleet.held()
    assert held["enc-4"] >= (2 * units) // 5, held
    assert max(held.values()) - min(held.values()) <= 1, held
