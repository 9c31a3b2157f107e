"""An encoder's spans and metrics: what the runtime and the mesh links report as they work.

Theory of operation
-------------------
Telemetry only observes: the runtime and the mesh links call :class:`EncoderTelemetry` (and
:func:`topology_changed`) at each point worth seeing, and nothing it returns changes what the
encoder decides or sends. The plumbing (tracer provider, registry, endpoint, trace-context
headers) is ``services.common.telemetry``'s.

One resync is one trace across encoders:

- ``resync`` (proposer, the root): from the proposal to its outcome; the prediction that
  triggered it (error and predicted error) and the verdict are attributes;
- ``resync.vote`` (each voter): a child of the proposal's context, which travels in the
  proposal; the vote carries the context of this span back;
- ``resync.vote.count`` (proposer): a child of the vote's span, when the vote is counted;
- ``resync.correct`` (proposer): the applied correction, a child of ``resync``.

The contexts travel on the wire only: the mesh links ask :meth:`EncoderTelemetry.proposal_trace`
and :meth:`EncoderTelemetry.vote_trace` for them as they convert a proposal or a vote for
sending, and ``meshenc.wire.convert`` puts what arrived in the received message's
``trace_context``, from which the spans here take their parent.

Other spans: ``topology.change`` (a neighbour set replaced), ``leader.change`` (a segment's
leader seen to change), ``segment.write`` (a segment muxed and written).

Event counts (segments, corrections, proposals, votes) are counted where they happen; state
(offsets, predictions, links, lock) is copied once a second from the event loop into an
immutable view that a collector reads at scrape time, so the scrape thread never touches the
engine.

Invariants: every hook is safe to call with tracing off; spans still open when an encoder
stops are ended (``abandoned``) by :meth:`EncoderTelemetry.close`, never leaked; at most
``max_open`` resyncs, and as many recent votes' contexts, are kept.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshenc.core.election import ElectionSnapshot, Role
from meshenc.core.engine import (
    Action,
    CorrectionApplied,
    EngineSnapshot,
    Escalate,
    LockInTurnedDown,
    NeighbourSnapshot,
    ParametersAgreed,
    SendProposal,
)
from meshenc.core.messages import ResyncProposal, ResyncVote
from meshenc.core.parameters import size_name
from meshenc.core.votes import Verdict
from meshenc.v1 import mesh_pb2
from services.common.telemetry import (
    TRACER,
    TraceContext,
    enable_metrics,
    extract_trace_context,
    has_span,
    inject_trace_context,
)

__all__ = ["EncoderTelemetry", "topology_changed"]

# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

ENCODER_SEGMENTS_WRITTEN: Final = Counter(
    "meshenc_segments_written_total", "Media segments written to disk.", registry=None
)
ENCODER_SEGMENT_WRITE_SECONDS: Final = Histogram(
    "meshenc_segment_write_seconds",
    "Time to mux and durably write one segment (and its playlist).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=None,
)
ENCODER_SEGMENT_BYTES: Final = Histogram(
    "meshenc_segment_size_bytes",
    "Size of each segment written.",
    buckets=(16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6),
    registry=None,
)
ENCODER_CORRECTIONS: Final = Counter(
    "meshenc_corrections_total",
    "Corrections applied, by kind (slew, drop, duplicate, parameter).",
    ["kind"],
    registry=None,
)
ENCODER_PROPOSALS: Final = Counter(
    "meshenc_resync_proposals_total",
    "Resync proposals this encoder put to its neighbours' vote, by kind.",
    ["kind"],
    registry=None,
)
ENCODER_OUTCOMES: Final = Counter(
    "meshenc_resync_outcomes_total",
    "How this encoder's proposals ended (accepted, rejected, expired).",
    ["verdict"],
    registry=None,
)
ENCODER_DECISION_SECONDS: Final = Histogram(
    "meshenc_resync_decision_seconds",
    "Time from a proposal to its outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
    registry=None,
)
ENCODER_VOTES_CAST: Final = Counter(
    "meshenc_resync_votes_cast_total",
    "Votes this encoder cast on neighbours' proposals, by verdict (approve, reject).",
    ["verdict"],
    registry=None,
)
ENCODER_VOTES_RECEIVED: Final = Counter(
    "meshenc_resync_votes_received_total",
    "Votes received on this encoder's proposals, by verdict (approve, reject).",
    ["verdict"],
    registry=None,
)
ENCODER_LEADER_CHANGES: Final = Counter(
    "meshenc_leader_changes_total",
    "Times this encoder saw its segment's leader change (including to or from none).",
    registry=None,
)
ENCODER_TOPOLOGY_CHANGES: Final = Counter(
    "meshenc_topology_changes_total",
    "Times this encoder's neighbour set changed (the first set included).",
    registry=None,
)
ENCODER_LINK_CHANGES: Final = Counter(
    "meshenc_link_changes_total",
    "Exchange streams with neighbours that came up or went down, by state.",
    ["state"],
    registry=None,
)


@dataclass(frozen=True, slots=True)
class _EncoderView:
    """The encoder's state, copied on the event loop for the scrape thread to read."""

    snapshot: EngineSnapshot
    connected: frozenset[str]
    per_neighbour_counts: Mapping[str, Mapping[str, int]]
    frames: int
    skipped: int
    #: The runtime's stalls and segment files not published under the shared name.
    stalls: int
    unvouched: int
    unconfirmed: int
    restored: int
    cpu_load: float
    encode_latency: float
    leader: bool | None
    #: The live input (None: the encoder did not say).
    source: mesh_pb2.InputStatus | None = None
    #: What the encoder's publisher did for each origin it PUTs to (none: not publishing).
    origins: tuple[_Origin, ...] = ()


class _Origin(Protocol):
    """What the scrape reads of one origin's publishing counters
    (``services.encoder.media.publish.OriginStats``)."""

    @property
    def url(self) -> str: ...

    @property
    def put(self) -> int: ...

    @property
    def failed(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def retries(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def reachable(self) -> bool: ...


#: Per-origin publishing series: name, help, the value of one origin's counters.
_ORIGIN_SERIES: Final[tuple[tuple[str, str, Callable[[_Origin], float]], ...]] = (
    ("meshenc_origin_puts_total", "Objects PUT to the origin and accepted.", lambda o: o.put),
    (
        "meshenc_origin_put_failures_total",
        "Objects given up on after their tries (the origin refused them or was unreachable).",
        lambda o: o.failed,
    ),
    (
        "meshenc_origin_dropped_total",
        "Objects pushed out of a full queue without a try.",
        lambda o: o.dropped,
    ),
    (
        "meshenc_origin_retries_total",
        "Tries after the first, over all objects.",
        lambda o: o.retries,
    ),
    ("meshenc_origin_queued", "Objects waiting to be PUT now.", lambda o: o.queued),
    (
        "meshenc_origin_reachable",
        "1 while the origin answers; 0 from a try that could not reach it until it does again.",
        lambda o: float(o.reachable),
    ),
)


_NEIGHBOUR_GAUGES: Final[tuple[tuple[str, str, Callable[[NeighbourSnapshot], float]], ...]] = (
    (
        "meshenc_neighbour_offset_seconds",
        "Estimated label deviation from each neighbour (ours minus theirs), now.",
        lambda n: n.deviation,
    ),
    (
        "meshenc_neighbour_predicted_offset_seconds",
        "The Kalman filter's prediction of that deviation one horizon ahead.",
        lambda n: n.predicted,
    ),
    (
        "meshenc_neighbour_offset_rate_ratio",
        "Rate of change of that deviation (seconds per second).",
        lambda n: n.rate,
    ),
    (
        "meshenc_neighbour_rtt_seconds",
        "ESP round-trip time to each neighbour (smoothed, from echoed ESPs).",
        lambda n: n.rtt,
    ),
    (
        "meshenc_neighbour_jitter_seconds",
        "ESP arrival jitter from each neighbour.",
        lambda n: n.jitter,
    ),
    (
        "meshenc_neighbour_esp_loss_ratio",
        "Share of each neighbour's ESPs that never arrived (sequence gaps).",
        lambda n: n.loss,
    ),
    (
        "meshenc_neighbour_trusted",
        "1 while a neighbour counts towards the timeline, 0 while it is suspect.",
        lambda n: float(n.trusted),
    ),
    (
        "meshenc_neighbour_silent",
        "1 while nothing has been heard from a neighbour for longer than its word is kept.",
        lambda n: float(n.silent),
    ),
)
_NEIGHBOUR_COUNTERS: Final = {
    "meshenc_mesh_messages_sent_total": "Messages written to each neighbour.",
    "meshenc_mesh_writes_total": (
        "gRPC messages written to each neighbour: fewer than the messages where batches carried"
        " several."
    ),
    "meshenc_mesh_messages_received_total": "Valid messages received from each neighbour.",
    "meshenc_esp_dropped_total": "ESPs to each neighbour dropped (queue full or no live stream).",
    "meshenc_mesh_control_dropped_total": (
        "Proposals and votes to each neighbour refused or lost with their link."
    ),
}
_ENCODER_GAUGES: Final[tuple[tuple[str, str, Callable[[_EncoderView], float | None]], ...]] = (
    ("meshenc_locked", "1 while this encoder holds a lock.", lambda v: float(v.snapshot.locked)),
    (
        "meshenc_vouches",
        "1 while this encoder vouches for its output (its segments go out under the shared name).",
        lambda v: float(v.snapshot.vouches),
    ),
    (
        "meshenc_unproven",
        "1 from a stall of this process until its frame hashes equal a neighbour's again.",
        lambda v: float(v.snapshot.unproven),
    ),
    (
        "meshenc_stalls_total",
        "Times this process stood still for longer than it keeps a neighbour's word.",
        lambda v: float(v.stalls),
    ),
    (
        "meshenc_segments_unvouched_total",
        "Segment files written that did not go out under the shared name.",
        lambda v: float(v.unvouched),
    ),
    (
        "meshenc_segments_unconfirmed_total",
        "Of those, the ones vouched for whose frame hashes no neighbour confirmed in time.",
        lambda v: float(v.unconfirmed),
    ),
    (
        "meshenc_segments_restored_total",
        "Segment files written aside that took the shared name after all: a neighbour that "
        "vouched for the segment wrote the same bytes.",
        lambda v: float(v.restored),
    ),
    (
        "meshenc_timeline_error_seconds",
        "Distance of this encoder's label from the timeline its neighbours agree on.",
        lambda v: v.snapshot.error,
    ),
    (
        "meshenc_predicted_error_seconds",
        "That distance, predicted one horizon ahead.",
        lambda v: v.snapshot.predicted_error,
    ),
    (
        "meshenc_correction_seconds",
        "The correction term added to this encoder's clock.",
        lambda v: v.snapshot.correction,
    ),
    (
        "meshenc_correction_rate_ratio",
        "The rate at which the correction term slews (seconds per second).",
        lambda v: v.snapshot.correction_rate,
    ),
    (
        "meshenc_confidence_ratio",
        "This encoder's confidence score (0..1).",
        lambda v: v.snapshot.confidence,
    ),
    (
        "meshenc_bitrate_kbps",
        "Bitrate of the segment being encoded.",
        lambda v: float(v.snapshot.parameters.bitrate_kbps),
    ),
    ("meshenc_cpu_load_ratio", "Process CPU time over wall time.", lambda v: v.cpu_load),
    (
        "meshenc_encode_latency_seconds",
        "Mean time to encode one frame over the last second.",
        lambda v: v.encode_latency,
    ),
    (
        "meshenc_leader",
        "1 while this encoder leads its segment (absent without leader election).",
        lambda v: None if v.leader is None else float(v.leader),
    ),
    ("meshenc_frames_total", "Source frames captured.", lambda v: float(v.frames)),
    (
        "meshenc_frames_skipped_total",
        "Source frames skipped after falling too far behind.",
        lambda v: float(v.skipped),
    ),
    (
        "meshenc_input_live",
        "1 while pictures arrive from the input; 0 while waiting for it or filling in a loss.",
        lambda v: None if v.source is None else float(v.source.state == "live"),
    ),
    (
        "meshenc_input_losses_total",
        "Times the input stopped for longer than the configured number of frame periods.",
        lambda v: None if v.source is None else float(v.source.losses),
    ),
    (
        "meshenc_input_errors_total",
        "Corrupt input packets and undecodable pictures skipped.",
        lambda v: (
            None if v.source is None else float(v.source.corrupt_packets + v.source.decode_errors)
        ),
    ),
    (
        "meshenc_input_datagrams_dropped_total",
        "Datagrams of a udp:// or rtp:// input the kernel dropped: the socket's receive buffer"
        " was full (raise net.core.rmem_max).",
        lambda v: None if v.source is None else float(v.source.datagrams_dropped),
    ),
    (
        "meshenc_input_arrival_jitter_seconds",
        "Arrival jitter against the source's own timestamps (RFC 3550 interarrival jitter).",
        lambda v: None if v.source is None else v.source.arrival_jitter_us / 1e6,
    ),
)


class _EncoderCollector:
    """Turns the latest :class:`_EncoderView` into metric families at scrape time.

    Values that are not finite (an estimate not made yet) are left out rather than exported
    as NaN.
    """

    def __init__(self) -> None:
        self.view: _EncoderView | None = None

    def describe(self) -> list[Metric]:
        return []  # which series exist depends on the view; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        view = self.view  # one read: the loop replaces the view whole, never mutates it
        if view is None:
            return
        for name, doc, value_of in _NEIGHBOUR_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["neighbour"])
            for neighbour in view.snapshot.neighbours:
                if math.isfinite(value := value_of(neighbour)):
                    gauge.add_metric([neighbour.neighbour], value)
            yield gauge
        connected = GaugeMetricFamily(
            "meshenc_neighbour_connected",
            "1 while an Exchange stream with the neighbour is up.",
            labels=["neighbour"],
        )
        for neighbour in view.snapshot.neighbours:
            connected.add_metric(
                [neighbour.neighbour], float(neighbour.neighbour in view.connected)
            )
        yield connected
        for name, doc in _NEIGHBOUR_COUNTERS.items():
            counter = CounterMetricFamily(name, doc, labels=["neighbour"])
            for peer, count in sorted(view.per_neighbour_counts[name].items()):
                counter.add_metric([peer], float(count))
            yield counter
        for name, doc, read in _ENCODER_GAUGES:
            reading = read(view)
            if reading is None:
                continue
            family: GaugeMetricFamily | CounterMetricFamily = (
                CounterMetricFamily(name, doc)
                if name.endswith("_total")
                else GaugeMetricFamily(name, doc)
            )
            if math.isfinite(reading):
                family.add_metric([], reading)
            yield family
        yield from _origin_families(view.origins)


def _origin_families(origins: tuple[_Origin, ...]) -> Iterator[Metric]:
    """The publishing series, one per origin URL (none while the encoder publishes nothing)."""
    for name, doc, count in _ORIGIN_SERIES if origins else ():
        series: GaugeMetricFamily | CounterMetricFamily = (
            CounterMetricFamily(name, doc, labels=["origin"])
            if name.endswith("_total")
            else GaugeMetricFamily(name, doc, labels=["origin"])
        )
        for origin in origins:
            series.add_metric([origin.url], float(count(origin)))
        yield series


_ENCODER_COLLECTOR: Final = _EncoderCollector()
_ENCODER_METRICS: Final[tuple[Collector, ...]] = (
    ENCODER_SEGMENTS_WRITTEN,
    ENCODER_SEGMENT_WRITE_SECONDS,
    ENCODER_SEGMENT_BYTES,
    ENCODER_CORRECTIONS,
    ENCODER_PROPOSALS,
    ENCODER_OUTCOMES,
    ENCODER_DECISION_SECONDS,
    ENCODER_VOTES_CAST,
    ENCODER_VOTES_RECEIVED,
    ENCODER_LEADER_CHANGES,
    ENCODER_TOPOLOGY_CHANGES,
    ENCODER_LINK_CHANGES,
    _ENCODER_COLLECTOR,
)


# ---------------------------------------------------------------------------------------------
# Spans and hooks
# ---------------------------------------------------------------------------------------------


class _Stats(Protocol):
    """What :meth:`EncoderTelemetry.observe` reads of the runtime's counters."""

    @property
    def frames(self) -> int: ...

    @property
    def skipped(self) -> int: ...

    @property
    def stalls(self) -> int: ...

    @property
    def unvouched(self) -> int: ...

    @property
    def unconfirmed(self) -> int: ...

    @property
    def restored(self) -> int: ...


class _Links(Protocol):
    """What :meth:`EncoderTelemetry.observe` reads of the mesh links."""

    @property
    def sent(self) -> Mapping[str, int]: ...

    @property
    def writes(self) -> Mapping[str, int]: ...

    @property
    def received(self) -> Mapping[str, int]: ...

    @property
    def dropped_esps(self) -> Mapping[str, int]: ...

    @property
    def dropped_control(self) -> Mapping[str, int]: ...

    @property
    def peers(self) -> frozenset[str]: ...

    def connected(self, peer_id: str) -> bool: ...


@dataclass(slots=True)
class _OpenResync:
    span: Span
    context: otel_context.Context
    started: float


class EncoderTelemetry:
    """One encoder's spans and metrics; the runtime calls it at each point worth seeing.

    Args:
        node_id: the encoder's id (an attribute of every span).
        snapshot: returns the engine's snapshot now (read when a proposal is sent and once a
            second by :meth:`observe`).
        tracer: where spans go; default, the process's provider.
        max_open: resyncs tracked at once; the oldest is ended as ``abandoned`` beyond it.
            As many of the latest votes' contexts are kept for :meth:`vote_trace`.
    """

    def __init__(
        self,
        node_id: str,
        snapshot: Callable[[], EngineSnapshot],
        *,
        tracer: Tracer | None = None,
        max_open: int = 64,
    ) -> None:
        self.node_id = node_id
        self._snapshot = snapshot
        self._tracer = tracer or TRACER
        self._max_open = max_open
        self._open: dict[int, _OpenResync] = {}
        #: The context of each recent ``resync.vote`` span, by (proposer, proposal id).
        self._votes: dict[tuple[str, int], TraceContext] = {}
        self._leader: str | None = None
        self._leads: bool | None = None
        enable_metrics("encoder", *_ENCODER_METRICS)

    # -- resync: the proposer's side ----------------------------------------------------------

    def on_action(self, action: Action) -> None:
        """Record an engine action (a proposal sent opens its ``resync`` span)."""
        if isinstance(action, SendProposal):
            self._proposed(action.proposal, action.to)
        elif isinstance(action, CorrectionApplied):
            ENCODER_CORRECTIONS.labels(action.kind.value).inc()
            self._correct(
                action.proposal_id,
                {
                    "meshenc.correction.kind": action.kind.value,
                    "meshenc.correction.shift_seconds": action.shift,
                    "meshenc.correction.new_rate": action.new_rate,
                    "meshenc.correction.lead_seconds": action.lead,
                },
            )
        elif isinstance(action, ParametersAgreed):
            ENCODER_CORRECTIONS.labels("parameter").inc()
            self._correct(
                action.proposal_id,
                {
                    "meshenc.correction.kind": "parameter",
                    "meshenc.parameters.bitrate_kbps": action.change.bitrate_kbps,
                    "meshenc.parameters.size": _size_attribute(action.change.size),
                    "meshenc.parameters.effective_segment": action.change.effective_segment,
                },
            )
        elif isinstance(action, Escalate | LockInTurnedDown):
            outcome = action.outcome
            self._finish(
                outcome.proposal.proposal_id,
                outcome.verdict.value,
                {
                    "meshenc.resync.approvals": sorted(outcome.approvals),
                    "meshenc.resync.rejections": sorted(outcome.rejections),
                },
            )

    def proposal_trace(self, proposal_id: int) -> TraceContext:
        """The trace context one of this encoder's proposals goes out with: its ``resync``
        span's; () once the resync has ended or when it was never traced."""
        resync = self._open.get(proposal_id)
        return () if resync is None else inject_trace_context(resync.context)

    def _proposed(self, proposal: ResyncProposal, to: tuple[str, ...]) -> None:
        ENCODER_PROPOSALS.labels(proposal.kind.value).inc()
        snap = self._snapshot()
        span = self._tracer.start_span(
            "resync",
            context=otel_context.Context(),  # a root: not part of the stream it may arrive on
            kind=SpanKind.INTERNAL,
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.resync.proposer": proposal.proposer,
                "meshenc.resync.proposal_id": proposal.proposal_id,
                "meshenc.resync.kind": proposal.kind.value,
                "meshenc.resync.shift_seconds": proposal.shift,
                "meshenc.resync.electorate": list(to),
                "meshenc.resync.error_seconds": snap.error,
                "meshenc.resync.predicted_error_seconds": snap.predicted_error,
                "meshenc.resync.locked": snap.locked,
                "meshenc.topology.epoch": proposal.topology_epoch,
            },
        )
        if proposal.bitrate_kbps:
            span.set_attribute("meshenc.parameters.bitrate_kbps", proposal.bitrate_kbps)
            span.set_attribute("meshenc.parameters.size", _size_attribute(proposal.size))
            span.set_attribute("meshenc.parameters.effective_segment", proposal.effective_segment)
        ctx = trace.set_span_in_context(span, otel_context.Context())
        stale = self._open.pop(proposal.proposal_id, None)
        if stale is not None:  # an id reused while still tracked: cannot happen in the engine
            stale.span.set_attribute("meshenc.resync.verdict", "abandoned")
            stale.span.end()
        self._open[proposal.proposal_id] = _OpenResync(span, ctx, time.perf_counter())
        while len(self._open) > self._max_open:
            oldest = next(iter(self._open))
            self._finish(oldest, "abandoned", {})

    def vote_received(self, vote: ResyncVote) -> None:
        """A neighbour's vote on one of this encoder's proposals arrived."""
        verdict = "approve" if vote.approve else "reject"
        ENCODER_VOTES_RECEIVED.labels(verdict).inc()
        resync = self._open.get(vote.proposal_id)
        if resync is None or vote.proposer != self.node_id:
            return
        parent = extract_trace_context(vote.trace_context)
        span = self._tracer.start_span(
            "resync.vote.count",
            context=parent if has_span(parent) else resync.context,
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.resync.proposal_id": vote.proposal_id,
                "meshenc.resync.voter": vote.voter,
                "meshenc.resync.approve": vote.approve,
                "meshenc.resync.reason": vote.reason,
            },
        )
        span.end()

    def _correct(self, proposal_id: int, attributes: dict[str, Any]) -> None:
        resync = self._open.get(proposal_id) if proposal_id else None
        if resync is None:
            return  # a correction small enough to need no vote: counted, not traced
        span = self._tracer.start_span(
            "resync.correct",
            context=resync.context,
            attributes={"meshenc.node": self.node_id, **attributes},
        )
        span.end()
        self._finish(proposal_id, Verdict.ACCEPTED.value, {})

    def _finish(self, proposal_id: int, verdict: str, attributes: dict[str, Any]) -> None:
        if verdict != "abandoned":
            ENCODER_OUTCOMES.labels(verdict).inc()
        resync = self._open.pop(proposal_id, None)
        if resync is None:
            return
        if verdict != "abandoned":
            ENCODER_DECISION_SECONDS.observe(time.perf_counter() - resync.started)
        span = resync.span
        span.set_attributes({"meshenc.resync.verdict": verdict, **attributes})
        if verdict == Verdict.EXPIRED.value:
            span.set_status(Status(StatusCode.ERROR, "no majority answered in time"))
        span.end()

    # -- resync: the voter's side -------------------------------------------------------------

    def vote_cast(self, proposal: ResyncProposal, vote: ResyncVote) -> None:
        """This encoder voted on a neighbour's proposal (received with its trace context)."""
        ENCODER_VOTES_CAST.labels("approve" if vote.approve else "reject").inc()
        span = self._tracer.start_span(
            "resync.vote",
            context=extract_trace_context(proposal.trace_context),
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.resync.proposer": proposal.proposer,
                "meshenc.resync.proposal_id": proposal.proposal_id,
                "meshenc.resync.kind": proposal.kind.value,
                "meshenc.resync.shift_seconds": proposal.shift,
                "meshenc.resync.approve": vote.approve,
                "meshenc.resync.estimated_deviation_seconds": vote.estimated_deviation,
                "meshenc.resync.reason": vote.reason,
            },
        )
        span.end()
        key = (vote.proposer, vote.proposal_id)
        self._votes.pop(key, None)  # re-inserted: the newest is last
        ctx = trace.set_span_in_context(span, otel_context.Context())
        self._votes[key] = inject_trace_context(ctx)
        while len(self._votes) > self._max_open:
            del self._votes[next(iter(self._votes))]

    def vote_trace(self, vote: ResyncVote) -> TraceContext:
        """The trace context this encoder's ``vote`` goes out with: its ``resync.vote`` span's;
        () when the vote is not among the latest ``max_open`` cast."""
        return self._votes.get((vote.proposer, vote.proposal_id), ())

    # -- other events -------------------------------------------------------------------------

    def leader_changed(self, election: ElectionSnapshot) -> None:
        """The election reported its state; a new leader is a span and a count."""
        self._leads = election.role is Role.LEADER
        if election.leader == self._leader:
            return
        previous, self._leader = self._leader, election.leader
        ENCODER_LEADER_CHANGES.inc()
        span = self._tracer.start_span(
            "leader.change",
            context=otel_context.Context(),
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.leader.previous": previous or "",
                "meshenc.leader.current": election.leader or "",
                "meshenc.leader.role": election.role.value,
                "meshenc.leader.token": election.token,
                "meshenc.leader.degraded": election.degraded,
            },
        )
        span.end()

    def link_changed(self, peer: str, up: bool) -> None:
        """An Exchange stream with ``peer`` came up or went down."""
        ENCODER_LINK_CHANGES.labels("up" if up else "down").inc()

    def segment_written(self, path: Path, started_ns: int, ended_ns: int) -> None:
        """A segment file appeared; the write took from ``started_ns`` to ``ended_ns``."""
        seconds = (ended_ns - started_ns) / 1e9
        ENCODER_SEGMENTS_WRITTEN.inc()
        ENCODER_SEGMENT_WRITE_SECONDS.observe(seconds)
        size = -1
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            ENCODER_SEGMENT_BYTES.observe(size)
        span = self._tracer.start_span(
            "segment.write",
            context=otel_context.Context(),
            start_time=started_ns,
            attributes={
                "meshenc.node": self.node_id,
                "meshenc.segment.file": path.name,
                "meshenc.segment.bytes": size,
            },
        )
        span.end(end_time=ended_ns)

    def observe(
        self,
        links: _Links,
        stats: _Stats,
        load: tuple[float, float],
        source: mesh_pb2.InputStatus | None = None,
        origins: Sequence[_Origin] = (),
    ) -> None:
        """Copy the encoder's state for the next scrapes (call about once a second)."""
        _ENCODER_COLLECTOR.view = _EncoderView(
            snapshot=self._snapshot(),
            connected=frozenset(p for p in links.peers if links.connected(p)),
            per_neighbour_counts={
                "meshenc_mesh_messages_sent_total": dict(links.sent),
                "meshenc_mesh_writes_total": dict(links.writes),
                "meshenc_mesh_messages_received_total": dict(links.received),
                "meshenc_esp_dropped_total": dict(links.dropped_esps),
                "meshenc_mesh_control_dropped_total": dict(links.dropped_control),
            },
            frames=stats.frames,
            skipped=stats.skipped,
            stalls=stats.stalls,
            unvouched=stats.unvouched,
            unconfirmed=stats.unconfirmed,
            restored=stats.restored,
            cpu_load=load[0],
            encode_latency=load[1],
            leader=self._leads,
            source=source,
            origins=tuple(origins),
        )

    def close(self) -> None:
        """End the resync spans still open (the encoder is stopping)."""
        for proposal_id in list(self._open):
            self._finish(proposal_id, "abandoned", {})


def topology_changed(node_id: str, before: frozenset[str], after: frozenset[str]) -> None:
    """An encoder's neighbour set changed from ``before`` to ``after`` (no-op if equal)."""
    if before == after:
        return
    ENCODER_TOPOLOGY_CHANGES.inc()
    span = TRACER.start_span(
        "topology.change",
        context=otel_context.Context(),
        attributes={
            "meshenc.node": node_id,
            "meshenc.topology.added": sorted(after - before),
            "meshenc.topology.removed": sorted(before - after),
            "meshenc.topology.neighbours": len(after),
        },
    )
    span.end()


def _size_attribute(size: tuple[int, int] | None) -> str:
    """A picture size as a span attribute: ``WxH``, or ``started`` for the started size."""
    return "started" if size is None else size_name(size)
