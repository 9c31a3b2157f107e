"""The manager's state machine: failure reaction and escalation judging, driven by events.

A small synthetic mesh reports as real encoders would (one report per second per encoder,
with an RTT sample per planned neighbour from a fixed latency map); faults are injected by
withholding reports, marking links down, or escalating with chosen votes. Nothing is mocked:
the manager under test is the real core object and every decision comes from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

from meshenc.core.machine import StateMachine, Tick
from meshenc.core.messages import CorrectionKind, ResyncProposal, ResyncVote
from meshenc.core.planner.autoscale import (
    AutoscaleConfig,
    DrainCancelled,
    DrainStarted,
    ScaleFailed,
    ScaleIn,
    ScaleOut,
)
from meshenc.core.planner.health import HealthReported, LinkSample
from meshenc.core.planner.manager import (
    Decision,
    EncoderIsolated,
    EncoderJoined,
    EncoderLeft,
    EncoderRemoved,
    Escalated,
    EscalationJudged,
    EscalationVerdict,
    Event,
    LinkAvoided,
    ManagerConfig,
    MeshManager,
    PlacementChanged,
    SegmentsChanged,
    TopologyChanged,
    WorkUnitsSet,
)
from meshenc.core.planner.placement import WorkUnit
from meshenc.core.planner.topology import pair

from .helpers import coordinates, encoder_ids

D = TypeVar("D")

IDS = encoder_ids(12)
TRUE_POSITIONS = coordinates(IDS, seed=3)


def _rtt(a: str, b: str) -> float:
    pa, pb = TRUE_POSITIONS[a], TRUE_POSITIONS[b]
    return math.dist(pa.position, pb.position) + pa.height + pb.height + 0.0005


class Mesh:
    """The manager plus the encoders' side of the conversation."""

    def __init__(self, config: ManagerConfig | None = None) -> None:
        self.manager = MeshManager(config)
        self.now = 0.0
        self.log: list[Decision] = []
        self.silent: set[str] = set()
        self.down: set[tuple[str, str]] = set()  # (reporter, neighbour) links seen down
        self.load = 0.3  # every encoder's CPU load in its reports
        for k, node in enumerate(IDS):
            self.manager.step(0.0, EncoderJoined(node, f"10.0.0.{k}:7000", f"zone-{k % 3}", 4))
        units = tuple(WorkUnit(f"ch{c}", r) for c in range(6) for r in ("hd", "sd"))
        self.manager.step(0.0, WorkUnitsSet(units))
        self.manager.step(0.0, Tick())
        self.log += self.manager.ready()

    def report(self, node: str) -> None:
        """One report: the links as the mesh has them, and as served every unit the last
        placement published gives the encoder (it serves a unit one report after)."""
        planned = sorted(self.manager.neighbours(node))
        links = tuple(
            LinkSample(m, rtt=_rtt(node, m), connected=(node, m) not in self.down) for m in planned
        )
        placed = _only(self.log, PlacementChanged)
        units = frozenset(
            unit for unit, holders in (placed[-1].assignments if placed else {}).items()
            if node in holders
        )  # fmt: skip
        self.manager.step(
            self.now,
            HealthReported(node, 0.9, self.load, 0.004, self.manager.epoch, links, units),
        )

    def run(self, seconds: float) -> list[Decision]:
        """Every running encoder reports each second, then the manager ticks.

        Encoders keep reporting whatever the manager thinks of them (removed, isolated).
        """
        start = len(self.log)
        for _ in range(round(seconds)):
            self.now += 1.0
            for node in IDS:
                if node not in self.silent:
                    self.report(node)
            self.manager.step(self.now, Tick())
            self.log += self.manager.ready()
        return self.log[start:]

    def escalate(
        self, proposer: str, approvals: Iterable[str], rejections: Iterable[str], pid: int = 1
    ) -> list[Decision]:
        proposal = ResyncProposal(proposer, pid, CorrectionKind.DROP, 1 / 30, self.manager.epoch)
        votes = tuple(
            ResyncVote(proposer, pid, v, approve, 0.0)
            for approve, voters in ((True, approvals), (False, rejections))
            for v in voters
        )
        # The proposer's own count of neighbours: the manager's view, or its voters if more.
        degree = max(len(self.manager.neighbours(proposer)), len(votes))
        self.manager.step(self.now, Escalated(proposer, proposal, votes, degree))
        decisions = self.manager.ready()
        self.log += decisions
        return decisions


def _only(decisions: Iterable[Decision], kind: type[D]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def _verdict(decisions: list[Decision]) -> EscalationJudged:
    (judged,) = _only(decisions, EscalationJudged)
    assert decisions[-1] is judged, "the verdict comes last"
    return judged


def _assert_valid_mesh(mesh: Mesh) -> None:
    plan = mesh.manager.plan
    assert plan is not None
    adjacency = plan.topology.adjacency()
    assert sorted(adjacency) == mesh.manager.members
    assert all(3 <= len(ns) <= 7 for ns in adjacency.values())
    for unit, hosts in plan.placement.assignments.items():
        assert len(set(hosts)) == 2, unit
        assert all(h in adjacency for h in hosts)


def test_first_tick_publishes_topology_segments_and_placement_in_order() -> None:
    mesh = Mesh()
    kinds = [type(d) for d in mesh.log]
    assert kinds == [TopologyChanged, SegmentsChanged, PlacementChanged]
    (topology,) = _only(mesh.log, TopologyChanged)
    assert topology.epoch == 1 and topology.survives_any_single_failure
    _assert_valid_mesh(mesh)
    assert mesh.run(3) == []  # steady reports change nothing


def test_a_silent_encoder_is_removed_after_the_timeout_and_its_work_replaced() -> None:
    mesh = Mesh(ManagerConfig(report_timeout=5.0))
    mesh.run(2)
    plan = mesh.manager.plan
    assert plan is not None
    victim = next(h for hosts in plan.placement.assignments.values() for h in hosts)
    its_units = [u for u, hosts in plan.placement.assignments.items() if victim in hosts]
    its_neighbours = mesh.manager.neighbours(victim)
    epoch = mesh.manager.epoch
    mesh.silent.add(victim)
    early = mesh.run(5)  # silent for 5 s: not yet more than the timeout
    assert _only(early, EncoderRemoved) == []
    decisions = mesh.run(1)
    removed = _only(decisions, EncoderRemoved)
    assert [r.encoder_id for r in removed] == [victim]
    assert "no health report" in removed[0].reason
    (topology,) = _only(decisions, TopologyChanged)
    assert topology.epoch == epoch + 1
    assert victim not in topology.adjacency
    for m in its_neighbours:
        assert victim not in topology.adjacency[m]
        assert len(topology.adjacency[m]) >= 3  # rewired
    (placement,) = _only(decisions, PlacementChanged)
    for unit in its_units:
        assert victim not in placement.assignments[unit]
        assert len(placement.assignments[unit]) == 2
    assert placement.moves == len(its_units)
    _assert_valid_mesh(mesh)


def test_a_dead_encoder_is_removed_without_blaming_its_links() -> None:
    mesh = Mesh(ManagerConfig(report_timeout=5.0, link_grace=3.0))
    dead = IDS[10]
    mesh.silent.add(dead)
    for m in mesh.manager.neighbours(dead):
        mesh.down.add((m, dead))  # its neighbours see their streams to it break
    decisions = mesh.run(8)
    assert [r.encoder_id for r in _only(decisions, EncoderRemoved)] == [dead]
    assert _only(decisions, LinkAvoided) == []
    _assert_valid_mesh(mesh)


def test_a_removed_encoder_that_reports_again_is_readmitted() -> None:
    mesh = Mesh(ManagerConfig(report_timeout=3.0))
    mesh.silent.add(IDS[4])
    mesh.run(5)
    assert IDS[4] not in mesh.manager.members
    mesh.silent.clear()
    mesh.run(2)
    assert IDS[4] in mesh.manager.members
    _assert_valid_mesh(mesh)


def test_an_encoder_whose_streams_all_break_is_removed() -> None:
    mesh = Mesh(ManagerConfig(stream_grace=3.0, link_grace=60.0))
    cut = IDS[7]
    for m in mesh.manager.neighbours(cut):
        mesh.down |= {(cut, m), (m, cut)}
    decisions = mesh.run(5)
    removed = _only(decisions, EncoderRemoved)
    assert [r.encoder_id for r in removed] == [cut]
    assert "streams broken" in removed[0].reason
    _assert_valid_mesh(mesh)


def test_a_bad_link_is_avoided_and_routed_around() -> None:
    mesh = Mesh(ManagerConfig(link_grace=3.0))
    plan = mesh.manager.plan
    assert plan is not None
    a, b = sorted(plan.topology.edges)[0]
    mesh.down.add((a, b))  # one end sees it down; both ends keep other links
    decisions = mesh.run(5)
    avoided = _only(decisions, LinkAvoided)
    assert [(x.a, x.b) for x in avoided] == [(a, b)]
    assert _only(decisions, EncoderRemoved) == []
    (topology,) = _only(decisions, TopologyChanged)
    assert b not in topology.adjacency[a]
    _assert_valid_mesh(mesh)


def test_a_liar_rejected_by_most_neighbours_is_isolated() -> None:
    mesh = Mesh()
    mesh.run(1)
    plan = mesh.manager.plan
    assert plan is not None
    liar = sorted(plan.placement.assignments.values())[0][0]  # one that carries work
    neighbours = sorted(mesh.manager.neighbours(liar))
    epoch = mesh.manager.epoch
    against, rest = neighbours[:-1], neighbours[-1:]
    decisions = mesh.escalate(liar, approvals=rest, rejections=against)
    verdict = _verdict(decisions)
    assert verdict.verdict is EscalationVerdict.REJECT
    assert "isolated" in verdict.reason
    assert verdict.topology_epoch == epoch + 1  # the answer names the rewired mesh
    assert [d.encoder_id for d in _only(decisions, EncoderIsolated)] == [liar]
    (topology,) = _only(decisions, TopologyChanged)
    assert liar not in topology.adjacency
    (placement,) = _only(decisions, PlacementChanged)
    assert all(liar not in hosts for hosts in placement.assignments.values())
    _assert_valid_mesh(mesh)
    # Its reports keep coming, but it stays out until the isolation ends.
    mesh.run(3)
    assert liar not in mesh.manager.members
    again = mesh.escalate(liar, approvals=rest, rejections=against, pid=2)
    assert _verdict(again).verdict is EscalationVerdict.REJECT


def test_isolation_ends() -> None:
    mesh = Mesh(ManagerConfig(isolation=4.0))
    liar = IDS[2]
    mesh.escalate(liar, approvals=(), rejections=sorted(mesh.manager.neighbours(liar)))
    assert liar not in mesh.manager.members
    mesh.run(5)
    assert liar in mesh.manager.members
    _assert_valid_mesh(mesh)


def test_an_honest_proposer_is_not_punished_by_one_liar() -> None:
    mesh = Mesh()
    honest = IDS[0]
    neighbours = sorted(mesh.manager.neighbours(honest))
    assert len(neighbours) >= 4
    liar, approvals = neighbours[0], neighbours[1:3]  # the rest did not vote in time
    decisions = mesh.escalate(honest, approvals=approvals, rejections=[liar])
    verdict = _verdict(decisions)
    assert verdict.verdict is EscalationVerdict.APPLY
    assert _only(decisions, EncoderIsolated) == []
    assert honest in mesh.manager.members and liar in mesh.manager.members


def test_a_serial_dissenter_is_isolated() -> None:
    mesh = Mesh(ManagerConfig(liar_quorum=3))
    plan = mesh.manager.plan
    assert plan is not None
    adjacency = plan.topology.adjacency()
    liar = next(n for n, ns in adjacency.items() if len(ns) >= 4)
    victims = sorted(adjacency[liar])[:3]
    isolated: list[EncoderIsolated] = []
    for k, proposer in enumerate(victims):
        others = sorted(mesh.manager.neighbours(proposer) - {liar})
        decisions = mesh.escalate(proposer, approvals=others[:2], rejections=[liar], pid=k + 1)
        assert _verdict(decisions).verdict is EscalationVerdict.APPLY
        isolated += _only(decisions, EncoderIsolated)
    assert [i.encoder_id for i in isolated] == [liar]
    assert liar not in mesh.manager.members


def test_repeated_disagreement_on_one_link_avoids_the_link() -> None:
    mesh = Mesh(ManagerConfig(link_strikes=2, liar_quorum=3))
    proposer = IDS[1]
    neighbours = sorted(mesh.manager.neighbours(proposer))
    grumpy, approvals = neighbours[0], neighbours[1:3]
    first = mesh.escalate(proposer, approvals, [grumpy], pid=1)
    assert _only(first, LinkAvoided) == []
    second = mesh.escalate(proposer, approvals, [grumpy], pid=2)
    assert [(x.a, x.b) for x in _only(second, LinkAvoided)] == [pair(proposer, grumpy)]
    assert grumpy not in mesh.manager.neighbours(proposer)
    assert _verdict(second).verdict is EscalationVerdict.APPLY


@pytest.mark.parametrize(
    ("make_votes", "verdict"),
    [
        (lambda ns: ([], []), EscalationVerdict.DEFER),
        (lambda ns: (ns[:1], ns[1:2]), EscalationVerdict.DEFER),
        (lambda ns: (ns[:1], ns[1:3]), EscalationVerdict.REJECT),
    ],
    ids=["no-votes", "split", "two-against-one"],
)
def test_weak_or_split_evidence_is_not_applied(
    make_votes: Callable[[list[str]], tuple[list[str], list[str]]],
    verdict: EscalationVerdict,
) -> None:
    mesh = Mesh()
    proposer = IDS[3]
    approvals, rejections = make_votes(sorted(mesh.manager.neighbours(proposer)))
    decisions = mesh.escalate(proposer, approvals, rejections)
    assert _verdict(decisions).verdict is verdict
    assert _only(decisions, EncoderIsolated) == []


def test_votes_from_outside_the_neighbourhood_do_not_count() -> None:
    mesh = Mesh()
    proposer = IDS[6]
    strangers = [n for n in IDS if n != proposer and n not in mesh.manager.neighbours(proposer)]
    degree = len(mesh.manager.neighbours(proposer))
    decisions = mesh.escalate(proposer, approvals=(), rejections=strangers[:degree])
    assert _verdict(decisions).verdict is EscalationVerdict.DEFER
    assert proposer in mesh.manager.members


def test_an_unknown_proposer_is_rejected() -> None:
    mesh = Mesh()
    mesh.manager.step(1.0, EncoderLeft(IDS[9]))
    mesh.silent.add(IDS[9])
    decisions = mesh.escalate(IDS[9], approvals=IDS[:3], rejections=())
    assert _verdict(decisions).verdict is EscalationVerdict.REJECT


def test_isolation_is_capped() -> None:
    mesh = Mesh(ManagerConfig(max_isolated_fraction=0.1))  # 12 encoders: one at most
    first, second = IDS[0], IDS[6]
    mesh.escalate(first, (), sorted(mesh.manager.neighbours(first)))
    decisions = mesh.escalate(second, (), sorted(mesh.manager.neighbours(second)))
    judged = _verdict(decisions)
    assert judged.verdict is EscalationVerdict.REJECT and "cap" in judged.reason
    assert second in mesh.manager.members


def test_the_same_events_give_the_same_decisions() -> None:
    def script() -> list[Decision]:
        mesh = Mesh(ManagerConfig(report_timeout=3.0))
        mesh.run(2)
        mesh.silent.add(IDS[8])
        mesh.run(5)
        mesh.escalate(IDS[2], (), sorted(mesh.manager.neighbours(IDS[2])))
        mesh.run(2)
        return mesh.log

    assert script() == script()


def test_a_scale_down_rewires_and_replaces_work() -> None:
    mesh = Mesh()
    for node in IDS[-3:]:
        mesh.manager.step(mesh.now, EncoderLeft(node))
        mesh.silent.add(node)
    decisions = mesh.run(1)
    (topology,) = _only(decisions, TopologyChanged)
    assert sorted(topology.adjacency) == IDS[:-3]
    _assert_valid_mesh(mesh)


@pytest.mark.parametrize(
    "build",
    [
        lambda: HealthReported("a", 1.5, 0.1, 0.0),
        lambda: HealthReported("a", 0.5, math.nan, 0.0),
        lambda: HealthReported("a", 0.5, 0.1, -1.0),
        lambda: HealthReported("a", 0.5, 0.1, 0.0, links=(LinkSample("a"),)),
        lambda: HealthReported("a", 0.5, 0.1, 0.0, links=(LinkSample("b"), LinkSample("b"))),
        lambda: LinkSample("b", rtt=-0.1),
        lambda: EncoderJoined(""),
        lambda: EncoderJoined("a", capacity=-1),
        lambda: Escalated("a", ResyncProposal("b", 1, CorrectionKind.SLEW, 0.001, 1), (), 0),
    ],
)
def test_malformed_inputs_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("when", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("event", [EncoderJoined("a"), Tick()], ids=["joined", "tick"])
def test_a_time_that_is_not_finite_is_refused(when: float, event: Event) -> None:
    manager: StateMachine[Event, Decision] = MeshManager()  # mypy checks the shape
    with pytest.raises(ValueError):
        manager.step(when, event)
    manager.step(0.0, Tick())
    assert manager.ready() == []  # the refused event left nothing behind


def test_decisions_wait_in_order_until_taken() -> None:
    """Taking the decisions after several steps gives what taking them after each step does."""
    each, batched = Mesh(ManagerConfig(isolation=4.0)), Mesh(ManagerConfig(isolation=4.0))
    liar = IDS[2]
    against = sorted(each.manager.neighbours(liar))
    each.escalate(liar, approvals=(), rejections=against)
    each.now = 5.0
    each.manager.step(each.now, Tick())
    one_by_one = each.log + each.manager.ready()

    proposal = ResyncProposal(liar, 1, CorrectionKind.DROP, 1 / 30, batched.manager.epoch)
    votes = tuple(ResyncVote(liar, 1, v, False, 0.0) for v in against)
    batched.manager.step(0.0, Escalated(liar, proposal, votes, len(against)))
    batched.manager.step(5.0, Tick())
    at_once = batched.log + batched.manager.ready()

    assert at_once == one_by_one
    kinds = [type(d) for d in at_once]
    judged = kinds.index(EscalationJudged)
    assert EncoderIsolated in kinds[:judged]  # the escalation's decisions...
    assert TopologyChanged in kinds[judged + 1 :]  # ...then the tick's: the isolation ended


def test_stale_and_unknown_reports_are_ignored() -> None:
    mesh = Mesh()
    mesh.run(2)
    stranger = HealthReported("stranger", 0.5, 0.1, 0.0)
    stale = HealthReported(IDS[0], 0.5, 0.1, 0.0)
    before = mesh.manager.health.ignored_reports
    mesh.manager.step(mesh.now, stranger)
    mesh.manager.step(mesh.now - 10.0, stale)  # received before the last one applied
    assert mesh.manager.ready() == []
    assert mesh.manager.health.ignored_reports == before + 2
    assert "stranger" not in mesh.manager.members


AUTOSCALE = AutoscaleConfig(min_replicas=10, max_replicas=16, cooldown=5.0, drain_grace=2.0)


def test_low_load_drains_the_highest_ordinal_through_the_placement_then_scales_in() -> None:
    """Idle encoders: after the cool-down the highest ordinal is drained — in the same tick the
    placement moves exactly its copies away — and a later tick asks for one encoder fewer;
    once it has left, the next one goes the same way, down to the minimum."""
    mesh = Mesh(ManagerConfig(autoscale=AUTOSCALE))
    mesh.load = 0.05
    plan = mesh.manager.plan
    assert plan is not None
    held = sum(1 for hosts in plan.placement.assignments.values() if IDS[11] in hosts)
    decisions = mesh.run(6)
    # The replan may also follow the latency map (topology, segments); the drain comes first.
    drain = decisions[0]
    assert isinstance(drain, DrainStarted) and drain.encoder_id == IDS[11]
    decisions += mesh.run(4)
    placement, handed = _only(decisions, PlacementChanged)[:2]
    assert placement.moves == held and placement.under_replicated == ()
    # Make before break: the drained encoder keeps its units, listed after their new holders,
    # until those serve them; then (their next reports) the placement drops it, and only
    # then, after the drain grace, is it scaled in.
    assert sorted(u for u, h in placement.leaving if h == IDS[11]) == sorted(
        u for u, hosts in placement.assignments.items() if IDS[11] in hosts
    )
    assert all(hosts[-1] == IDS[11] for hosts in placement.assignments.values() if IDS[11] in hosts)
    assert all(IDS[11] not in hosts for hosts in handed.assignments.values())
    assert handed.leaving == () and "handed over" in handed.reason
    (scale_in,) = _only(decisions, ScaleIn)
    assert decisions.index(handed) < decisions.index(scale_in)
    assert (scale_in.replicas, scale_in.encoder_id) == (11, IDS[11])
    mesh.manager.step(mesh.now, EncoderLeft(IDS[11]))  # the StatefulSet removed the pod
    mesh.silent.add(IDS[11])
    later = mesh.run(12)
    assert [d.encoder_id for d in _only(later, DrainStarted)] == [IDS[10]]
    assert [d.replicas for d in _only(later, ScaleIn)] == [10]
    mesh.manager.step(mesh.now, EncoderLeft(IDS[10]))
    mesh.silent.add(IDS[10])
    assert _only(mesh.run(30), DrainStarted) == []  # at the minimum
    _assert_valid_mesh(mesh)


def test_high_load_scales_out_and_a_failed_scale_in_gives_the_work_back() -> None:
    """Load above the high-water mark asks for more encoders, after the placement; a scale
    that fails for good (the actuator says so) gives the emptied encoder its capacity back
    and stops autoscaling."""
    mesh = Mesh(ManagerConfig(autoscale=AUTOSCALE))
    mesh.load = 0.9
    decisions = mesh.run(6)
    (out,) = _only(decisions, ScaleOut)
    assert out.members == 12 and 12 < out.replicas <= 16
    assert decisions[-1] is out
    mesh.load = 0.05
    drained = _only(mesh.run(10), ScaleIn)
    assert [d.encoder_id for d in drained] == [IDS[11]]
    mesh.manager.step(mesh.now, ScaleFailed("forbidden: the manager may not patch", True))
    assert mesh.manager.drained == frozenset()
    back = mesh.run(1)  # planned on the next tick; sticky placement moves nothing back
    (host,) = [h for h in mesh.manager.view().hosts if h.encoder_id == IDS[11]]
    assert host.capacity == mesh.manager.load.capacity(IDS[11], 4) > 0  # no longer drained
    assert mesh.manager.autoscaling_stopped.startswith("forbidden")
    assert _only(mesh.run(30), DrainStarted) == []
    assert _only(back, DrainCancelled) == []  # the drain had completed: nothing to cancel
