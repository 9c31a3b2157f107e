"""The encoder's mesh links over real gRPC: servers on 127.0.0.1 with free ports.

Nothing is mocked but the encoder runtime: ``FakeHandler`` records what the links hand it and
answers every proposal with an approving vote. Peers that misbehave are played by ``RawPeer``,
a bare Exchange call driven message by message. Each test runs its own event loop
(``asyncio.run``) under a timeout and stops every server, link and channel it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # type: ignore[import-untyped]
    ProtoReflectionDescriptorDatabase,
)

from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.local.relay import DelayRelay
from meshenc.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc
from meshenc.wire import convert
from services.common.grpc_server import (
    CHANNEL_OPTIONS,
    SERVER_OPTIONS,
)
from services.common.peer_limits import PeerLimits
from services.common.telemetry import TraceContext
from services.encoder import mesh
from services.encoder.mesh import SERVICE_NAME, MeshLinks, MeshServer

T = TypeVar("T")

LABEL_0 = 1_700_000_000.0
"""A label of the present era, seconds since the Unix epoch."""


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run ``coro`` on a fresh event loop, failing the test after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class FakeHandler:
    """The runtime as the links see it: records everything, approves every proposal."""

    def __init__(
        self, node_id: str, neighbours: Iterable[str] = (), *, gop: int = 30, channel: str = ""
    ) -> None:
        self.node_id = node_id
        self.channel = channel
        self.neighbours = set(neighbours)
        self.gop = gop
        self.esps: list[EncodingStatePacket] = []
        self.proposals: list[ResyncProposal] = []
        self.votes: list[ResyncVote] = []
        self.parameter_requests: list[tuple[int, tuple[int, int] | None]] = []
        self.refuse_parameters = False
        #: The links it answers proposals through (set once they exist).
        self.links: MeshLinks | None = None

    def is_neighbour(self, node_id: str) -> bool:
        return node_id in self.neighbours

    def on_esp(self, esp: EncodingStatePacket) -> None:
        self.esps.append(esp)

    def on_proposal(self, proposal: ResyncProposal) -> None:
        self.proposals.append(proposal)
        assert self.links is not None, "the handler answers through its links"
        self.links.send(
            proposal.proposer,
            ResyncVote(
                proposer=proposal.proposer,
                proposal_id=proposal.proposal_id,
                voter=self.node_id,
                approve=True,
                estimated_deviation=0.002,
                reason="within a quarter frame",
            ),
        )

    def on_vote(self, vote: ResyncVote) -> None:
        self.votes.append(vote)

    def state(self) -> mesh_pb2.EncoderState:
        return mesh_pb2.EncoderState(
            encoder_id=self.node_id,
            protocol_version=1,
            frame_rate=common_pb2.FrameRate(num=30, den=1),
            gop_length=self.gop,
            channel=self.channel,
        )

    def hello(self) -> mesh_pb2.Hello:
        return hello(self.node_id, gop=self.gop, channel=self.channel)

    def set_parameters(self, bitrate_kbps: int, size: tuple[int, int] | None) -> tuple[int, int]:
        if self.refuse_parameters:
            raise ValueError("a change is already pending")
        self.parameter_requests.append((bitrate_kbps, size))
        return 7, 123

    def esps_from(self, sender: str) -> list[int]:
        return [esp.sequence for esp in self.esps if esp.sender == sender]


def hello(sender: str, *, gop: int = 30, channel: str = "") -> mesh_pb2.Hello:
    return mesh_pb2.Hello(
        sender_id=sender,
        protocol_version=1,
        frame_rate=common_pb2.FrameRate(num=30, den=1),
        gop_length=gop,
        topology_epoch=1,
        channel=channel,
    )


def esp(sender: str, sequence: int) -> EncodingStatePacket:
    label = LABEL_0 + sequence / 30
    return EncodingStatePacket(
        sender=sender,
        sequence=sequence,
        topology_epoch=1,
        timecode=51_000_000_000 + sequence,
        frame_hash=bytes(32),
        fingerprint=sequence,
        label=label,
        correction=0.0,
        correction_rate=0.0,
        encode_latency=0.004,
        rtt=0.0,
        jitter=0.0,
        confidence=1.0,
        sent_at=label,
    )


def proposal(proposer: str, proposal_id: int) -> ResyncProposal:
    return ResyncProposal(
        proposer=proposer,
        proposal_id=proposal_id,
        kind=CorrectionKind.SLEW,
        shift=0.003,
        topology_epoch=1,
    )


def traceparent(span_digit: str) -> TraceContext:
    """W3C headers naming span ``span_digit * 16`` of one trace."""
    return (("traceparent", f"00-{'1' * 32}-{span_digit * 16}-01"),)


class FixedTracing:
    """The links' tracing as an encoder's telemetry answers it: one context for every
    proposal, another for every vote."""

    def proposal_trace(self, proposal_id: int) -> TraceContext:
        return traceparent("2")

    def vote_trace(self, vote: ResyncVote) -> TraceContext:
        return traceparent("3")


@dataclass
class Node:
    handler: FakeHandler
    links: MeshLinks
    server: MeshServer
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_node(node_id: str, neighbours: Iterable[str] = (), **links: Any) -> Node:
    handler = FakeHandler(node_id, neighbours)
    mesh_links = MeshLinks(handler, **links)
    handler.links = mesh_links
    server = MeshServer(handler, mesh_links)
    port = await server.start("127.0.0.1:0")
    return Node(handler, mesh_links, server, port)


async def stop(*nodes: Node) -> None:
    for node in nodes:
        await node.links.close()
        await node.server.stop(grace=0.2)


async def full_mesh(*ids: str, **links: Any) -> list[Node]:
    """Start one node per id, every node a neighbour of every other, and wait for the links."""
    nodes = [await start_node(i, [j for j in ids if j != i], **links) for i in ids]
    for node in nodes:
        node.links.set_peers({o.handler.node_id: o.address for o in nodes if o is not node})
    await eventually(
        lambda: all(n.links.connected(p) for n in nodes for p in n.links.peers), timeout=5.0
    )
    return nodes


class RawPeer:
    """A bare Exchange call: sends what it is told, reads only when asked."""

    def __init__(self, address: str, options: Sequence[tuple[str, int]] = ()) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=list(options) or None)
        self._outgoing: asyncio.Queue[mesh_pb2.MeshMessage | None] = asyncio.Queue()
        self.call = mesh_pb2_grpc.EncoderMeshStub(self.channel).Exchange(self._requests())
        self._responses = aiter(self.call)

    async def _requests(self) -> AsyncIterator[mesh_pb2.MeshMessage]:
        while (msg := await self._outgoing.get()) is not None:
            yield msg

    def send(self, msg: mesh_pb2.MeshMessage) -> None:
        self._outgoing.put_nowait(msg)

    async def recv(self) -> mesh_pb2.MeshMessage:
        return await anext(self._responses)

    async def error(self) -> Any:
        """Read until the call fails; returns the ``grpc.aio.AioRpcError``."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while True:
                await self.recv()
        return info.value

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def esp_message(sender: str, sequence: int, **changes: Any) -> mesh_pb2.MeshMessage:
    message = mesh_pb2.MeshMessage(esp=convert.esp_to_proto(esp(sender, sequence)))
    for name, value in changes.items():
        setattr(message.esp, name, value)
    return message


async def with_nodes(nodes: Awaitable[list[Node]], body: Callable[..., Awaitable[None]]) -> None:
    started = await nodes
    try:
        await body(*started)
    finally:
        await stop(*started)


# -- tests -------------------------------------------------------------------------------------


def test_keepalive_settings_agree() -> None:
    """A client pinging more often than the server permits would be sent GOAWAY."""
    client = dict(CHANNEL_OPTIONS)
    server = dict(SERVER_OPTIONS)
    assert (
        client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    )
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_two_nodes_exchange_esps_both_ways_over_one_stream() -> None:
    async def body(a: Node, b: Node) -> None:
        assert a.links.direction("b") == "outbound"  # the smaller id dialed
        assert b.links.direction("a") == "inbound"
        for sequence in range(1, 6):
            assert a.links.send("b", esp("a", sequence))
            assert b.links.send(
                "a", mesh_pb2.MeshMessage(esp=convert.esp_to_proto(esp("b", sequence)))
            )
        await eventually(lambda: len(b.handler.esps) == 5 and len(a.handler.esps) == 5)
        assert b.handler.esps_from("a") == [1, 2, 3, 4, 5]
        assert a.handler.esps_from("b") == [1, 2, 3, 4, 5]
        assert b.handler.esps[0] == convert.esp_from_proto(convert.esp_to_proto(esp("a", 1)))
        assert dict(b.server.accepted) == {"a": 1}
        assert dict(a.server.accepted) == {}
        assert a.links.sent["b"] == 5 and a.links.received["b"] == 5

    run(with_nodes(full_mesh("a", "b"), body))


def test_three_nodes_one_stream_per_pair() -> None:
    async def body(a: Node, b: Node, c: Node) -> None:
        assert dict(a.server.accepted) == {}
        assert dict(b.server.accepted) == {"a": 1}
        assert dict(c.server.accepted) == {"a": 1, "b": 1}
        for node in (a, b, c):
            name = node.handler.node_id
            for sequence in (1, 2, 3):
                assert node.links.broadcast(esp(name, sequence)) == 2
        await eventually(lambda: all(len(n.handler.esps) == 6 for n in (a, b, c)))
        for node in (a, b, c):
            for other in sorted({"a", "b", "c"} - {node.handler.node_id}):
                assert node.handler.esps_from(other) == [1, 2, 3]

    run(with_nodes(full_mesh("a", "b", "c"), body))


def test_send_all_serialises_one_esp_once_and_writes_those_bytes_to_every_neighbour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conversions: list[EncodingStatePacket] = []
    written: list[mesh_pb2.MeshMessage | bytes] = []
    to_proto, to_wire = convert.esp_to_proto, mesh._wire

    def converting(packet: EncodingStatePacket) -> mesh_pb2.EncodingStatePacket:
        conversions.append(packet)
        return to_proto(packet)

    def writing(msg: mesh_pb2.MeshMessage | bytes) -> bytes:
        written.append(msg)  # what gRPC is handed to write, on every stream
        return to_wire(msg)

    monkeypatch.setattr(convert, "esp_to_proto", converting)
    monkeypatch.setattr(mesh, "_wire", writing)  # before the streams open: they take it then

    async def body(a: Node, b: Node, c: Node) -> None:
        sent = esp("a", 1)
        assert a.links.send_all(["b", "c", "stranger"], sent) == 2
        await eventually(lambda: len(b.handler.esps) == 1 and len(c.handler.esps) == 1)
        assert conversions == [sent]  # one conversion, whatever the number of neighbours
        esps = [
            w
            for w in written
            if isinstance(w, bytes) and mesh_pb2.MeshMessage.FromString(w).esp.sender_id == "a"
        ]
        assert len(esps) == 2 and esps[0] is esps[1]  # one serialisation, written twice
        assert b.handler.esps == c.handler.esps == [convert.esp_from_proto(to_proto(sent))]
        assert a.links.dropped_esps["stranger"] == 1

    run(with_nodes(full_mesh("a", "b", "c"), body))


def test_a_proposal_gets_the_vote_back_on_the_same_link() -> None:
    async def body(a: Node, b: Node) -> None:
        assert a.links.send("b", proposal("a", 7))  # over the stream a dialed
        assert b.links.send("a", proposal("b", 3))  # and the other way
        await eventually(lambda: len(a.handler.votes) == 1 and len(b.handler.votes) == 1)
        assert b.handler.proposals == [proposal("a", 7)]
        vote = a.handler.votes[0]
        assert (vote.proposer, vote.proposal_id, vote.voter, vote.approve) == ("a", 7, "b", True)
        assert vote.trace_context == ()  # links nobody traces send no context
        assert b.handler.votes[0].voter == "a"
        assert dict(b.server.accepted) == {"a": 1}

    run(with_nodes(full_mesh("a", "b"), body))


def test_proposals_and_votes_go_out_with_the_context_tracing_names() -> None:
    async def body(a: Node, b: Node) -> None:
        # A context the proposal arrived with elsewhere is not sent on: the sender's is.
        assert a.links.send("b", replace(proposal("a", 7), trace_context=traceparent("9")))
        await eventually(lambda: len(a.handler.votes) == 1)
        assert b.handler.proposals == [replace(proposal("a", 7), trace_context=traceparent("2"))]
        assert a.handler.votes[0].trace_context == traceparent("3")

    run(with_nodes(full_mesh("a", "b", tracing=FixedTracing()), body))


def test_set_peers_starts_and_stops_links() -> None:
    async def body(a: Node, b: Node) -> None:
        a.links.set_peers({})  # b left a's topology: the dialer stops, the stream ends
        await eventually(lambda: not a.links.connected("b") and not b.links.connected("a"))
        assert not a.links.send("b", esp("a", 1))
        assert a.links.dropped_esps["b"] == 1
        await asyncio.sleep(0.3)
        assert not b.links.connected("a")  # nobody redialled
        a.links.set_peers({"b": b.address})  # and back
        await eventually(lambda: a.links.connected("b") and b.links.connected("a"))
        assert dict(b.server.accepted) == {"a": 2}

    run(with_nodes(full_mesh("a", "b"), body))


def test_a_stranger_is_refused_with_permission_denied() -> None:
    async def main() -> None:
        node = await start_node("m", ["a"])
        peer = RawPeer(node.address)
        try:
            peer.send(mesh_pb2.MeshMessage(hello=hello("mallory")))
            error = await peer.error()
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "mallory" in error.details()
            assert node.server.refused["mallory"] == 1
            assert not node.links.connected("mallory")
        finally:
            await peer.close()
            await stop(node)

    run(main())


def test_a_refused_dialer_leaves_nothing_pending() -> None:
    """Every refused dial used to leave gRPC's task reading the request stream destroyed
    pending, and its generator unclosable: asyncio errors in the log, each redial."""
    problems: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: problems.append(str(context.get("message")))
        )
        refusing = await start_node("r", [])  # a neighbour of nobody
        dialer = await start_node("0d", ["r"])  # "0d" < "r": it dials
        try:
            dialer.links.set_peers({"r": refusing.address})
            await eventually(lambda: refusing.server.refused["0d"] >= 3, timeout=8.0)
        finally:
            await stop(dialer, refusing)
        gc.collect()
        await asyncio.sleep(0.1)

    run(main(), timeout=15.0)
    gc.collect()
    assert problems == []


def test_a_peer_on_another_timeline_is_refused() -> None:
    async def main() -> None:
        node = await start_node("m", ["a"])
        peer = RawPeer(node.address)
        try:
            peer.send(mesh_pb2.MeshMessage(hello=hello("a", gop=60)))
            error = await peer.error()
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "hello.gop_length" in error.details()
        finally:
            await peer.close()
            await stop(node)

    run(main())


def test_a_caller_that_never_says_hello_is_cut_off() -> None:
    async def main() -> None:
        node = await start_node("m", ["a"], handshake_timeout=0.3)
        silent = RawPeer(node.address)
        try:
            error = await silent.error()
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no hello" in error.details()
            assert node.server.refused[""] == 1
        finally:
            await silent.close()
            await stop(node)

    run(main())


def test_a_peer_speaking_another_protocol_version_is_refused() -> None:
    async def main() -> None:
        node = await start_node("m", ["a"])
        peer = RawPeer(node.address)
        try:
            future = hello("a")
            future.protocol_version = 2
            peer.send(mesh_pb2.MeshMessage(hello=future))
            error = await peer.error()
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "hello.protocol_version" in error.details()
            assert not node.links.connected("a")
        finally:
            await peer.close()
            await stop(node)

    run(main())


def test_bytes_that_do_not_parse_get_invalid_argument_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    garbage = b"\xff\xff\xff\xff"  # a truncated varint: no protobuf message parses from it

    async def main() -> None:
        node = await start_node("m", ["a"])
        channel = grpc.aio.insecure_channel(node.address)
        try:
            get_state = channel.unary_unary(
                "/meshenc.v1.EncoderMesh/GetState",
                request_serializer=bytes,
                response_deserializer=mesh_pb2.EncoderState.FromString,
            )
            for _ in range(20):  # a flood
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await get_state(garbage, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "does not parse" in (info.value.details() or "")
            exchange = channel.stream_stream(
                "/meshenc.v1.EncoderMesh/Exchange",
                request_serializer=bytes,
                response_deserializer=mesh_pb2.MeshMessage.FromString,
            )
            call = exchange(iter([garbage]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # The server still serves, well-formed calls as before.
            state = await get_state(mesh_pb2.GetStateRequest().SerializeToString(), timeout=5)
            assert state.encoder_id == "m"
        finally:
            await channel.close()
            await stop(node)

    with caplog.at_level(logging.WARNING):
        run(main())
    lines = [r for r in caplog.records if "does not parse" in r.getMessage()]
    assert len(lines) == 2, [r.getMessage() for r in lines]  # one per method, not one per call
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_malformed_messages_end_only_their_stream() -> None:
    async def main() -> None:
        m = await start_node("m", ["a", "0bad", "1bad"])
        a = await start_node("a", ["m"])
        a.links.set_peers({"m": m.address})
        m.links.set_peers({"a": a.address, "0bad": "127.0.0.1:1", "1bad": "127.0.0.1:1"})
        bad_hash = RawPeer(m.address)
        no_hello = RawPeer(m.address)
        try:
            await eventually(lambda: a.links.connected("m"))
            # A valid ESP, then one whose frame_hash is 5 bytes long.
            bad_hash.send(mesh_pb2.MeshMessage(hello=hello("0bad")))
            assert (await bad_hash.recv()).hello.sender_id == "m"
            bad_hash.send(esp_message("0bad", 1))
            bad_hash.send(esp_message("0bad", 2, frame_hash=b"12345"))
            error = await bad_hash.error()
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "esp.frame_hash" in error.details()
            assert m.handler.esps_from("0bad") == [1]  # nothing from the invalid one
            # A first message that is not a Hello.
            no_hello.send(esp_message("1bad", 1))
            error = await no_hello.error()
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.details().startswith("body:")
            assert m.handler.esps_from("1bad") == []
            assert m.server.refused["0bad"] == 1 and m.server.refused[""] == 1
            # The neighbour's stream is untouched and the server still serves.
            assert a.links.connected("m") and m.links.connected("a")
            assert a.links.send("m", esp("a", 1)) and m.links.send("a", esp("m", 1))
            await eventually(lambda: m.handler.esps_from("a") == [1])
            await eventually(lambda: a.handler.esps_from("m") == [1])
            assert dict(m.server.accepted) == {"a": 1, "0bad": 1}
        finally:
            await bad_hash.close()
            await no_hello.close()
            await stop(a, m)

    run(main())


@contextlib.asynccontextmanager
async def limited_server(messages_per_second: float) -> AsyncIterator[tuple[FakeHandler, str]]:
    """Node "m" (neighbour "b") serving with that per-peer message limit; its handler and
    address."""
    handler = FakeHandler("m", ["b"])
    links = MeshLinks(handler)
    server = MeshServer(
        handler, links, limits=PeerLimits(max_messages_per_second=messages_per_second)
    )
    try:
        yield handler, f"127.0.0.1:{await server.start('127.0.0.1:0')}"
    finally:
        await links.close()
        await server.stop(grace=0.2)


def test_a_streams_messages_draw_on_its_peers_one_budget() -> None:
    """The limiter finds a stream's peer once, when it opens: the stream's messages and the
    peer's other calls still share one budget."""

    async def main() -> None:
        async with limited_server(1.0) as (handler, address):
            flood = RawPeer(address)
            channel = grpc.aio.insecure_channel(address)
            try:
                flood.send(mesh_pb2.MeshMessage(hello=hello("b")))
                assert (await flood.recv()).hello.sender_id == "m"
                for sequence in range(1, 11):  # a bucket holds 2 messages, refilled at 1 a second
                    flood.send(esp_message("b", sequence))
                error = await flood.error()
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert handler.esps_from("b") == [1]  # the Hello took the first message's room
                with pytest.raises(grpc.aio.AioRpcError) as refused:  # the same, emptied budget
                    await mesh_pb2_grpc.EncoderMeshStub(channel).GetState(
                        mesh_pb2.GetStateRequest(), timeout=5
                    )
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                await flood.close()
                await channel.close()

    run(main())


def batch(*messages: mesh_pb2.MeshMessage) -> mesh_pb2.MeshMessage:
    return mesh_pb2.MeshMessage(batch=mesh_pb2.MeshBatch(messages=list(messages)))


def test_messages_queued_together_go_out_as_one_write_in_order() -> None:
    """What is queued while a stream cannot write goes out as one batch when it can: fewer
    gRPC messages under load, every message delivered, proposals first, ESPs in order."""

    async def body(a: Node, b: Node) -> None:
        for sequence in range(1, 11):  # one turn of the loop: the writer sleeps meanwhile
            assert a.links.send("b", esp("a", sequence))
        assert a.links.send("b", proposal("a", 1))
        await eventually(lambda: len(b.handler.esps) == 10 and len(a.handler.votes) == 1)
        assert b.handler.esps_from("a") == list(range(1, 11))
        assert [p.proposal_id for p in b.handler.proposals] == [1]
        assert (a.links.sent["b"], a.links.writes["b"]) == (11, 1)
        assert b.links.received["a"] == 11
        # One at a time, one write each; the vote went back alone.
        assert a.links.send("b", esp("a", 11))
        await eventually(lambda: b.handler.esps_from("a")[-1] == 11)
        assert (a.links.sent["b"], a.links.writes["b"]) == (12, 2)
        assert (b.links.sent["a"], b.links.writes["a"]) == (1, 1)

    run(with_nodes(full_mesh("a", "b"), body))


@contextlib.asynccontextmanager
async def dialed_by_raw_peer(
    node_id: str, peer_id: str
) -> AsyncIterator[tuple[Node, RawPeer, mesh_pb2.Hello]]:
    """A node and a bare Exchange call from ``peer_id`` (a smaller id: the node expects it to
    dial), past both Hellos (the peer's takes no batches); the node's Hello with them."""
    node = await start_node(node_id, [peer_id])
    node.links.set_peers({peer_id: "127.0.0.1:1"})
    peer = RawPeer(node.address)
    try:
        peer.send(mesh_pb2.MeshMessage(hello=hello(peer_id)))
        answer = (await peer.recv()).hello
        await eventually(lambda: node.links.connected(peer_id))
        yield node, peer, answer
    finally:
        await peer.close()
        await stop(node)


def test_a_peer_whose_hello_takes_no_batches_gets_one_message_per_write() -> None:
    async def main() -> None:
        async with dialed_by_raw_peer("s", "0old") as (node, old, answer):
            assert answer.accepts_batches
            for sequence in range(1, 6):
                node.links.send("0old", esp("s", sequence))
            got = [await old.recv() for _ in range(5)]
            assert [m.WhichOneof("body") for m in got] == ["esp"] * 5
            assert [m.esp.sequence for m in got] == [1, 2, 3, 4, 5]
            assert node.links.writes["0old"] == 5

    run(main())


def test_a_received_batch_is_delivered_in_order_and_a_bad_one_not_at_all() -> None:
    async def main() -> None:
        async with dialed_by_raw_peer("s", "0peer") as (node, peer, _):
            peer.send(
                batch(
                    esp_message("0peer", 1),
                    mesh_pb2.MeshMessage(proposal=convert.proposal_to_proto(proposal("0peer", 4))),
                    esp_message("0peer", 2),
                )
            )
            await eventually(lambda: node.handler.esps_from("0peer") == [1, 2])
            assert [p.proposal_id for p in node.handler.proposals] == [4]
            # Valid ESPs before a bad one in the same batch are not delivered either.
            peer.send(batch(esp_message("0peer", 3), esp_message("0peer", 3)))
            error = await peer.error()
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.details().startswith("batch.messages[1].esp.sequence:")
            assert node.handler.esps_from("0peer") == [1, 2]
            assert node.server.refused["0peer"] == 1

    run(main())


def test_each_message_of_a_batch_draws_on_its_peers_budget() -> None:
    async def main() -> None:
        async with limited_server(5.0) as (handler, address):
            flood = RawPeer(address)
            try:
                flood.send(mesh_pb2.MeshMessage(hello=hello("b")))  # a bucket of 10; 9 left
                assert (await flood.recv()).hello.sender_id == "m"
                flood.send(batch(*[esp_message("b", s) for s in range(1, 9)]))  # 8: 1 left
                await eventually(lambda: len(handler.esps) == 8)
                flood.send(batch(*[esp_message("b", s) for s in range(9, 12)]))  # 3: refused
                error = await flood.error()
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert handler.esps_from("b") == list(range(1, 9))
            finally:
                await flood.close()

    run(main())


def test_a_link_to_a_neighbour_far_away_comes_up() -> None:
    """A neighbour 150 ms away each way (a ``DelayRelay``): the TCP and HTTP/2 handshake takes
    longer than 100 ms, and with gRPC's shortest connection attempt at 100 ms the dialer timed
    out before the SETTINGS frame every time and the link never came up
    (``MIN_CONNECT_TIMEOUT_MS``; checked that this test fails so)."""

    async def main() -> None:
        a = await start_node("a", ["b"])
        b = await start_node("b", ["a"])
        with DelayRelay(("127.0.0.1", b.port), 0.15) as relay:
            relay.start()
            try:
                a.links.set_peers({"b": f"127.0.0.1:{relay.port}"})  # "a" < "b": a dials
                b.links.set_peers({"a": a.address})
                await eventually(lambda: a.links.connected("b"), timeout=10.0)
                assert a.links.send("b", esp("a", 1))
                await eventually(lambda: b.handler.esps_from("a") == [1])
            finally:
                await stop(a, b)

    run(main(), timeout=30.0)


def test_a_peer_that_stops_reading_never_blocks_send() -> None:
    async def main() -> None:
        node = await start_node("s", ["0slow"], esp_capacity=8, control_capacity=2)
        node.links.set_peers({"0slow": "127.0.0.1:1"})  # "0slow" < "s": it dials
        # A small, fixed receive window, so that flow control stops the writer soon.
        slow = RawPeer(
            node.address,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)],
        )
        try:
            slow.send(mesh_pb2.MeshMessage(hello=hello("0slow")))
            await slow.recv()
            await eventually(lambda: node.links.connected("0slow"))
            # ``send`` is a plain call: it cannot wait for the peer. What it must not do is pile
            # messages up behind a stuck writer; the counts show it dropped them instead.
            sequence = 0
            for _ in range(100):
                for _ in range(100):
                    sequence += 1
                    node.links.send("0slow", esp("s", sequence))
                await asyncio.sleep(0.002)
            sent = node.links.sent["0slow"]
            dropped = node.links.dropped_esps["0slow"]
            assert sent < sequence / 2  # the writer is stuck behind flow control
            assert dropped >= sequence - sent - 8  # all but the queued ones were dropped
            # Proposals and votes have their own room, and are refused (counted) beyond it.
            assert node.links.send("0slow", proposal("s", 1))
            assert node.links.send("0slow", proposal("s", 2))
            assert not node.links.send("0slow", proposal("s", 3))
            assert node.links.dropped_control["0slow"] == 1
            assert node.links.connected("0slow")
        finally:
            await slow.close()
            await stop(node)

    run(main())


def test_the_dialer_reconnects_to_a_restarted_server() -> None:
    async def main() -> None:
        a, b = await full_mesh("a", "b")
        restarted: MeshServer | None = None
        try:
            await b.server.stop(grace=0.1)
            await eventually(lambda: not a.links.connected("b"), timeout=3.0)
            await asyncio.sleep(0.5)  # the dialer fails and backs off meanwhile
            restarted = MeshServer(b.handler, b.links)
            assert await restarted.start(b.address) == b.port
            await eventually(lambda: a.links.connected("b"), timeout=4.0)
            assert restarted.accepted["a"] == 1
            assert a.links.send("b", esp("a", 1))
            await eventually(lambda: b.handler.esps_from("a") == [1])
        finally:
            if restarted is not None:
                await restarted.stop(grace=0.1)
            await stop(a, b)

    run(main())


def test_get_state_health_and_reflection() -> None:
    async def main() -> None:
        node = await start_node("m")
        channel = grpc.aio.insecure_channel(node.address)
        try:
            state = await mesh_pb2_grpc.EncoderMeshStub(channel).GetState(
                mesh_pb2.GetStateRequest(), timeout=2.0
            )
            assert state.encoder_id == "m" and state.gop_length == 30
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2.0
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING

            def services() -> list[str]:
                with grpc.insecure_channel(node.address) as sync_channel:
                    return list(ProtoReflectionDescriptorDatabase(sync_channel).get_services())

            listed = await asyncio.to_thread(services)
            assert SERVICE_NAME in listed
            assert "grpc.health.v1.Health" in listed
        finally:
            await channel.close()
            await stop(node)

    run(main())


def test_set_parameters_is_validated_and_refusals_are_failed_precondition() -> None:
    async def main() -> None:
        node = await start_node("p")
        channel = grpc.aio.insecure_channel(node.address)
        stub = mesh_pb2_grpc.EncoderMeshStub(channel)
        try:
            answer = await stub.SetParameters(
                mesh_pb2.SetParametersRequest(bitrate_kbps=800), timeout=2.0
            )
            assert (answer.proposal_id, answer.effective_segment) == (7, 123)
            assert node.handler.parameter_requests == [(800, None)]
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.SetParameters(mesh_pb2.SetParametersRequest(bitrate_kbps=10))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bitrate_kbps" in (bad.value.details() or "")
            node.handler.refuse_parameters = True
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetParameters(mesh_pb2.SetParametersRequest(bitrate_kbps=900))
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert node.handler.parameter_requests == [(800, None)]
            state = await stub.GetState(mesh_pb2.GetStateRequest(), timeout=2.0)
            assert state.encoder_id == "p"  # the server still serves
        finally:
            await channel.close()
            await stop(node)

    run(main())


# -- several channels through one server ---------------------------------------------------


@dataclass
class ChannelNode:
    """One encoder process of channels "a" and "b": a handler and links per channel, one
    server for both."""

    handlers: dict[str, FakeHandler]
    links: dict[str, MeshLinks]
    server: MeshServer
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_channels(node_id: str, neighbours: Iterable[str]) -> ChannelNode:
    handlers = {c: FakeHandler(node_id, neighbours, channel=c) for c in ("a", "b")}
    links = {c: MeshLinks(h) for c, h in handlers.items()}
    for channel, handler in handlers.items():
        handler.links = links[channel]
    server = MeshServer(handlers["a"], links["a"], channel="a")
    server.add_channel("b", handlers["b"], links["b"])
    return ChannelNode(handlers, links, server, await server.start("127.0.0.1:0"))


async def stop_channels(*nodes: ChannelNode) -> None:
    for node in nodes:
        for links in node.links.values():
            await links.close()
        await node.server.stop(grace=0.2)


def test_each_channels_stream_reaches_that_channel_through_one_server() -> None:
    """Two processes of two channels: one stream per channel and neighbour, each carrying
    its own channel's ESPs to that channel's handler alone."""

    async def main() -> None:
        one = await start_channels("one", ["two"])
        two = await start_channels("two", ["one"])
        try:
            for channel in ("a", "b"):  # "one" < "two": one dials, two accepts
                one.links[channel].set_peers({"two": two.address})
                two.links[channel].set_peers({"one": one.address})
            await eventually(
                lambda: all(
                    n.links[c].connected(p)
                    for n, p in ((one, "two"), (two, "one"))
                    for c in ("a", "b")
                )
            )
            assert two.server.accepted["one"] == 2  # one stream per channel
            one.links["a"].send("two", esp("one", 1))
            one.links["b"].send("two", esp("one", 2))
            one.links["b"].send("two", esp("one", 3))
            two.links["a"].send("one", esp("two", 4))
            await eventually(
                lambda: len(two.handlers["b"].esps) == 2 and len(one.handlers["a"].esps) == 1
            )
            await asyncio.sleep(0.1)  # anything misrouted would have arrived by now
            assert two.handlers["a"].esps_from("one") == [1]
            assert two.handlers["b"].esps_from("one") == [2, 3]
            assert one.handlers["a"].esps_from("two") == [4]
            assert one.handlers["b"].esps == []
        finally:
            await stop_channels(one, two)

    run(main())


def test_a_channel_not_encoded_here_is_not_found() -> None:
    """A stream, GetState or SetParameters naming a channel the process does not encode gets
    NOT_FOUND (counted, the server keeps serving); a malformed channel INVALID_ARGUMENT;
    none means the first channel."""

    async def main() -> None:
        node = await start_channels("m", ["x"])
        peer = RawPeer(node.address)
        channel = grpc.aio.insecure_channel(node.address)
        stub = mesh_pb2_grpc.EncoderMeshStub(channel)
        try:
            peer.send(mesh_pb2.MeshMessage(hello=hello("x", channel="c")))
            error = await peer.error()
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "'c'" in error.details() and "a, b" in error.details()
            assert node.server.refused["x"] == 1
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.GetState(mesh_pb2.GetStateRequest(channel="c"), timeout=2.0)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
                await stub.SetParameters(
                    mesh_pb2.SetParametersRequest(bitrate_kbps=800, channel="c"), timeout=2.0
                )
            assert elsewhere.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.GetState(mesh_pb2.GetStateRequest(channel=".."), timeout=2.0)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "channel" in (bad.value.details() or "")
            first = await stub.GetState(mesh_pb2.GetStateRequest(), timeout=2.0)
            second = await stub.GetState(mesh_pb2.GetStateRequest(channel="b"), timeout=2.0)
            assert (first.channel, second.channel) == ("a", "b")
            await stub.SetParameters(
                mesh_pb2.SetParametersRequest(bitrate_kbps=900, channel="b"), timeout=2.0
            )
            assert node.handlers["b"].parameter_requests == [(900, None)]
            assert node.handlers["a"].parameter_requests == []
        finally:
            await channel.close()
            await peer.close()
            await stop_channels(node)

    run(main())


def test_a_dialer_refuses_an_acceptor_of_another_channel() -> None:
    ours = hello("a", channel="news")
    assert mesh._hello_problem(hello("b", channel="news"), ours, expected="b") is None
    assert mesh._hello_problem(hello("b"), ours, expected="b") is None  # older: first channel
    problem = mesh._hello_problem(hello("b", channel="sport"), ours, expected="b")
    assert problem is not None and problem[0] == "hello.channel"


@pytest.mark.parametrize(("channel", "reason"), [("..", "'.' or '..'"), ("a", "already")])
def test_add_channel_refuses_a_bad_or_second_name(channel: str, reason: str) -> None:
    handler = FakeHandler("m", channel="a")
    links = MeshLinks(handler)
    server = MeshServer(handler, links, channel="a")
    with pytest.raises(ValueError, match=reason):
        server.add_channel(channel, handler, links)
