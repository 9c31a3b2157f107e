"""The Mesh Manager's decisions: events in, a plan and verdicts out, no IO.

Theory of operation
-------------------
:class:`MeshManager` is a synchronous state machine in the style of etcd's raft core, with the
shape every core shares (:mod:`meshenc.core.machine`). The service shell steps it with the time
on its clock and an event — :class:`EncoderJoined`, :class:`EncoderLeft`,
:class:`~meshenc.core.planner.health.HealthReported`, :class:`Escalated`, :class:`WorkUnitsSet`,
:class:`LeaderElected`, :class:`~meshenc.core.planner.autoscale.ScaleFailed` — and with
:class:`~meshenc.core.machine.Tick` about once a second. Only an escalation and a tick decide
anything; :meth:`MeshManager.ready` returns the decisions the shell must carry out (publish
adjacency, segment map and work assignments; scale; answer the escalation), each step's **in
this order**:

1. :class:`EncoderRemoved`, :class:`EncoderIsolated`, :class:`LinkAvoided`,
   :class:`CapacityMeasured`, :class:`~meshenc.core.planner.autoscale.DrainStarted`,
   :class:`~meshenc.core.planner.autoscale.DrainCancelled` — why the mesh changes;
2. :class:`TopologyChanged` — the new epoch's adjacency (publish before anything that names it);
3. :class:`SegmentsChanged`, then :class:`PlacementChanged`;
4. :class:`~meshenc.core.planner.autoscale.ScaleOut` or
   :class:`~meshenc.core.planner.autoscale.ScaleIn` — after the placement they follow;
5. :class:`EscalationJudged` — last, so its ``topology_epoch`` is already published.

Planning (:func:`plan_mesh`) is a pure function of a :class:`MeshView` and the previous
:class:`MeshPlan`: ring and links (:mod:`.topology`), segments and leader links
(:mod:`.segments`), placement (:mod:`.placement`). The manager replans when membership, the
avoided links or the work change (on the next tick, so a burst of joins makes one plan), at
once when an escalation isolates an encoder or avoids a link (so the answer can carry the new
epoch), and every ``reoptimize_every`` seconds to follow the latency map (churn-limited).

Failure reaction, on a :class:`~meshenc.core.machine.Tick`:

- **silent**: no report for ``report_timeout`` s → removed; its work is re-placed and its
  neighbours rewired by the replan. A removed encoder that reports again is re-admitted.
- **streams broken**: every planned link of an encoder down for ``stream_grace`` s while most
  of those neighbours still report working links elsewhere → removed (it is the odd one out;
  when the neighbours are the ones failing, silence removes them instead).
- **bad link**: a link down for ``link_grace`` s as seen by either end, both ends still
  reporting (within half the report timeout: a dead encoder's links are not "bad", its silence
  removes it) → avoided for ``avoid_for`` s; the planner routes around it.

Escalations (a resync proposal that did not win a majority of the proposer's neighbours) are
judged from the votes of the proposer's *current planned neighbours* only (others, and repeat
voters, are ignored), each of which voted from its own measurement:

- rejected by at least ``liar_quorum`` neighbours that are a majority of its degree → the
  proposer is the liar or broken: REJECT and isolate it for ``isolation`` s;
- more approvals than rejections → APPLY (one liar cannot hold an honest encoder back). Each
  outvoted rejecter is noted; one outvoted against ``liar_quorum`` distinct proposers within
  ``dissent_window`` s is isolated; a pair that disagrees ``link_strikes`` times within the
  window without either being isolated gets its link avoided (a bad link, not a bad encoder);
- a tie → APPLY if every rejecter has been outvoted before in the window, else DEFER;
- more rejections than approvals, short of the isolation quorum → REJECT;
- no valid vote at all → DEFER (the links are probably down; health will tell).

No more than ``max_isolated_fraction`` of the encoders are isolated at once, so a collusion
cannot empty the mesh through the manager.

Load (:mod:`.load`): every applied health report also goes to the
:class:`~meshenc.core.planner.load.LoadModel` with the number of units the reporter was last
published to hold (the placement's, and those it is handing over, :mod:`.handover`), and
from it come both the capacity each encoder is planned with (measured, with hysteresis; until
measured, the median of the measured ones, or the registered one when none is) and the
pressure the autoscaler sees. A
measured capacity that changes comes out as :class:`CapacityMeasured` on the next tick, which
replans; the placement then sheds copies only from an encoder whose capacity fell below what
it holds, and only where another encoder has room: with none anywhere, encoders take copies
up to their registered capacity (``Host.limit``) rather than leave a unit short.

Autoscaling (with ``ManagerConfig.autoscale``), on a tick: the
:class:`~meshenc.core.planner.autoscale.Autoscaler` sees every member's smoothed pressure (CPU
load or encode time per frame, from :mod:`.load`) and who holds work in the current placement.
An encoder it drains is planned with capacity 0 from then on, so this tick's replan moves its
units away (a leave's minimal movement: only its copies move); the scale-in that follows a
later tick asks for one encoder fewer once it holds nothing. A :class:`ScaleFailed` gives every
drained encoder its capacity back (on the next tick's plan).

Invariants:

1. Deterministic: the same events with the same times give the same decisions.
2. Epochs increase by one with every published topology change and never otherwise.
3. Every plan satisfies the planner's invariants (see :mod:`.topology`, :mod:`.segments`,
   :mod:`.placement`); in particular the published adjacency is symmetric.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshenc.core.machine import Tick, check_time
from meshenc.core.messages import ResyncProposal, ResyncVote
from meshenc.core.planner.autoscale import (
    AutoscaleConfig,
    Autoscaler,
    DrainCancelled,
    DrainStarted,
    EncoderLoad,
    FleetObserved,
    ScaleFailed,
    ScaleIn,
    ScaleOut,
)
from meshenc.core.planner.handover import hand_over
from meshenc.core.planner.health import HealthModel, HealthReported
from meshenc.core.planner.load import LoadConfig, LoadModel
from meshenc.core.planner.placement import (
    Host,
    Placement,
    PlacementConfig,
    WorkUnit,
    place,
    replica_moves,
)
from meshenc.core.planner.regions import DEFAULT_BRIDGES, region_bridges
from meshenc.core.planner.segments import (
    Segment,
    SegmentConfig,
    choose_likely_leaders,
    leader_links,
    plan_segments,
)
from meshenc.core.planner.space import LatencySpace
from meshenc.core.planner.topology import (
    Pair,
    Topology,
    TopologyConfig,
    edge_changes,
    pair,
    plan_edges,
    plan_ring,
    survives_any_single_failure,
)
from meshenc.core.planner.vivaldi import Coordinate

__all__ = [
    "CapacityMeasured",
    "EncoderIsolated",
    "EncoderJoined",
    "EncoderLeft",
    "EncoderRemoved",
    "Escalated",
    "EscalationJudged",
    "EscalationVerdict",
    "LeaderElected",
    "LinkAvoided",
    "ManagerConfig",
    "MeshManager",
    "MeshPlan",
    "MeshView",
    "PlacementChanged",
    "PlannerConfig",
    "SegmentInfo",
    "SegmentsChanged",
    "TopologyChanged",
    "WorkUnitsSet",
    "plan_mesh",
]


# --- planning, as a pure function -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """The settings of the three planners."""

    topology: TopologyConfig = field(default_factory=TopologyConfig)
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    #: Independent links wanted between every two zones (``meshenc.core.planner.regions``).
    bridges: int = DEFAULT_BRIDGES


@dataclass(frozen=True, slots=True)
class MeshView:
    """Everything one plan depends on.

    Attributes:
        hosts: the encoders to plan for (zone, capacity).
        coordinates: their network coordinates (missing ones start at the origin).
        confidence: their reported confidence (missing: 0).
        units: the work unit ids to place.
        avoid: links not to use (sorted pairs).
        leaders: elected leader per segment id, where known.
    """

    hosts: tuple[Host, ...]
    coordinates: Mapping[str, Coordinate]
    confidence: Mapping[str, float] = field(default_factory=dict)
    units: tuple[str, ...] = ()
    avoid: frozenset[Pair] = frozenset()
    leaders: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeshPlan:
    """One complete plan: topology, segments (with likely leaders) and placement."""

    topology: Topology
    segments: tuple[Segment, ...]
    placement: Placement
    next_segment_number: int = 1


def plan_mesh(
    view: MeshView, previous: MeshPlan | None, config: PlannerConfig, *, epoch: int
) -> MeshPlan:
    """Plan the mesh for ``view``, starting from ``previous``.

    Args:
        view: the inputs.
        previous: the last plan, or None on a cold start.
        config: planner settings.
        epoch: the epoch to stamp on the topology.
    """
    ids = sorted({h.encoder_id for h in view.hosts})
    dims = {len(c.position) for c in view.coordinates.values()} or {2}
    default = Coordinate(position=(0.0,) * min(dims))
    space = LatencySpace({node: view.coordinates.get(node, default) for node in ids})
    near = space.near(config.topology.candidates)
    ring_idx = plan_ring(space, previous.topology.ring if previous else (), view.avoid, near)
    ring = tuple(space.ids[i] for i in ring_idx)

    old_segments = previous.segments if previous else ()
    grouped, next_number = plan_segments(
        ring,
        old_segments,
        previous.next_segment_number if previous else 1,
        config.segments,
    )
    old_likely = {s.segment_id: s.likely_leader for s in old_segments}
    incumbents: dict[str, str] = {}
    for segment_id, members in grouped:
        elected = view.leaders.get(segment_id)
        if elected is not None and elected in members:
            incumbents[segment_id] = elected
        elif segment_id in old_likely:
            incumbents[segment_id] = old_likely[segment_id]
    segments = choose_likely_leaders(grouped, space, view.confidence, incumbents, config.segments)
    edges = plan_edges(
        space,
        ring_idx,
        previous.topology if previous else None,
        avoid=view.avoid,
        preferred=[
            *region_bridges({h.encoder_id: h.zone for h in view.hosts}, space, config.bridges),
            *leader_links(segments),
        ],
        near=near,
        config=config.topology,
    )
    placement = place(
        view.units, view.hosts, previous.placement if previous else None, config.placement
    )
    return MeshPlan(
        topology=Topology(epoch=epoch, ring=ring, edges=edges),
        segments=tuple(segments),
        placement=placement,
        next_segment_number=next_number,
    )


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncoderJoined:
    """An encoder appeared (a pod became ready, or a local process started)."""

    encoder_id: str
    address: str = ""
    zone: str = ""
    capacity: int = 4

    def __post_init__(self) -> None:
        if not self.encoder_id:
            raise ValueError("encoder_id must not be empty")
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")


@dataclass(frozen=True, slots=True)
class EncoderLeft:
    """An encoder went away on purpose (scaled down, deleted)."""

    encoder_id: str


@dataclass(frozen=True, slots=True)
class Escalated:
    """A proposer escalated a proposal its neighbours did not approve by majority."""

    encoder_id: str
    proposal: ResyncProposal
    votes: tuple[ResyncVote, ...]
    neighbour_count: int

    def __post_init__(self) -> None:
        if self.proposal.proposer != self.encoder_id:
            raise ValueError(
                f"escalation from {self.encoder_id!r} carries a proposal by "
                f"{self.proposal.proposer!r}"
            )
        if self.neighbour_count < len({v.voter for v in self.votes}):
            raise ValueError("neighbour_count is smaller than the number of voters")


@dataclass(frozen=True, slots=True)
class WorkUnitsSet:
    """The complete set of work units to run (replaces the previous set)."""

    units: tuple[WorkUnit, ...]


@dataclass(frozen=True, slots=True)
class LeaderElected:
    """A segment's leader election in etcd was won (``revision`` fences it)."""

    segment_id: str
    encoder_id: str
    revision: int

    def __post_init__(self) -> None:
        if self.revision <= 0:
            raise ValueError(f"revision must be positive, got {self.revision}")


Event = (
    EncoderJoined
    | EncoderLeft
    | HealthReported
    | Escalated
    | WorkUnitsSet
    | LeaderElected
    | ScaleFailed
    | Tick
)


# --- decisions ------------------------------------------------------------------------------


class EscalationVerdict(enum.Enum):
    """What the proposer does with an escalated proposal."""

    APPLY = "apply"
    REJECT = "reject"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class EncoderRemoved:
    """Take the encoder out of the mesh (its work and links are re-planned)."""

    encoder_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class EncoderIsolated:
    """Keep the encoder out of the mesh until ``until`` (manager's clock)."""

    encoder_id: str
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class LinkAvoided:
    """Do not link ``a`` and ``b`` until ``until``."""

    a: str
    b: str
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class CapacityMeasured:
    """The encoder's measured capacity changed (from its registered one, or a measured one):
    it is planned with ``capacity`` units from now on. ``overhead`` and ``per_unit`` are the
    smoothed parts of its pressure it was computed from (:mod:`.load`)."""

    encoder_id: str
    capacity: int
    previous: int
    overhead: float
    per_unit: float


@dataclass(frozen=True, slots=True)
class TopologyChanged:
    """Publish this adjacency as epoch ``epoch``."""

    epoch: int
    adjacency: Mapping[str, tuple[str, ...]]
    reason: str
    links_added: int
    links_removed: int
    survives_any_single_failure: bool


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment as published (``leader_id`` empty while no election is known)."""

    segment_id: str
    members: tuple[str, ...]
    likely_leader: str
    leader_id: str = ""
    leader_revision: int = 0


@dataclass(frozen=True, slots=True)
class SegmentsChanged:
    """Publish this segment map for ``topology_epoch``."""

    topology_epoch: int
    segments: tuple[SegmentInfo, ...]


@dataclass(frozen=True, slots=True)
class PlacementChanged:
    """Run each unit on the listed encoders (treat ``assignments`` as read-only): the
    placement's holders, then those it is leaving, kept until the new ones serve it
    (``leaving``: those (unit, holder) pairs)."""

    assignments: Mapping[str, tuple[str, ...]]
    moves: int
    under_replicated: tuple[str, ...]
    zone_shared: tuple[str, ...]
    reason: str
    leaving: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EscalationJudged:
    """Answer the escalation."""

    encoder_id: str
    proposal_id: int
    verdict: EscalationVerdict
    reason: str
    topology_epoch: int


Decision = (
    EncoderRemoved
    | EncoderIsolated
    | LinkAvoided
    | CapacityMeasured
    | DrainStarted
    | DrainCancelled
    | TopologyChanged
    | SegmentsChanged
    | PlacementChanged
    | ScaleOut
    | ScaleIn
    | EscalationJudged
)


# --- the state machine ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """Timeouts and judging thresholds; see the module docstring for what each does."""

    planner: PlannerConfig = field(default_factory=PlannerConfig)
    report_timeout: float = 5.0
    stream_grace: float = 5.0
    link_grace: float = 5.0
    avoid_for: float = 300.0
    isolation: float = 300.0
    liar_quorum: int = 3
    dissent_window: float = 60.0
    link_strikes: int = 2
    max_isolated_fraction: float = 0.1
    reoptimize_every: float = 30.0
    dimensions: int = 2
    #: How reports become pressure and capacity (``meshenc.core.planner.load``).
    load: LoadConfig = field(default_factory=LoadConfig)
    #: Autoscaling (``meshenc.core.planner.autoscale``); None: the fleet's size is not ours.
    autoscale: AutoscaleConfig | None = None
    #: The longest an encoder a unit moves away from keeps it while a new holder does not yet
    #: serve it (``meshenc.core.planner.handover``), seconds.
    handover_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "report_timeout",
            "stream_grace",
            "link_grace",
            "avoid_for",
            "isolation",
            "dissent_window",
            "reoptimize_every",
            "handover_timeout",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        if self.liar_quorum < 2:
            raise ValueError(f"liar_quorum must be >= 2, got {self.liar_quorum}")
        if self.link_strikes < 1:
            raise ValueError(f"link_strikes must be >= 1, got {self.link_strikes}")
        if not 0.0 <= self.max_isolated_fraction <= 0.5:
            raise ValueError("max_isolated_fraction must be in [0, 0.5]")


@dataclass(frozen=True, slots=True)
class _Member:
    encoder_id: str
    address: str
    zone: str
    capacity: int


class MeshManager:
    """The manager's decision state: step it with events and ticks, carry out what is ready.

    Args:
        config: thresholds and planner settings.
    """

    def __init__(self, config: ManagerConfig | None = None) -> None:
        self.config = config or ManagerConfig()
        self.health = HealthModel(dimensions=self.config.dimensions)
        self.load = LoadModel(self.config.load)
        self._held: dict[str, int] = {}  # units per encoder as published (leaving ones too)
        self._published: dict[str, tuple[str, ...]] = {}  # the assignments published last
        self._leaving: dict[tuple[str, str], float] = {}  # (unit, holder) kept since when
        self._serving: dict[str, frozenset[str]] = {}  # encoder -> units it last reported
        self._members: dict[str, _Member] = {}
        self._known: dict[str, _Member] = {}  # removed for silence; re-admitted on a report
        self._isolated: dict[str, float] = {}
        self._avoided: dict[Pair, float] = {}
        self._units: tuple[str, ...] = ()
        self._leaders: dict[str, tuple[str, int]] = {}
        self._plan: MeshPlan | None = None
        self._epoch = 0
        self._reasons: list[str] = []
        self._last_plan_at: float | None = None
        self._dissent: dict[str, dict[str, float]] = {}  # rejecter -> proposer -> last time
        self._strikes: dict[Pair, list[float]] = {}
        self._now = -math.inf
        self._decisions: list[Decision] = []
        self._autoscaler = Autoscaler(self.config.autoscale) if self.config.autoscale else None
        self._drained: set[str] = set()  # capacity 0: draining, or scaled in and leaving
        self._autoscale_notes: list[Decision] = []  # decided outside a tick, out with the next
        self._measured: dict[str, CapacityMeasured] = {}  # since the last tick, per encoder

    # -- queries ---------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current topology epoch (0 before the first plan)."""
        return self._epoch

    @property
    def plan(self) -> MeshPlan | None:
        """The current plan, or None before the first."""
        return self._plan

    @property
    def members(self) -> list[str]:
        """Encoders in the mesh or waiting to be planned in, sorted (isolated excluded)."""
        return sorted(m for m in self._members if m not in self._isolated)

    @property
    def drained(self) -> frozenset[str]:
        """Encoders given no work: being drained, or scaled in and not gone yet."""
        return frozenset(self._drained)

    @property
    def autoscaling_stopped(self) -> str:
        """Why autoscaling stopped for good ("" while it runs, or when it is off)."""
        return self._autoscaler.disabled if self._autoscaler else ""

    def isolated(self) -> dict[str, float]:
        """Isolated encoders and until when."""
        return dict(self._isolated)

    def avoided(self) -> dict[Pair, float]:
        """Avoided links and until when."""
        return dict(self._avoided)

    def neighbours(self, encoder_id: str) -> frozenset[str]:
        """The encoder's neighbours in the current plan (empty if none)."""
        if self._plan is None:
            return frozenset()
        return frozenset(
            b if a == encoder_id else a
            for a, b in self._plan.topology.edges
            if encoder_id in (a, b)
        )

    # -- inputs ----------------------------------------------------------------------------

    def ready(self) -> list[Decision]:
        """The decisions made since the last call, in the order they must be carried out."""
        decisions, self._decisions = self._decisions, []
        return decisions

    def step(self, now: float, event: Event) -> None:
        """Apply one event observed at ``now`` (the manager's clock, seconds).

        Only an escalation and a :class:`~meshenc.core.machine.Tick` decide anything (see
        :meth:`ready`). An event is applied at the time it is stepped with, so a report
        stepped with a time before the encoder's latest is ignored as stale; a tick runs at
        the latest time seen, so the manager's time never goes back.
        """
        check_time(now)
        self._now = max(self._now, now)
        if isinstance(event, Tick):
            self._decisions += self._tick()
        elif isinstance(event, EncoderJoined):
            member = _Member(event.encoder_id, event.address, event.zone, event.capacity)
            if self._members.get(event.encoder_id) != member:
                self._members[event.encoder_id] = member
                self._reasons.append(f"{event.encoder_id} joined")
            self._known.pop(event.encoder_id, None)
            self.health.track(event.encoder_id, now)
        elif isinstance(event, EncoderLeft):
            self._drained.discard(event.encoder_id)
            self._serving.pop(event.encoder_id, None)
            if self._members.pop(event.encoder_id, None) is not None:
                self.health.forget(event.encoder_id)
                self.load.forget(event.encoder_id)
                self._reasons.append(f"{event.encoder_id} left")
            self._known.pop(event.encoder_id, None)
        elif isinstance(event, HealthReported):
            self._report(event, now)
        elif isinstance(event, WorkUnitsSet):
            units = tuple(sorted({u.unit_id for u in event.units}))
            if units != self._units:
                self._units = units
                self._reasons.append(f"work changed to {len(units)} units")
        elif isinstance(event, LeaderElected):
            current = self._leaders.get(event.segment_id)
            if current is None or event.revision > current[1]:
                self._leaders[event.segment_id] = (event.encoder_id, event.revision)
        elif isinstance(event, ScaleFailed):
            self._scale_failed(event, now)
        else:
            self._decisions += self._judge(event, now)

    def _report(self, report: HealthReported, now: float) -> None:
        node = report.encoder_id
        if node not in self._members and node in self._known:
            self._members[node] = self._known.pop(node)
            self.health.track(node, now)
            self._reasons.append(f"{node} reports again")
        planned = self.neighbours(node) if report.topology_epoch == self._epoch else None
        if not self.health.ingest(report, now, planned if self._plan is not None else None):
            return
        member = self._members.get(node)
        if member is None:
            return
        self._serving[node] = report.units
        before = self.load.capacity(node, member.capacity)
        self.load.observe(now, report, self._held.get(node, 0), member.capacity)
        after = self.load.capacity(node, member.capacity)
        if after != before:
            self._reasons.append(f"{node}'s measured capacity {before} -> {after}")
            parts = self.load.parts(node) or (0.0, 0.0)
            earlier = self._measured.get(node)
            self._measured[node] = CapacityMeasured(
                node, after, earlier.previous if earlier else before, *parts
            )

    def _tick(self) -> list[Decision]:
        """Detect failures, expire penalties, and replan if anything changed."""
        now = self._now
        decisions: list[Decision] = []
        decisions += self._expire(now)
        decisions += self._remove_silent(now)
        decisions += self._remove_cut_off(now)
        decisions += self._avoid_down_links(now)
        decisions += [m for _, m in sorted(self._measured.items()) if m.capacity != m.previous]
        self._measured = {}
        decisions += self._autoscale_notes
        self._autoscale_notes = []
        scaling = self._autoscale(now)
        decisions += [d for d in scaling if isinstance(d, DrainStarted | DrainCancelled)]
        due = (
            self._last_plan_at is not None
            and now - self._last_plan_at >= self.config.reoptimize_every
        )
        if self._reasons or due:
            decisions += self._replan(now, "; ".join(self._reasons) or "periodic re-optimisation")
        elif self._leaving and self._plan is not None:
            decisions += self._publish_placement(now, None, "")
        decisions += [d for d in scaling if isinstance(d, ScaleOut | ScaleIn)]
        return decisions

    # -- autoscaling -----------------------------------------------------------------------

    def _autoscale(self, now: float) -> list[Decision]:
        """Step the autoscaler with the fleet's load; drain and undrain as it decides."""
        if self._autoscaler is None:
            return []
        leaving = self._drained - {self._autoscaler.draining}  # scaled in, not gone yet
        loads = tuple(
            EncoderLoad(member, self.load.pressure(member))
            for member in self.members
            if member not in leaving
        )
        holding = {h for h, units in self._held.items() if units}
        self._autoscaler.step(now, FleetObserved(loads, frozenset(holding)))
        return self._apply_scaling(self._autoscaler.ready())

    def _apply_scaling(self, decisions: Sequence[Decision]) -> list[Decision]:
        for decision in decisions:
            if isinstance(decision, DrainStarted):
                self._drained.add(decision.encoder_id)
                self._reasons.append(f"{decision.encoder_id} drains: {decision.reason}")
            elif isinstance(decision, DrainCancelled):
                self._undrain(decision.encoder_id, f"drain cancelled: {decision.reason}")
        return list(decisions)

    def _undrain(self, encoder: str, why: str) -> None:
        if encoder in self._drained:
            self._drained.discard(encoder)
            if encoder in self._members:
                self._reasons.append(f"{encoder} takes work again: {why}")

    def _scale_failed(self, event: ScaleFailed, now: float) -> None:
        """The actuator could not scale: whoever was drained for it takes work again."""
        if self._autoscaler is None:
            return
        self._autoscaler.step(now, event)
        self._autoscale_notes += self._apply_scaling(self._autoscaler.ready())
        for encoder in sorted(self._drained):
            self._undrain(encoder, f"scaling failed: {event.reason}")

    # -- failure detection -----------------------------------------------------------------

    def _expire(self, now: float) -> list[Decision]:
        for node, until in sorted(self._isolated.items()):
            if until <= now:
                del self._isolated[node]
                if node in self._members:
                    self.health.track(node, now)
                    self._reasons.append(f"{node}'s isolation ended")
        for link, until in sorted(self._avoided.items()):
            if until <= now:
                del self._avoided[link]
                self._reasons.append(f"link {link[0]}-{link[1]} may be used again")
        return []

    def _remove(self, node: str, reason: str) -> EncoderRemoved:
        member = self._members.pop(node)
        self._serving.pop(node, None)
        self._known[node] = member
        self.health.forget(node)
        self.load.forget(node)
        self._reasons.append(f"{node} removed: {reason}")
        return EncoderRemoved(node, reason)

    def _remove_silent(self, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        for node in self.health.silent(now, self.config.report_timeout):
            if node in self._members and node not in self._isolated:
                seen = self.health.health(node)
                quiet = now - (seen.last_seen if seen else now)
                decisions.append(self._remove(node, f"no health report for {quiet:.1f} s"))
        return decisions

    def _link_down_for(self, a: str, b: str, now: float) -> float:
        """How long link (a, b) has been down as either end sees it (0 if up)."""
        since = [s for s in (self.health.down_since(a, b), self.health.down_since(b, a)) if s]
        return now - min(since) if since else 0.0

    def _remove_cut_off(self, now: float) -> list[Decision]:
        if self._plan is None:
            return []
        decisions: list[Decision] = []
        grace = self.config.stream_grace
        for node in sorted(self._members):
            neighbours = [m for m in self.neighbours(node) if m in self._members]
            if not neighbours or node in self._isolated:
                continue
            if not all(self._link_down_for(node, m, now) >= grace for m in neighbours):
                continue
            healthy = [m for m in neighbours if self._has_working_link(m, exclude=node, now=now)]
            if 2 * len(healthy) > len(neighbours):
                decisions.append(
                    self._remove(node, f"all {len(neighbours)} streams broken for {grace:g} s")
                )
        return decisions

    def _has_working_link(self, node: str, *, exclude: str, now: float) -> bool:
        return any(
            m != exclude and self._link_down_for(node, m, now) == 0.0
            for m in self.neighbours(node)
            if m in self._members
        )

    def _avoid_down_links(self, now: float) -> list[Decision]:
        if self._plan is None:
            return []
        decisions: list[Decision] = []
        for a, b in sorted(self._plan.topology.edges):
            if a not in self._members or b not in self._members:
                continue
            if (a, b) in self._avoided or not (self._fresh(a, now) and self._fresh(b, now)):
                continue  # a quiet end is a dying encoder, not a bad link: silence handles it
            if self._link_down_for(a, b, now) >= self.config.link_grace:
                decisions.append(self._avoid(a, b, now, "link down"))
        return decisions

    def _fresh(self, node: str, now: float) -> bool:
        """Whether ``node`` reported within the last half report timeout."""
        seen = self.health.health(node)
        return seen is not None and now - seen.last_seen <= self.config.report_timeout / 2

    def _avoid(self, a: str, b: str, now: float, why: str) -> LinkAvoided:
        link = pair(a, b)
        until = now + self.config.avoid_for
        self._avoided[link] = until
        self._reasons.append(f"link {link[0]}-{link[1]} avoided: {why}")
        return LinkAvoided(link[0], link[1], until, why)

    # -- escalations -----------------------------------------------------------------------

    def _isolate(self, node: str, now: float, why: str) -> EncoderIsolated | None:
        cap = math.floor(self.config.max_isolated_fraction * len(self._members))
        if node in self._isolated or len(self._isolated) >= cap:
            return None
        until = now + self.config.isolation
        self._isolated[node] = until
        self._reasons.append(f"{node} isolated: {why}")
        return EncoderIsolated(node, until, why)

    def _judge(self, event: Escalated, now: float) -> list[Decision]:
        proposer, proposal_id = event.encoder_id, event.proposal.proposal_id
        config = self.config

        def answer(verdict: EscalationVerdict, reason: str) -> EscalationJudged:
            return EscalationJudged(proposer, proposal_id, verdict, reason, self._epoch)

        if proposer in self._isolated:
            return [answer(EscalationVerdict.REJECT, "proposer is isolated")]
        if proposer not in self._members or self._plan is None:
            return [answer(EscalationVerdict.REJECT, "proposer is not in the mesh")]
        electorate = self.neighbours(proposer)
        approvals: set[str] = set()
        rejections: set[str] = set()
        for vote in event.votes:
            if vote.proposal_id != proposal_id or vote.proposer != proposer:
                continue
            if vote.voter not in electorate or vote.voter in approvals | rejections:
                continue
            (approvals if vote.approve else rejections).add(vote.voter)
        degree = len(electorate)
        counted = len(approvals) + len(rejections)
        decisions: list[Decision] = []

        if len(rejections) >= config.liar_quorum and 2 * len(rejections) > degree:
            why = f"rejected independently by {len(rejections)} of {degree} neighbours"
            isolated = self._isolate(proposer, now, why)
            if isolated is None:
                return [answer(EscalationVerdict.REJECT, f"{why}; isolation cap reached")]
            decisions.append(isolated)
            decisions += self._replan(now, "; ".join(self._reasons))
            decisions.append(answer(EscalationVerdict.REJECT, f"{why}; proposer isolated"))
            return decisions
        if counted == 0:
            return [answer(EscalationVerdict.DEFER, "no vote from a current neighbour")]
        tally = f"{len(approvals)} for, {len(rejections)} against of {degree} neighbours"
        outvoted_before = all(self._dissented_recently(r, now) for r in rejections)
        if len(approvals) > len(rejections) or (
            len(approvals) == len(rejections) and rejections and outvoted_before
        ):
            decisions += self._note_dissent(proposer, sorted(rejections), now)
            if any(isinstance(d, EncoderIsolated | LinkAvoided) for d in decisions):
                decisions += self._replan(now, "; ".join(self._reasons))
            decisions.append(answer(EscalationVerdict.APPLY, tally))
            return decisions
        if len(approvals) == len(rejections):
            return [answer(EscalationVerdict.DEFER, f"split vote: {tally}")]
        return [answer(EscalationVerdict.REJECT, tally)]

    def _dissented_recently(self, rejecter: str, now: float) -> bool:
        window = self.config.dissent_window
        return any(now - t <= window for t in self._dissent.get(rejecter, {}).values())

    def _note_dissent(self, proposer: str, rejecters: Sequence[str], now: float) -> list[Decision]:
        """Record outvoted rejections; isolate serial dissenters, avoid quarrelling links."""
        config = self.config
        decisions: list[Decision] = []
        for r in rejecters:
            record = self._dissent.setdefault(r, {})
            record[proposer] = now
            for p in [p for p, t in record.items() if now - t > config.dissent_window]:
                del record[p]
            if len(record) >= config.liar_quorum:
                why = (
                    f"outvoted rejecting {len(record)} proposers within {config.dissent_window:g} s"
                )
                isolated = self._isolate(r, now, why)
                if isolated is not None:
                    decisions.append(isolated)
                    continue
            link = pair(proposer, r)
            strikes = [t for t in self._strikes.get(link, []) if now - t <= config.dissent_window]
            strikes.append(now)
            self._strikes[link] = strikes
            if len(strikes) >= config.link_strikes and link not in self._avoided:
                decisions.append(self._avoid(proposer, r, now, "repeated disagreement"))
        return decisions

    # -- planning --------------------------------------------------------------------------

    def view(self) -> MeshView:
        """The inputs of the next plan, from the current state."""
        active = self.members
        measured = sorted(
            self.load.capacity(m, self._members[m].capacity)
            for m in active
            if self.load.measured(m) and m not in self._drained
        )
        # An encoder not measured yet (a joiner) is planned like its measured peers, the
        # median of them: planned at its registered capacity beside peers measured far
        # above it, a joiner's fair share came to nothing, and a capacity that rises later
        # moves no copy (placement is sticky).
        typical = measured[len(measured) // 2] if measured else None
        return MeshView(
            hosts=tuple(
                Host(
                    m,
                    0
                    if m in self._drained
                    else self.load.capacity(
                        m, self._members[m].capacity if typical is None else typical
                    ),
                    self._members[m].zone,
                    # Where no encoder has room left, up to the registered capacity.
                    limit=0 if m in self._drained else self._members[m].capacity,
                )
                for m in active
            ),
            coordinates={m: self.health.coordinate(m) for m in active},
            confidence={m: self.health.confidence(m) for m in active},
            units=self._units,
            avoid=frozenset(self._avoided),
            leaders={s: leader for s, (leader, _) in self._leaders.items()},
        )

    def _replan(self, now: float, reason: str) -> list[Decision]:
        self._reasons = []
        self._last_plan_at = now
        previous = self._plan
        plan = plan_mesh(self.view(), previous, self.config.planner, epoch=self._epoch + 1)
        decisions: list[Decision] = []
        topology_changed = previous is None or (
            plan.topology.edges != previous.topology.edges
            or plan.topology.nodes != previous.topology.nodes
        )
        if topology_changed:
            self._epoch += 1
            changes = edge_changes(previous.topology, plan.topology) if previous else None
            adjacency = plan.topology.adjacency()
            decisions.append(
                TopologyChanged(
                    epoch=self._epoch,
                    adjacency=adjacency,
                    reason=reason,
                    links_added=len(changes.added) if changes else len(plan.topology.edges),
                    links_removed=len(changes.removed) if changes else 0,
                    survives_any_single_failure=survives_any_single_failure(adjacency),
                )
            )
        else:
            assert previous is not None
            plan = MeshPlan(
                topology=previous.topology,
                segments=plan.segments,
                placement=plan.placement,
                next_segment_number=plan.next_segment_number,
            )
        if previous is None or topology_changed or plan.segments != previous.segments:
            decisions.append(SegmentsChanged(self._epoch, self.segment_map(plan)))
        self._plan = plan
        decisions += self._publish_placement(now, previous, reason)
        return decisions

    def _publish_placement(
        self, now: float, previous: MeshPlan | None, reason: str
    ) -> list[Decision]:
        """The current plan's placement with the holders units are leaving kept until their
        new holders serve them (:mod:`.handover`); a decision when that changes what was
        published. ``previous`` is the plan before a replan (None: no replan, the hand-overs
        alone moved on)."""
        assert self._plan is not None
        placement = self._plan.placement
        handed = hand_over(
            placement.assignments,
            self._published,
            members=frozenset(self.members),  # an isolated encoder keeps nothing
            serving=self._serving,
            leaving=self._leaving,
            now=now,
            timeout=self.config.handover_timeout,
        )
        self._leaving = handed.leaving
        first = not self._published and previous is None
        if handed.assignments == self._published and not first:
            return []
        self._published = handed.assignments
        self._held = Placement(handed.assignments, placement.hosts).load()
        notes = [reason] if reason else []
        if handed.completed:
            notes.append("handed over: " + _pairs(handed.completed))
        if handed.timed_out:
            notes.append("hand-over timed out: " + _pairs(handed.timed_out))
        return [
            PlacementChanged(
                assignments=handed.assignments,
                moves=replica_moves(previous.placement, placement) if previous else 0,
                under_replicated=placement.under_replicated,
                zone_shared=placement.zone_shared,
                reason="; ".join(notes),
                leaving=tuple(sorted(handed.leaving)),
            )
        ]

    def segment_map(self, plan: MeshPlan | None = None) -> tuple[SegmentInfo, ...]:
        """The segments of a plan (default: the current one) with the elected leaders."""
        plan = plan or self._plan
        if plan is None:
            return ()
        result = []
        for s in plan.segments:
            leader, revision = self._leaders.get(s.segment_id, ("", 0))
            if leader not in s.members:
                leader, revision = "", 0
            result.append(SegmentInfo(s.segment_id, s.members, s.likely_leader, leader, revision))
        return tuple(result)


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """``unit from holder`` pairs, for a decision's reason."""
    return ", ".join(f"{unit} from {holder}" for unit, holder in pairs)
