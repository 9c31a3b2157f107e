"""Validation of received meshenc.v1 messages: the one place where the wire rules live.

A server calls ``validate_<message>`` on every message it receives before converting or using
it; a violation raises :class:`InvalidMessage` naming the field (as a dotted path, e.g.
``esp.label_unix_ns`` or ``votes[2].voter_id``) and the rule, which the services map to
``INVALID_ARGUMENT``. Validators check one message on its own; the rules that span the
messages of an Exchange stream are checked by :class:`ExchangeStreamChecker`. Unknown fields
are tolerated (that is how newer peers stay compatible).

Rules (the limits are the constants of this module):

Common
  - Identifiers (encoder, sender, proposer, voter, neighbour, segment, leader ids) are 1 to
    ``MAX_ID_LENGTH`` characters of ``[A-Za-z0-9._-]``; where a field says "empty if none"
    or "empty for all", the empty string is accepted too.
  - Instants (``*_unix_ns``) are > 0 and < ``MAX_UNIX_NS`` (2200-01-01T00:00:00Z).
  - Confidences and loads are finite and within [0, 1].
  - Latencies, RTTs and jitters (``*_us``) are at most ``MAX_LATENCY_US`` (60 s).
  - Enums are known values other than their UNSPECIFIED zero.
  - Trace contexts have at most ``MAX_TRACE_ENTRIES`` entries; keys are 1 to
    ``MAX_TRACE_KEY_LENGTH`` characters of ``[A-Za-z0-9._-]``, values at most
    ``MAX_TRACE_VALUE_LENGTH`` printable ASCII characters.
  - Free-text reasons are at most ``MAX_REASON_LENGTH`` characters without control
    characters.

Mesh (``EncoderMesh``)
  - MeshMessage: exactly one body is set, and it is valid.
  - MeshBatch: 1 to ``MAX_BATCH_MESSAGES`` messages, each an ESP, a proposal or a vote (no
    Hello, no batch), each valid (named ``batch.messages[i].esp.sequence`` and so on).
  - Hello: ``protocol_version`` >= 1; ``frame_rate`` is set, ``num`` and ``den`` > 0 and
    ``num/den`` within [``MIN_FRAME_RATE``, ``MAX_FRAME_RATE``]; ``gop_length`` within
    [1, ``MAX_GOP_LENGTH``]; ``channel`` empty or a channel name (an id other than ``.`` and
    ``..``: it names a folder).
  - EncodingStatePacket: ``sequence`` > 0; 0 < ``timecode`` < ``MAX_TIMECODE``;
    ``frame_hash`` is empty (frame not encoded yet) or exactly ``FRAME_HASH_LENGTH`` bytes;
    ``label_unix_ns`` and ``sent_unix_ns`` are instants; ``|correction_ns|`` <=
    ``MAX_CORRECTION_NS`` (24 h); ``|correction_rate_ppb|`` <= ``MAX_CORRECTION_RATE_PPB``
    (10,000 ppm); ``confidence`` within [0, 1]; when ``echo_sequence`` is 0 both other echo
    fields are 0, otherwise ``echo_sent_unix_ns`` is an instant and ``echo_hold_ns`` <=
    ``MAX_ECHO_HOLD_NS``; ``anchor_id`` is empty (then ``anchor_hops`` and
    ``anchor_offset_ns`` are 0) or an id, ``anchor_hops`` < ``MAX_HOPS`` and 0 exactly when
    ``anchor_id`` is the sender, ``|anchor_offset_ns|`` <= ``MAX_DEVIATION_NS`` (24 h) and 0
    when ``anchor_hops`` is 0; ``timeline`` is empty or an id; ``merge_timeline`` is empty
    (then every ``merge_*`` field is 0 or empty) or an id named before ``timeline`` (which is
    then set), 0 < ``merge_hops`` < ``MAX_HOPS``, ``|merge_offset_ns|`` <=
    ``MAX_DEVIATION_NS``, ``merge_witnesses`` 1 to ``MAX_WITNESSES`` distinct sorted ids and
    0 <= ``merge_segment`` < ``MAX_TIMECODE``; ``beacon_timeline`` is empty (then every
    ``beacon_*`` field is 0 or empty) or an id, ``beacon_origin`` an id, ``beacon_hops`` <
    ``MAX_HOPS`` and 0 exactly when ``beacon_origin`` is the sender (then ``beacon_timeline``
    is ``timeline`` and ``beacon_offset_ns`` is 0), ``|beacon_offset_ns|`` <=
    ``MAX_DEVIATION_NS``; ``written_segment`` and ``segment_digest`` are
    both unset (and ``segment_vouched`` false, ``segment_unit`` empty), or 0 <
    ``written_segment`` < ``MAX_TIMECODE`` with a digest of exactly ``FRAME_HASH_LENGTH``
    bytes and ``segment_unit`` empty or a folder name (an id other than ``.`` and ``..``);
    ``params_width`` and ``params_height`` both 0, or (with ``params_segment``) a size
    encoders write.
  - ResyncProposal: ``proposal_id`` > 0; ``kind`` known and not UNSPECIFIED;
    ``|shift_ns|`` <= ``MAX_SHIFT_NS`` (10 s); PARAMETER requires ``bitrate_kbps`` within
    [``MIN_BITRATE_KBPS``, ``MAX_BITRATE_KBPS``], 0 < ``effective_segment`` <
    ``MAX_TIMECODE`` and ``width``, ``height`` both 0 (the started size) or a size encoders
    write (:func:`meshenc.core.parameters.check_size`); every other kind requires all four
    to be 0.
  - ResyncVote: ``proposal_id`` > 0; ``voter_id`` differs from ``proposer_id``;
    ``|estimated_deviation_ns|`` <= ``MAX_DEVIATION_NS`` (24 h).
  - GetStateRequest, SetParametersRequest: ``channel`` empty or a channel name; SetParameters
    also ``bitrate_kbps`` 0 or within [``MIN_BITRATE_KBPS``, ``MAX_BITRATE_KBPS``],
    ``width`` and ``height`` both 0 or a size encoders write, and not all three 0.
  - Exchange stream (stateful, :class:`ExchangeStreamChecker`): the first message is a
    Hello and no later one is; the Hello's sender is not the receiver; every later message
    comes from the Hello's sender (``esp.sender_id``, ``proposal.proposer_id``,
    ``vote.voter_id``); a vote answers a proposal of the receiver; ESP sequences strictly
    increase. A batch's messages are held to these rules one after another, in order, and a
    batch only passes whole.

Registry (``Registry``)
  - NodeInfo: ``node_id`` exactly ``NODE_ID_LENGTH`` (20) bytes; ``address`` is
    ``host:port`` with port 1..65535 and host a DNS name of at most ``MAX_HOST_LENGTH``
    characters, an IPv4 address or a bracketed IPv6 address.
  - Requests: ``sender`` may be unset (a caller outside the DHT), and is valid when set;
    ``target``/``key`` are exactly 20 bytes; Store requires a valid ``record``.
  - EncoderRecord: valid ``encoder_id`` and ``address``; ``segment_id`` empty or an id;
    ``capacity`` <= ``MAX_CAPACITY``; ``health`` known and not UNSPECIFIED; ``version`` > 0;
    ``ttl_ms`` within [1, ``MAX_TTL_MS``] (24 h); ``signature`` at most
    ``MAX_SIGNATURE_BYTES`` and ``certificate`` at most ``MAX_CERTIFICATE_BYTES``, both set
    or both empty (whether the signature holds is :mod:`meshenc.wire.signature`'s business).
  - Responses (received by the lookup of the calling node): ``responder`` is set and valid;
    node lists hold at most ``MAX_NODES_PER_RESPONSE`` nodes with distinct ids;
    FindValueResponse sets exactly one result.

Manager (``MeshManager``)
  - HealthReport: ``sent_unix_ns`` an instant; ``confidence`` and ``cpu_load`` within [0, 1];
    ``encode_latency_us`` <= ``MAX_LATENCY_US``; 0 <= ``timecode`` < ``MAX_TIMECODE`` (0 =
    no frame yet); ``segment_id`` empty or an id; at most ``MAX_NEIGHBOURS`` links, to
    distinct neighbours other than the reporter, each with latencies <= ``MAX_LATENCY_US``
    and ``|deviations|`` <= ``MAX_DEVIATION_NS`` (``connected`` may be unset, which counts
    as up); ``proposals_approved + proposals_rejected`` <= ``proposals_made``; at most
    ``MAX_UNITS_PER_ENCODER`` distinct ``units``, each ``CHANNEL/RENDITION`` (two ids).
  - Escalation: ``proposal`` is set and valid, and its proposer is ``encoder_id``; at most
    ``MAX_NEIGHBOURS`` votes, each valid, answering that proposal, from distinct voters;
    ``len(votes)`` <= ``neighbour_count`` <= ``MAX_NEIGHBOURS``; ``sent_unix_ns`` an instant.
  - GetTopologyRequest, GetSegmentsRequest, WatchTopologyRequest: the optional id filter is
    empty or an id.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Final

from meshenc.core.anchor import MAX_HOPS
from meshenc.core.parameters import check_size
from meshenc.core.planner.load import MAX_UNITS_PER_ENCODER
from meshenc.core.planner.topology import MAX_DEGREE
from meshenc.core.timeline import MAX_WITNESSES
from meshenc.v1 import common_pb2, manager_pb2, mesh_pb2, registry_pb2
from meshenc.wire.address import MAX_HOST_LENGTH, parse_address
from meshenc.wire.errors import InvalidMessage

__all__ = [
    "FRAME_HASH_LENGTH",
    "MAX_BITRATE_KBPS",
    "MAX_CAPACITY",
    "MAX_CERTIFICATE_BYTES",
    "MAX_CORRECTION_NS",
    "MAX_CORRECTION_RATE_PPB",
    "MAX_DEVIATION_NS",
    "MAX_ECHO_HOLD_NS",
    "MAX_FRAME_RATE",
    "MAX_GOP_LENGTH",
    "MAX_HOST_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_LATENCY_US",
    "MAX_NEIGHBOURS",
    "MAX_NODES_PER_RESPONSE",
    "MAX_REASON_LENGTH",
    "MAX_SHIFT_NS",
    "MAX_SIGNATURE_BYTES",
    "MAX_TIMECODE",
    "MAX_TRACE_ENTRIES",
    "MAX_TRACE_KEY_LENGTH",
    "MAX_TRACE_VALUE_LENGTH",
    "MAX_TTL_MS",
    "MAX_UNIX_NS",
    "MIN_BITRATE_KBPS",
    "MIN_FRAME_RATE",
    "NODE_ID_LENGTH",
    "PROTOCOL_VERSION",
    "ExchangeStreamChecker",
    "InvalidMessage",
    "check_channel_name",
    "validate_encoder_record",
    "validate_escalation",
    "validate_esp",
    "validate_find_node_request",
    "validate_find_node_response",
    "validate_find_value_request",
    "validate_find_value_response",
    "validate_get_segments_request",
    "validate_get_state_request",
    "validate_get_topology_request",
    "validate_health_report",
    "validate_hello",
    "validate_mesh_message",
    "validate_node_info",
    "validate_ping_request",
    "validate_ping_response",
    "validate_proposal",
    "validate_set_parameters_request",
    "validate_store_request",
    "validate_store_response",
    "validate_vote",
    "validate_watch_topology_request",
]

_NS_PER_S: Final = 1_000_000_000

PROTOCOL_VERSION: Final = 1
"""The protocol version this code speaks and sends in its Hello."""

MAX_ID_LENGTH: Final = 128
"""Longest identifier (encoder, segment, ...), in characters of ``[A-Za-z0-9._-]``."""
MAX_UNIX_NS: Final = 7_258_118_400 * _NS_PER_S
"""Instants must lie before this: 2200-01-01T00:00:00Z in nanoseconds since the Unix epoch."""
MIN_FRAME_RATE: Final = 1
"""Lowest mesh frame rate, frames per second."""
MAX_FRAME_RATE: Final = 300
"""Highest mesh frame rate, frames per second."""
MAX_GOP_LENGTH: Final = 10_000
"""Longest GOP (and media segment), frames."""
MAX_TIMECODE: Final = MAX_UNIX_NS // _NS_PER_S * MAX_FRAME_RATE
"""Timecodes and segment numbers must lie below this: year 2200 at the highest frame rate."""
FRAME_HASH_LENGTH: Final = 32
"""Length of an encoded frame's SHA-256 hash, bytes."""
MAX_CORRECTION_NS: Final = 24 * 3600 * _NS_PER_S
"""Largest correction term magnitude: 24 h, nanoseconds."""
MAX_CORRECTION_RATE_PPB: Final = 10_000_000
"""Largest label-rate adjustment: 10,000 ppm (1 %), in parts per billion. Encoders steer up to
5,000 ppm to follow ingest delays that swing by tens of milliseconds a minute."""
MAX_LATENCY_US: Final = 60_000_000
"""Largest encode latency, RTT or jitter: 60 s, microseconds."""
MAX_ECHO_HOLD_NS: Final = 60 * _NS_PER_S
"""Longest time an ESP may be held before it is echoed: 60 s, nanoseconds."""
MAX_SHIFT_NS: Final = 10 * _NS_PER_S
"""Largest shift a resync proposal may ask for: 10 s, nanoseconds."""
MAX_DEVIATION_NS: Final = 24 * 3600 * _NS_PER_S
"""Largest deviation an encoder may report or vote with: 24 h, nanoseconds."""
MIN_BITRATE_KBPS: Final = 64
"""Lowest bitrate a PARAMETER proposal may set, kbit/s."""
MAX_BITRATE_KBPS: Final = 200_000
"""Highest bitrate a PARAMETER proposal may set, kbit/s."""
MAX_TRACE_ENTRIES: Final = 8
"""Most entries in a trace context map."""
MAX_TRACE_KEY_LENGTH: Final = 64
"""Longest trace context key, characters of ``[A-Za-z0-9._-]``."""
MAX_TRACE_VALUE_LENGTH: Final = 512
"""Longest trace context value, printable ASCII characters (W3C's tracestate limit)."""
MAX_REASON_LENGTH: Final = 256
"""Longest free-text reason, characters."""
NODE_ID_LENGTH: Final = 20
"""Length of a Kademlia node id, DHT key or lookup target: 160 bits, bytes."""
MAX_NODES_PER_RESPONSE: Final = 64
"""Most nodes a registry response may list (k is at most this)."""
MAX_CAPACITY: Final = 1_000_000
"""Highest capacity an encoder record may announce, work units."""
MAX_TTL_MS: Final = 24 * 3600 * 1000
"""Longest record time-to-live: 24 h, milliseconds."""
MAX_SIGNATURE_BYTES: Final = 512
"""Longest record signature: an RSA-4096 signature; ECDSA P-256 (what ``meshenc certs`` makes)
takes at most 72."""
MAX_CERTIFICATE_BYTES: Final = 4096
"""Longest signer certificate (DER) in a record: a ``meshenc certs`` certificate is about 600
bytes, an RSA-4096 one with a few names under 2,000; the bound keeps a replica's store small."""
MAX_NEIGHBOURS: Final = MAX_DEGREE
"""Links one health report or escalation may name: the most neighbours an operator may let the
planner give an encoder."""
MAX_BATCH_MESSAGES: Final = 64
"""Messages one MeshBatch may carry: a neighbour's whole outbox (32 ESPs, 16 proposals and
votes) fits in one by default, and 64 of the largest valid messages (a vote with a full trace
context, about 5 KB) stay far below a request's 1 MiB."""

_ID_RE: Final = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID_LENGTH}}}")
_TRACE_KEY_RE: Final = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_TRACE_KEY_LENGTH}}}")
_TRACE_VALUE_RE: Final = re.compile(rf"[\x20-\x7e]{{0,{MAX_TRACE_VALUE_LENGTH}}}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_KNOWN_KINDS: Final = frozenset(common_pb2.CorrectionKind.values()) - {
    common_pb2.CORRECTION_KIND_UNSPECIFIED
}
_KNOWN_HEALTH: Final = frozenset(registry_pb2.EncoderHealth.values()) - {
    registry_pb2.ENCODER_HEALTH_UNSPECIFIED
}


# --- helpers --------------------------------------------------------------------------------


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value: object) -> str:
    """``repr`` of a received value, cut short so that a huge field cannot flood a log."""
    text = repr(value)
    return text if len(text) <= 48 else f"{text[:45]}..."


def _check_id(value: str, field: str, *, allow_empty: bool = False) -> None:
    if allow_empty and not value:
        return
    if _ID_RE.fullmatch(value) is None:
        empty = " (or empty)" if allow_empty else ""
        raise InvalidMessage(
            field,
            f"must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9._-]{empty}, got {_show(value)}",
        )


def check_channel_name(value: str, field: str = "channel", *, allow_empty: bool = False) -> None:
    """A channel name: an id other than ``.`` and ``..``, since it names the channel's folder
    (``OUT/<channel>/``) and its etcd keys.

    Raises:
        InvalidMessage: naming ``field`` and the rule.
    """
    _check_id(value, field, allow_empty=allow_empty)
    if value in (".", ".."):
        raise InvalidMessage(field, f"must not be '.' or '..', got {_show(value)}")


def _check_range(value: int, low: int, high: int, field: str, unit: str = "") -> None:
    """``low <= value <= high``."""
    if not low <= value <= high:
        suffix = f" {unit}" if unit else ""
        raise InvalidMessage(field, f"must be in [{low}, {high}]{suffix}, got {value}")


def _check_magnitude(value: int, limit: int, field: str, unit: str, meaning: str) -> None:
    if abs(value) > limit:
        raise InvalidMessage(
            field, f"magnitude must be at most {limit} {unit} ({meaning}), got {value}"
        )


def _check_positive(value: int, field: str) -> None:
    if value <= 0:
        raise InvalidMessage(field, f"must be > 0, got {value}")


def _check_instant(value: int, field: str) -> None:
    if not 0 < value < MAX_UNIX_NS:
        raise InvalidMessage(
            field,
            f"must be > 0 and < {MAX_UNIX_NS} ns since the Unix epoch (year 2200), got {value}",
        )


def _check_fraction(value: float, field: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidMessage(field, f"must be finite and in [0, 1], got {value!r}")


def _check_latency_us(value: int, field: str) -> None:
    _check_range(value, 0, MAX_LATENCY_US, field, "us (60 s)")


def _check_deviation_ns(value: int, field: str) -> None:
    _check_magnitude(value, MAX_DEVIATION_NS, field, "ns", "24 h")


def _check_timecode(value: int, field: str, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= value < MAX_TIMECODE:
        raise InvalidMessage(
            field,
            f"must be >= {low} and < {MAX_TIMECODE} (year 2200 at {MAX_FRAME_RATE} fps), "
            f"got {value}",
        )


def _check_reason(value: str, field: str) -> None:
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidMessage(
            field, f"must be at most {MAX_REASON_LENGTH} characters, got {len(value)}"
        )
    if _CONTROL_RE.search(value) is not None:
        raise InvalidMessage(field, f"must not contain control characters, got {_show(value)}")


def _check_trace_context(entries: Mapping[str, str], field: str) -> None:
    if len(entries) > MAX_TRACE_ENTRIES:
        raise InvalidMessage(
            field, f"must have at most {MAX_TRACE_ENTRIES} entries, got {len(entries)}"
        )
    for key, value in entries.items():
        if _TRACE_KEY_RE.fullmatch(key) is None:
            raise InvalidMessage(
                field,
                f"keys must be 1-{MAX_TRACE_KEY_LENGTH} characters of [A-Za-z0-9._-], "
                f"got {_show(key)}",
            )
        if _TRACE_VALUE_RE.fullmatch(value) is None:
            raise InvalidMessage(
                f"{field}[{key}]",
                f"must be at most {MAX_TRACE_VALUE_LENGTH} printable ASCII characters, "
                f"got {_show(value)}",
            )


def _check_fixed_bytes(value: bytes, length: int, field: str) -> None:
    if len(value) != length:
        raise InvalidMessage(field, f"must be exactly {length} bytes, got {len(value)}")


def _check_address(value: str, field: str) -> None:
    try:
        parse_address(value)
    except ValueError as exc:
        raise InvalidMessage(field, str(exc)) from None


def _check_distinct(ids: Sequence[object], field: str, name: str) -> None:
    seen: set[object] = set()
    for index, value in enumerate(ids):
        if value in seen:
            raise InvalidMessage(
                f"{field}[{index}].{name}", f"must be distinct, got {_show(value)} twice"
            )
        seen.add(value)


# --- mesh -----------------------------------------------------------------------------------


def _hello(msg: mesh_pb2.Hello, prefix: str) -> None:
    _check_id(msg.sender_id, _path(prefix, "sender_id"))
    if msg.protocol_version < 1:
        raise InvalidMessage(
            _path(prefix, "protocol_version"), f"must be >= 1, got {msg.protocol_version}"
        )
    rate_field = _path(prefix, "frame_rate")
    if not msg.HasField("frame_rate"):
        raise InvalidMessage(rate_field, "must be set")
    rate = msg.frame_rate
    _check_positive(rate.num, f"{rate_field}.num")
    _check_positive(rate.den, f"{rate_field}.den")
    if not MIN_FRAME_RATE * rate.den <= rate.num <= MAX_FRAME_RATE * rate.den:
        raise InvalidMessage(
            rate_field,
            f"must be within [{MIN_FRAME_RATE}, {MAX_FRAME_RATE}] fps, got {rate.num}/{rate.den}",
        )
    _check_range(msg.gop_length, 1, MAX_GOP_LENGTH, _path(prefix, "gop_length"), "frames")
    check_channel_name(msg.channel, _path(prefix, "channel"), allow_empty=True)


def _esp(msg: mesh_pb2.EncodingStatePacket, prefix: str) -> None:
    _check_id(msg.sender_id, _path(prefix, "sender_id"))
    _check_positive(msg.sequence, _path(prefix, "sequence"))
    _check_timecode(msg.timecode, _path(prefix, "timecode"))
    if len(msg.frame_hash) not in (0, FRAME_HASH_LENGTH):
        raise InvalidMessage(
            _path(prefix, "frame_hash"),
            f"must be empty or exactly {FRAME_HASH_LENGTH} bytes (SHA-256), "
            f"got {len(msg.frame_hash)}",
        )
    _check_instant(msg.label_unix_ns, _path(prefix, "label_unix_ns"))
    _check_magnitude(
        msg.correction_ns, MAX_CORRECTION_NS, _path(prefix, "correction_ns"), "ns", "24 h"
    )
    _check_magnitude(
        msg.correction_rate_ppb,
        MAX_CORRECTION_RATE_PPB,
        _path(prefix, "correction_rate_ppb"),
        "ppb",
        "10,000 ppm",
    )
    _check_latency_us(msg.encode_latency_us, _path(prefix, "encode_latency_us"))
    _check_latency_us(msg.rtt_us, _path(prefix, "rtt_us"))
    _check_latency_us(msg.jitter_us, _path(prefix, "jitter_us"))
    _check_fraction(msg.confidence, _path(prefix, "confidence"))
    _check_instant(msg.sent_unix_ns, _path(prefix, "sent_unix_ns"))
    if msg.echo_sequence == 0:
        for name in ("echo_sent_unix_ns", "echo_hold_ns"):
            if getattr(msg, name) != 0:
                raise InvalidMessage(
                    _path(prefix, name),
                    f"must be 0 when echo_sequence is 0, got {getattr(msg, name)}",
                )
    else:
        _check_instant(msg.echo_sent_unix_ns, _path(prefix, "echo_sent_unix_ns"))
        _check_range(
            msg.echo_hold_ns, 0, MAX_ECHO_HOLD_NS, _path(prefix, "echo_hold_ns"), "ns (60 s)"
        )
    _parameter_change(
        msg.params_segment,
        msg.params_bitrate_kbps,
        _path(prefix, "params_segment"),
        _path(prefix, "params_bitrate_kbps"),
    )
    if msg.params_segment == 0:
        _check_zero(msg, ("params_width", "params_height"), prefix, "when params_segment is 0")
    else:
        _check_size(msg.params_width, msg.params_height, _path(prefix, "params_width"))
    _anchor(msg, prefix)
    _merge_route(msg, prefix)
    _beacon(msg, prefix)
    _written_segment(msg, prefix)


def _written_segment(msg: mesh_pb2.EncodingStatePacket, prefix: str) -> None:
    """An ESP's newest written segment and its digest: both or neither; vouched for and of a
    named unit (a rung's folder name, as a channel's is) only with both."""
    if not msg.written_segment and not msg.segment_digest:
        for field, value in (
            ("segment_vouched", msg.segment_vouched),
            ("segment_unit", msg.segment_unit),
        ):
            if value:
                raise InvalidMessage(_path(prefix, field), "must be unset without written_segment")
        return
    check_channel_name(msg.segment_unit, _path(prefix, "segment_unit"), allow_empty=True)
    _check_range(
        msg.written_segment, 1, MAX_TIMECODE - 1, _path(prefix, "written_segment"), "segments"
    )
    if len(msg.segment_digest) != FRAME_HASH_LENGTH:
        raise InvalidMessage(
            _path(prefix, "segment_digest"),
            f"must be exactly {FRAME_HASH_LENGTH} bytes (SHA-256) with written_segment, "
            f"got {len(msg.segment_digest)}",
        )


def _merge_route(msg: mesh_pb2.EncodingStatePacket, prefix: str) -> None:
    """An ESP's timeline and merge route (``meshenc.core.timeline``): a route only from a
    sender on a timeline, to one named before it, with its witnesses and schedule."""
    if msg.timeline:
        _check_id(msg.timeline, _path(prefix, "timeline"))
    route_field = _path(prefix, "merge_timeline")
    if not msg.merge_timeline:
        for name in ("merge_hops", "merge_offset_ns", "merge_witnesses", "merge_segment"):
            if getattr(msg, name):
                raise InvalidMessage(
                    _path(prefix, name), "must be 0 or empty when merge_timeline is empty"
                )
        return
    _check_id(msg.merge_timeline, route_field)
    if not msg.timeline or msg.merge_timeline >= msg.timeline:
        raise InvalidMessage(
            route_field,
            f"must be named before the sender's timeline {_show(msg.timeline)}, "
            f"got {_show(msg.merge_timeline)}",
        )
    _check_range(msg.merge_hops, 1, MAX_HOPS - 1, _path(prefix, "merge_hops"), "links")
    _check_deviation_ns(msg.merge_offset_ns, _path(prefix, "merge_offset_ns"))
    _check_witnesses(list(msg.merge_witnesses), _path(prefix, "merge_witnesses"))
    if msg.merge_segment:
        _check_range(
            msg.merge_segment, 1, MAX_TIMECODE - 1, _path(prefix, "merge_segment"), "segments"
        )


def _beacon(msg: mesh_pb2.EncodingStatePacket, prefix: str) -> None:
    """An ESP's timeline beacon (``meshenc.core.timeline``): none (all zero), or a timeline
    and the encoder locked on it that the beacon started from: the sender itself, its own
    timeline at offset 0, exactly when it is 0 links away."""
    name_field = _path(prefix, "beacon_timeline")
    hops_field = _path(prefix, "beacon_hops")
    offset_field = _path(prefix, "beacon_offset_ns")
    origin_field = _path(prefix, "beacon_origin")
    if not msg.beacon_timeline:
        for field, value in (
            (hops_field, msg.beacon_hops),
            (offset_field, msg.beacon_offset_ns),
            (origin_field, len(msg.beacon_origin)),
        ):
            if value != 0:
                raise InvalidMessage(field, "must be 0 or empty when beacon_timeline is empty")
        return
    _check_id(msg.beacon_timeline, name_field)
    _check_range(msg.beacon_hops, 0, MAX_HOPS - 1, hops_field, "links")
    _check_id(msg.beacon_origin, origin_field)
    itself = _from_the_sender(msg, "beacon_origin", msg.beacon_hops, hops_field)
    if itself:
        if msg.beacon_timeline != msg.timeline:
            raise InvalidMessage(
                name_field,
                f"must be the sender's own timeline {_show(msg.timeline)} when beacon_hops "
                f"is 0, got {_show(msg.beacon_timeline)}",
            )
        if msg.beacon_offset_ns != 0:
            raise InvalidMessage(
                offset_field, f"must be 0 when beacon_hops is 0, got {msg.beacon_offset_ns}"
            )
    _check_deviation_ns(msg.beacon_offset_ns, offset_field)


def _from_the_sender(
    msg: mesh_pb2.EncodingStatePacket, name: str, hops: int, hops_field: str
) -> bool:
    """Whether the id in field ``name`` (an anchor, a beacon's origin) is the ESP's sender,
    checking that ``hops`` is 0 exactly then: an announcement starts with its sender."""
    value = getattr(msg, name)
    itself: bool = value == msg.sender_id
    if itself != (hops == 0):
        raise InvalidMessage(
            hops_field,
            f"must be 0 exactly when {name} is the sender, got {hops} for {_show(value)}",
        )
    return itself


def _check_witnesses(witnesses: list[str], field: str) -> None:
    """A route's or beacon's witnesses: 1 to ``MAX_WITNESSES`` distinct ids, sorted."""
    if not 1 <= len(witnesses) <= MAX_WITNESSES or witnesses != sorted(set(witnesses)):
        raise InvalidMessage(
            field, f"must be 1 to {MAX_WITNESSES} distinct ids, sorted, got {witnesses}"
        )
    for witness in witnesses:
        _check_id(witness, field)


def _anchor(msg: mesh_pb2.EncodingStatePacket, prefix: str) -> None:
    """An ESP's anchor announcement: none (all zero), or an id with a hop count that says
    whether it is the sender itself, and an offset that is 0 when it is."""
    id_field = _path(prefix, "anchor_id")
    hops_field = _path(prefix, "anchor_hops")
    offset_field = _path(prefix, "anchor_offset_ns")
    if not msg.anchor_id:
        for field, value in ((hops_field, msg.anchor_hops), (offset_field, msg.anchor_offset_ns)):
            if value != 0:
                raise InvalidMessage(field, f"must be 0 when anchor_id is empty, got {value}")
        return
    _check_id(msg.anchor_id, id_field)
    _check_range(msg.anchor_hops, 0, MAX_HOPS - 1, hops_field, "links")
    itself = _from_the_sender(msg, "anchor_id", msg.anchor_hops, hops_field)
    if itself and msg.anchor_offset_ns != 0:
        raise InvalidMessage(
            offset_field, f"must be 0 when the sender is its own anchor, got {msg.anchor_offset_ns}"
        )
    _check_deviation_ns(msg.anchor_offset_ns, offset_field)


def _parameter_change(segment: int, bitrate: int, segment_field: str, bitrate_field: str) -> None:
    """An agreed change in an ESP: both 0 (none), or a positive segment and a valid bitrate."""
    if segment == 0 and bitrate == 0:
        return
    _check_positive(segment, segment_field)
    _check_range(bitrate, MIN_BITRATE_KBPS, MAX_BITRATE_KBPS, bitrate_field, "kbit/s")


def _proposal(msg: mesh_pb2.ResyncProposal, prefix: str) -> None:
    _check_id(msg.proposer_id, _path(prefix, "proposer_id"))
    _check_positive(msg.proposal_id, _path(prefix, "proposal_id"))
    if msg.kind not in _KNOWN_KINDS:
        raise InvalidMessage(
            _path(prefix, "kind"),
            f"must be SLEW, DROP, DUPLICATE or PARAMETER, got {msg.kind}",
        )
    _check_magnitude(msg.shift_ns, MAX_SHIFT_NS, _path(prefix, "shift_ns"), "ns", "10 s")
    if msg.kind == common_pb2.CORRECTION_KIND_PARAMETER:
        _check_range(
            msg.bitrate_kbps,
            MIN_BITRATE_KBPS,
            MAX_BITRATE_KBPS,
            _path(prefix, "bitrate_kbps"),
            "kbit/s for a PARAMETER proposal",
        )
        _check_timecode(msg.effective_segment, _path(prefix, "effective_segment"))
        _check_size(msg.width, msg.height, _path(prefix, "width"))
    else:
        _check_zero(
            msg, ("bitrate_kbps", "effective_segment", "width", "height"), prefix,
            "unless kind is PARAMETER",
        )  # fmt: skip
    _check_trace_context(msg.trace_context, _path(prefix, "trace_context"))


def _check_zero(
    msg: mesh_pb2.EncodingStatePacket | mesh_pb2.ResyncProposal,
    names: Sequence[str],
    prefix: str,
    when: str,
) -> None:
    for name in names:
        if getattr(msg, name) != 0:
            raise InvalidMessage(_path(prefix, name), f"must be 0 {when}, got {getattr(msg, name)}")


def _check_size(width: int, height: int, field: str, *, keep: str = "the started size") -> None:
    """A picture size: both 0 (``keep``), or both even and within the sizes encoders write."""
    if width == 0 and height == 0:
        return
    try:
        check_size(width, height)
    except ValueError as exc:
        raise InvalidMessage(field, f"{exc} (or width and height both 0: {keep})") from None


def _vote(msg: mesh_pb2.ResyncVote, prefix: str) -> None:
    _check_id(msg.proposer_id, _path(prefix, "proposer_id"))
    _check_positive(msg.proposal_id, _path(prefix, "proposal_id"))
    _check_id(msg.voter_id, _path(prefix, "voter_id"))
    if msg.voter_id == msg.proposer_id:
        raise InvalidMessage(
            _path(prefix, "voter_id"),
            f"must differ from proposer_id (no vote on one's own proposal), "
            f"got {_show(msg.voter_id)}",
        )
    _check_deviation_ns(msg.estimated_deviation_ns, _path(prefix, "estimated_deviation_ns"))
    _check_reason(msg.reason, _path(prefix, "reason"))
    _check_trace_context(msg.trace_context, _path(prefix, "trace_context"))


def validate_hello(msg: mesh_pb2.Hello) -> None:
    """Check a Hello on its own (see the module docstring for the rules)."""
    _hello(msg, "")


def validate_esp(msg: mesh_pb2.EncodingStatePacket) -> None:
    """Check an Encoding State Packet on its own."""
    _esp(msg, "")


def validate_proposal(msg: mesh_pb2.ResyncProposal) -> None:
    """Check a resync proposal on its own."""
    _proposal(msg, "")


def validate_vote(msg: mesh_pb2.ResyncVote) -> None:
    """Check a resync vote on its own."""
    _vote(msg, "")


def validate_mesh_message(msg: mesh_pb2.MeshMessage) -> None:
    """Check an Exchange envelope: exactly one body, and that body valid.

    Fields are named from the envelope, e.g. ``esp.sequence`` or
    ``batch.messages[2].esp.sequence``.
    """
    body = msg.WhichOneof("body")
    if body is None:
        raise InvalidMessage("body", "exactly one of hello, esp, proposal, vote, batch must be set")
    if body == "hello":
        _hello(msg.hello, "hello")
    elif body == "batch":
        messages = msg.batch.messages
        if not 1 <= len(messages) <= MAX_BATCH_MESSAGES:
            raise InvalidMessage(
                "batch.messages",
                f"must hold 1 to {MAX_BATCH_MESSAGES} messages, got {len(messages)}",
            )
        for index, item in enumerate(messages):
            _mesh_item(item, item.WhichOneof("body"), f"batch.messages[{index}]")
    else:
        _mesh_item(msg, body, "")


def _mesh_item(msg: mesh_pb2.MeshMessage, body: str | None, prefix: str) -> None:
    """One ESP, proposal or vote (``body``), alone or in a batch."""
    if body == "esp":
        _esp(msg.esp, _path(prefix, "esp"))
    elif body == "proposal":
        _proposal(msg.proposal, _path(prefix, "proposal"))
    elif body == "vote":
        _vote(msg.vote, _path(prefix, "vote"))
    else:
        raise InvalidMessage(
            _path(prefix, "body"), f"must be one of esp, proposal, vote in a batch, got {body}"
        )


def validate_get_state_request(msg: mesh_pb2.GetStateRequest) -> None:
    """``channel`` empty (the first channel) or a channel name."""
    check_channel_name(msg.channel, "channel", allow_empty=True)


def validate_set_parameters_request(msg: mesh_pb2.SetParametersRequest) -> None:
    """``bitrate_kbps`` 0 (keep it) or within [``MIN_BITRATE_KBPS``, ``MAX_BITRATE_KBPS``];
    ``width`` and ``height`` both 0 (keep the size) or a size encoders write; at least one of
    the two given; ``channel`` empty (the first channel) or a channel name."""
    if msg.bitrate_kbps:
        _check_range(msg.bitrate_kbps, MIN_BITRATE_KBPS, MAX_BITRATE_KBPS, "bitrate_kbps", "kbit/s")
    _check_size(msg.width, msg.height, "width", keep="keep the size")
    if not msg.bitrate_kbps and not msg.width and not msg.height:
        raise InvalidMessage("bitrate_kbps", "asks for no change: give a bitrate, a size or both")
    check_channel_name(msg.channel, "channel", allow_empty=True)


class ExchangeStreamChecker:
    """The rules that span the messages one peer sends on an Exchange stream.

    Create one per stream with the receiving encoder's own id and pass every received
    message to :meth:`check`, which validates it (:func:`validate_mesh_message`) and then
    applies the stream rules listed in the module docstring. The checker's state only
    advances on messages that pass, so after an :class:`InvalidMessage` a server may choose
    to skip the message instead of ending the stream.
    """

    def __init__(self, local_id: str) -> None:
        self._local_id = local_id
        self._peer_id: str | None = None
        self._last_sequence = 0

    @property
    def peer_id(self) -> str | None:
        """The peer's id from its Hello; ``None`` until the Hello arrived."""
        return self._peer_id

    @property
    def last_sequence(self) -> int:
        """The sequence of the newest ESP accepted on the stream (0 = none yet)."""
        return self._last_sequence

    def check(self, msg: mesh_pb2.MeshMessage) -> None:
        """Validate ``msg`` as the next message of the stream; raises InvalidMessage."""
        validate_mesh_message(msg)
        body = msg.WhichOneof("body")
        if self._peer_id is None:
            if body != "hello":
                raise InvalidMessage("body", f"the first message must be a hello, got {body}")
            if msg.hello.sender_id == self._local_id:
                raise InvalidMessage(
                    "hello.sender_id",
                    f"must not be the receiver's own id, got {_show(msg.hello.sender_id)}",
                )
            self._peer_id = msg.hello.sender_id
            return
        if body == "hello":
            raise InvalidMessage("body", "only the first message of a stream may be a hello")
        if body == "batch":
            # All or nothing: the sequence advances only once every message of it passed.
            sequence = self._last_sequence
            for index, item in enumerate(msg.batch.messages):
                sequence = self._check_item(
                    item, item.WhichOneof("body"), sequence, f"batch.messages[{index}]"
                )
            self._last_sequence = sequence
        else:
            self._last_sequence = self._check_item(msg, body, self._last_sequence, "")

    def _check_item(
        self, msg: mesh_pb2.MeshMessage, body: str | None, last_sequence: int, prefix: str
    ) -> int:
        """The stream rules for one ESP, proposal or vote (``body``, already validated);
        returns the newest ESP sequence."""
        if body == "esp":
            self._expect_peer(msg.esp.sender_id, _path(prefix, "esp.sender_id"))
            if msg.esp.sequence <= last_sequence:
                raise InvalidMessage(
                    _path(prefix, "esp.sequence"),
                    f"must be greater than the previous ESP's {last_sequence}, "
                    f"got {msg.esp.sequence}",
                )
            return msg.esp.sequence
        if body == "proposal":
            self._expect_peer(msg.proposal.proposer_id, _path(prefix, "proposal.proposer_id"))
        else:
            self._expect_peer(msg.vote.voter_id, _path(prefix, "vote.voter_id"))
            if msg.vote.proposer_id != self._local_id:
                raise InvalidMessage(
                    _path(prefix, "vote.proposer_id"),
                    f"must be the receiver {_show(self._local_id)} (a vote answers the "
                    f"receiver's proposal), got {_show(msg.vote.proposer_id)}",
                )
        return last_sequence

    def _expect_peer(self, sender: str, field: str) -> None:
        if sender != self._peer_id:
            raise InvalidMessage(
                field,
                f"must be the stream's hello sender_id {_show(self._peer_id)}, got {_show(sender)}",
            )


# --- registry -------------------------------------------------------------------------------


def _node_info(msg: registry_pb2.NodeInfo, prefix: str) -> None:
    _check_fixed_bytes(msg.node_id, NODE_ID_LENGTH, _path(prefix, "node_id"))
    _check_address(msg.address, _path(prefix, "address"))


def _optional_sender(
    msg: registry_pb2.PingRequest
    | registry_pb2.FindNodeRequest
    | registry_pb2.FindValueRequest
    | registry_pb2.StoreRequest,
) -> None:
    if msg.HasField("sender"):
        _node_info(msg.sender, "sender")


def _required_responder(
    msg: registry_pb2.PingResponse
    | registry_pb2.FindNodeResponse
    | registry_pb2.FindValueResponse
    | registry_pb2.StoreResponse,
) -> None:
    if not msg.HasField("responder"):
        raise InvalidMessage("responder", "must be set")
    _node_info(msg.responder, "responder")


def _node_list(nodes: Sequence[registry_pb2.NodeInfo], field: str) -> None:
    if len(nodes) > MAX_NODES_PER_RESPONSE:
        raise InvalidMessage(
            field, f"must hold at most {MAX_NODES_PER_RESPONSE} nodes, got {len(nodes)}"
        )
    for index, node in enumerate(nodes):
        _node_info(node, f"{field}[{index}]")
    _check_distinct([node.node_id for node in nodes], field, "node_id")


def _record(msg: registry_pb2.EncoderRecord, prefix: str) -> None:
    _check_id(msg.encoder_id, _path(prefix, "encoder_id"))
    _check_address(msg.address, _path(prefix, "address"))
    _check_id(msg.segment_id, _path(prefix, "segment_id"), allow_empty=True)
    _check_range(msg.capacity, 0, MAX_CAPACITY, _path(prefix, "capacity"), "work units")
    if msg.health not in _KNOWN_HEALTH:
        raise InvalidMessage(
            _path(prefix, "health"),
            f"must be HEALTHY, DEGRADED, DRAINING or UNHEALTHY, got {msg.health}",
        )
    _check_positive(msg.version, _path(prefix, "version"))
    _check_range(msg.ttl_ms, 1, MAX_TTL_MS, _path(prefix, "ttl_ms"), "ms (24 h)")
    for name, limit in (("signature", MAX_SIGNATURE_BYTES), ("certificate", MAX_CERTIFICATE_BYTES)):
        size = len(getattr(msg, name))
        if size > limit:
            raise InvalidMessage(_path(prefix, name), f"must be at most {limit} bytes, got {size}")
    if bool(msg.signature) != bool(msg.certificate):
        raise InvalidMessage(
            _path(prefix, "signature" if msg.certificate else "certificate"),
            "must be set together with "
            + _path(prefix, "certificate" if msg.certificate else "signature"),
        )


def validate_node_info(msg: registry_pb2.NodeInfo) -> None:
    """Check a registry node's id and address."""
    _node_info(msg, "")


def validate_encoder_record(msg: registry_pb2.EncoderRecord) -> None:
    """Check an encoder record on its own."""
    _record(msg, "")


def validate_ping_request(msg: registry_pb2.PingRequest) -> None:
    """Check a Ping request: its sender, when set."""
    _optional_sender(msg)


def validate_find_node_request(msg: registry_pb2.FindNodeRequest) -> None:
    """Check a FindNode request: its sender when set, and a 20-byte target."""
    _optional_sender(msg)
    _check_fixed_bytes(msg.target, NODE_ID_LENGTH, "target")


def validate_find_value_request(msg: registry_pb2.FindValueRequest) -> None:
    """Check a FindValue request: its sender when set, and a 20-byte key."""
    _optional_sender(msg)
    _check_fixed_bytes(msg.key, NODE_ID_LENGTH, "key")


def validate_store_request(msg: registry_pb2.StoreRequest) -> None:
    """Check a Store request: its sender when set, and a valid record."""
    _optional_sender(msg)
    if not msg.HasField("record"):
        raise InvalidMessage("record", "must be set")
    _record(msg.record, "record")


def validate_ping_response(msg: registry_pb2.PingResponse) -> None:
    """Check a Ping response (received by the calling node)."""
    _required_responder(msg)


def validate_find_node_response(msg: registry_pb2.FindNodeResponse) -> None:
    """Check a FindNode response (received by the calling node's lookup)."""
    _required_responder(msg)
    _node_list(msg.nodes, "nodes")


def validate_find_value_response(msg: registry_pb2.FindValueResponse) -> None:
    """Check a FindValue response (received by the calling node's lookup)."""
    _required_responder(msg)
    result = msg.WhichOneof("result")
    if result is None:
        raise InvalidMessage("result", "exactly one of record, closest must be set")
    if result == "record":
        _record(msg.record, "record")
    else:
        _node_list(msg.closest.nodes, "closest.nodes")


def validate_store_response(msg: registry_pb2.StoreResponse) -> None:
    """Check a Store response (received by the caller)."""
    _required_responder(msg)


# --- manager --------------------------------------------------------------------------------


def check_unit(unit: str, field: str) -> None:
    """A work unit id: ``CHANNEL/RENDITION``, two ids."""
    channel, slash, rendition = unit.partition("/")
    if not slash:
        raise InvalidMessage(field, f"a work unit is CHANNEL/RENDITION, got {_show(unit)}")
    _check_id(channel, field)
    _check_id(rendition, field)


def validate_health_report(msg: manager_pb2.HealthReport) -> None:
    """Check one HealthReport of a ReportHealth stream."""
    _check_id(msg.encoder_id, "encoder_id")
    _check_instant(msg.sent_unix_ns, "sent_unix_ns")
    _check_fraction(msg.confidence, "confidence")
    _check_fraction(msg.cpu_load, "cpu_load")
    _check_latency_us(msg.encode_latency_us, "encode_latency_us")
    _check_timecode(msg.timecode, "timecode", allow_zero=True)
    _check_id(msg.segment_id, "segment_id", allow_empty=True)
    if len(msg.links) > MAX_NEIGHBOURS:
        raise InvalidMessage(
            "links", f"must hold at most {MAX_NEIGHBOURS} links, got {len(msg.links)}"
        )
    for index, link in enumerate(msg.links):
        prefix = f"links[{index}]"
        _check_id(link.neighbour_id, f"{prefix}.neighbour_id")
        if link.neighbour_id == msg.encoder_id:
            raise InvalidMessage(
                f"{prefix}.neighbour_id",
                f"must differ from encoder_id (no link to oneself), got {_show(link.neighbour_id)}",
            )
        _check_latency_us(link.rtt_us, f"{prefix}.rtt_us")
        _check_latency_us(link.jitter_us, f"{prefix}.jitter_us")
        _check_deviation_ns(link.measured_deviation_ns, f"{prefix}.measured_deviation_ns")
        _check_deviation_ns(link.predicted_deviation_ns, f"{prefix}.predicted_deviation_ns")
    _check_distinct([link.neighbour_id for link in msg.links], "links", "neighbour_id")
    if len(msg.units) > MAX_UNITS_PER_ENCODER:
        raise InvalidMessage(
            "units", f"must hold at most {MAX_UNITS_PER_ENCODER} units, got {len(msg.units)}"
        )
    seen: set[str] = set()
    for index, unit in enumerate(msg.units):
        check_unit(unit, f"units[{index}]")
        if unit in seen:
            raise InvalidMessage(f"units[{index}]", f"must be distinct, got {_show(unit)} twice")
        seen.add(unit)
    counters = msg.corrections
    if counters.proposals_approved + counters.proposals_rejected > counters.proposals_made:
        raise InvalidMessage(
            "corrections.proposals_made",
            f"must be at least proposals_approved + proposals_rejected "
            f"({counters.proposals_approved} + {counters.proposals_rejected}), "
            f"got {counters.proposals_made}",
        )


def validate_escalation(msg: manager_pb2.Escalation) -> None:
    """Check an Escalation: the proposal, the votes on it, and the neighbour count."""
    _check_id(msg.encoder_id, "encoder_id")
    if not msg.HasField("proposal"):
        raise InvalidMessage("proposal", "must be set")
    proposal = msg.proposal
    _proposal(proposal, "proposal")
    if proposal.proposer_id != msg.encoder_id:
        raise InvalidMessage(
            "proposal.proposer_id",
            f"must be the escalating encoder_id {_show(msg.encoder_id)}, "
            f"got {_show(proposal.proposer_id)}",
        )
    if len(msg.votes) > MAX_NEIGHBOURS:
        raise InvalidMessage(
            "votes", f"must hold at most {MAX_NEIGHBOURS} votes, got {len(msg.votes)}"
        )
    for index, vote in enumerate(msg.votes):
        prefix = f"votes[{index}]"
        _vote(vote, prefix)
        if vote.proposer_id != proposal.proposer_id:
            raise InvalidMessage(
                f"{prefix}.proposer_id",
                f"must be the escalated proposal's proposer {_show(proposal.proposer_id)}, "
                f"got {_show(vote.proposer_id)}",
            )
        if vote.proposal_id != proposal.proposal_id:
            raise InvalidMessage(
                f"{prefix}.proposal_id",
                f"must be the escalated proposal's id {proposal.proposal_id}, "
                f"got {vote.proposal_id}",
            )
    _check_distinct([vote.voter_id for vote in msg.votes], "votes", "voter_id")
    _check_range(msg.neighbour_count, len(msg.votes), MAX_NEIGHBOURS, "neighbour_count")
    _check_instant(msg.sent_unix_ns, "sent_unix_ns")


def validate_get_topology_request(msg: manager_pb2.GetTopologyRequest) -> None:
    """Check a GetTopology request: its optional encoder filter."""
    _check_id(msg.encoder_id, "encoder_id", allow_empty=True)


def validate_get_segments_request(msg: manager_pb2.GetSegmentsRequest) -> None:
    """Check a GetSegments request: its optional segment filter."""
    _check_id(msg.segment_id, "segment_id", allow_empty=True)


def validate_watch_topology_request(msg: manager_pb2.WatchTopologyRequest) -> None:
    """Check a WatchTopology request: its optional encoder filter."""
    _check_id(msg.encoder_id, "encoder_id", allow_empty=True)
