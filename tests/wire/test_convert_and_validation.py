"""The wire layer: conversion between core dataclasses and protobuf, and every wire rule."""

from __future__ import annotations

import dataclasses
import math
import pickle
import struct
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TypeVar

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

try:
    from meshenc.v1 import common_pb2, manager_pb2, mesh_pb2, registry_pb2
except ImportError as exc:  # only when the generated code is missing
    raise ImportError(
        "meshenc.v1 (the code generated from proto/meshenc/v1) is missing: run `make proto`"
    ) from exc

from meshenc.core.anchor import MAX_HOPS
from meshenc.core.election import ElectionSnapshot, Role
from meshenc.core.engine import EngineSnapshot, NeighbourSnapshot
from meshenc.core.kademlia import Contact
from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.core.parameters import ParameterChange, Parameters
from meshenc.core.planner import EscalationJudged, EscalationVerdict, SegmentInfo
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate, SegmentLayout
from meshenc.core.timeline import MAX_WITNESSES
from meshenc.wire import convert, validation
from meshenc.wire.validation import (
    MAX_DEVIATION_NS,
    MAX_LATENCY_US,
    MAX_NEIGHBOURS,
    InvalidMessage,
)

M = TypeVar("M", bound=Message)

_TYPE_NAMES = {
    getattr(FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_")
}

NS = 1_000_000_000
DAY_NS = 86_400 * NS
YEAR_2200_NS = 7_258_118_400 * NS
T0_NS = 1_750_000_000 * NS  # a label in 2025
HASH = bytes(range(32))
NODE_A = bytes(20)
NODE_B = bytes([1]) * 20


def _changed(msg: M, mutate: Callable[[M], object]) -> M:
    """A copy of ``msg`` with ``mutate`` applied to it."""
    out = type(msg)()
    out.CopyFrom(msg)
    mutate(out)
    return out


def _set(**fields: object) -> Callable[[Message], None]:
    def mutate(msg: Message) -> None:
        for name, value in fields.items():
            setattr(msg, name, value)

    return mutate


def _rejected_field(validate: Callable[[M], None], msg: M) -> str:
    with pytest.raises(InvalidMessage) as caught:
        validate(msg)
    return caught.value.field


def _float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


# --- number conversion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "ns"),
    [
        (1.5, 1_500_000_000),
        (0.6e-9, 1),
        (0.4e-9, 0),
        (-0.6e-9, -1),
        (-1.25, -1_250_000_000),
        (1 / 1024, 976_562),  # exactly 976562.5 ns: ties go to even
        (3 / 1024, 2_929_688),  # exactly 2929687.5 ns
        (86_400.0, DAY_NS),
    ],
)
def test_seconds_to_ns_rounds_to_nearest(seconds: float, ns: int) -> None:
    assert convert.seconds_to_ns(seconds) == ns


def test_seconds_to_ns_keeps_every_nanosecond_of_a_unix_time() -> None:
    # "seconds * 1e9" in floats is only good to 256 ns at this size.
    label = 1_700_000_000.123456789
    assert convert.seconds_to_ns(label) == round(Fraction(label) * NS)


@given(st.floats(min_value=-1e10, max_value=1e10, allow_nan=False, allow_infinity=False))
def test_seconds_to_ns_is_within_half_a_nanosecond_of_exact(seconds: float) -> None:
    exact = Fraction(seconds) * NS
    assert abs(convert.seconds_to_ns(seconds) - exact) <= Fraction(1, 2) + Fraction(1, 10**6)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_times_cannot_be_encoded(value: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        convert.seconds_to_ns(value)


def test_rates_and_microseconds() -> None:
    assert convert.rate_to_ppb(25e-6) == 25_000
    assert convert.rate_to_ppb(-1e-3) == -1_000_000
    assert convert.ppb_to_rate(-1_500) == -1.5e-6
    assert convert.seconds_to_us(0.0333336) == 33_334
    assert convert.us_to_seconds(20_000) == 0.02
    assert convert.ns_to_seconds(1_500_000_001) == 1.500000001


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_nanoseconds_become_the_nearest_float_second(ns: int) -> None:
    # Python divides two ints with one rounding; compiled `/` would not (convert.ns_to_seconds).
    exact = Fraction(ns, convert.NS_PER_S)
    seconds = convert.ns_to_seconds(ns)
    assert abs(Fraction(seconds) - exact) <= abs(Fraction(ns / convert.NS_PER_S) - exact)


# --- ESP conversion -------------------------------------------------------------------------

_seconds_label = st.floats(min_value=1.0, max_value=7.2e9, allow_nan=False)
_echo = st.one_of(
    st.just((0, 0.0, 0.0)),
    st.tuples(
        st.integers(min_value=1, max_value=2**64 - 1),
        _seconds_label,
        st.floats(min_value=0.0, max_value=59.0),
    ),
)


@st.composite
def _esps(draw: st.DrawFn) -> EncodingStatePacket:
    echo_sequence, echo_sent_at, echo_hold = draw(_echo)
    sender = draw(st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True))
    # What the engine announces: no anchor, itself (hops 0, offset 0), or another encoder.
    anchor, hops, offset = draw(
        st.one_of(
            st.just(("", 0, 0.0)),
            st.just((sender, 0, 0.0)),
            st.tuples(
                st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(
                    lambda a: a != sender
                ),
                st.integers(min_value=1, max_value=MAX_HOPS - 1),
                st.floats(min_value=-86_399.0, max_value=86_399.0),
            ),
        )
    )
    # What the engine announces of timelines: none (not locked), its own, or its own and a
    # merge route to one named before it.
    ids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)
    timeline = draw(st.one_of(st.just(""), ids))
    route: dict[str, object] = {}
    before = ids.filter(lambda name: name < timeline)
    if timeline > "0" and draw(st.booleans()):
        route = {
            "merge_timeline": draw(before),
            "merge_hops": draw(st.integers(min_value=1, max_value=MAX_HOPS - 1)),
            "merge_offset": draw(st.floats(min_value=-86_399.0, max_value=86_399.0)),
            "merge_witnesses": tuple(
                sorted(draw(st.sets(ids, min_size=1, max_size=MAX_WITNESSES)))
            ),
            "merge_segment": draw(st.integers(min_value=0, max_value=validation.MAX_TIMECODE - 1)),
        }
    # The beacon: none, the sender's own timeline, or one heard of through neighbours.
    beacon: dict[str, object] = {}
    if timeline and draw(st.booleans()):
        beacon = {"beacon_timeline": timeline, "beacon_origin": sender}
    elif draw(st.booleans()):
        beacon = {
            "beacon_timeline": draw(ids),
            "beacon_hops": draw(st.integers(min_value=1, max_value=MAX_HOPS - 1)),
            "beacon_offset": draw(st.floats(min_value=-86_399.0, max_value=86_399.0)),
            "beacon_origin": draw(ids.filter(lambda name: name != sender)),
        }
    written: dict[str, object] = {}
    if draw(st.booleans()):
        written = {
            "written_segment": draw(
                st.integers(min_value=1, max_value=validation.MAX_TIMECODE - 1)
            ),
            "segment_digest": draw(st.binary(min_size=32, max_size=32)),
            "segment_vouched": draw(st.booleans()),
            "segment_unit": draw(st.sampled_from(["", "1280x720", "hd"])),
        }
    # An agreed parameter change, with the started size or one of its own.
    params: dict[str, object] = {}
    if draw(st.booleans()):
        sides = st.integers(min_value=8, max_value=1080).map(lambda half: 2 * half)
        params = {
            "params_segment": draw(st.integers(min_value=1, max_value=validation.MAX_TIMECODE - 1)),
            "params_bitrate_kbps": draw(st.integers(min_value=64, max_value=200_000)),
            "params_size": draw(st.one_of(st.none(), st.tuples(sides, sides))),
        }
    return EncodingStatePacket(
        sender=sender,
        sequence=draw(st.integers(min_value=1, max_value=2**64 - 1)),
        topology_epoch=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        timecode=draw(st.integers(min_value=1, max_value=validation.MAX_TIMECODE - 1)),
        frame_hash=draw(st.sampled_from([b"", HASH])),
        fingerprint=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        label=draw(_seconds_label),
        correction=draw(st.floats(min_value=-86_399.0, max_value=86_399.0)),
        correction_rate=draw(st.floats(min_value=-9.99e-4, max_value=9.99e-4)),
        encode_latency=draw(st.floats(min_value=0.0, max_value=59.0)),
        rtt=draw(st.floats(min_value=0.0, max_value=59.0)),
        jitter=draw(st.floats(min_value=0.0, max_value=59.0)),
        confidence=draw(st.floats(min_value=0.0, max_value=1.0)),
        sent_at=draw(_seconds_label),
        echo_sequence=echo_sequence,
        echo_sent_at=echo_sent_at,
        echo_hold=echo_hold,
        anchor=anchor,
        anchor_hops=hops,
        anchor_offset=offset,
        timeline=timeline,
        **route,  # type: ignore[arg-type]
        **beacon,  # type: ignore[arg-type]
        **written,  # type: ignore[arg-type]
        **params,  # type: ignore[arg-type]
    )


def _through_the_wire(esp: EncodingStatePacket) -> EncodingStatePacket:
    data = convert.esp_to_proto(esp).SerializeToString()
    return convert.esp_from_proto(mesh_pb2.EncodingStatePacket.FromString(data))


@given(_esps())
def test_esp_round_trip_within_one_nanosecond(esp: EncodingStatePacket) -> None:
    back = _through_the_wire(esp)
    for name in (
        "sender",
        "sequence",
        "topology_epoch",
        "timecode",
        "frame_hash",
        "fingerprint",
        "echo_sequence",
        "anchor",
        "anchor_hops",
        "timeline",
        "merge_timeline",
        "merge_hops",
        "merge_witnesses",
        "merge_segment",
        "beacon_timeline",
        "beacon_hops",
        "beacon_origin",
        "written_segment",
        "segment_digest",
        "segment_vouched",
        "segment_unit",
        "params_segment",
        "params_bitrate_kbps",
        "params_size",
    ):
        assert getattr(back, name) == getattr(esp, name), name
    for name in (
        "label",
        "correction",
        "correction_rate",
        "sent_at",
        "echo_sent_at",
        "echo_hold",
        "anchor_offset",
        "merge_offset",
        "beacon_offset",
    ):
        assert abs(getattr(back, name) - getattr(esp, name)) <= 1e-9, name
    for name in ("encode_latency", "rtt", "jitter"):  # microseconds on the wire
        assert abs(getattr(back, name) - getattr(esp, name)) <= 1e-6, name
    assert back.confidence == _float32(esp.confidence)


@given(_esps())
def test_every_esp_the_core_can_send_is_valid_on_the_wire(esp: EncodingStatePacket) -> None:
    validation.validate_esp(convert.esp_to_proto(esp))


@given(st.floats(min_value=946_684_800.0, max_value=4_102_444_800.0))  # years 2000 to 2100
def test_present_day_labels_survive_the_wire_exactly(label: float) -> None:
    esp = _valid_esp_dataclass(label=label, sent_at=label)
    back = _through_the_wire(esp)
    assert (back.label, back.sent_at) == (label, label)


def _valid_esp_dataclass(label: float, sent_at: float) -> EncodingStatePacket:
    return EncodingStatePacket(
        sender="enc-0",
        sequence=1,
        topology_epoch=1,
        timecode=52_500_000_000,
        frame_hash=HASH,
        fingerprint=0xDEADBEEF,
        label=label,
        correction=0.0,
        correction_rate=0.0,
        encode_latency=0.004,
        rtt=0.001,
        jitter=0.0001,
        confidence=0.75,
        sent_at=sent_at,
    )


def test_esp_fields_land_in_the_right_wire_fields() -> None:
    esp = EncodingStatePacket(
        sender="enc-3",
        sequence=7,
        topology_epoch=2,
        timecode=52_500_000_123,
        frame_hash=HASH,
        fingerprint=2**64 - 1,
        label=1_750_000_000.5,
        correction=-0.25,
        correction_rate=2e-5,
        encode_latency=0.004,
        rtt=0.0015,
        jitter=0.0002,
        confidence=0.5,
        sent_at=1_750_000_000.75,
        echo_sequence=6,
        echo_sent_at=1_750_000_000.25,
        echo_hold=0.003,
        anchor="enc-1",
        anchor_hops=2,
        anchor_offset=-0.0125,
    )
    wire = convert.esp_to_proto(esp)
    assert (wire.sender_id, wire.source_fingerprint) == ("enc-3", 0xFFFF_FFFF_FFFF_FFFF)
    assert wire.label_unix_ns == 1_750_000_000_500_000_000
    assert wire.correction_ns == -250_000_000
    assert wire.correction_rate_ppb == 20_000
    assert (wire.encode_latency_us, wire.rtt_us, wire.jitter_us) == (4_000, 1_500, 200)
    assert wire.sent_unix_ns == 1_750_000_000_750_000_000
    assert wire.echo_sent_unix_ns == 1_750_000_000_250_000_000
    assert wire.echo_hold_ns == 3_000_000
    assert (wire.anchor_id, wire.anchor_hops, wire.anchor_offset_ns) == ("enc-1", 2, -12_500_000)


@pytest.mark.parametrize(
    "change",
    [{"rtt": -0.001}, {"echo_hold": -1e-6}, {"label": math.nan}, {"fingerprint": -1}],
)
def test_values_without_a_wire_form_raise(change: dict[str, float]) -> None:
    esp = _valid_esp_dataclass(label=1e9, sent_at=1e9)
    with pytest.raises(ValueError):
        convert.esp_to_proto(dataclasses.replace(esp, **change))  # type: ignore[arg-type]


def test_esp_wire_contract_is_stable() -> None:
    """Field numbers and types are the protocol: changing one breaks every deployed peer."""
    fields = mesh_pb2.EncodingStatePacket.DESCRIPTOR.fields
    expected = [
        ("sender_id", 1, "string"),
        ("sequence", 2, "uint64"),
        ("topology_epoch", 3, "uint64"),
        ("timecode", 4, "int64"),
        ("frame_hash", 5, "bytes"),
        ("source_fingerprint", 6, "fixed64"),
        ("label_unix_ns", 7, "int64"),
        ("correction_ns", 8, "sint64"),
        ("correction_rate_ppb", 9, "sint64"),
        ("encode_latency_us", 10, "uint32"),
        ("rtt_us", 11, "uint32"),
        ("jitter_us", 12, "uint32"),
        ("confidence", 13, "float"),
        ("sent_unix_ns", 14, "int64"),
        ("echo_sequence", 15, "uint64"),
        ("echo_sent_unix_ns", 16, "int64"),
        ("echo_hold_ns", 17, "uint64"),
        ("locked", 18, "bool"),
        ("params_segment", 19, "int64"),
        ("params_bitrate_kbps", 20, "uint32"),
        ("anchor_id", 21, "string"),
        ("anchor_hops", 22, "uint32"),
        ("anchor_offset_ns", 23, "sint64"),
        ("timeline", 24, "string"),
        ("merge_timeline", 25, "string"),
        ("merge_hops", 26, "uint32"),
        ("merge_offset_ns", 27, "sint64"),
        ("merge_witnesses", 28, "string"),
        ("merge_segment", 29, "int64"),
        ("written_segment", 30, "int64"),
        ("segment_digest", 31, "bytes"),
        ("segment_vouched", 32, "bool"),
        ("segment_unit", 33, "string"),
        ("params_width", 34, "uint32"),
        ("params_height", 35, "uint32"),
        ("beacon_timeline", 36, "string"),
        ("beacon_hops", 37, "uint32"),
        ("beacon_offset_ns", 38, "sint64"),
        ("beacon_origin", 39, "string"),
    ]
    actual = [(f.name, f.number, _TYPE_NAMES[f.type]) for f in fields]
    assert actual == expected


# --- proposal and vote conversion -----------------------------------------------------------

_trace = st.dictionaries(
    st.from_regex(r"[a-z]{1,10}", fullmatch=True),
    st.from_regex(r"[ -~]{0,30}", fullmatch=True),
    max_size=8,
)


@given(
    kind=st.sampled_from(list(CorrectionKind)),
    shift=st.floats(min_value=-10.0, max_value=10.0),
    proposal_id=st.integers(min_value=1, max_value=2**64 - 1),
    trace=_trace,
)
def test_proposal_round_trip(
    kind: CorrectionKind, shift: float, proposal_id: int, trace: dict[str, str]
) -> None:
    proposal = ResyncProposal(
        proposer="enc-1",
        proposal_id=proposal_id,
        kind=kind,
        shift=shift,
        topology_epoch=4,
        effective_segment=900 if kind is CorrectionKind.PARAMETER else 0,
        bitrate_kbps=4_500 if kind is CorrectionKind.PARAMETER else 0,
        size=(1280, 720) if kind is CorrectionKind.PARAMETER and proposal_id % 2 else None,
    )
    wire = mesh_pb2.ResyncProposal.FromString(
        convert.proposal_to_proto(proposal, tuple(trace.items())).SerializeToString()
    )
    validation.validate_proposal(wire)
    back = convert.proposal_from_proto(wire)
    assert abs(back.shift - shift) <= 1e-9
    assert back.trace_context == tuple(sorted(trace.items()))
    assert (back.proposer, back.proposal_id, back.kind, back.topology_epoch) == (
        "enc-1",
        proposal_id,
        kind,
        4,
    )
    assert (back.effective_segment, back.bitrate_kbps, back.size) == (
        proposal.effective_segment,
        proposal.bitrate_kbps,
        proposal.size,
    )


def test_messages_go_out_with_the_context_given_not_the_one_they_arrived_with() -> None:
    arrived = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    ours = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"),)
    proposal = convert.proposal_from_proto(
        mesh_pb2.ResyncProposal(
            proposer_id="enc-1",
            proposal_id=1,
            kind=common_pb2.CORRECTION_KIND_SLEW,
            trace_context=arrived,
        )
    )
    vote = convert.vote_from_proto(
        mesh_pb2.ResyncVote(proposer_id="enc-1", proposal_id=1, trace_context=arrived)
    )
    assert proposal.trace_context == vote.trace_context == tuple(arrived.items())
    assert dict(convert.proposal_to_proto(proposal).trace_context) == {}
    assert dict(convert.vote_to_proto(vote).trace_context) == {}
    assert dict(convert.proposal_to_proto(proposal, ours).trace_context) == dict(ours)
    assert dict(convert.vote_to_proto(vote, ours).trace_context) == dict(ours)


@given(st.integers(min_value=-10 * NS, max_value=10 * NS))
def test_shift_ns_survives_the_core_exactly(shift_ns: int) -> None:
    wire = mesh_pb2.ResyncProposal(
        proposer_id="enc-1", proposal_id=1, kind=common_pb2.CORRECTION_KIND_SLEW, shift_ns=shift_ns
    )
    assert convert.proposal_to_proto(convert.proposal_from_proto(wire)).shift_ns == shift_ns


def test_correction_kinds_map_one_to_one() -> None:
    wire_values = {convert.kind_to_proto(kind) for kind in CorrectionKind}
    assert common_pb2.CORRECTION_KIND_UNSPECIFIED not in wire_values
    assert len(wire_values) == len(CorrectionKind)
    for kind in CorrectionKind:
        assert convert.kind_from_proto(convert.kind_to_proto(kind)) is kind
    assert common_pb2.CorrectionKind.Name(convert.kind_to_proto(CorrectionKind.DROP)) == (
        "CORRECTION_KIND_DROP"
    )


@pytest.mark.parametrize("value", [common_pb2.CORRECTION_KIND_UNSPECIFIED, 99])
def test_unknown_correction_kinds_have_no_core_meaning(value: int) -> None:
    with pytest.raises(ValueError, match="correction kind"):
        convert.kind_from_proto(value)


@given(
    deviation=st.floats(min_value=-86_400.0, max_value=86_400.0),
    approve=st.booleans(),
    reason=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    trace=_trace,
)
def test_vote_round_trip(
    deviation: float, approve: bool, reason: str, trace: dict[str, str]
) -> None:
    vote = ResyncVote(
        proposer="enc-1",
        proposal_id=12,
        voter="enc-2",
        approve=approve,
        estimated_deviation=deviation,
        reason=reason,
    )
    wire = mesh_pb2.ResyncVote.FromString(
        convert.vote_to_proto(vote, tuple(trace.items())).SerializeToString()
    )
    validation.validate_vote(wire)
    back = convert.vote_from_proto(wire)
    assert abs(back.estimated_deviation - deviation) <= 1e-9
    assert (back.proposer, back.proposal_id, back.voter, back.approve, back.reason) == (
        "enc-1",
        12,
        "enc-2",
        approve,
        reason,
    )
    assert back.trace_context == tuple(sorted(trace.items()))


def test_vote_deviation_lands_in_nanoseconds() -> None:
    vote = ResyncVote("enc-1", 3, "enc-2", approve=False, estimated_deviation=-0.0335)
    assert convert.vote_to_proto(vote).estimated_deviation_ns == -33_500_000


# --- InvalidMessage -------------------------------------------------------------------------


def test_invalid_message_names_field_and_rule() -> None:
    msg = _changed(_valid_esp(), _set(frame_hash=b"\x00" * 31))
    with pytest.raises(ValueError, match=r"^frame_hash: .*32 bytes.*got 31") as caught:
        validation.validate_esp(msg)
    assert isinstance(caught.value, InvalidMessage)
    assert caught.value.field == "frame_hash"
    assert "32" in caught.value.reason


def test_invalid_message_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(InvalidMessage("esp.sequence", "must be > 0, got 0")))
    assert (error.field, error.reason) == ("esp.sequence", "must be > 0, got 0")


def test_long_values_are_cut_short_in_errors() -> None:
    msg = _changed(_valid_esp(), _set(sender_id="x" * 10_000))
    with pytest.raises(InvalidMessage) as caught:
        validation.validate_esp(msg)
    assert len(str(caught.value)) < 200


# --- mesh validators ------------------------------------------------------------------------


def _valid_hello() -> mesh_pb2.Hello:
    return mesh_pb2.Hello(
        sender_id="enc-1",
        protocol_version=validation.PROTOCOL_VERSION,
        frame_rate=common_pb2.FrameRate(num=30_000, den=1_001),
        gop_length=60,
        topology_epoch=3,
    )


#: A merge route as an encoder of a losing group announces it (its timeline set aside).
_ROUTE: dict[str, object] = {
    "merge_timeline": "enc-0",
    "merge_hops": 2,
    "merge_offset_ns": -733_000_000,
    "merge_witnesses": ["enc-3", "enc-7"],
    "merge_segment": 17,
}

#: A beacon as an encoder passes on one it heard of (its origin another encoder).
_BEACON: dict[str, object] = {
    "beacon_timeline": "enc-0",
    "beacon_hops": 3,
    "beacon_offset_ns": 33_000_000,
    "beacon_origin": "enc-6",
}

#: An agreed change of parameters in an ESP, without a size (the started one).
_CHANGE: dict[str, object] = {"params_segment": 40, "params_bitrate_kbps": 800}


def _valid_esp(**fields: object) -> mesh_pb2.EncodingStatePacket:
    msg = mesh_pb2.EncodingStatePacket(
        sender_id="enc-1",
        sequence=10,
        topology_epoch=3,
        timecode=52_500_000_000,
        frame_hash=HASH,
        source_fingerprint=0x0123_4567_89AB_CDEF,
        label_unix_ns=T0_NS,
        correction_ns=-1_200_000,
        correction_rate_ppb=-1_500,
        encode_latency_us=4_100,
        rtt_us=900,
        jitter_us=120,
        confidence=0.93,
        sent_unix_ns=T0_NS + 5_000_000,
        echo_sequence=9,
        echo_sent_unix_ns=T0_NS - 30_000_000,
        echo_hold_ns=2_000_000,
    )
    for name, value in fields.items():
        if name == "merge_witnesses":
            msg.merge_witnesses.extend(value)  # type: ignore[arg-type]
        else:
            setattr(msg, name, value)
    return msg


def _valid_proposal(**fields: object) -> mesh_pb2.ResyncProposal:
    msg = mesh_pb2.ResyncProposal(
        proposer_id="enc-1",
        proposal_id=5,
        kind=common_pb2.CORRECTION_KIND_SLEW,
        shift_ns=-4_000_000,
        topology_epoch=3,
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _valid_vote(**fields: object) -> mesh_pb2.ResyncVote:
    msg = mesh_pb2.ResyncVote(
        proposer_id="enc-1",
        proposal_id=5,
        voter_id="enc-2",
        approve=True,
        estimated_deviation_ns=3_900_000,
        reason="agrees within 0.2 ms",
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"},
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    "msg",
    [
        _valid_hello(),
        _changed(
            _valid_hello(), lambda m: m.frame_rate.CopyFrom(common_pb2.FrameRate(num=300, den=1))
        ),
        _changed(
            _valid_hello(), lambda m: m.frame_rate.CopyFrom(common_pb2.FrameRate(num=1, den=1))
        ),
        _changed(_valid_hello(), _set(gop_length=10_000, topology_epoch=0, protocol_version=7)),
        _changed(_valid_hello(), _set(channel="news-1.hd")),
        _changed(_valid_hello(), _set(channel="x" * 128)),
    ],
)
def test_hello_accepted(msg: mesh_pb2.Hello) -> None:
    validation.validate_hello(msg)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_set(sender_id=""), "sender_id"),
        (_set(sender_id="enc 1"), "sender_id"),
        (_set(sender_id="x" * 129), "sender_id"),
        (_set(sender_id="énc-1"), "sender_id"),
        (_set(protocol_version=0), "protocol_version"),
        (lambda m: m.ClearField("frame_rate"), "frame_rate"),
        (lambda m: setattr(m.frame_rate, "num", 0), "frame_rate.num"),
        (lambda m: setattr(m.frame_rate, "den", 0), "frame_rate.den"),
        (lambda m: m.frame_rate.CopyFrom(common_pb2.FrameRate(num=301, den=1)), "frame_rate"),
        (lambda m: m.frame_rate.CopyFrom(common_pb2.FrameRate(num=1, den=2)), "frame_rate"),
        (_set(gop_length=0), "gop_length"),
        (_set(gop_length=10_001), "gop_length"),
        (_set(channel=".."), "channel"),
        (_set(channel="."), "channel"),
        (_set(channel="a/b"), "channel"),
        (_set(channel="x" * 129), "channel"),
    ],
)
def test_hello_rejected(mutate: Callable[[mesh_pb2.Hello], object], field: str) -> None:
    assert _rejected_field(validation.validate_hello, _changed(_valid_hello(), mutate)) == field


@pytest.mark.parametrize(
    "msg",
    [
        _valid_esp(),
        _valid_esp(frame_hash=b""),
        _valid_esp(echo_sequence=0, echo_sent_unix_ns=0, echo_hold_ns=0),
        _valid_esp(correction_ns=DAY_NS, correction_rate_ppb=-10_000_000),
        _valid_esp(confidence=0.0, rtt_us=0, jitter_us=0, encode_latency_us=60_000_000),
        _valid_esp(confidence=1.0, label_unix_ns=1, timecode=1, source_fingerprint=0),
        _valid_esp(label_unix_ns=YEAR_2200_NS - 1, echo_hold_ns=60 * NS),
        _valid_esp(anchor_id="enc-1"),
        _valid_esp(anchor_id="enc-0", anchor_hops=1, anchor_offset_ns=-DAY_NS),
        _valid_esp(anchor_id="enc-0", anchor_hops=MAX_HOPS - 1, anchor_offset_ns=0),
        _valid_esp(timeline="enc-20"),
        _valid_esp(timeline="enc-20", **_ROUTE),
        _valid_esp(timeline="enc-20", **{**_ROUTE, "merge_witnesses": ["enc-3"]}),
        _valid_esp(timeline="enc-20", **{**_ROUTE, "merge_segment": 0}),
        _valid_esp(**_BEACON),  # heard of by an encoder not locked
        _valid_esp(timeline="enc-20", **_ROUTE, **_BEACON),
        _valid_esp(timeline="enc-20", beacon_timeline="enc-20", beacon_origin="enc-1"),
        _valid_esp(**{**_BEACON, "beacon_hops": MAX_HOPS - 1, "beacon_offset_ns": -DAY_NS}),
        _valid_esp(written_segment=1, segment_digest=HASH),
        _valid_esp(written_segment=1, segment_digest=HASH, segment_vouched=True),
        _valid_esp(written_segment=1, segment_digest=HASH, segment_unit="640x360"),
        _valid_esp(**_CHANGE),
        _valid_esp(**_CHANGE, params_width=3840, params_height=2160),
        _valid_esp(**_CHANGE, params_width=16, params_height=16),
    ],
)
def test_esp_accepted(msg: mesh_pb2.EncodingStatePacket) -> None:
    validation.validate_esp(msg)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sender_id": ""}, "sender_id"),
        ({"sender_id": "enc/1"}, "sender_id"),
        ({"sequence": 0}, "sequence"),
        ({"timecode": 0}, "timecode"),
        ({"timecode": -52_500_000_000}, "timecode"),
        ({"timecode": validation.MAX_TIMECODE}, "timecode"),
        ({"frame_hash": b"\x01" * 31}, "frame_hash"),
        ({"frame_hash": b"\x01" * 33}, "frame_hash"),
        ({"frame_hash": b"\x01" * 20}, "frame_hash"),
        ({"label_unix_ns": 0}, "label_unix_ns"),
        ({"label_unix_ns": -T0_NS}, "label_unix_ns"),
        ({"label_unix_ns": YEAR_2200_NS}, "label_unix_ns"),
        ({"correction_ns": DAY_NS + 1}, "correction_ns"),
        ({"correction_ns": -DAY_NS - 1}, "correction_ns"),
        ({"correction_rate_ppb": 10_000_001}, "correction_rate_ppb"),
        ({"correction_rate_ppb": -10_000_001}, "correction_rate_ppb"),
        ({"encode_latency_us": 60_000_001}, "encode_latency_us"),
        ({"rtt_us": 2**32 - 1}, "rtt_us"),
        ({"jitter_us": 60_000_001}, "jitter_us"),
        ({"confidence": math.nan}, "confidence"),
        ({"confidence": math.inf}, "confidence"),
        ({"confidence": -0.01}, "confidence"),
        ({"confidence": 1.01}, "confidence"),
        ({"sent_unix_ns": 0}, "sent_unix_ns"),
        ({"sent_unix_ns": 2**63 - 1}, "sent_unix_ns"),
        ({"echo_sequence": 0}, "echo_sent_unix_ns"),
        ({"echo_sequence": 0, "echo_sent_unix_ns": 0}, "echo_hold_ns"),
        ({"echo_sent_unix_ns": 0}, "echo_sent_unix_ns"),
        ({"echo_sent_unix_ns": -5}, "echo_sent_unix_ns"),
        ({"echo_hold_ns": 60 * NS + 1}, "echo_hold_ns"),
        ({"anchor_hops": 1}, "anchor_hops"),
        ({"anchor_offset_ns": 5}, "anchor_offset_ns"),
        ({"anchor_id": "enc 0", "anchor_hops": 1}, "anchor_id"),
        ({"anchor_id": "enc-0", "anchor_hops": MAX_HOPS}, "anchor_hops"),
        ({"anchor_id": "enc-0"}, "anchor_hops"),
        ({"anchor_id": "enc-1", "anchor_hops": 2}, "anchor_hops"),
        ({"anchor_id": "enc-1", "anchor_offset_ns": 1_000}, "anchor_offset_ns"),
        (
            {"anchor_id": "enc-0", "anchor_hops": 1, "anchor_offset_ns": DAY_NS + 1},
            "anchor_offset_ns",
        ),
        ({"timeline": "enc 20"}, "timeline"),
        ({"timeline": "enc-20", "merge_hops": 1}, "merge_hops"),
        ({"timeline": "enc-20", "merge_witnesses": ["enc-3"]}, "merge_witnesses"),
        ({"timeline": "enc-20", "merge_segment": 9}, "merge_segment"),
        ({**_ROUTE}, "merge_timeline"),  # a route from a sender on no timeline
        ({"timeline": "enc-0", **_ROUTE}, "merge_timeline"),  # to a timeline named after
        ({"timeline": "enc-20", **_ROUTE, "merge_timeline": "enc 0"}, "merge_timeline"),
        ({"timeline": "enc-20", **_ROUTE, "merge_hops": 0}, "merge_hops"),
        ({"timeline": "enc-20", **_ROUTE, "merge_hops": MAX_HOPS}, "merge_hops"),
        ({"timeline": "enc-20", **_ROUTE, "merge_offset_ns": DAY_NS + 1}, "merge_offset_ns"),
        ({"timeline": "enc-20", **_ROUTE, "merge_witnesses": []}, "merge_witnesses"),
        (
            {"timeline": "enc-20", **_ROUTE, "merge_witnesses": ["enc-4", "enc-3"]},
            "merge_witnesses",
        ),
        (
            {"timeline": "enc-20", **_ROUTE, "merge_witnesses": ["enc-3", "enc-3"]},
            "merge_witnesses",
        ),
        (
            {"timeline": "enc-20", **_ROUTE, "merge_witnesses": ["enc-1", "enc-3", "enc-4"]},
            "merge_witnesses",
        ),
        ({"timeline": "enc-20", **_ROUTE, "merge_witnesses": ["enc/3"]}, "merge_witnesses"),
        ({"timeline": "enc-20", **_ROUTE, "merge_segment": -1}, "merge_segment"),
        ({"beacon_hops": 2}, "beacon_hops"),
        ({"beacon_offset_ns": 5}, "beacon_offset_ns"),
        ({"beacon_origin": "enc-6"}, "beacon_origin"),
        ({**_BEACON, "beacon_timeline": "enc 0"}, "beacon_timeline"),
        ({**_BEACON, "beacon_origin": ""}, "beacon_origin"),
        ({**_BEACON, "beacon_origin": "enc/6"}, "beacon_origin"),
        ({**_BEACON, "beacon_hops": MAX_HOPS}, "beacon_hops"),
        ({**_BEACON, "beacon_hops": 0}, "beacon_hops"),  # another's, yet no links away
        ({**_BEACON, "beacon_origin": "enc-1"}, "beacon_hops"),  # its own, yet links away
        ({**_BEACON, "beacon_offset_ns": DAY_NS + 1}, "beacon_offset_ns"),
        # Its own beacon must be its own timeline, at no offset.
        (
            {"timeline": "enc-20", "beacon_timeline": "enc-0", "beacon_origin": "enc-1"},
            "beacon_timeline",
        ),
        ({"beacon_timeline": "enc-20", "beacon_origin": "enc-1"}, "beacon_timeline"),
        (
            {
                "timeline": "enc-20",
                "beacon_timeline": "enc-20",
                "beacon_origin": "enc-1",
                "beacon_offset_ns": 1_000,
            },
            "beacon_offset_ns",
        ),
        ({"written_segment": 5}, "segment_digest"),
        ({"segment_digest": HASH}, "written_segment"),
        ({"written_segment": 5, "segment_digest": HASH[:31]}, "segment_digest"),
        ({"segment_vouched": True}, "segment_vouched"),
        ({"segment_unit": "640x360"}, "segment_unit"),
        ({"written_segment": 5, "segment_digest": HASH, "segment_unit": ".."}, "segment_unit"),
        ({"written_segment": 5, "segment_digest": HASH, "segment_unit": "a/b"}, "segment_unit"),
        ({"written_segment": -5, "segment_digest": HASH}, "written_segment"),
        ({"params_width": 320, "params_height": 180}, "params_width"),  # no change named
        ({**_CHANGE, "params_width": 321, "params_height": 180}, "params_width"),
        ({**_CHANGE, "params_width": 320, "params_height": 0}, "params_width"),
        ({**_CHANGE, "params_width": 3842, "params_height": 180}, "params_width"),
        ({**_CHANGE, "params_width": 320, "params_height": 14}, "params_width"),
    ],
)
def test_esp_rejected(fields: dict[str, object], field: str) -> None:
    assert _rejected_field(validation.validate_esp, _valid_esp(**fields)) == field


@pytest.mark.parametrize(
    "msg",
    [
        _valid_proposal(),
        _valid_proposal(kind=common_pb2.CORRECTION_KIND_DROP, shift_ns=-33_366_667),
        _valid_proposal(kind=common_pb2.CORRECTION_KIND_DUPLICATE, shift_ns=10 * NS),
        _valid_proposal(
            kind=common_pb2.CORRECTION_KIND_PARAMETER,
            shift_ns=0,
            bitrate_kbps=64,
            effective_segment=875_000_001,
        ),
        _valid_proposal(
            kind=common_pb2.CORRECTION_KIND_PARAMETER, bitrate_kbps=200_000, effective_segment=1
        ),
        _valid_proposal(
            kind=common_pb2.CORRECTION_KIND_PARAMETER,
            bitrate_kbps=800,
            effective_segment=1,
            width=3840,
            height=2160,
        ),
        _changed(_valid_proposal(), lambda m: m.trace_context.clear()),
        _changed(
            _valid_proposal(),
            lambda m: m.trace_context.update({f"k{i}": "v" * 512 for i in range(7)}),
        ),
    ],
)
def test_proposal_accepted(msg: mesh_pb2.ResyncProposal) -> None:
    validation.validate_proposal(msg)


def _parameter(**fields: object) -> mesh_pb2.ResyncProposal:
    base: dict[str, object] = {
        "kind": common_pb2.CORRECTION_KIND_PARAMETER,
        "bitrate_kbps": 3_000,
        "effective_segment": 875_000_001,
    }
    return _valid_proposal(**{**base, **fields})


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (_valid_proposal(proposer_id=""), "proposer_id"),
        (_valid_proposal(proposer_id="enc:1"), "proposer_id"),
        (_valid_proposal(proposal_id=0), "proposal_id"),
        (_valid_proposal(kind=common_pb2.CORRECTION_KIND_UNSPECIFIED), "kind"),
        (_valid_proposal(kind=99), "kind"),
        (_valid_proposal(shift_ns=10 * NS + 1), "shift_ns"),
        (_valid_proposal(shift_ns=-10 * NS - 1), "shift_ns"),
        (_parameter(bitrate_kbps=63), "bitrate_kbps"),
        (_parameter(bitrate_kbps=200_001), "bitrate_kbps"),
        (_parameter(bitrate_kbps=0), "bitrate_kbps"),
        (_parameter(effective_segment=0), "effective_segment"),
        (_parameter(effective_segment=-3), "effective_segment"),
        (_valid_proposal(bitrate_kbps=3_000), "bitrate_kbps"),
        (_valid_proposal(width=320, height=180), "width"),
        (_parameter(width=320, height=181), "width"),
        (_parameter(width=0, height=180), "width"),
        (_parameter(width=16, height=2162), "width"),
        (_valid_proposal(effective_segment=12), "effective_segment"),
        (
            _changed(
                _valid_proposal(),
                lambda m: m.trace_context.update({f"k{i}": "v" for i in range(8)}),
            ),
            "trace_context",
        ),
        (
            _changed(_valid_proposal(), lambda m: m.trace_context.update({"trace parent": "x"})),
            "trace_context",
        ),
        (
            _changed(_valid_proposal(), lambda m: m.trace_context.update({"k" * 65: "x"})),
            "trace_context",
        ),
        (
            _changed(
                _valid_proposal(), lambda m: m.trace_context.update({"tracestate": "v" * 513})
            ),
            "trace_context[tracestate]",
        ),
        (
            _changed(_valid_proposal(), lambda m: m.trace_context.update({"tracestate": "a\r\nb"})),
            "trace_context[tracestate]",
        ),
    ],
)
def test_proposal_rejected(msg: mesh_pb2.ResyncProposal, field: str) -> None:
    assert _rejected_field(validation.validate_proposal, msg) == field


@pytest.mark.parametrize(
    "msg",
    [
        _valid_vote(),
        _valid_vote(approve=False, reason="", estimated_deviation_ns=-DAY_NS),
        _valid_vote(reason="r" * 256, proposal_id=2**64 - 1),
        _changed(_valid_vote(), lambda m: m.trace_context.clear()),
    ],
)
def test_vote_accepted(msg: mesh_pb2.ResyncVote) -> None:
    validation.validate_vote(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (_valid_vote(proposer_id=""), "proposer_id"),
        (_valid_vote(proposal_id=0), "proposal_id"),
        (_valid_vote(voter_id=""), "voter_id"),
        (_valid_vote(voter_id="enc 2"), "voter_id"),
        (_valid_vote(voter_id="enc-1"), "voter_id"),
        (_valid_vote(estimated_deviation_ns=DAY_NS + 1), "estimated_deviation_ns"),
        (_valid_vote(estimated_deviation_ns=-DAY_NS - 1), "estimated_deviation_ns"),
        (_valid_vote(reason="r" * 257), "reason"),
        (_valid_vote(reason="ok\nFAKE LOG LINE"), "reason"),
        (
            _changed(_valid_vote(), lambda m: m.trace_context.update({"": "x"})),
            "trace_context",
        ),
    ],
)
def test_vote_rejected(msg: mesh_pb2.ResyncVote, field: str) -> None:
    assert _rejected_field(validation.validate_vote, msg) == field


@pytest.mark.parametrize(
    "msg",
    [
        mesh_pb2.MeshMessage(hello=_valid_hello()),
        mesh_pb2.MeshMessage(esp=_valid_esp()),
        mesh_pb2.MeshMessage(proposal=_valid_proposal()),
        mesh_pb2.MeshMessage(vote=_valid_vote()),
    ],
)
def test_mesh_message_accepted(msg: mesh_pb2.MeshMessage) -> None:
    validation.validate_mesh_message(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (mesh_pb2.MeshMessage(), "body"),
        (
            mesh_pb2.MeshMessage(hello=_changed(_valid_hello(), _set(gop_length=0))),
            "hello.gop_length",
        ),
        (mesh_pb2.MeshMessage(esp=_valid_esp(sequence=0)), "esp.sequence"),
        (mesh_pb2.MeshMessage(esp=mesh_pb2.EncodingStatePacket()), "esp.sender_id"),
        (
            mesh_pb2.MeshMessage(
                proposal=_valid_proposal(kind=common_pb2.CORRECTION_KIND_UNSPECIFIED)
            ),
            "proposal.kind",
        ),
        (mesh_pb2.MeshMessage(vote=_valid_vote(voter_id="enc-1")), "vote.voter_id"),
    ],
)
def test_mesh_message_rejected(msg: mesh_pb2.MeshMessage, field: str) -> None:
    assert _rejected_field(validation.validate_mesh_message, msg) == field


def test_mesh_message_from_bytes_without_body_is_rejected() -> None:
    # An envelope from a newer peer whose body this version does not know parses as empty.
    msg = mesh_pb2.MeshMessage.FromString(b"\xa2\x06\x00")  # field 100, empty bytes
    assert _rejected_field(validation.validate_mesh_message, msg) == "body"


@pytest.mark.parametrize("channel", ["", "0", "news-1.hd"])
def test_requests_naming_a_channel_accepted(channel: str) -> None:
    validation.validate_get_state_request(mesh_pb2.GetStateRequest(channel=channel))
    validation.validate_set_parameters_request(
        mesh_pb2.SetParametersRequest(bitrate_kbps=800, channel=channel)
    )


@pytest.mark.parametrize(
    "request_",
    [
        mesh_pb2.SetParametersRequest(width=320, height=180),  # the size alone
        mesh_pb2.SetParametersRequest(bitrate_kbps=64, width=16, height=16),
        mesh_pb2.SetParametersRequest(bitrate_kbps=200_000, width=3840, height=2160),
    ],
)
def test_parameter_requests_accepted(request_: mesh_pb2.SetParametersRequest) -> None:
    validation.validate_set_parameters_request(request_)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (mesh_pb2.SetParametersRequest(), "bitrate_kbps"),  # asks for nothing
        (mesh_pb2.SetParametersRequest(bitrate_kbps=63), "bitrate_kbps"),
        (mesh_pb2.SetParametersRequest(bitrate_kbps=800, width=320), "width"),
        (mesh_pb2.SetParametersRequest(height=180), "width"),
        (mesh_pb2.SetParametersRequest(width=319, height=180), "width"),
        (mesh_pb2.SetParametersRequest(width=3842, height=2160), "width"),
    ],
)
def test_parameter_requests_rejected(request_: mesh_pb2.SetParametersRequest, field: str) -> None:
    assert _rejected_field(validation.validate_set_parameters_request, request_) == field


@pytest.mark.parametrize("channel", ["..", "a b", "a/b", "x" * 129])
def test_requests_naming_a_bad_channel_rejected(channel: str) -> None:
    state = mesh_pb2.GetStateRequest(channel=channel)
    assert _rejected_field(validation.validate_get_state_request, state) == "channel"
    change = mesh_pb2.SetParametersRequest(bitrate_kbps=800, channel=channel)
    assert _rejected_field(validation.validate_set_parameters_request, change) == "channel"


# --- the Exchange stream --------------------------------------------------------------------


def _hello_from(sender: str) -> mesh_pb2.MeshMessage:
    return mesh_pb2.MeshMessage(hello=_changed(_valid_hello(), _set(sender_id=sender)))


def _esp_from(sender: str, sequence: int, **fields: object) -> mesh_pb2.MeshMessage:
    return mesh_pb2.MeshMessage(esp=_valid_esp(sender_id=sender, sequence=sequence, **fields))


def _opened(local: str = "enc-0", peer: str = "enc-1") -> validation.ExchangeStreamChecker:
    checker = validation.ExchangeStreamChecker(local)
    checker.check(_hello_from(peer))
    return checker


def test_stream_accepts_a_well_formed_exchange() -> None:
    assert validation.ExchangeStreamChecker("enc-0").peer_id is None
    checker = validation.ExchangeStreamChecker("enc-0")
    checker.check(_hello_from("enc-1"))
    checker.check(_esp_from("enc-1", 1))
    checker.check(_esp_from("enc-1", 4))  # gaps are skipped or lost ESPs
    checker.check(mesh_pb2.MeshMessage(proposal=_valid_proposal(proposer_id="enc-1")))
    checker.check(mesh_pb2.MeshMessage(vote=_valid_vote(proposer_id="enc-0", voter_id="enc-1")))
    checker.check(_esp_from("enc-1", 5))
    assert (checker.peer_id, checker.last_sequence) == ("enc-1", 5)


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([_esp_from("enc-1", 1)], "body"),
        ([mesh_pb2.MeshMessage()], "body"),
        ([_hello_from("enc-0")], "hello.sender_id"),
        ([_hello_from("enc-1"), _hello_from("enc-1")], "body"),
        ([_hello_from("enc-1"), _esp_from("enc-2", 1)], "esp.sender_id"),
        ([_hello_from("enc-1"), _esp_from("enc-1", 3), _esp_from("enc-1", 3)], "esp.sequence"),
        ([_hello_from("enc-1"), _esp_from("enc-1", 3), _esp_from("enc-1", 2)], "esp.sequence"),
        (
            [
                _hello_from("enc-1"),
                mesh_pb2.MeshMessage(proposal=_valid_proposal(proposer_id="enc-2")),
            ],
            "proposal.proposer_id",
        ),
        (
            [
                _hello_from("enc-1"),
                mesh_pb2.MeshMessage(vote=_valid_vote(proposer_id="enc-0", voter_id="enc-2")),
            ],
            "vote.voter_id",
        ),
        (
            [
                _hello_from("enc-1"),
                mesh_pb2.MeshMessage(vote=_valid_vote(proposer_id="enc-3", voter_id="enc-1")),
            ],
            "vote.proposer_id",
        ),
    ],
)
def test_stream_rejects(messages: list[mesh_pb2.MeshMessage], field: str) -> None:
    checker = validation.ExchangeStreamChecker("enc-0")
    *accepted, last = messages
    for msg in accepted:
        checker.check(msg)
    assert _rejected_field(checker.check, last) == field


def test_stream_state_only_advances_on_accepted_messages() -> None:
    checker = _opened()
    checker.check(_esp_from("enc-1", 5))
    with pytest.raises(InvalidMessage):
        checker.check(_esp_from("enc-1", 9, confidence=2.0))
    with pytest.raises(InvalidMessage):
        checker.check(_esp_from("enc-2", 9))
    assert checker.last_sequence == 5
    checker.check(_esp_from("enc-1", 6))
    assert checker.last_sequence == 6


def test_stream_state_does_not_open_on_a_rejected_hello() -> None:
    checker = validation.ExchangeStreamChecker("enc-0")
    with pytest.raises(InvalidMessage):
        checker.check(mesh_pb2.MeshMessage(hello=_changed(_valid_hello(), _set(gop_length=0))))
    assert checker.peer_id is None
    assert _rejected_field(checker.check, _esp_from("enc-1", 1)) == "body"


def _batch(*messages: mesh_pb2.MeshMessage) -> mesh_pb2.MeshMessage:
    return mesh_pb2.MeshMessage(batch=mesh_pb2.MeshBatch(messages=list(messages)))


def test_stream_accepts_a_batch_and_holds_its_messages_to_the_stream_rules_in_order() -> None:
    checker = _opened()
    checker.check(_esp_from("enc-1", 2))
    checker.check(
        _batch(
            mesh_pb2.MeshMessage(vote=_valid_vote(proposer_id="enc-0", voter_id="enc-1")),
            _esp_from("enc-1", 3),
            mesh_pb2.MeshMessage(proposal=_valid_proposal(proposer_id="enc-1")),
            _esp_from("enc-1", 7),
        )
    )
    assert checker.last_sequence == 7
    assert _rejected_field(checker.check, _esp_from("enc-1", 7)) == "esp.sequence"
    many = [_esp_from("enc-1", 8 + i) for i in range(validation.MAX_BATCH_MESSAGES)]
    checker.check(_batch(*many))
    assert checker.last_sequence == 7 + validation.MAX_BATCH_MESSAGES


@pytest.mark.parametrize(
    ("batch", "field"),
    [
        (_batch(), "batch.messages"),
        (
            _batch(*[_esp_from("enc-1", 6 + i) for i in range(validation.MAX_BATCH_MESSAGES + 1)]),
            "batch.messages",
        ),
        (_batch(_esp_from("enc-1", 6), _hello_from("enc-1")), "batch.messages[1].body"),
        (_batch(_batch(_esp_from("enc-1", 6))), "batch.messages[0].body"),
        (_batch(mesh_pb2.MeshMessage()), "batch.messages[0].body"),
        (_batch(_esp_from("enc-1", 6, confidence=2.0)), "batch.messages[0].esp.confidence"),
        (_batch(_esp_from("enc-1", 6), _esp_from("enc-1", 6)), "batch.messages[1].esp.sequence"),
        (_batch(_esp_from("enc-1", 5)), "batch.messages[0].esp.sequence"),
        (_batch(_esp_from("enc-1", 6), _esp_from("enc-2", 7)), "batch.messages[1].esp.sender_id"),
        (
            _batch(mesh_pb2.MeshMessage(vote=_valid_vote(proposer_id="enc-3", voter_id="enc-1"))),
            "batch.messages[0].vote.proposer_id",
        ),
        (
            _batch(mesh_pb2.MeshMessage(proposal=_valid_proposal(proposer_id="enc-2"))),
            "batch.messages[0].proposal.proposer_id",
        ),
    ],
)
def test_stream_rejects_a_bad_batch_whole(batch: mesh_pb2.MeshMessage, field: str) -> None:
    checker = _opened()
    checker.check(_esp_from("enc-1", 5))
    assert _rejected_field(checker.check, batch) == field
    assert checker.last_sequence == 5  # nothing of it counted, its valid first ESPs neither
    checker.check(_esp_from("enc-1", 6))


def test_a_batch_cannot_open_a_stream() -> None:
    checker = validation.ExchangeStreamChecker("enc-0")
    assert _rejected_field(checker.check, _batch(_esp_from("enc-1", 1))) == "body"


# --- registry validators --------------------------------------------------------------------


def _node(
    node_id: bytes = NODE_A, address: str = "registry-0.registry:7000"
) -> registry_pb2.NodeInfo:
    return registry_pb2.NodeInfo(node_id=node_id, address=address)


def _record(**fields: object) -> registry_pb2.EncoderRecord:
    msg = registry_pb2.EncoderRecord(
        encoder_id="enc-4",
        address="enc-4.encoders.meshenc.svc.cluster.local:50051",
        segment_id="seg-1",
        capacity=4,
        health=registry_pb2.ENCODER_HEALTH_HEALTHY,
        version=17,
        ttl_ms=30_000,
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    "address",
    [
        "localhost:50051",
        "127.0.0.1:1",
        "[::1]:65535",
        "[fe80::1%eth0]:7000",
        "registry-0.registry.meshenc.svc.cluster.local.:7000",
        "a" * 63 + ".example:80",
    ],
)
def test_node_info_accepted(address: str) -> None:
    validation.validate_node_info(_node(address=address))


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (_node(node_id=b""), "node_id"),
        (_node(node_id=bytes(19)), "node_id"),
        (_node(node_id=bytes(21)), "node_id"),
        (_node(address=""), "address"),
        (_node(address="localhost"), "address"),
        (_node(address="localhost:"), "address"),
        (_node(address=":7000"), "address"),
        (_node(address="localhost:0"), "address"),
        (_node(address="localhost:65536"), "address"),
        (_node(address="localhost:+80"), "address"),
        (_node(address="localhost:\uff18\uff10"), "address"),  # full-width digits
        (_node(address="::1:7000"), "address"),
        (_node(address="[::g]:7000"), "address"),
        (_node(address="300.0.0.1:7000"), "address"),
        (_node(address="under_score:7000"), "address"),
        (_node(address="-leading.dash:7000"), "address"),
        (_node(address="a" * 64 + ".example:80"), "address"),
        (_node(address=".".join(["a" * 60] * 5) + ":80"), "address"),
        (_node(address="dns:///registry:7000"), "address"),
    ],
)
def test_node_info_rejected(msg: registry_pb2.NodeInfo, field: str) -> None:
    assert _rejected_field(validation.validate_node_info, msg) == field


@pytest.mark.parametrize(
    "msg", [registry_pb2.PingRequest(), registry_pb2.PingRequest(sender=_node())]
)
def test_ping_request_accepted(msg: registry_pb2.PingRequest) -> None:
    validation.validate_ping_request(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (registry_pb2.PingRequest(sender=registry_pb2.NodeInfo()), "sender.node_id"),
        (registry_pb2.PingRequest(sender=_node(node_id=bytes(32))), "sender.node_id"),
        (registry_pb2.PingRequest(sender=_node(address="registry-0")), "sender.address"),
    ],
)
def test_ping_request_rejected(msg: registry_pb2.PingRequest, field: str) -> None:
    assert _rejected_field(validation.validate_ping_request, msg) == field


@pytest.mark.parametrize(
    "msg",
    [
        registry_pb2.FindNodeRequest(target=NODE_B),
        registry_pb2.FindNodeRequest(sender=_node(), target=NODE_B),
    ],
)
def test_find_node_request_accepted(msg: registry_pb2.FindNodeRequest) -> None:
    validation.validate_find_node_request(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (registry_pb2.FindNodeRequest(), "target"),
        (registry_pb2.FindNodeRequest(target=bytes(19)), "target"),
        (registry_pb2.FindNodeRequest(target=bytes(40)), "target"),
        (
            registry_pb2.FindNodeRequest(sender=_node(address="x:99999"), target=NODE_B),
            "sender.address",
        ),
    ],
)
def test_find_node_request_rejected(msg: registry_pb2.FindNodeRequest, field: str) -> None:
    assert _rejected_field(validation.validate_find_node_request, msg) == field


@pytest.mark.parametrize(
    "msg",
    [
        registry_pb2.FindValueRequest(key=NODE_B),
        registry_pb2.FindValueRequest(sender=_node(), key=NODE_B),
    ],
)
def test_find_value_request_accepted(msg: registry_pb2.FindValueRequest) -> None:
    validation.validate_find_value_request(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (registry_pb2.FindValueRequest(), "key"),
        (registry_pb2.FindValueRequest(key=b"enc-4"), "key"),
        (registry_pb2.FindValueRequest(key=bytes(21)), "key"),
        (
            registry_pb2.FindValueRequest(sender=_node(node_id=b"\x01"), key=NODE_B),
            "sender.node_id",
        ),
    ],
)
def test_find_value_request_rejected(msg: registry_pb2.FindValueRequest, field: str) -> None:
    assert _rejected_field(validation.validate_find_value_request, msg) == field


@pytest.mark.parametrize(
    "msg",
    [
        registry_pb2.StoreRequest(record=_record()),
        registry_pb2.StoreRequest(sender=_node(), record=_record(segment_id="", capacity=0)),
        registry_pb2.StoreRequest(
            record=_record(health=registry_pb2.ENCODER_HEALTH_DRAINING, ttl_ms=86_400_000)
        ),
    ],
)
def test_store_request_accepted(msg: registry_pb2.StoreRequest) -> None:
    validation.validate_store_request(msg)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (registry_pb2.StoreRequest(), "record"),
        (
            registry_pb2.StoreRequest(sender=_node(), record=_record(encoder_id="")),
            "record.encoder_id",
        ),
        (registry_pb2.StoreRequest(record=_record(address="enc-4")), "record.address"),
        (registry_pb2.StoreRequest(record=_record(segment_id="seg 1")), "record.segment_id"),
        (registry_pb2.StoreRequest(record=_record(capacity=1_000_001)), "record.capacity"),
        (
            registry_pb2.StoreRequest(
                record=_record(health=registry_pb2.ENCODER_HEALTH_UNSPECIFIED)
            ),
            "record.health",
        ),
        (registry_pb2.StoreRequest(record=_record(health=42)), "record.health"),
        (registry_pb2.StoreRequest(record=_record(version=0)), "record.version"),
        (registry_pb2.StoreRequest(record=_record(ttl_ms=0)), "record.ttl_ms"),
        (registry_pb2.StoreRequest(record=_record(ttl_ms=86_400_001)), "record.ttl_ms"),
        (
            registry_pb2.StoreRequest(sender=_node(address="[::1]"), record=_record()),
            "sender.address",
        ),
    ],
)
def test_store_request_rejected(msg: registry_pb2.StoreRequest, field: str) -> None:
    assert _rejected_field(validation.validate_store_request, msg) == field


def _nodes(count: int) -> list[registry_pb2.NodeInfo]:
    return [
        _node(node_id=i.to_bytes(20, "big"), address=f"10.0.0.{i % 250 + 1}:7000")
        for i in range(count)
    ]


def test_registry_responses_accepted() -> None:
    validation.validate_ping_response(registry_pb2.PingResponse(responder=_node()))
    validation.validate_store_response(
        registry_pb2.StoreResponse(responder=_node(), stored=False, current_version=9)
    )
    validation.validate_find_node_response(
        registry_pb2.FindNodeResponse(responder=_node(), nodes=_nodes(64))
    )
    validation.validate_find_node_response(registry_pb2.FindNodeResponse(responder=_node()))
    validation.validate_find_value_response(
        registry_pb2.FindValueResponse(responder=_node(), record=_record())
    )
    validation.validate_find_value_response(
        registry_pb2.FindValueResponse(
            responder=_node(), closest=registry_pb2.NodeList(nodes=_nodes(3))
        )
    )
    empty_closest = registry_pb2.FindValueResponse(responder=_node())
    empty_closest.closest.SetInParent()
    validation.validate_find_value_response(empty_closest)


@pytest.mark.parametrize(
    ("validate", "msg", "field"),
    [
        (validation.validate_ping_response, registry_pb2.PingResponse(), "responder"),
        (
            validation.validate_ping_response,
            registry_pb2.PingResponse(responder=_node(node_id=b"")),
            "responder.node_id",
        ),
        (validation.validate_store_response, registry_pb2.StoreResponse(stored=True), "responder"),
        (
            validation.validate_find_node_response,
            registry_pb2.FindNodeResponse(nodes=_nodes(2)),
            "responder",
        ),
        (
            validation.validate_find_node_response,
            registry_pb2.FindNodeResponse(responder=_node(), nodes=_nodes(65)),
            "nodes",
        ),
        (
            validation.validate_find_node_response,
            registry_pb2.FindNodeResponse(
                responder=_node(), nodes=[*_nodes(2), _node(address="bad")]
            ),
            "nodes[2].address",
        ),
        (
            validation.validate_find_node_response,
            registry_pb2.FindNodeResponse(responder=_node(), nodes=[*_nodes(2), _nodes(2)[1]]),
            "nodes[2].node_id",
        ),
        (
            validation.validate_find_value_response,
            registry_pb2.FindValueResponse(responder=_node()),
            "result",
        ),
        (
            validation.validate_find_value_response,
            registry_pb2.FindValueResponse(responder=_node(), record=_record(version=0)),
            "record.version",
        ),
        (
            validation.validate_find_value_response,
            registry_pb2.FindValueResponse(
                responder=_node(), closest=registry_pb2.NodeList(nodes=[_node(node_id=bytes(5))])
            ),
            "closest.nodes[0].node_id",
        ),
    ],
)
def test_registry_responses_rejected(
    validate: Callable[[Message], None], msg: Message, field: str
) -> None:
    assert _rejected_field(validate, msg) == field


# --- manager validators ---------------------------------------------------------------------


def _link(neighbour: str, **fields: object) -> manager_pb2.LinkStats:
    msg = manager_pb2.LinkStats(
        neighbour_id=neighbour,
        rtt_us=800,
        jitter_us=90,
        measured_deviation_ns=-250_000,
        predicted_deviation_ns=-240_000,
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _report(**fields: object) -> manager_pb2.HealthReport:
    msg = manager_pb2.HealthReport(
        encoder_id="enc-1",
        sent_unix_ns=T0_NS,
        confidence=0.9,
        cpu_load=0.45,
        encode_latency_us=4_000,
        timecode=52_500_000_000,
        segment_id="seg-0",
        topology_epoch=3,
        links=[_link("enc-2"), _link("enc-3")],
        corrections=manager_pb2.CorrectionCounters(
            slews=40, drops=1, proposals_made=3, proposals_approved=2, proposals_rejected=1
        ),
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    "msg",
    [
        _report(),
        _report(timecode=0, segment_id="", confidence=0.0, cpu_load=1.0),
        _changed(_report(), lambda m: m.ClearField("links")),
        _changed(_report(), lambda m: m.ClearField("corrections")),
        _changed(_report(), lambda m: m.units.extend(f"c{i}/r{i}" for i in range(64))),
    ],
)
def test_health_report_accepted(msg: manager_pb2.HealthReport) -> None:
    validation.validate_health_report(msg)


def _add_link(link: manager_pb2.LinkStats) -> Callable[[manager_pb2.HealthReport], None]:
    return lambda m: m.links.append(link)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (_report(encoder_id=""), "encoder_id"),
        (_report(sent_unix_ns=0), "sent_unix_ns"),
        (_report(confidence=math.nan), "confidence"),
        (_report(cpu_load=1.5), "cpu_load"),
        (_report(cpu_load=-0.1), "cpu_load"),
        (_report(encode_latency_us=60_000_001), "encode_latency_us"),
        (_report(timecode=-1), "timecode"),
        (_report(segment_id="seg/0"), "segment_id"),
        (
            _changed(_report(), lambda m: m.links.extend(_link(f"n-{i}") for i in range(63))),
            "links",
        ),
        (_changed(_report(), _add_link(_link(""))), "links[2].neighbour_id"),
        (_changed(_report(), _add_link(_link("enc-1"))), "links[2].neighbour_id"),
        (_changed(_report(), _add_link(_link("enc-2"))), "links[2].neighbour_id"),
        (_changed(_report(), _add_link(_link("enc-4", rtt_us=60_000_001))), "links[2].rtt_us"),
        (_changed(_report(), _add_link(_link("enc-4", jitter_us=2**32 - 1))), "links[2].jitter_us"),
        (
            _changed(_report(), _add_link(_link("enc-4", measured_deviation_ns=DAY_NS + 1))),
            "links[2].measured_deviation_ns",
        ),
        (
            _changed(_report(), _add_link(_link("enc-4", predicted_deviation_ns=-DAY_NS - 1))),
            "links[2].predicted_deviation_ns",
        ),
        (
            _changed(_report(), lambda m: setattr(m.corrections, "proposals_made", 2)),
            "corrections.proposals_made",
        ),
        (_changed(_report(), lambda m: m.units.extend(["0/hd", "hd"])), "units[1]"),
        (_changed(_report(), lambda m: m.units.extend(["0/hd", "0/a/b"])), "units[1]"),
        (_changed(_report(), lambda m: m.units.extend(["0/hd", "/hd"])), "units[1]"),
        (_changed(_report(), lambda m: m.units.extend(["0/hd", "0/hd"])), "units[1]"),
        (_changed(_report(), lambda m: m.units.extend(f"0/r{i}" for i in range(65))), "units"),
    ],
)
def test_health_report_rejected(msg: manager_pb2.HealthReport, field: str) -> None:
    assert _rejected_field(validation.validate_health_report, msg) == field


def _escalation(**fields: object) -> manager_pb2.Escalation:
    msg = manager_pb2.Escalation(
        encoder_id="enc-1",
        proposal=_valid_proposal(),
        votes=[
            _valid_vote(voter_id="enc-2", approve=False),
            _valid_vote(voter_id="enc-3", approve=True),
        ],
        neighbour_count=4,
        sent_unix_ns=T0_NS,
    )
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    "msg",
    [
        _escalation(),
        _escalation(neighbour_count=2),
        _changed(_escalation(neighbour_count=0), lambda m: m.ClearField("votes")),
    ],
)
def test_escalation_accepted(msg: manager_pb2.Escalation) -> None:
    validation.validate_escalation(msg)


def _add_vote(vote: mesh_pb2.ResyncVote) -> Callable[[manager_pb2.Escalation], None]:
    return lambda m: m.votes.append(vote)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (_escalation(encoder_id="enc 1"), "encoder_id"),
        (_changed(_escalation(), lambda m: m.ClearField("proposal")), "proposal"),
        (
            _changed(_escalation(), lambda m: setattr(m.proposal, "shift_ns", 11 * NS)),
            "proposal.shift_ns",
        ),
        (_escalation(encoder_id="enc-9"), "proposal.proposer_id"),
        (_changed(_escalation(), _add_vote(_valid_vote(voter_id="enc-1"))), "votes[2].voter_id"),
        (
            _changed(_escalation(), _add_vote(_valid_vote(voter_id="enc-4", proposal_id=6))),
            "votes[2].proposal_id",
        ),
        (
            _changed(_escalation(), _add_vote(_valid_vote(voter_id="enc-4", proposer_id="enc-9"))),
            "votes[2].proposer_id",
        ),
        (_changed(_escalation(), _add_vote(_valid_vote(voter_id="enc-2"))), "votes[2].voter_id"),
        (_escalation(neighbour_count=1), "neighbour_count"),
        (_escalation(neighbour_count=65), "neighbour_count"),
        (
            _changed(
                _escalation(neighbour_count=64),
                lambda m: m.votes.extend(_valid_vote(voter_id=f"v-{i}") for i in range(63)),
            ),
            "votes",
        ),
        (_escalation(sent_unix_ns=-1), "sent_unix_ns"),
    ],
)
def test_escalation_rejected(msg: manager_pb2.Escalation, field: str) -> None:
    assert _rejected_field(validation.validate_escalation, msg) == field


@pytest.mark.parametrize(
    ("validate", "message_type", "name"),
    [
        (validation.validate_get_topology_request, manager_pb2.GetTopologyRequest, "encoder_id"),
        (validation.validate_get_segments_request, manager_pb2.GetSegmentsRequest, "segment_id"),
        (
            validation.validate_watch_topology_request,
            manager_pb2.WatchTopologyRequest,
            "encoder_id",
        ),
    ],
)
def test_manager_queries(
    validate: Callable[[Message], None], message_type: type[Message], name: str
) -> None:
    for accepted in ("", "enc-7", "x" * 128):
        validate(message_type(**{name: accepted}))
    for rejected in ("enc 7", "x" * 129, "seg\n1", "ü"):
        assert _rejected_field(validate, message_type(**{name: rejected})) == name


def test_watch_topology_request_accepts_any_epoch() -> None:
    validation.validate_watch_topology_request(
        manager_pb2.WatchTopologyRequest(after_epoch=2**64 - 1, encoder_id="enc-1")
    )


# --- conversions of the registry's and the manager's messages ------------------------------


@given(
    st.integers(min_value=0, max_value=2**160 - 1),
    st.sampled_from(["10.0.0.7:7500", "registry-0.registry:7500", "[::1]:1"]),
)
def test_contact_round_trip(node_id: int, address: str) -> None:
    contact = Contact(node_id, address)
    msg = convert.contact_to_proto(contact)
    validation.validate_node_info(msg)
    assert convert.contact_from_proto(msg) == contact


def _neighbour(name: str, **fields: float) -> NeighbourSnapshot:
    values: dict[str, Any] = dict(
        deviation=-0.00025, predicted=-0.00024, rate=1e-6, rtt=0.0008, jitter=0.00009
    )
    values.update(fields)
    return NeighbourSnapshot(
        neighbour=name, loss=0.0, trusted=True, updates=9, crossing_in=math.nan,
        locked=True, confidence=0.8, **values,
    )  # fmt: skip


def _snapshot(*neighbours: NeighbourSnapshot, **fields: Any) -> EngineSnapshot:
    snap = EngineSnapshot(
        node_id="enc-1", strategy=Strategy.PREDICTIVE, locked=True, timecode=52_500_000_000,
        label=T0_NS / NS, correction=0.002, correction_rate=2e-6, error=0.0001,
        predicted_error=0.0001, confidence=0.9, neighbours=neighbours,
        corrections={CorrectionKind.SLEW: 40, CorrectionKind.DROP: 1}, recent_corrections=(),
        escalations=0, open_proposals=0, parameters=Parameters(1500), pending_change=None,
    )  # fmt: skip
    return dataclasses.replace(snap, **fields)


def _health(snap: EngineSnapshot, **fields: Any) -> manager_pb2.HealthReport:
    args: dict[str, Any] = dict(
        topology_epoch=3, cpu_load=0.45, encode_latency=0.004, segment="seg-0",
        connected=lambda peer: peer != "enc-3", sent_unix_ns=T0_NS,
    )  # fmt: skip
    args.update(fields)
    return convert.health_to_proto("enc-1", snap, **args)


def test_health_report_round_trip() -> None:
    msg = _health(_snapshot(_neighbour("enc-2"), _neighbour("enc-3")))
    validation.validate_health_report(msg)
    assert (msg.timecode, msg.segment_id, msg.corrections.slews) == (52_500_000_000, "seg-0", 40)
    assert msg.links[0].measured_deviation_ns == -250_000
    report = convert.health_from_proto(msg, topology_epoch=1)
    assert (report.encoder_id, report.topology_epoch) == ("enc-1", 1)
    assert report.confidence == pytest.approx(0.9) and report.load == pytest.approx(0.45)
    assert report.encode_latency == 0.004
    assert [(s.neighbour_id, s.rtt, s.jitter, s.connected) for s in report.links] == [
        ("enc-2", 0.0008, 0.00009, True),
        ("enc-3", 0.0008, 0.00009, False),
    ]


def test_the_units_served_go_out_sorted_once_and_come_back_as_a_set() -> None:
    served = [f"ch{i % 70}/hd" for i in range(140)]  # more than a report carries, twice over
    msg = _health(_snapshot(_neighbour("enc-2")), units=served)
    validation.validate_health_report(msg)
    assert list(msg.units) == sorted(set(served))[:64]
    assert convert.health_from_proto(msg, topology_epoch=1).units == frozenset(msg.units)


def test_a_link_without_connected_counts_as_up() -> None:
    report = convert.health_from_proto(_report(), 0)  # _link leaves connected unset
    assert [sample.connected for sample in report.links] == [True, True]


def test_a_health_report_is_valid_whatever_was_measured() -> None:
    absurd = _neighbour("enc-2", deviation=math.inf, predicted=-1e6, rtt=-1.0, jitter=1e9)
    snap = _snapshot(
        absurd, _neighbour("enc-1"), *(_neighbour(f"n-{k}") for k in range(70)),
        confidence=math.nan, timecode=None,
    )  # fmt: skip
    msg = _health(snap, cpu_load=1.5, encode_latency=math.nan)
    validation.validate_health_report(msg)
    assert (msg.confidence, msg.cpu_load, msg.encode_latency_us, msg.timecode) == (0, 1, 0, 0)
    first = msg.links[0]
    assert (first.measured_deviation_ns, first.predicted_deviation_ns) == (0, -MAX_DEVIATION_NS)
    assert (first.rtt_us, first.jitter_us) == (0, MAX_LATENCY_US)
    assert "enc-1" not in {link.neighbour_id for link in msg.links}  # never a link to itself
    assert len(msg.links) == MAX_NEIGHBOURS - 1  # the first 64 neighbours, less itself


def test_escalation_round_trip() -> None:
    proposal = ResyncProposal("enc-1", 5, CorrectionKind.SLEW, 0.004, topology_epoch=2)
    votes = (
        ResyncVote("enc-1", 5, "enc-2", False, 0.012, "far off"),
        ResyncVote("enc-1", 5, "enc-3", True, -0.001),
    )
    msg = convert.escalation_to_proto(proposal, votes, 4, T0_NS)
    validation.validate_escalation(msg)
    escalated = convert.escalation_from_proto(msg)
    assert (escalated.encoder_id, escalated.neighbour_count) == ("enc-1", 4)
    assert escalated.proposal == proposal and escalated.votes == votes


def test_an_escalation_names_at_least_its_voters_as_neighbours() -> None:
    proposal = ResyncProposal("enc-1", 5, CorrectionKind.SLEW, 0.004, topology_epoch=2)
    votes = [ResyncVote("enc-1", 5, f"v-{k}", False, 0.0) for k in range(70)]
    assert convert.escalation_to_proto(proposal, votes[:2], 0, T0_NS).neighbour_count == 2
    msg = convert.escalation_to_proto(proposal, votes, 99, T0_NS)
    validation.validate_escalation(msg)
    assert len(msg.votes) == msg.neighbour_count == MAX_NEIGHBOURS


def test_verdicts_map_one_to_one() -> None:
    wire = {convert.verdict_to_proto(v) for v in EscalationVerdict}
    assert len(wire) == len(EscalationVerdict)
    assert manager_pb2.ESCALATION_VERDICT_UNSPECIFIED not in wire


def test_escalation_ack_carries_the_published_epoch_and_a_wire_reason() -> None:
    judged = EscalationJudged("enc-1", 5, EscalationVerdict.APPLY, "a\nb" + "x" * 400, 2)
    ack = convert.escalation_ack_to_proto(judged, topology_epoch=12)
    assert (ack.verdict, ack.topology_epoch) == (manager_pb2.ESCALATION_VERDICT_APPLY, 12)
    assert ack.reason.startswith("a b") and ack.reason.endswith("...")
    assert len(ack.reason) == validation.MAX_REASON_LENGTH


def test_clipped_reasons_are_valid_on_the_wire() -> None:
    for text in ("", "ok", "two\nlines\tand  spaces", "é" * 1000):
        vote = _valid_vote(reason=convert.clip_reason(text))
        validation.validate_vote(vote)
    assert convert.clip_reason(" two\nlines ") == "two lines"


def test_topology_lists_encoders_in_order() -> None:
    msg = convert.topology_to_proto(7, {"enc-2": ("enc-1",), "enc-1": ("enc-2", "enc-0")})
    assert msg.epoch == 7
    assert [(a.encoder_id, list(a.neighbour_ids)) for a in msg.adjacency] == [
        ("enc-1", ["enc-2", "enc-0"]),
        ("enc-2", ["enc-1"]),
    ]
    assert convert.topology_to_proto(0, {}) == manager_pb2.Topology()


def test_segment_map_fields() -> None:
    segments = (
        SegmentInfo("s1", ("enc-1", "enc-2"), "enc-1", "enc-2", 41),
        SegmentInfo("s2", ("enc-3",), "enc-3"),
    )
    msg = convert.segments_to_proto(segments, topology_epoch=9)
    assert msg.topology_epoch == 9
    first, second = msg.segments
    assert (first.segment_id, list(first.member_ids)) == ("s1", ["enc-1", "enc-2"])
    assert (first.leader_id, first.leader_revision) == ("enc-2", 41)
    assert (second.leader_id, second.leader_revision) == ("", 0)


# --- conversions of GetState's answer ------------------------------------------------------


def _state(snap: EngineSnapshot, **fields: Any) -> mesh_pb2.EncoderState:
    args: dict[str, Any] = dict(
        frame_rate=FrameRate(30000, 1001), segment_layout=SegmentLayout(30), segment="seg-0",
        topology_epoch=3,
        input_status=mesh_pb2.InputStatus(state="live"), last_esp=None,
        connected=lambda peer: peer == "enc-2", injected_drift_ppm=5.0,
        injected_offset_ms=-2.0, injected_jitter_ms=0.5, taken_unix_ns=T0_NS, stalls=0,
        unvouched_segments=0, unconfirmed_segments=0, restored_segments=0,
        started_size=(640, 360),
    )  # fmt: skip
    args.update(fields)
    return convert.encoder_state_to_proto(snap, **args)


def test_frame_rate_stays_exact() -> None:
    msg = convert.frame_rate_to_proto(FrameRate(60000, 2002))
    assert (msg.num, msg.den) == (30000, 1001)


def test_encoder_state_fields() -> None:
    esp = _valid_esp_dataclass(T0_NS / NS, T0_NS / NS)
    state = _state(_snapshot(_neighbour("enc-2"), _neighbour("enc-3")), last_esp=esp)
    assert (state.encoder_id, state.protocol_version) == ("enc-1", validation.PROTOCOL_VERSION)
    assert (state.frame_rate.num, state.frame_rate.den, state.gop_length) == (30000, 1001, 30)
    assert (state.timecode, state.segment_number) == (52_500_000_000, 52_500_000_000 // 30)
    assert (state.correction_ns, state.correction_rate_ppb) == (2_000_000, 2_000)
    assert (state.segment_id, state.topology_epoch, state.taken_unix_ns) == ("seg-0", 3, T0_NS)
    assert (state.injected_drift_ppm, state.input.state) == (5.0, "live")
    assert dict(state.corrections) == {"slew": 40, "drop": 1}
    assert convert.esp_from_proto(state.last_esp) == esp
    assert not state.HasField("pending_parameters") and state.leader_id == ""
    assert [(n.neighbour_id, n.connected) for n in state.neighbours] == [
        ("enc-2", True),
        ("enc-3", False),
    ]
    assert state.neighbours[0].rtt_us == 800 and state.neighbours[0].crossing_in_ms == -1.0


def test_encoder_state_shows_the_agreed_size_or_the_started_one() -> None:
    started = _state(_snapshot())
    assert (started.width, started.height) == (640, 360)
    changed = ParameterChange(9, Parameters(800, (320, 180)))
    pending = _state(_snapshot(pending_change=changed))
    assert (pending.width, pending.height) == (640, 360)
    assert (pending.pending_parameters.effective_segment, pending.pending_parameters.width) == (
        9,
        320,
    )
    later = _state(_snapshot(parameters=changed.parameters))
    assert (later.bitrate_kbps, later.width, later.height) == (800, 320, 180)


def test_encoder_state_shows_what_a_neighbour_reported_of_itself() -> None:
    reporting = _neighbour(
        "enc-2", reported_encode_latency=0.004, reported_rtt=0.150, reported_jitter=math.inf
    )
    (shown,) = _state(_snapshot(reporting)).neighbours
    assert (shown.reported_encode_latency_us, shown.reported_rtt_us) == (4_000, 150_000)
    assert shown.reported_jitter_us == 0  # not a measurement


def test_encoder_state_shows_unmeasured_values_as_zero() -> None:
    unmeasured = _neighbour("enc-2", deviation=math.nan, predicted=math.nan, rate=math.nan,
                            rtt=math.nan, jitter=math.nan)  # fmt: skip
    state = _state(_snapshot(unmeasured, error=math.nan, timecode=None))
    assert (state.error_ns, state.timecode, state.segment_number) == (0, 0, 0)
    (n,) = state.neighbours
    assert (n.measured_deviation_ns, n.deviation_rate_ppb, n.rtt_us, n.jitter_us) == (0, 0, 0, 0)


def test_encoder_state_shows_stalls_vouching_and_silent_neighbours() -> None:
    silent = dataclasses.replace(_neighbour("enc-3"), silent=True)
    snap = _snapshot(_neighbour("enc-2"), silent, unproven=True, vouches=False)
    state = _state(
        snap, stalls=2, unvouched_segments=9, unconfirmed_segments=4, restored_segments=3
    )
    assert (state.vouches, state.unproven, state.stalls) == (False, True, 2)
    assert (state.unvouched_segments, state.unconfirmed_segments) == (9, 4)
    assert state.restored_segments == 3
    assert [(n.neighbour_id, n.silent) for n in state.neighbours] == [
        ("enc-2", False),
        ("enc-3", True),
    ]
    assert _state(_snapshot(vouches=True)).vouches


def test_encoder_state_shows_the_election() -> None:
    election = ElectionSnapshot(Role.LEADER, "enc-1", 7, 7, True, ("enc-1",), ())
    state = _state(_snapshot(), election=election)
    assert (state.leader_id, state.leader_token, state.coordination_degraded) == ("enc-1", 7, True)
