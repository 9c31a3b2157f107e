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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.v1 import common_pb2, mesh_pb2

__all__ = [
    "NS_PER_S",
    "PPB",
    "US_PER_S",
    "esp_from_proto",
    "esp_to_proto",
    "kind_from_proto",
    "kind_to_proto",
    "ns_to_seconds",
    "ppb_to_rate",
    "proposal_from_proto",
    "proposal_to_proto",
    "rate_to_ppb",
    "seconds_to_ns",
    "seconds_to_us",
    "us_to_seconds",
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
    """Integer nanoseconds to the float second nearest to the exact value."""
    return ns / NS_PER_S


def seconds_to_us(seconds: float) -> int:
    """Seconds (float) to the nearest integer microsecond."""
    return _to_scaled_int(seconds, US_PER_S)


def us_to_seconds(us: int) -> float:
    """Integer microseconds to the float second nearest to the exact value."""
    return us / US_PER_S


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
        anchor_id=esp.anchor,
        anchor_hops=esp.anchor_hops,
        anchor_offset_ns=seconds_to_ns(esp.anchor_offset),
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
    )


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
