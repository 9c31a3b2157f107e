"""The Mesh Manager's shell: the planning core driven by gRPC, member watches and a clock.

Theory of operation
-------------------
:class:`ManagerShell` owns one :class:`~meshenc.core.planner.MeshManager` and is its only
caller. Everything runs on one event loop, so the core is never entered concurrently. Inputs:

- member events from the actuator (:meth:`Actuator.members`: pods, or registration keys under
  their leases) → ``EncoderJoined`` / ``EncoderLeft``;
- health reports (``ReportHealth`` streams) → ``HealthReported``, stepped with the loop's clock
  on receipt (an encoder's own clock never decides liveness);
- escalations (``Escalate``) → ``Escalated``; the ``EscalationJudged`` that comes back is the
  RPC's answer;
- a ``Tick`` every ``tick_interval`` seconds, and at once after a membership change (so a
  failure is planned around without waiting for the next tick).

Only an escalation and a tick make the core decide anything, so the shell takes the decisions
(``ready``) after those two steps; anything another step could decide would come out with the
next ones, in order. Decisions are carried out in the core's documented order: removals,
isolations, avoided links and measured capacities are logged; ``TopologyChanged`` and
``SegmentsChanged`` become one :class:`~meshenc.wire.adjacency.AdjacencyDocument` per encoder,
published through the actuator and then to every ``WatchTopology`` stream;
``PlacementChanged`` goes into the same documents
(each encoder's ``work``: the units it runs, numbered by ``work_version``) and is logged;
``EscalationJudged`` is returned only after the epoch it names is published. ``ScaleOut`` and
``ScaleIn`` (autoscaling) go to :meth:`Actuator.scale` in a background task, one call at a
time, the newest wish first; a failure goes back to the core as ``ScaleFailed`` (a permanent
one — no permission, an actuator that cannot scale — is logged once and stops autoscaling;
the mesh keeps running), into :attr:`ManagerShell.scaling` and into the
``meshenc_manager_scale_requests_total`` metric.

Failure reaction, besides the core's own (silence, broken streams, bad links): an encoder whose
health stream ends, and which opens no new one within ``reconnect_grace`` seconds, is taken out
of the mesh (``EncoderLeft``). A killed process closes its TCP connections at once, so this is
the fastest sign of death the manager gets; the grace keeps a manager or network blip from
rewiring anyone who reconnects at once. Members whose graces end within ``DEPARTURE_BATCH`` of
each other leave in one epoch. A member that left this way is admitted again when it opens a
new stream; one whose registration ends (lease expired, pod deleted) leaves for good.

Epochs: the core counts epochs from 1 for each activation; the shell publishes ``base + core
epoch``, where ``base`` is the highest epoch already published when this manager became active
(:meth:`Actuator.published_epoch`), so the published epoch never goes back across a restart or
a takeover. Encoders report published epochs; the shell maps them back for the core.

Invariants:

1. The core is only called from the event loop, with non-decreasing times.
2. A watcher never receives an epoch the actuator was not asked to publish first, and epochs on
   one watch stream strictly increase.
3. An escalation's answer names an epoch that is already published (or whose publication
   failed and is logged, and will be retried on the next tick).
4. A standby (inactive) shell feeds nothing to a core and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from meshenc.core.machine import Tick
from meshenc.core.planner import (
    CapacityMeasured,
    EncoderIsolated,
    EncoderJoined,
    EncoderLeft,
    EncoderRemoved,
    EscalationJudged,
    LinkAvoided,
    ManagerConfig,
    MeshManager,
    PlacementChanged,
    SegmentInfo,
    SegmentsChanged,
    TopologyChanged,
    WorkUnitsSet,
)
from meshenc.core.planner.autoscale import (
    DrainCancelled,
    DrainStarted,
    ScaleFailed,
    ScaleIn,
    ScaleOut,
)
from meshenc.core.planner.placement import WorkUnit
from meshenc.v1 import manager_pb2
from meshenc.wire import convert
from meshenc.wire.adjacency import AdjacencyDocument, check_unit_id
from services.common.waiting import wait_until_set
from services.manager.actuators import (
    Actuator,
    ActuatorError,
    ForbiddenError,
    MemberJoined,
    MemberLeft,
    ScalingNotSupportedError,
    StalePlanError,
)
from services.manager.telemetry import planning, scale_requested

__all__ = [
    "DEFAULT_RECONNECT_GRACE",
    "DEFAULT_TICK_INTERVAL",
    "ManagerShell",
    "NotActiveError",
    "ScalingStatus",
    "UnknownError",
]

log = logging.getLogger("meshenc.manager")

DEFAULT_TICK_INTERVAL = 0.5
"""Seconds between the core's ticks (it asks for about one a second; more often costs little
and halves the delay of failure decisions made on ticks)."""
DEFAULT_RECONNECT_GRACE = 0.5
"""Seconds an encoder whose health stream ended has to open a new one before it is taken out."""
DEPARTURE_BATCH = 0.25
"""Seconds a departure waits for others already due: encoders that died together (a machine, a
zone, an overload relieved by stopping some) leave in one epoch, not in one epoch each, which
would rewire the survivors, move them between segments and have them dial the next to die,
again and again. A lone departure does not wait."""
WATCH_QUEUE = 64
"""Topology updates queued per watcher; a watcher that falls further behind loses the oldest
(each update is a complete topology, so the newest is what matters)."""
MEMBERS_RETRY = 1.0
"""Seconds before following the actuator's members again after the watch failed."""


class NotActiveError(RuntimeError):
    """This manager is a standby: it takes no reports or escalations (FAILED_PRECONDITION)."""


class UnknownError(LookupError):
    """A query named an encoder or segment the manager does not know (NOT_FOUND)."""


@dataclass(frozen=True, slots=True)
class _Topology:
    """A topology: its epoch (published numbering), adjacency and cause.

    Its wire forms are built on first use and kept: every read of one epoch (``GetTopology``,
    each watcher) is handed the same messages, which nobody mutates.
    """

    epoch: int
    adjacency: Mapping[str, tuple[str, ...]]
    reason: str = ""
    _whole: manager_pb2.Topology | None = field(default=None, init=False, repr=False, compare=False)
    _parts: dict[str, manager_pb2.Topology] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def to_proto(self, encoder_id: str = "") -> manager_pb2.Topology:
        """The wire form, or only ``encoder_id``'s part of it (none when it is not in it)."""
        if not encoder_id:
            if self._whole is None:
                whole = convert.topology_to_proto(self.epoch, self.adjacency)
                object.__setattr__(self, "_whole", whole)
                return whole
            return self._whole
        if encoder_id not in self.adjacency:  # not kept: any name can be asked for
            return convert.topology_to_proto(self.epoch, {})
        part = self._parts.get(encoder_id)
        if part is None:
            mine = {encoder_id: self.adjacency[encoder_id]}
            part = self._parts[encoder_id] = convert.topology_to_proto(self.epoch, mine)
        return part


_NO_TOPOLOGY = _Topology(0, {})
"""What is published before the first topology: epoch 0, no encoder."""


@dataclass(slots=True)
class ScalingStatus:
    """What became of the core's scale decisions (all empty while autoscaling is off).

    Attributes:
        asked: the replicas last decided.
        applied: the replicas the actuator last set.
        error: the last failure ("" after a success).
        stopped: why autoscaling stopped for good ("" while it runs).
    """

    asked: int | None = None
    applied: int | None = None
    error: str = ""
    stopped: str = ""


@dataclass(eq=False, slots=True)
class _Watcher:
    """One WatchTopology stream: its filter and its queue of topologies."""

    encoder_id: str
    queue: asyncio.Queue[_Topology | None]
    dropped: int = 0


class ManagerShell:
    """Runs the planning core against an actuator; the servicer's single point of contact.

    Args:
        actuator: where documents go and members come from.
        config: the core's thresholds and planner settings.
        work_units: the work to place (each on ``redundancy`` encoders); each unit id must be
            two identifiers (``check_unit_id``), as the documents carry it.
        tick_interval: seconds between ticks.
        reconnect_grace: seconds a member whose health stream ended may take to reconnect.
        clock: the manager's clock in seconds (default: the running loop's monotonic clock).
    """

    def __init__(
        self,
        actuator: Actuator,
        config: ManagerConfig | None = None,
        *,
        work_units: Sequence[WorkUnit] = (),
        tick_interval: float = DEFAULT_TICK_INTERVAL,
        reconnect_grace: float = DEFAULT_RECONNECT_GRACE,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (("tick_interval", tick_interval), ("reconnect_grace", reconnect_grace)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        self._actuator = actuator
        self._config = config or ManagerConfig()
        for unit in work_units:  # the documents carry them: refuse now, not on a tick
            check_unit_id(unit.unit_id, "work_units")
        self._work_units = tuple(work_units)
        self._tick_interval = tick_interval
        self._reconnect_grace = reconnect_grace
        self._clock = clock
        self._core = MeshManager(self._config)
        self._active = False
        self._base_epoch = 0
        self._members: dict[str, MemberJoined] = {}  # registered (actuator), whether planned or not
        self._in_mesh: set[str] = set()  # EncoderJoined given to the core, no EncoderLeft since
        self._addresses: dict[str, str] = {}
        self._streams: Counter[str] = Counter()
        self._departures: dict[str, asyncio.TimerHandle] = {}
        #: Members whose grace ended, waiting for others due soon (``DEPARTURE_BATCH``), and
        #: when (loop time) the first of them was due.
        self._gone: list[str] = []
        self._gone_since: float | None = None
        self._unregistered_warned: set[str] = set()
        #: The newest topology (published numbering; epoch 0 before the core planned one).
        self._topology = _NO_TOPOLOGY
        self._segments: tuple[SegmentInfo, ...] = ()
        self._segments_epoch = 0
        self._placement: Mapping[str, tuple[str, ...]] = {}
        #: Placements decided by this activation (the documents' ``work_version``).
        self._placement_version = 0
        self._documents: dict[str, AdjacencyDocument] = {}
        self._dirty = False
        self._published: _Topology | None = None
        self._published_segments: tuple[SegmentInfo, ...] = ()
        self._published_segments_epoch = 0
        self._publish_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._watchers: set[_Watcher] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._scale_wanted: int | None = None
        self._scaler: asyncio.Task[None] | None = None
        #: What became of the scale decisions.
        self.scaling = ScalingStatus()
        #: Reports the core took, per encoder (for the HealthAck and for tests).
        self.reports: Counter[str] = Counter()

    # -- state -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether this manager drives the mesh (False: a standby)."""
        return self._active

    @property
    def epoch(self) -> int:
        """The epoch of the published topology (0 before the first publication)."""
        return 0 if self._published is None else self._published.epoch

    @property
    def members(self) -> list[str]:
        """Encoders in the mesh as the core plans it (sorted)."""
        return self._core.members

    @property
    def placement(self) -> Mapping[str, tuple[str, ...]]:
        """Work unit id → the encoders that run it, as last planned."""
        return self._placement

    def now(self) -> float:
        """The manager's clock, seconds."""
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _published_epoch(self, core_epoch: int) -> int:
        return self._base_epoch + core_epoch if core_epoch else 0

    def _core_epoch(self, published: int) -> int:
        """A reported (published) epoch in the core's numbering; 0 if not this activation's."""
        core = published - self._base_epoch
        return core if 0 < core <= self._core.epoch else 0

    # -- activation --------------------------------------------------------------------------

    async def activate(self) -> None:
        """Become the active manager: continue above the published epoch, follow members, tick.

        Raises:
            ActuatorError: the published epoch could not be read (stay standby, try again).
        """
        if self._active:
            return
        self._base_epoch = await self._actuator.published_epoch()
        self._core = MeshManager(self._config)
        self._members.clear()
        self._in_mesh.clear()
        self._documents = {}
        self._dirty = False
        self._placement, self._placement_version = {}, 0
        if self._work_units:
            self._core.step(self.now(), WorkUnitsSet(self._work_units))
        self._active = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow_members(), name="manager-members"),
            loop.create_task(self._tick_loop(), name="manager-ticks"),
        ]
        log.info("active: continuing above published epoch %d", self._base_epoch)

    async def deactivate(self) -> None:
        """Become a standby: stop driving the core, end the watch streams."""
        was_active, self._active = self._active, False
        tasks, self._tasks = self._tasks, []
        if self._scaler is not None:
            tasks.append(self._scaler)
            self._scaler, self._scale_wanted = None, None
        for task in tasks:
            task.cancel()
        try:
            for task in tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    # The task's own end is expected; a cancellation of this coroutine is not
                    # to be swallowed with it (it goes on once the rest is let go).
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
        finally:
            for handle in self._departures.values():
                handle.cancel()
            self._departures.clear()
            self._gone, self._gone_since = [], None
            for watcher in list(self._watchers):
                watcher.queue.put_nowait(None)  # ends the stream; unbounded room for it
            if was_active:
                log.info("standby: no longer driving the mesh")

    async def close(self) -> None:
        """Deactivate and release the actuator."""
        await self.deactivate()
        await self._actuator.close()

    # -- membership --------------------------------------------------------------------------

    async def _follow_members(self) -> None:
        while True:
            try:
                async for event in self._actuator.members():
                    if isinstance(event, MemberJoined):
                        self._member_joined(event)
                    elif isinstance(event, MemberLeft):
                        self._member_left(event.encoder)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the encoders failed; following again")
            await asyncio.sleep(MEMBERS_RETRY)

    def _member_joined(self, member: MemberJoined) -> None:
        changed = self._members.get(member.encoder) != member
        self._members[member.encoder] = member
        if changed and member.encoder in self._in_mesh:
            self._in_mesh.discard(member.encoder)  # re-join with the new address/zone/capacity
        self._admit(member.encoder)

    def _member_left(self, encoder: str) -> None:
        self._members.pop(encoder, None)
        self._cancel_departure(encoder)
        self._leave(encoder, "its registration ended")

    def _admit(self, encoder: str) -> None:
        member = self._members.get(encoder)
        if member is None or encoder in self._in_mesh or not self._active:
            return
        self._in_mesh.add(encoder)
        self._addresses[encoder] = member.address
        self._core.step(
            self.now(),
            EncoderJoined(
                encoder_id=encoder,
                address=member.address,
                zone=member.zone,
                capacity=member.capacity,
            ),
        )
        log.info(
            "%s joins at %s (zone %r, capacity %d)",
            encoder,
            member.address,
            member.zone,
            member.capacity,
        )
        self._wake.set()

    def _leave(self, encoder: str, why: str) -> None:
        if encoder not in self._in_mesh or not self._active:
            return
        self._in_mesh.discard(encoder)
        self._core.step(self.now(), EncoderLeft(encoder))
        log.warning("%s leaves the mesh: %s", encoder, why)
        self._wake.set()

    def _cancel_departure(self, encoder: str) -> None:
        handle = self._departures.pop(encoder, None)
        if handle is not None:
            handle.cancel()
            self._leave_together()  # the members gone may have waited for this one

    def _leave_together(self) -> None:
        """Take out the members whose grace ended, unless another member's grace ends within
        ``DEPARTURE_BATCH`` of the first of them: then they leave with the last of those."""
        if not self._gone:
            return
        now = asyncio.get_running_loop().time()
        if self._gone_since is None:
            self._gone_since = now
        until = self._gone_since + DEPARTURE_BATCH
        if any(handle.when() <= until for handle in self._departures.values()):
            return
        gone, self._gone, self._gone_since = self._gone, [], None
        for encoder in gone:
            self._leave(
                encoder,
                f"its health stream ended and no new one came within {self._reconnect_grace:g} s",
            )

    def stream_opened(self, encoder: str) -> None:
        """A ReportHealth stream from ``encoder`` delivered its first valid report."""
        self._streams[encoder] += 1
        self._cancel_departure(encoder)
        if encoder in self._gone:  # back while waiting to leave with others: it stays
            self._gone.remove(encoder)
        if encoder not in self._members and encoder not in self._unregistered_warned:
            self._unregistered_warned.add(encoder)
            log.info("%s reports but is not registered (yet): its reports wait for that", encoder)
        self._admit(encoder)

    def stream_closed(self, encoder: str) -> None:
        """A ReportHealth stream from ``encoder`` (opened with :meth:`stream_opened`) ended."""
        self._streams[encoder] -= 1
        if self._streams[encoder] > 0:
            return
        del self._streams[encoder]
        if not self._active or encoder not in self._in_mesh:
            return
        self._cancel_departure(encoder)
        loop = asyncio.get_running_loop()
        self._departures[encoder] = loop.call_later(
            self._reconnect_grace, self._stream_gone, encoder
        )

    def _stream_gone(self, encoder: str) -> None:
        self._departures.pop(encoder, None)
        if self._streams[encoder] == 0:
            self._gone.append(encoder)
        self._leave_together()

    # -- inputs from the RPCs -----------------------------------------------------------------

    def _require_active(self) -> None:
        if not self._active:
            raise NotActiveError("this manager is a standby; ask the active one")

    def report(self, msg: manager_pb2.HealthReport) -> None:
        """Feed one (validated) health report to the core.

        Raises:
            NotActiveError: on a standby.
            ValueError: the report breaks a rule of the core's (the stream is refused).
        """
        self._require_active()
        event = convert.health_from_proto(msg, self._core_epoch(msg.topology_epoch))
        self._core.step(self.now(), event)
        self.reports[msg.encoder_id] += 1

    async def escalate(self, msg: manager_pb2.Escalation) -> manager_pb2.EscalationAck:
        """Judge a (validated) escalation; answer once the epoch it names is published.

        Raises:
            NotActiveError: on a standby.
            ValueError: the escalation breaks a rule of the core's.
        """
        self._require_active()
        event = convert.escalation_from_proto(msg)
        with planning("escalation") as plan:
            self._core.step(self.now(), event)
            decisions = plan.record(self._core.ready())
        judged = self._carry_out(decisions)
        await self._flush()
        if judged is None:  # the core answers every escalation; this guards the mapping only
            raise RuntimeError("the core returned no verdict")
        log.info(
            "escalation %d from %s: %s (%s)",
            judged.proposal_id,
            judged.encoder_id,
            judged.verdict.value,
            judged.reason,
        )
        return convert.escalation_ack_to_proto(judged, self._published_epoch(judged.topology_epoch))

    # -- queries -------------------------------------------------------------------------------

    def topology(self, encoder_id: str = "") -> manager_pb2.Topology:
        """The published topology, or one encoder's part of it (what encoders can read).

        Raises:
            UnknownError: ``encoder_id`` is not in the published topology.
        """
        published = self._published or _NO_TOPOLOGY
        if encoder_id and encoder_id not in published.adjacency:
            raise UnknownError(
                f"encoder {encoder_id!r} is not in the topology of epoch {published.epoch}"
            )
        return published.to_proto(encoder_id)

    def segments(self, segment_id: str = "") -> manager_pb2.SegmentMap:
        """The published segment map, or one segment of it.

        Raises:
            UnknownError: ``segment_id`` is not a published segment.
        """
        epoch, chosen = self._published_segments_epoch, self._published_segments
        if segment_id:
            chosen = tuple(s for s in chosen if s.segment_id == segment_id)
            if not chosen:
                raise UnknownError(f"no segment {segment_id!r} in epoch {epoch}")
        return convert.segments_to_proto(chosen, epoch)

    async def watch(
        self, after_epoch: int, encoder_id: str = ""
    ) -> AsyncIterator[manager_pb2.TopologyUpdate]:
        """The published topology now (if newer than ``after_epoch``), then every new one.

        Ends when the manager stops being active.
        """
        watcher = _Watcher(encoder_id, asyncio.Queue())
        self._watchers.add(watcher)
        try:
            last = after_epoch
            if self._published is not None:
                watcher.queue.put_nowait(self._published)
            while self._active:
                item = await watcher.queue.get()
                if item is None:
                    return
                if item.epoch <= last:
                    continue
                last = item.epoch
                yield manager_pb2.TopologyUpdate(
                    topology=item.to_proto(encoder_id), reason=item.reason
                )
        finally:
            self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        """Open WatchTopology streams."""
        return len(self._watchers)

    # -- ticks and decisions -------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await wait_until_set(self._wake, self._tick_interval)
            self._wake.clear()
            try:
                with planning("tick") as plan:
                    self._core.step(self.now(), Tick())
                    decisions = plan.record(self._core.ready())
                self._carry_out(decisions)
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a tick failed; the next one tries again")

    def _carry_out(self, decisions: Sequence[object]) -> EscalationJudged | None:
        """Apply the core's decisions to the shell's state, in their order; returns the verdict."""
        judged = None
        for decision in decisions:
            if isinstance(decision, EncoderRemoved):
                log.warning("%s removed: %s", decision.encoder_id, decision.reason)
            elif isinstance(decision, EncoderIsolated):
                log.warning("%s isolated: %s", decision.encoder_id, decision.reason)
            elif isinstance(decision, LinkAvoided):
                log.warning("link %s-%s avoided: %s", decision.a, decision.b, decision.reason)
            elif isinstance(decision, CapacityMeasured):
                log.info(
                    "%s capacity %d -> %d units (measured: %.2f overhead + %.3f a unit)",
                    decision.encoder_id,
                    decision.previous,
                    decision.capacity,
                    decision.overhead,
                    decision.per_unit,
                )
            elif isinstance(decision, TopologyChanged):
                epoch = self._published_epoch(decision.epoch)
                reason = convert.clip_reason(decision.reason)
                self._topology = _Topology(epoch, decision.adjacency, reason)
                self._dirty = True
                log.info(
                    "epoch %d: %d encoders, +%d/-%d links, survives any single failure: %s (%s)",
                    epoch,
                    len(decision.adjacency),
                    decision.links_added,
                    decision.links_removed,
                    "yes" if decision.survives_any_single_failure else "NO",
                    decision.reason,
                )
            elif isinstance(decision, SegmentsChanged):
                self._segments = decision.segments
                self._segments_epoch = decision.topology_epoch
                self._dirty = True
            elif isinstance(decision, PlacementChanged):
                self._placement = decision.assignments
                self._placement_version += 1
                self._dirty = True
                log.info(
                    "work placed: %d moves, %d under-replicated (%s): %s",
                    decision.moves,
                    len(decision.under_replicated),
                    decision.reason,
                    ", ".join(
                        f"{u}→{'+'.join(h)}" for u, h in sorted(decision.assignments.items())
                    ),
                )
            elif isinstance(decision, DrainStarted):
                log.info("draining %s: %s", decision.encoder_id, decision.reason)
            elif isinstance(decision, DrainCancelled):
                log.info("%s keeps its work: %s", decision.encoder_id, decision.reason)
            elif isinstance(decision, ScaleOut | ScaleIn):
                log.info("scaling to %d encoders: %s", decision.replicas, decision.reason)
                self._scale(decision.replicas)
            elif isinstance(decision, EscalationJudged):
                judged = decision
        if self._dirty:
            self._documents = self._build_documents()
        return judged

    def _scale(self, replicas: int) -> None:
        """Have the actuator apply ``replicas`` in the background (the newest wish wins)."""
        self.scaling.asked = self._scale_wanted = replicas
        if self._scaler is None or self._scaler.done():
            self._scaler = asyncio.get_running_loop().create_task(
                self._apply_scale(), name="manager-scale"
            )

    async def _apply_scale(self) -> None:
        while self._scale_wanted is not None and self._active:
            replicas, self._scale_wanted = self._scale_wanted, None
            try:
                await self._actuator.scale(replicas)
            except (ForbiddenError, ScalingNotSupportedError) as exc:
                scale_requested("refused")
                self.scaling.error = self.scaling.stopped = str(exc)
                log.error("autoscaling stops: %s", exc)
                self._scale_failed(str(exc), permanent=True)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # ActuatorError, or a transient one that outlived retries
                scale_requested("failed")
                self.scaling.error = str(exc) or repr(exc)
                log.warning("could not scale to %d encoders: %s", replicas, self.scaling.error)
                self._scale_failed(self.scaling.error, permanent=False)
                continue
            scale_requested("ok")
            self.scaling.applied, self.scaling.error = replicas, ""

    def _scale_failed(self, reason: str, *, permanent: bool) -> None:
        """Tell the core (it undrains whoever it emptied); its next tick replans."""
        if self._active:
            self._core.step(self.now(), ScaleFailed(reason, permanent))
            self._wake.set()

    def _build_documents(self) -> dict[str, AdjacencyDocument]:
        epoch = self._topology.epoch
        if epoch == 0:
            return {}
        segment_of: dict[str, SegmentInfo] = {}
        for segment in self._segments:
            for member in segment.members:
                segment_of[member] = segment
        # Without work to place, documents carry no placement: encoders do all their work.
        work: dict[str, list[str]] | None = None
        if self._work_units and self._placement_version:
            work = {node: [] for node in self._topology.adjacency}
            for unit, holders in self._placement.items():
                for holder in holders:
                    work.setdefault(holder, []).append(unit)
        documents = {}
        for node, neighbours in sorted(self._topology.adjacency.items()):
            mine = segment_of.get(node)
            documents[node] = AdjacencyDocument(
                epoch=epoch,
                encoder=node,
                neighbours={n: self._addresses[n] for n in neighbours},
                segment=mine.segment_id if mine else "",
                leader=mine.leader_id if mine else "",
                work=None if work is None else tuple(work.get(node, ())),
                work_version=self._placement_version if work is not None else 0,
            )
        return documents

    async def _flush(self) -> None:
        """Publish the newest documents (once), then tell the watchers."""
        async with self._publish_lock:
            if not self._dirty or not self._active:
                return
            self._dirty = False
            documents = self._documents
            topology = self._topology
            segments, segments_epoch = self._segments, self._published_epoch(self._segments_epoch)
            try:
                if documents:
                    # An empty mesh has no documents to write (an empty plan carries no epoch,
                    # so the actuator would take it for an old one); those of the encoders
                    # that left stay as they were: nobody reads them, and a returning encoder
                    # gets a plan of a higher epoch.
                    await self._actuator.publish(documents)
            except StalePlanError as exc:
                # Someone published a newer epoch: move above it and publish again next tick.
                self._base_epoch += exc.stored - topology.epoch + 1
                self._renumber()
                self._dirty = True
                log.error("%s; renumbering above it", exc)
                return
            except ActuatorError as exc:
                self._dirty = True
                log.error(
                    "could not publish epoch %d (retrying on the next tick): %s",
                    topology.epoch,
                    exc,
                )
                return
            self._published_segments, self._published_segments_epoch = segments, segments_epoch
            if self._published is None or self._published.epoch != topology.epoch:
                self._published = topology
                for watcher in self._watchers:
                    if watcher.queue.qsize() >= WATCH_QUEUE:
                        watcher.queue.get_nowait()
                        watcher.dropped += 1
                    watcher.queue.put_nowait(topology)

    def _renumber(self) -> None:
        """Restamp the current topology and documents after ``_base_epoch`` moved."""
        self._topology = replace(self._topology, epoch=self._published_epoch(self._core.epoch))
        self._documents = self._build_documents()
