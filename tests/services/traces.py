"""Helpers of the telemetry tests: span trees as recorded, messages as the wire delivers them."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan

from meshenc.v1 import common_pb2, mesh_pb2
from meshenc.wire import PROTOCOL_VERSION
from meshenc.wire.validation import ExchangeStreamChecker


def over_the_wire(msg: mesh_pb2.MeshMessage, receiver: str) -> mesh_pb2.MeshMessage:
    """What the receiving encoder accepts: serialised, parsed and validated as on a stream."""
    parsed = mesh_pb2.MeshMessage.FromString(msg.SerializeToString())
    checker = ExchangeStreamChecker(receiver)
    sender = parsed.proposal.proposer_id or parsed.vote.voter_id
    checker.check(mesh_pb2.MeshMessage(hello=_hello(sender)))
    checker.check(parsed)
    return parsed


def _hello(sender: str) -> mesh_pb2.Hello:
    return mesh_pb2.Hello(
        sender_id=sender,
        protocol_version=PROTOCOL_VERSION,
        frame_rate=common_pb2.FrameRate(num=30, den=1),
        gop_length=30,
    )


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id
