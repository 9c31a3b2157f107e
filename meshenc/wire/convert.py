"""Conversion between the core's message dataclasses and the protobuf messages of meshenc.v1.

The core counts time in float seconds (labels on the Unix epoch, durations as plain seconds)
and rates as plain ratios; the wire carries integers: nanoseconds, microseconds where the
field name says so, and parts per billion. Float to integer rounds to the nearest integer
(ties to even) of the exact product, so a dataclass survives a round trip through the wire
within half a unit of the wire field (0.5 ns for ``*_ns`` fields; exactly for labels of the
present era, where a float's own resolution is coarser than 1 ns). Integer to float is the
float nearest to the exact quotient.

These functions do not validate: a server validates a received message with
``meshenc.wire.validation`` before converting it. ``*_from_proto`` only raises for what
cannot be represented in the core at all (an unknown correction kind), and ``*_to_proto``
raises ``ValueError`` for a value that cannot be encoded in its wire field (a non-finite
time, a negative duration in an unsigned field, a value out of the field's integer range).

Trace context goes one way each: a received proposal or vote keeps the W3C headers it arrived
with in its ``trace_context``; an outgoing one is sent with the headers the caller passes
(the sender's own span), never with a ``trace_context`` it may carry from elsewhere.

The exceptions are the reports an encoder makes about itself (``health_to_proto``,
``encoder_state_to_proto``): their measurements may be missing (NaN) or absurd, so they go out
as 0 when unmeasured and clamped to the field's range otherwise, which keeps every report
valid whatever the engine measured.

Sections follow the proto files: units and common types, then the mesh (``EncoderMesh``), the
registry (``Registry``) and the manager (``MeshManager``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from operator import truediv

from meshenc.core.election import ElectionSnapshot
from meshenc.core.engine import EngineSnapshot
from meshenc.core.kademlia import Contact, id_from_bytes, id_to_bytes
from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.core.planner import (
    Escalated,
    EscalationJudged,
    EscalationVerdict,
    SegmentInfo,
)
from meshenc.core.planner.health import HealthReported, LinkSample
from meshenc.core.planner.load import MAX_UNITS_PER_ENCODER
from meshenc.core.timecode import FrameRate, SegmentLayout
from meshenc.v1 import common_pb2, manager_pb2, mesh_pb2, registry_pb2
from meshenc.wire.validation import (
    MAX_DEVIATION_NS,
    MAX_LATENCY_US,
    MAX_NEIGHBOURS,
    MAX_REASON_LENGTH,
    PROTOCOL_VERSION,
)

__all__ = [
    "NS_PER_S",
    "PPB",
    "US_PER_S",
    "clip_reason",
    "contact_from_proto",
    "contact_to_proto",
    "encoder_state_to_proto",
    "escalation_ack_to_proto",
    "escalation_from_proto",
    "escalation_to_proto",
    "esp_from_proto",
    "esp_to_proto",
    "frame_rate_to_proto",
    "health_from_proto",
    "health_to_proto",
    "kind_from_proto",
    "kind_to_proto",
    "ns_to_seconds",
    "ppb_to_rate",
    "proposal_from_proto",
    "proposal_to_proto",
    "rate_to_ppb",
    "seconds_to_ns",
    "seconds_to_us",
    "segments_to_proto",
    "size_from_proto",
    "topology_to_proto",
    "us_to_seconds",
    "verdict_to_proto",
    "vote_from_proto",
    "vote_to_proto",
]

NS_PER_S = 1_000_000_000
"""Nanoseconds per second."""
US_PER_S = 1_000_000
"""Microseconds per second."""
PPB = 1_000_000_000
"""Parts per billion in a ratio of 1."""


def _to_scaled_int(value: float, scale: int) -> int:
    """``value * scale`` rounded to the nearest integer (ties to even).

    ``value * scale`` in floats would lose whole units for large values (a Unix time in
    nanoseconds needs 61 bits). Splitting off the integer part is exact and leaves a product
    below ``scale`` whose float error is under 1e-7 of a unit, so the result is the nearest
    integer to the exact product unless that lies within 1e-7 of a half unit.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot encode non-finite value {value!r}")
    whole = math.floor(value)
    return whole * scale + round((value - whole) * scale)


def seconds_to_ns(seconds: float) -> int:
    """Seconds (float) to the nearest integer nanosecond."""
    return _to_scaled_int(seconds, NS_PER_S)


def ns_to_seconds(ns: int) -> float:
    """Integer nanoseconds to the float second nearest to the exact value.

    Python divides two ints with one rounding. Compiled (mypyc), ``ns / NS_PER_S`` would turn
    ``ns`` into a float first and lose the last bits of a Unix time in nanoseconds (61 bits);
    ``truediv`` is Python's division either way, at the cost of ``/`` in pure Python.
    """
    seconds: float = truediv(ns, NS_PER_S)
    return seconds


def seconds_to_us(seconds: float) -> int:
    """Seconds (float) to the nearest integer microsecond."""
    return _to_scaled_int(seconds, US_PER_S)


def us_to_seconds(us: int) -> float:
    """Integer microseconds to the float second nearest to the exact value."""
    return us / US_PER_S


def _ns_or_zero(seconds: float) -> int:
    """Seconds in wire nanoseconds, 0 when unknown (not finite)."""
    return seconds_to_ns(seconds) if math.isfinite(seconds) else 0


def _measured_ns(seconds: float) -> int:
    """A measured deviation in wire nanoseconds: 0 when unmeasured (not finite), otherwise
    clamped to +-``MAX_DEVIATION_NS``."""
    return max(-MAX_DEVIATION_NS, min(MAX_DEVIATION_NS, _ns_or_zero(seconds)))


def _measured_us(seconds: float) -> int:
    """A measured latency in wire microseconds: 0 when unmeasured (not finite) or not
    positive, otherwise at most ``MAX_LATENCY_US``."""
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return min(MAX_LATENCY_US, seconds_to_us(seconds))


def _measured_fraction(value: float) -> float:
    """A measured fraction within [0, 1]: 0 when unmeasured (not finite)."""
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def clip_reason(text: str) -> str:
    """Free text as a wire reason: one line, at most ``MAX_REASON_LENGTH`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 3] + "..."


def _measured_ppb(rate: float) -> int:
    """A measured rate in wire parts per billion: 0 when unmeasured (not finite)."""
    return rate_to_ppb(rate) if math.isfinite(rate) else 0


def rate_to_ppb(rate: float) -> int:
    """A dimensionless rate (seconds per second) to the nearest integer part per billion."""
    return _to_scaled_int(rate, PPB)


def ppb_to_rate(ppb: int) -> float:
    """Integer parts per billion to the nearest float ratio."""
    return ppb / PPB


_KIND_TO_PROTO: dict[CorrectionKind, common_pb2.CorrectionKind.ValueType] = {
    CorrectionKind.SLEW: common_pb2.CORRECTION_KIND_SLEW,
    CorrectionKind.DROP: common_pb2.CORRECTION_KIND_DROP,
    CorrectionKind.DUPLICATE: common_pb2.CORRECTION_KIND_DUPLICATE,
    CorrectionKind.PARAMETER: common_pb2.CORRECTION_KIND_PARAMETER,
}
_KIND_FROM_PROTO: dict[int, CorrectionKind] = {
    int(wire): kind for kind, wire in _KIND_TO_PROTO.items()
}


def kind_to_proto(kind: CorrectionKind) -> common_pb2.CorrectionKind.ValueType:
    """The wire enum value of a correction kind."""
    return _KIND_TO_PROTO[kind]


def kind_from_proto(value: int) -> CorrectionKind:
    """The correction kind of a wire enum value.

    Raises ``ValueError`` for CORRECTION_KIND_UNSPECIFIED and for values this version does
    not know (validation rejects both before conversion).
    """
    try:
        return _KIND_FROM_PROTO[value]
    except KeyError:
        raise ValueError(f"correction kind {value} has no meaning in the core") from None


# --- mesh -----------------------------------------------------------------------------------


def _trace_to_proto(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    # A repeated key keeps its last value, as a header map would.
    return dict(pairs)


def _trace_from_proto(entries: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Wire maps are unordered; sort so equal maps give equal dataclasses.
    return tuple(sorted(entries.items()))


def esp_to_proto(esp: EncodingStatePacket) -> mesh_pb2.EncodingStatePacket:
    """The wire form of an Encoding State Packet."""
    return mesh_pb2.EncodingStatePacket(
        sender_id=esp.sender,
        sequence=esp.sequence,
        topology_epoch=esp.topology_epoch,
        timecode=esp.timecode,
        frame_hash=esp.frame_hash,
        source_fingerprint=esp.fingerprint,
        label_unix_ns=seconds_to_ns(esp.label),
        correction_ns=seconds_to_ns(esp.correction),
        correction_rate_ppb=rate_to_ppb(esp.correction_rate),
        encode_latency_us=seconds_to_us(esp.encode_latency),
        rtt_us=seconds_to_us(esp.rtt),
        jitter_us=seconds_to_us(esp.jitter),
        confidence=esp.confidence,
        sent_unix_ns=seconds_to_ns(esp.sent_at),
        echo_sequence=esp.echo_sequence,
        echo_sent_unix_ns=seconds_to_ns(esp.echo_sent_at),
        echo_hold_ns=seconds_to_ns(esp.echo_hold),
        locked=esp.locked,
        params_segment=esp.params_segment,
        params_bitrate_kbps=esp.params_bitrate_kbps,
        params_width=_size_to_proto(esp.params_size)[0],
        params_height=_size_to_proto(esp.params_size)[1],
        anchor_id=esp.anchor,
        anchor_hops=esp.anchor_hops,
        anchor_offset_ns=seconds_to_ns(esp.anchor_offset),
        timeline=esp.timeline,
        merge_timeline=esp.merge_timeline,
        merge_hops=esp.merge_hops,
        merge_offset_ns=seconds_to_ns(esp.merge_offset),
        merge_witnesses=esp.merge_witnesses,
        merge_segment=esp.merge_segment,
        beacon_timeline=esp.beacon_timeline,
        beacon_hops=esp.beacon_hops,
        beacon_offset_ns=seconds_to_ns(esp.beacon_offset),
        beacon_origin=esp.beacon_origin,
        written_segment=esp.written_segment,
        segment_digest=esp.segment_digest,
        segment_vouched=esp.segment_vouched,
        segment_unit=esp.segment_unit,
    )


def esp_from_proto(msg: mesh_pb2.EncodingStatePacket) -> EncodingStatePacket:
    """The core form of a (validated) wire Encoding State Packet.

    ``confidence`` is a 32-bit float on the wire, so it comes back as the nearest float32
    value of what was sent.
    """
    return EncodingStatePacket(
        sender=msg.sender_id,
        sequence=msg.sequence,
        topology_epoch=msg.topology_epoch,
        timecode=msg.timecode,
        frame_hash=msg.frame_hash,
        fingerprint=msg.source_fingerprint,
        label=ns_to_seconds(msg.label_unix_ns),
        correction=ns_to_seconds(msg.correction_ns),
        correction_rate=ppb_to_rate(msg.correction_rate_ppb),
        encode_latency=us_to_seconds(msg.encode_latency_us),
        rtt=us_to_seconds(msg.rtt_us),
        jitter=us_to_seconds(msg.jitter_us),
        confidence=msg.confidence,
        sent_at=ns_to_seconds(msg.sent_unix_ns),
        echo_sequence=msg.echo_sequence,
        echo_sent_at=ns_to_seconds(msg.echo_sent_unix_ns),
        echo_hold=ns_to_seconds(msg.echo_hold_ns),
        locked=msg.locked,
        params_segment=msg.params_segment,
        params_bitrate_kbps=msg.params_bitrate_kbps,
        anchor=msg.anchor_id,
        anchor_hops=msg.anchor_hops,
        anchor_offset=ns_to_seconds(msg.anchor_offset_ns),
        timeline=msg.timeline,
        merge_timeline=msg.merge_timeline,
        merge_hops=msg.merge_hops,
        merge_offset=ns_to_seconds(msg.merge_offset_ns),
        merge_witnesses=tuple(msg.merge_witnesses),
        merge_segment=msg.merge_segment,
        beacon_timeline=msg.beacon_timeline,
        beacon_hops=msg.beacon_hops,
        beacon_offset=ns_to_seconds(msg.beacon_offset_ns),
        beacon_origin=msg.beacon_origin,
        written_segment=msg.written_segment,
        segment_digest=msg.segment_digest,
        segment_vouched=msg.segment_vouched,
        segment_unit=msg.segment_unit,
        params_size=size_from_proto(msg.params_width, msg.params_height),
    )


def size_from_proto(width: int, height: int) -> tuple[int, int] | None:
    """A (validated) picture size from the wire: both 0 is None (the started size, or in a
    request: the size kept)."""
    return (width, height) if width else None


def _size_to_proto(size: tuple[int, int] | None) -> tuple[int, int]:
    return (0, 0) if size is None else size


def proposal_to_proto(
    proposal: ResyncProposal, trace_context: Iterable[tuple[str, str]] = ()
) -> mesh_pb2.ResyncProposal:
    """The wire form of a resync proposal, sent with ``trace_context`` (W3C headers)."""
    return mesh_pb2.ResyncProposal(
        proposer_id=proposal.proposer,
        proposal_id=proposal.proposal_id,
        kind=kind_to_proto(proposal.kind),
        shift_ns=seconds_to_ns(proposal.shift),
        topology_epoch=proposal.topology_epoch,
        effective_segment=proposal.effective_segment,
        bitrate_kbps=proposal.bitrate_kbps,
        width=_size_to_proto(proposal.size)[0],
        height=_size_to_proto(proposal.size)[1],
        trace_context=_trace_to_proto(trace_context),
    )


def proposal_from_proto(msg: mesh_pb2.ResyncProposal) -> ResyncProposal:
    """The core form of a (validated) wire resync proposal, with the context it carried."""
    return ResyncProposal(
        proposer=msg.proposer_id,
        proposal_id=msg.proposal_id,
        kind=kind_from_proto(msg.kind),
        shift=ns_to_seconds(msg.shift_ns),
        topology_epoch=msg.topology_epoch,
        effective_segment=msg.effective_segment,
        bitrate_kbps=msg.bitrate_kbps,
        trace_context=_trace_from_proto(msg.trace_context),
        size=size_from_proto(msg.width, msg.height),
    )


def vote_to_proto(
    vote: ResyncVote, trace_context: Iterable[tuple[str, str]] = ()
) -> mesh_pb2.ResyncVote:
    """The wire form of a resync vote, sent with ``trace_context`` (W3C headers)."""
    return mesh_pb2.ResyncVote(
        proposer_id=vote.proposer,
        proposal_id=vote.proposal_id,
        voter_id=vote.voter,
        approve=vote.approve,
        estimated_deviation_ns=seconds_to_ns(vote.estimated_deviation),
        reason=vote.reason,
        trace_context=_trace_to_proto(trace_context),
    )


def vote_from_proto(msg: mesh_pb2.ResyncVote) -> ResyncVote:
    """The core form of a (validated) wire resync vote, with the context it carried."""
    return ResyncVote(
        proposer=msg.proposer_id,
        proposal_id=msg.proposal_id,
        voter=msg.voter_id,
        approve=msg.approve,
        estimated_deviation=ns_to_seconds(msg.estimated_deviation_ns),
        reason=msg.reason,
        trace_context=_trace_from_proto(msg.trace_context),
    )


def frame_rate_to_proto(rate: FrameRate) -> common_pb2.FrameRate:
    """The wire form of a frame rate (an exact ratio on both sides)."""
    return common_pb2.FrameRate(num=rate.num, den=rate.den)


def encoder_state_to_proto(
    snap: EngineSnapshot,
    election: ElectionSnapshot | None = None,
    *,
    frame_rate: FrameRate,
    segment_layout: SegmentLayout,
    segment: str,
    topology_epoch: int,
    input_status: mesh_pb2.InputStatus,
    last_esp: EncodingStatePacket | None,
    connected: Callable[[str], bool],
    injected_drift_ppm: float,
    injected_offset_ms: float,
    injected_jitter_ms: float,
    taken_unix_ns: int,
    stalls: int,
    unvouched_segments: int,
    unconfirmed_segments: int,
    restored_segments: int,
    started_size: tuple[int, int],
) -> mesh_pb2.EncoderState:
    """The GetState answer: an engine snapshot and the encoder's settings, as an operator
    sees them.

    Args:
        snap: the engine's snapshot.
        election: the segment election's view (None: no election runs).
        frame_rate, segment_layout: the encoder's timeline (as its Hello says), which gives
            the GOP length and the segment number of the timecode.
        segment: the segment (group of encoders) it is in now.
        topology_epoch: the manager's epoch it works in (0: none yet).
        input_status: its media input, already in wire form.
        last_esp: the newest ESP it sent, if any.
        connected: whether the Exchange stream with a neighbour is up.
        injected_drift_ppm, injected_offset_ms, injected_jitter_ms: the test faults it runs.
        taken_unix_ns: when the snapshot was taken, ns since the Unix epoch.
        stalls: the stalls the encoder has seen (the snapshot says whether it is unproven).
        unvouched_segments, unconfirmed_segments: segment files not published under the
            shared name, and of those the ones no neighbour confirmed in time.
        restored_segments: segment files written aside that took the shared name after all
            (a vouched neighbour wrote the same bytes).
        started_size: the picture size it was started with (the agreed size until a change).
    """
    state = mesh_pb2.EncoderState(
        encoder_id=snap.node_id,
        protocol_version=PROTOCOL_VERSION,
        frame_rate=frame_rate_to_proto(frame_rate),
        gop_length=segment_layout.gop,
        correction_ns=_ns_or_zero(snap.correction),
        correction_rate_ppb=_measured_ppb(snap.correction_rate),
        confidence=snap.confidence,
        taken_unix_ns=taken_unix_ns,
        timecode=snap.timecode if snap.timecode is not None else 0,
        segment_number=(
            segment_layout.segment_of(snap.timecode) if snap.timecode is not None else 0
        ),
        locked=snap.locked,
        strategy=snap.strategy.value,
        error_ns=_ns_or_zero(snap.error),
        predicted_error_ns=_ns_or_zero(snap.predicted_error),
        escalations=snap.escalations,
        open_proposals=snap.open_proposals,
        injected_drift_ppm=injected_drift_ppm,
        injected_offset_ms=injected_offset_ms,
        injected_jitter_ms=injected_jitter_ms,
        bitrate_kbps=snap.parameters.bitrate_kbps,
        width=(snap.parameters.size or started_size)[0],
        height=(snap.parameters.size or started_size)[1],
        segment_id=segment,
        topology_epoch=topology_epoch,
        vouches=snap.vouches,
        unproven=snap.unproven,
        stalls=stalls,
        unvouched_segments=unvouched_segments,
        unconfirmed_segments=unconfirmed_segments,
        restored_segments=restored_segments,
    )
    state.input.CopyFrom(input_status)
    if election is not None:
        state.leader_id = election.leader or ""
        state.leader_token = election.token
        state.coordination_degraded = election.degraded
    if snap.pending_change is not None:
        state.pending_parameters.effective_segment = snap.pending_change.effective_segment
        state.pending_parameters.bitrate_kbps = snap.pending_change.bitrate_kbps
        size = snap.pending_change.size or started_size
        state.pending_parameters.width, state.pending_parameters.height = size
    for kind, count in snap.corrections.items():
        state.corrections[kind.value] = count
    for event in snap.recent_corrections:
        state.recent_corrections.add(
            at_ns=_ns_or_zero(event.at),
            kind=kind_to_proto(event.kind),
            shift_ns=_ns_or_zero(event.shift),
            correction_rate_ppb=_measured_ppb(event.new_rate),
            lead_ns=_ns_or_zero(event.lead),
            proposal_id=event.proposal_id,
        )
    if last_esp is not None:
        state.last_esp.CopyFrom(esp_to_proto(last_esp))
    for n in snap.neighbours:
        state.neighbours.add(
            neighbour_id=n.neighbour,
            connected=connected(n.neighbour),
            measured_deviation_ns=_measured_ns(n.deviation),
            predicted_deviation_ns=_measured_ns(n.predicted),
            deviation_rate_ppb=_measured_ppb(n.rate),
            rtt_us=_measured_us(n.rtt),
            jitter_us=_measured_us(n.jitter),
            trusted=n.trusted,
            locked=n.locked,
            confidence=n.confidence,
            loss=n.loss,
            crossing_in_ms=-1.0 if math.isnan(n.crossing_in) else n.crossing_in * 1000.0,
            reported_encode_latency_us=_measured_us(n.reported_encode_latency),
            reported_rtt_us=_measured_us(n.reported_rtt),
            reported_jitter_us=_measured_us(n.reported_jitter),
            silent=n.silent,
        )
    return state


# --- registry -------------------------------------------------------------------------------


def contact_to_proto(contact: Contact) -> registry_pb2.NodeInfo:
    """The wire form of a registry node: its id as 20 big-endian bytes, and its address."""
    return registry_pb2.NodeInfo(node_id=id_to_bytes(contact.node_id), address=contact.address)


def contact_from_proto(info: registry_pb2.NodeInfo) -> Contact:
    """The core form of a (validated) wire registry node."""
    return Contact(id_from_bytes(info.node_id), info.address)


# --- manager --------------------------------------------------------------------------------


def health_to_proto(
    encoder_id: str,
    snapshot: EngineSnapshot,
    *,
    topology_epoch: int,
    cpu_load: float,
    encode_latency: float,
    segment: str,
    connected: Callable[[str], bool],
    sent_unix_ns: int,
    units: Iterable[str] = (),
) -> manager_pb2.HealthReport:
    """One health report from the engine's snapshot and the link state, valid by the wire's
    rules whatever the measurements are (unmeasured values go out as 0).

    At most ``MAX_NEIGHBOURS`` links are reported, never one to the encoder itself; the
    ``units`` served, sorted, at most ``MAX_UNITS_PER_ENCODER``.
    """
    counts = snapshot.corrections
    return manager_pb2.HealthReport(
        encoder_id=encoder_id,
        sent_unix_ns=sent_unix_ns,
        confidence=_measured_fraction(snapshot.confidence),
        cpu_load=_measured_fraction(cpu_load),
        encode_latency_us=_measured_us(encode_latency),
        timecode=snapshot.timecode or 0,
        segment_id=segment,
        topology_epoch=topology_epoch,
        links=[
            manager_pb2.LinkStats(
                neighbour_id=n.neighbour,
                rtt_us=_measured_us(n.rtt),
                jitter_us=_measured_us(n.jitter),
                measured_deviation_ns=_measured_ns(n.deviation),
                predicted_deviation_ns=_measured_ns(n.predicted),
                connected=connected(n.neighbour),
            )
            for n in snapshot.neighbours[:MAX_NEIGHBOURS]
            if n.neighbour != encoder_id
        ],
        corrections=manager_pb2.CorrectionCounters(
            slews=counts.get(CorrectionKind.SLEW, 0),
            drops=counts.get(CorrectionKind.DROP, 0),
            duplicates=counts.get(CorrectionKind.DUPLICATE, 0),
            parameter_changes=counts.get(CorrectionKind.PARAMETER, 0),
        ),
        units=sorted(set(units))[:MAX_UNITS_PER_ENCODER],
    )


def health_from_proto(msg: manager_pb2.HealthReport, topology_epoch: int) -> HealthReported:
    """The core form of a (validated) health report.

    ``topology_epoch`` is the report's epoch already mapped to the core's numbering; a link
    whose ``connected`` is unset (a reporter that predates the field) counts as up.
    """
    return HealthReported(
        encoder_id=msg.encoder_id,
        confidence=msg.confidence,
        load=msg.cpu_load,
        encode_latency=us_to_seconds(msg.encode_latency_us),
        topology_epoch=topology_epoch,
        links=tuple(
            LinkSample(
                neighbour_id=link.neighbour_id,
                rtt=us_to_seconds(link.rtt_us),
                jitter=us_to_seconds(link.jitter_us),
                connected=link.connected if link.HasField("connected") else True,
            )
            for link in msg.links
        ),
        units=frozenset(msg.units),
    )


def escalation_to_proto(
    proposal: ResyncProposal,
    votes: Iterable[ResyncVote],
    neighbour_count: int,
    sent_unix_ns: int,
) -> manager_pb2.Escalation:
    """The Escalate request for the proposer's ``proposal`` that its neighbours did not
    approve: at most ``MAX_NEIGHBOURS`` of its ``votes``, and a neighbour count the wire
    accepts (at least the votes sent, at most ``MAX_NEIGHBOURS``). Each vote goes with the trace
    context it arrived with, so the manager's verdict joins the resync's trace."""
    wire_votes = [vote_to_proto(v, v.trace_context) for v in votes][:MAX_NEIGHBOURS]
    return manager_pb2.Escalation(
        encoder_id=proposal.proposer,
        proposal=proposal_to_proto(proposal),
        votes=wire_votes,
        neighbour_count=min(MAX_NEIGHBOURS, max(neighbour_count, len(wire_votes))),
        sent_unix_ns=sent_unix_ns,
    )


def escalation_from_proto(msg: manager_pb2.Escalation) -> Escalated:
    """The core form of a (validated) escalation."""
    return Escalated(
        encoder_id=msg.encoder_id,
        proposal=proposal_from_proto(msg.proposal),
        votes=tuple(vote_from_proto(v) for v in msg.votes),
        neighbour_count=msg.neighbour_count,
    )


_VERDICT_TO_PROTO: dict[EscalationVerdict, manager_pb2.EscalationVerdict.ValueType] = {
    EscalationVerdict.APPLY: manager_pb2.ESCALATION_VERDICT_APPLY,
    EscalationVerdict.REJECT: manager_pb2.ESCALATION_VERDICT_REJECT,
    EscalationVerdict.DEFER: manager_pb2.ESCALATION_VERDICT_DEFER,
}


def verdict_to_proto(verdict: EscalationVerdict) -> manager_pb2.EscalationVerdict.ValueType:
    """The wire enum value of an escalation verdict."""
    return _VERDICT_TO_PROTO[verdict]


def escalation_ack_to_proto(
    judged: EscalationJudged, topology_epoch: int
) -> manager_pb2.EscalationAck:
    """The answer to an escalation; ``topology_epoch`` is the judged epoch as published
    (the core counts its own), and the reason is clipped to what the wire allows."""
    return manager_pb2.EscalationAck(
        verdict=verdict_to_proto(judged.verdict),
        reason=clip_reason(judged.reason),
        topology_epoch=topology_epoch,
    )


def topology_to_proto(epoch: int, adjacency: Mapping[str, Iterable[str]]) -> manager_pb2.Topology:
    """The wire form of a topology: one adjacency list per encoder, sorted by encoder id (the
    neighbours keep their order)."""
    return manager_pb2.Topology(
        epoch=epoch,
        adjacency=[
            manager_pb2.Adjacency(encoder_id=node, neighbour_ids=list(neighbours))
            for node, neighbours in sorted(adjacency.items())
        ],
    )


def segments_to_proto(
    segments: Iterable[SegmentInfo], topology_epoch: int
) -> manager_pb2.SegmentMap:
    """The wire form of the segment map of (published) epoch ``topology_epoch``."""
    return manager_pb2.SegmentMap(
        segments=[
            manager_pb2.Segment(
                segment_id=s.segment_id,
                member_ids=list(s.members),
                leader_id=s.leader_id,
                leader_revision=s.leader_revision,
            )
            for s in segments
        ],
        topology_epoch=topology_epoch,
    )
