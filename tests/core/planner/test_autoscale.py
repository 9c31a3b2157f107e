"""The autoscaling policy, over random load traces (Hypothesis) and a few worked cases.

A small simulated StatefulSet carries out the decisions the way the manager and Kubernetes
would: a scale-out adds pods ``<name>-<n>`` that report only from their second observation, a
drain empties the encoder after a random delay, a scale-in removes the highest ordinal, and an
actuator may fail. The traces are random; the invariants are the module's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshenc.core.machine import StateMachine
from meshenc.core.planner.autoscale import (
    AutoscaleConfig,
    AutoscaleDecision,
    AutoscaleEvent,
    Autoscaler,
    DrainCancelled,
    DrainStarted,
    EncoderLoad,
    FleetObserved,
    ScaleFailed,
    ScaleIn,
    ScaleOut,
    ordinal,
)

NAME = "meshenc-encoder"


@dataclass
class Fleet:
    """A StatefulSet that applies the autoscaler's decisions, observed once per ``period``."""

    config: AutoscaleConfig
    replicas: int
    period: float = 1.0
    now: float = 0.0
    fresh: set[str] = field(default_factory=set)  # joined, no report yet
    emptied_at: dict[str, float] = field(default_factory=dict)
    log: list[tuple[float, AutoscaleDecision, FleetObserved]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scaler = Autoscaler(self.config)
        self.members = [f"{NAME}-{i}" for i in range(self.replicas)]

    def observe(self, demand: float, *, drain_delay: float = 2.0) -> None:
        """One tick: the total ``demand`` shared evenly by the members that hold work."""
        draining = self.scaler.draining
        workers = [m for m in self.members if m != draining or self.now < self.emptied_at[m]]
        share = demand / max(len(workers), 1)
        fleet = FleetObserved(
            tuple(
                EncoderLoad(m, None if m in self.fresh else (share if m in workers else 0.0))
                for m in self.members
            ),
            holding=frozenset(workers),
        )
        self.fresh.clear()
        self.scaler.step(self.now, fleet)
        for decision in self.scaler.ready():
            self.log.append((self.now, decision, fleet))
            if isinstance(decision, ScaleOut):
                joining = [f"{NAME}-{i}" for i in range(len(self.members), decision.replicas)]
                self.members += joining
                self.fresh.update(joining)
            elif isinstance(decision, DrainStarted):
                self.emptied_at[decision.encoder_id] = self.now + drain_delay
            elif isinstance(decision, ScaleIn):
                self.members = self.members[: decision.replicas]
        self.now += self.period

    def decisions(self) -> list[tuple[float, AutoscaleDecision]]:
        return [(t, d) for t, d, _ in self.log]


configs = st.builds(
    lambda low, width, lo, span, cooldown, grace: AutoscaleConfig(
        min_replicas=lo,
        max_replicas=lo + span,
        low_water=low,
        high_water=min(1.0, low + width),
        cooldown=cooldown,
        drain_grace=grace,
        drain_timeout=grace + 30.0,
    ),
    low=st.floats(0.05, 0.6),
    width=st.floats(0.1, 0.5),
    lo=st.integers(0, 5),
    span=st.integers(1, 12),
    cooldown=st.floats(1.0, 30.0),
    grace=st.floats(0.5, 10.0),
)
traces = st.lists(st.floats(0.0, 15.0), min_size=1, max_size=12)


def _check_invariants(fleet: Fleet) -> None:
    config = fleet.config
    spaced: list[float] = []
    drain: str | None = None
    for now, decision, seen in fleet.log:
        members = [e.encoder_id for e in seen.encoders]
        if isinstance(decision, ScaleOut | ScaleIn):
            assert config.min_replicas <= decision.replicas <= config.max_replicas, decision
        if isinstance(decision, ScaleOut):
            assert decision.replicas > len(members)
        if isinstance(decision, ScaleOut | DrainStarted):
            assert drain is None, "a decision while a drain runs"
            assert not spaced or now - spaced[-1] >= config.cooldown, (spaced, now, decision)
            spaced.append(now)
        if isinstance(decision, DrainStarted):
            assert decision.encoder_id == max(members, key=lambda m: ordinal(m) or 0)
            drain = decision.encoder_id
        elif isinstance(decision, DrainCancelled):
            assert decision.encoder_id == drain
            drain = None
        elif isinstance(decision, ScaleIn):
            assert decision.encoder_id == drain, "a scale-in without its drain"
            assert decision.encoder_id not in seen.holding
            assert decision.replicas == len(members) - 1
            drain = None
            spaced.append(now)


@settings(max_examples=100, deadline=None)
@given(
    config=configs,
    start=st.integers(1, 12),
    trace=traces,
    steps=st.integers(5, 30),
    drain_delay=st.floats(0.0, 40.0),
    failures=st.sets(st.integers(0, 200), max_size=3),
)
def test_random_load_traces_keep_every_invariant(
    config: AutoscaleConfig,
    start: int,
    trace: list[float],
    steps: int,
    drain_delay: float,
    failures: set[int],
) -> None:
    """Demand follows a random step trace (each level held ``steps`` ticks), drains take a
    random time, and the actuator fails now and then: replicas stay within bounds, no two
    decisions come within the cool-down, a drain always precedes the scale-in of that
    encoder (the highest ordinal, holding nothing by then)."""
    fleet = Fleet(config, replicas=min(max(start, config.min_replicas), config.max_replicas))
    tick = 0
    for demand in trace:
        for _ in range(steps):
            if tick in failures:
                fleet.scaler.step(fleet.now, ScaleFailed("injected", permanent=False))
                for decision in fleet.scaler.ready():
                    fleet.log.append((fleet.now, decision, FleetObserved(())))
            fleet.observe(demand, drain_delay=drain_delay)
            tick += 1
    _check_invariants(fleet)


@settings(max_examples=100, deadline=None)
@given(config=configs, start=st.integers(1, 12), demand=st.floats(0.0, 15.0))
def test_constant_load_moves_the_fleet_one_way_only(
    config: AutoscaleConfig, start: int, demand: float
) -> None:
    """With a constant total load the fleet only grows or only shrinks, then stays: the marks'
    hysteresis and the look-ahead on both sides leave no room for flapping."""
    fleet = Fleet(config, replicas=min(max(start, config.min_replicas), config.max_replicas))
    for _ in range(60):
        fleet.observe(demand)
        fleet.now += config.cooldown / 4  # many cool-downs pass
    directions = {
        "out" if isinstance(d, ScaleOut) else "in"
        for _, d in fleet.decisions()
        if isinstance(d, ScaleOut | ScaleIn)
    }
    assert len(directions) <= 1, fleet.decisions()
    _check_invariants(fleet)


CONFIG = AutoscaleConfig(min_replicas=2, max_replicas=6, cooldown=10.0, drain_grace=3.0)


def test_rising_load_scales_out_once_within_bounds() -> None:
    """Load well above the high-water mark on 3 encoders: after the first cool-down one
    scale-out, sized to bring the load near the target and capped at the maximum; nothing
    more while the cool-down runs, although the new encoders have not reported."""
    fleet = Fleet(CONFIG, replicas=3)
    for _ in range(15):
        fleet.observe(3 * 0.95)
    outs = [d for _, d in fleet.decisions()]
    assert len(outs) == 1
    (out,) = outs
    assert isinstance(out, ScaleOut)
    assert out.members == 3
    assert out.replicas == 6  # ceil(3 x 0.95 / 0.525) = 6, the maximum
    assert fleet.log[0][0] == CONFIG.cooldown


def test_falling_load_drains_the_highest_ordinal_then_scales_in_down_to_the_minimum() -> None:
    """Idle encoders: the highest ordinal is drained, scaled in only once it holds nothing and
    the grace has passed, and so on one at a time until the minimum, never below it."""
    fleet = Fleet(CONFIG, replicas=5)
    for _ in range(200):
        fleet.observe(0.1, drain_delay=5.0)
    decisions = fleet.decisions()
    kinds = [(type(d).__name__, getattr(d, "encoder_id", "")) for _, d in decisions]
    assert kinds == [
        ("DrainStarted", f"{NAME}-4"),
        ("ScaleIn", f"{NAME}-4"),
        ("DrainStarted", f"{NAME}-3"),
        ("ScaleIn", f"{NAME}-3"),
        ("DrainStarted", f"{NAME}-2"),
        ("ScaleIn", f"{NAME}-2"),
    ]
    (t_drain, _), (t_in, scale_in) = decisions[:2]
    assert isinstance(scale_in, ScaleIn) and scale_in.replicas == 4
    assert t_in - t_drain >= 5.0  # it held work until then
    assert fleet.members == [f"{NAME}-0", f"{NAME}-1"]


def test_a_drain_is_cancelled_when_load_returns_and_autoscaling_stops_on_a_permanent_failure() -> (
    None
):
    """Load rises while an encoder drains: the drain is cancelled (it keeps its place), and
    the next decision is a scale-out. A permanent failure (403) ends autoscaling."""
    fleet = Fleet(CONFIG, replicas=4)
    while fleet.scaler.draining is None:
        fleet.observe(0.2, drain_delay=100.0)
    fleet.observe(4 * 0.9)
    assert isinstance(fleet.log[-1][1], DrainCancelled)
    assert fleet.log[-1][1].encoder_id == f"{NAME}-3"
    for _ in range(30):
        fleet.observe(4 * 0.9)
    assert isinstance(fleet.log[-1][1], ScaleOut)
    fleet.scaler.step(fleet.now, ScaleFailed("forbidden", permanent=True))
    assert fleet.scaler.disabled == "forbidden"
    count = len(fleet.log)
    for _ in range(100):
        fleet.observe(20.0)
    assert len(fleet.log) == count


def test_the_ordinal_is_the_number_a_name_ends_in() -> None:
    """A StatefulSet pod's and ``meshenc up``'s names alike: ``e10`` comes after ``e9``."""
    assert ordinal("meshenc-encoder-12") == 12
    assert ordinal("e10") == 10
    assert max(["e9", "e10", "e2"], key=lambda name: ordinal(name) or 0) == "e10"
    assert ordinal("enc") is None
    assert ordinal("e1x") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": 3, "max_replicas": 2},
        {"min_replicas": 0, "max_replicas": 0},
        {"min_replicas": 1, "max_replicas": 3, "low_water": 0.8, "high_water": 0.7},
        {"min_replicas": 1, "max_replicas": 3, "high_water": 1.5},
        {"min_replicas": 1, "max_replicas": 3, "cooldown": math.nan},
        {"min_replicas": 1, "max_replicas": 3, "drain_grace": 20.0, "drain_timeout": 10.0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AutoscaleConfig(**kwargs)  # type: ignore[arg-type]


def test_the_autoscaler_has_the_cores_shape() -> None:
    machine: StateMachine[AutoscaleEvent, AutoscaleDecision] = Autoscaler(CONFIG)
    machine.step(0.0, FleetObserved((EncoderLoad("a", 0.5),)))
    assert machine.ready() == []
    with pytest.raises(ValueError):
        FleetObserved((EncoderLoad("a"), EncoderLoad("a")))
    with pytest.raises(ValueError):
        EncoderLoad("a", -1.0)
