"""The encoder's mesh links: the EncoderMesh server and one Exchange stream per neighbour.

Theory of operation
-------------------
Two neighbours share exactly one bidirectional ``Exchange`` stream, which carries ESPs, resync
proposals and votes both ways. The encoder whose id is the smaller (plain string comparison)
dials the stream (:class:`MeshLinks` runs a dialer for it); the other accepts it
(:class:`MeshServer`). Each side sends its ``Hello`` first; the acceptor checks the caller's
Hello before it answers with its own: none within the handshake timeout ends the call with
DEADLINE_EXCEEDED, an invalid one with INVALID_ARGUMENT, a caller whose Hello names another
encoder than its certificate does (mutual TLS) or that is not a current neighbour
(``MeshHandler.is_neighbour``) with PERMISSION_DENIED, and a caller that speaks another
protocol version or encodes another timeline (frame rate or GOP length) with
FAILED_PRECONDITION. One server serves every channel its encoder process encodes (each with
its own handler and links, :meth:`MeshServer.add_channel`): the Hello names the stream's
channel (empty: the first), and a channel not served here ends the call with NOT_FOUND
(after the certificate check, before the neighbour check); GetState and SetParameters name
theirs the same way. Each refusal is counted; its log line is written at most once per kind
every 10 s (``LimitedLog``), so a flood of bad calls cannot flood the log. The dialer checks
the acceptor's Hello the same way and also that it comes from the neighbour it meant to reach,
about the channel it asked for (under mutual TLS the acceptor's certificate must also carry
that neighbour's name).
SetParameters is refused with PERMISSION_DENIED unless the caller is the operator. Bytes that
do not parse, per-peer limits and message sizes are the server shell's business
(``services.common.grpc_server``); when one of its guards ends a stream while the reader reads,
the reader hands the abort to the call, which re-raises it. Every status code:
docs/hostile-input.md.

Every received message passes ``ExchangeStreamChecker`` (which applies
``meshenc.wire.validation``) before it is converted to a core dataclass and handed to the
handler; the first invalid message ends that stream (the acceptor aborts it with
INVALID_ARGUMENT naming the field, the dialer cancels it and reconnects) and the handler never
sees it. Other streams are not affected. The handler answers a proposal by sending its vote
with ``MeshLinks.send``, like any other message.

Proposals and votes carry a trace context of their own (one stream lives for hours, so the
call's context says nothing about them): a received one keeps what it arrived with in its
``trace_context``; an outgoing one gets the context the links' ``MessageTracing`` (the
encoder's telemetry) names for it as it is converted for the wire.

Invariants
----------
- ``MeshLinks.send`` never waits: each neighbour has a bounded outbox. ESPs are state, not
  events: a full ESP queue drops its oldest ESP (counted in ``dropped_esps``), and ESPs for a
  neighbour without a live stream are dropped at once. Proposals and votes have a reserved
  queue of their own, are written before any queued ESP and survive reconnects; only when even
  that queue is full is one refused, counted in ``dropped_control`` and logged.
- A message is converted and serialised once, when it is queued: ``send_all`` queues the
  same bytes for every neighbour it names (the runtime sends each frame's ESP so), and the
  streams write queued bytes as they are (``_wire``; the generated stub's and servicer's
  codecs would serialise each message again for each stream).
- Whatever is queued for a neighbour when its stream can take a write goes out as one write:
  a ``MeshBatch`` of up to ``MAX_BATCH_MESSAGES``, in queue order (proposals and votes first),
  to a peer whose Hello says it takes batches (every Hello these links send does); one
  message per write otherwise. A stream's cost is per gRPC message, not per byte, so a link
  that fell behind catches up in one write instead of falling further behind; when it keeps
  up, each message goes alone as before. A received batch is checked whole before any of it
  is delivered, and counts each of its messages against the peer's limit.
- At most one live stream per neighbour. Should a second one be accepted (the dialer
  reconnected before this side noticed that the old connection died), the newer replaces the
  older, which is ended.
- A link stays up until the neighbour leaves the set given to ``set_peers``, either side
  stops, or a message breaks a rule; dialers then reconnect with the services' backoff
  (``services.common.retry``): between half and all of a ceiling that doubles from
  ``backoff_base`` to ``backoff_cap`` seconds.
- Everything runs on one event loop; the handler's methods are called from it, never
  concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import grpc

from meshenc.core.messages import EncodingStatePacket, ResyncProposal, ResyncVote
from meshenc.core.parameters import size_name
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from meshenc.wire import convert
from meshenc.wire.validation import (
    MAX_BATCH_MESSAGES,
    ExchangeStreamChecker,
    InvalidMessage,
    check_channel_name,
    validate_get_state_request,
    validate_set_parameters_request,
)
from services.common.grpc_server import GrpcServer, open_channel
from services.common.log_limit import LimitedLog
from services.common.peer_limits import PeerLimits
from services.common.retry import Backoff, retrying
from services.common.telemetry import TraceContext
from services.common.tls import TlsFiles, peer_identity, require_operator
from services.encoder.media.ladder import CHANNEL
from services.encoder.telemetry import topology_changed

__all__ = [
    "DEFAULT_CONTROL_CAPACITY",
    "DEFAULT_ESP_CAPACITY",
    "SERVICE_NAME",
    "MeshHandler",
    "MeshLinks",
    "MeshServer",
    "MessageTracing",
    "Outgoing",
]

log = logging.getLogger("meshenc.encoder.mesh")

SERVICE_NAME: Final[str] = mesh_pb2.DESCRIPTOR.services_by_name["EncoderMesh"].full_name
"""``meshenc.v1.EncoderMesh``: the name health and reflection report."""
DEFAULT_ESP_CAPACITY: Final = 32
"""ESPs queued per neighbour (about one second at 30 fps) before the oldest are dropped."""
DEFAULT_CONTROL_CAPACITY: Final = 16
"""Proposals and votes queued per neighbour; they are never dropped to make room."""

Outgoing = mesh_pb2.MeshMessage | EncodingStatePacket | ResyncProposal | ResyncVote
"""What may be sent to a neighbour: a wire envelope (not a Hello) or a core message."""


class MeshHandler(Protocol):
    """What the encoder runtime provides to the mesh links (core dataclasses in and out)."""

    @property
    def node_id(self) -> str:
        """This encoder's id."""
        ...

    def is_neighbour(self, node_id: str) -> bool:
        """Whether ``node_id`` is a current neighbour (may open an Exchange stream)."""
        ...

    def on_esp(self, esp: EncodingStatePacket) -> None:
        """A neighbour's ESP arrived (validated)."""
        ...

    def on_proposal(self, proposal: ResyncProposal) -> None:
        """A neighbour's proposal arrived (the handler sends its vote back to the proposer)."""
        ...

    def on_vote(self, vote: ResyncVote) -> None:
        """A neighbour's vote on one of this encoder's proposals arrived."""
        ...

    def state(self) -> mesh_pb2.EncoderState:
        """The snapshot GetState answers with."""
        ...

    def hello(self) -> mesh_pb2.Hello:
        """The Hello this encoder opens each stream with."""
        ...

    def set_parameters(self, bitrate_kbps: int, size: tuple[int, int] | None) -> tuple[int, int]:
        """Propose a mesh-wide change of bitrate, picture size or both (0, None: keep it);
        (proposal id, effective segment).

        Raises ValueError with the reason when no change can be proposed now.
        """
        ...


class MessageTracing(Protocol):
    """Where outgoing proposals and votes get their trace context (the encoder's telemetry)."""

    def proposal_trace(self, proposal_id: int) -> TraceContext:
        """The context this encoder's proposal ``proposal_id`` goes out with (() for none)."""
        ...

    def vote_trace(self, vote: ResyncVote) -> TraceContext:
        """The context this encoder's ``vote`` goes out with (() for none)."""
        ...


class _Untraced:
    """No trace context on anything: links nobody observes (tests, benches)."""

    def proposal_trace(self, proposal_id: int) -> TraceContext:
        return ()

    def vote_trace(self, vote: ResyncVote) -> TraceContext:
        return ()


class _LinkFailed(Exception):  # noqa: N818 -- an outcome, not an error of this program
    """A dial attempt ended before its stream got past the Hellos (the dialer backs off)."""


def _envelope(msg: Outgoing, tracing: MessageTracing) -> mesh_pb2.MeshMessage:
    """The wire form of ``msg``; a proposal or a vote with the context ``tracing`` names."""
    if isinstance(msg, EncodingStatePacket):
        return mesh_pb2.MeshMessage(esp=convert.esp_to_proto(msg))
    if isinstance(msg, ResyncProposal):
        trace = tracing.proposal_trace(msg.proposal_id)
        return mesh_pb2.MeshMessage(proposal=convert.proposal_to_proto(msg, trace))
    if isinstance(msg, ResyncVote):
        return mesh_pb2.MeshMessage(vote=convert.vote_to_proto(msg, tracing.vote_trace(msg)))
    body = msg.WhichOneof("body")
    if body is None or body == "hello":
        raise ValueError(f"only ESPs, proposals and votes can be sent, got {body}")
    return msg


def _hello_problem(
    theirs: mesh_pb2.Hello, ours: mesh_pb2.Hello, expected: str | None = None
) -> tuple[str, str] | None:
    """Why a (valid) peer Hello cannot be locked with ours, as (field, reason), or None.

    Validation checks a Hello on its own; whether two encoders encode the same timeline is a
    comparison of both Hellos, done here.
    """
    if expected is not None and theirs.sender_id != expected:
        return "hello.sender_id", f"dialed {expected!r} but {theirs.sender_id!r} answered"
    if theirs.channel and theirs.channel != ours.channel:
        return "hello.channel", f"channel {theirs.channel!r} is not ours, {ours.channel!r}"
    if theirs.protocol_version != ours.protocol_version:
        return (
            "hello.protocol_version",
            f"version {theirs.protocol_version} is not ours, {ours.protocol_version}",
        )
    a, b = theirs.frame_rate, ours.frame_rate
    if a.num * b.den != b.num * a.den:
        return "hello.frame_rate", f"{a.num}/{a.den} fps differs from ours, {b.num}/{b.den}"
    if theirs.gop_length != ours.gop_length:
        return (
            "hello.gop_length",
            f"{theirs.gop_length} frames differs from ours, {ours.gop_length}",
        )
    return None


def _own_hello(handler: MeshHandler) -> mesh_pb2.Hello:
    """This side's Hello: the handler's, saying that the links take batches."""
    hello = handler.hello()
    hello.accepts_batches = True
    return hello


def _batch(messages: Sequence[bytes]) -> bytes:
    """Serialised envelopes (ESPs, proposals, votes) as one serialised batch envelope."""
    envelope = mesh_pb2.MeshMessage()
    add = envelope.batch.messages.add
    for data in messages:
        add().MergeFromString(data)
    return envelope.SerializeToString()


def _batch_weight(request: object) -> int:
    """What a request counts for against a peer's message limit: a batch its messages."""
    if isinstance(request, mesh_pb2.MeshMessage) and request.WhichOneof("body") == "batch":
        return max(1, len(request.batch.messages))
    return 1


def _wire(msg: mesh_pb2.MeshMessage | bytes) -> bytes:
    """A message as an Exchange stream writes it: the queued messages are serialised already
    (once for every neighbour they go to), the Hello not."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


_EXCHANGE: Final = f"/{SERVICE_NAME}/Exchange"


def _exchange_method(channel: Any) -> Any:
    """The dialer's Exchange, as the generated stub's but writing what :func:`_wire` gives."""
    return channel.stream_stream(
        _EXCHANGE,
        request_serializer=_wire,
        response_deserializer=mesh_pb2.MeshMessage.FromString,
        _registered_method=True,
    )


def _add_servicer(servicer: mesh_pb2_grpc.EncoderMeshServicer, server: Any) -> None:
    """The generated ``add_EncoderMeshServicer_to_server``, but Exchange's answers are written
    as :func:`_wire` gives them."""
    handlers = {
        "Exchange": grpc.stream_stream_rpc_method_handler(
            servicer.Exchange,
            request_deserializer=mesh_pb2.MeshMessage.FromString,
            response_serializer=_wire,
        ),
        "GetState": grpc.unary_unary_rpc_method_handler(
            servicer.GetState,
            request_deserializer=mesh_pb2.GetStateRequest.FromString,
            response_serializer=mesh_pb2.EncoderState.SerializeToString,
        ),
        "SetParameters": grpc.unary_unary_rpc_method_handler(
            servicer.SetParameters,
            request_deserializer=mesh_pb2.SetParametersRequest.FromString,
            response_serializer=mesh_pb2.SetParametersResponse.SerializeToString,
        ),
    }
    missing = set(mesh_pb2.DESCRIPTOR.services_by_name["EncoderMesh"].methods_by_name) - set(
        handlers
    )
    if missing:  # pragma: no cover - the proto gained a method: add it here
        raise RuntimeError(f"EncoderMesh methods not served: {sorted(missing)}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class _Outbox:
    """One neighbour's bounded outgoing queue of serialised messages: droppable ESPs,
    reserved room for the rest."""

    __slots__ = ("_control", "_control_capacity", "_esp_capacity", "_esps", "_ready")

    def __init__(self, esp_capacity: int, control_capacity: int) -> None:
        self._esps: deque[bytes] = deque()
        self._control: deque[bytes] = deque()
        self._esp_capacity = esp_capacity
        self._control_capacity = control_capacity
        self._ready = asyncio.Event()

    def put_esp(self, msg: bytes) -> int:
        """Queue an ESP; returns how many older ESPs were dropped to make room (0 or 1)."""
        dropped = 0
        if len(self._esps) >= self._esp_capacity:
            self._esps.popleft()
            dropped = 1
        self._esps.append(msg)
        self._ready.set()
        return dropped

    def put_control(self, msg: bytes) -> bool:
        """Queue a proposal or vote; False (nothing queued) when the reserved room is full."""
        if len(self._control) >= self._control_capacity:
            return False
        self._control.append(msg)
        self._ready.set()
        return True

    def pop(self, limit: int = 1) -> list[bytes]:
        """Up to ``limit`` next messages to write (proposals and votes first, each queue in
        order); empty when there are none."""
        taken: list[bytes] = []
        for queue in (self._control, self._esps):
            while queue and len(taken) < limit:
                taken.append(queue.popleft())
        if not taken:
            self._ready.clear()
        return taken

    def clear_esps(self) -> int:
        """Drop every queued ESP (stale once their stream is gone); returns how many."""
        count = len(self._esps)
        self._esps.clear()
        return count

    @property
    def control_pending(self) -> int:
        """Proposals and votes not written yet."""
        return len(self._control)

    def wake(self) -> None:
        """Wake the writer so that it looks at its session again."""
        self._ready.set()

    async def wait(self) -> None:
        """Return once a message was queued or :meth:`wake` was called."""
        await self._ready.wait()


class _Session:
    """One Exchange stream with a neighbour, past both Hellos."""

    __slots__ = ("aborted", "batches", "ended", "error", "outbound", "outbox", "peer_id")

    def __init__(self, peer_id: str, outbox: _Outbox, *, outbound: bool, batches: bool) -> None:
        self.peer_id = peer_id
        self.outbox = outbox
        self.outbound = outbound
        #: The peer's Hello said it takes batches: queued messages may go as one write.
        self.batches = batches
        self.ended = asyncio.Event()
        self.error: InvalidMessage | None = None
        #: A server interceptor ended the call while the reader read (the bytes did not parse,
        #: or the peer went over its limits): the accepting handler re-raises it.
        self.aborted: grpc.aio.AbortError | None = None

    def end(self) -> None:
        """Make both halves of the stream stop (the writer is woken to notice)."""
        self.ended.set()
        self.outbox.wake()


@dataclass(eq=False, slots=True)
class _Link:
    """Everything this encoder keeps about one neighbour."""

    peer_id: str
    outbox: _Outbox
    configured: bool = False  # given by set_peers (else: accepted from a handler-approved peer)
    address: str | None = None
    dialer: asyncio.Task[None] | None = None
    session: _Session | None = None


class MeshLinks:
    """The per-neighbour links of one encoder: outboxes, dialers, live streams and counters.

    Args:
        handler: the encoder runtime.
        esp_capacity: ESPs queued per neighbour before the oldest are dropped.
        control_capacity: proposals and votes queued per neighbour.
        backoff_base: first reconnect delay ceiling, seconds; doubles per failed attempt.
        backoff_cap: largest reconnect delay, seconds.
        handshake_timeout: how long a dialer waits for the acceptor's Hello, seconds.
        rng: source of the backoff jitter (injected so that tests can seed it).
        on_link: called with (peer, True) when a stream with a neighbour comes up and
            (peer, False) when the live one ends, e.g. because the neighbour died.
        tracing: the trace context of outgoing proposals and votes; default, none.
        tls: this encoder's TLS files: each dialed stream is mutual TLS and the acceptor's
            certificate must name the neighbour dialed; plaintext when None.
        logger: where the links log (a channel of several: a child logger named after it).
    """

    def __init__(
        self,
        handler: MeshHandler,
        *,
        tls: TlsFiles | None = None,
        logger: logging.Logger = log,
        esp_capacity: int = DEFAULT_ESP_CAPACITY,
        control_capacity: int = DEFAULT_CONTROL_CAPACITY,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        handshake_timeout: float = 5.0,
        rng: random.Random | None = None,
        on_link: Callable[[str, bool], None] | None = None,
        tracing: MessageTracing | None = None,
    ) -> None:
        if esp_capacity < 1 or control_capacity < 1:
            raise ValueError("queue capacities must be at least 1")
        self._handler = handler
        self._tls = tls
        self._log = logger
        self._esp_capacity = esp_capacity
        self._control_capacity = control_capacity
        self._backoff = Backoff(backoff_base, backoff_cap, jitter=0.0, spread=0.5)
        self._handshake_timeout = handshake_timeout
        self._rng = rng if rng is not None else random.Random()
        self._on_link = on_link
        self._tracing: MessageTracing = tracing if tracing is not None else _Untraced()
        self._links: dict[str, _Link] = {}
        self._dialers: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Messages handed to gRPC for writing, per neighbour.
        self.sent: Counter[str] = Counter()
        #: gRPC messages written, per neighbour: fewer than ``sent`` where batches carried
        #: several.
        self.writes: Counter[str] = Counter()
        #: Valid messages received and dispatched to the handler, per neighbour.
        self.received: Counter[str] = Counter()
        #: ESPs dropped (queue full, or no live stream), per neighbour.
        self.dropped_esps: Counter[str] = Counter()
        #: Proposals and votes refused (reserved queue full) or lost with their link.
        self.dropped_control: Counter[str] = Counter()
        self._invalid = LimitedLog(self._log)

    # -- public ------------------------------------------------------------------------------

    @property
    def peers(self) -> frozenset[str]:
        """The neighbours given to :meth:`set_peers`."""
        return frozenset(p for p, link in self._links.items() if link.configured)

    def dials(self, peer_id: str) -> bool:
        """Whether this encoder is the one that dials ``peer_id`` (its id is the smaller)."""
        return self._handler.node_id < peer_id

    def connected(self, peer_id: str) -> bool:
        """Whether a stream with ``peer_id`` is up (its Hello checked and accepted)."""
        link = self._links.get(peer_id)
        return link is not None and link.session is not None

    def direction(self, peer_id: str) -> Literal["outbound", "inbound"] | None:
        """Who opened the live stream with ``peer_id``: this side (outbound) or the peer."""
        link = self._links.get(peer_id)
        if link is None or link.session is None:
            return None
        return "outbound" if link.session.outbound else "inbound"

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Make ``peers`` (id → ``host:port``) the neighbours; call inside the event loop.

        Links to former neighbours are closed (their queued messages are lost, and counted),
        dialers start for new neighbours with a greater id, and restart when an address
        changes. Neighbours with a smaller id dial this encoder; their address is kept only
        for reference.
        """
        if self._closed:
            raise RuntimeError("the mesh links are closed")
        me = self._handler.node_id
        wanted = {peer: address for peer, address in peers.items() if peer != me}
        if len(wanted) != len(peers):
            self._log.warning("ignoring %r in the peer list: it is this encoder", me)
        topology_changed(me, self.peers, frozenset(wanted))
        for peer in [p for p in self._links if p not in wanted]:
            self._remove(peer)
        loop = asyncio.get_running_loop()
        for peer, address in wanted.items():
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link(peer, self._new_outbox())
            moved = link.address != address
            link.configured, link.address = True, address
            if self.dials(peer) and (moved or link.dialer is None):
                if link.dialer is not None:
                    link.dialer.cancel()
                task = loop.create_task(self._dial(link), name=f"mesh-dial-{peer}")
                self._dialers.add(task)
                task.add_done_callback(self._dialers.discard)
                link.dialer = task

    def send(self, peer_id: str, msg: Outgoing) -> bool:
        """Queue ``msg`` for ``peer_id`` without waiting; False if it was dropped.

        ESPs go only to a live stream and push out the oldest queued ESP when the queue is
        full (still True: the new one is queued). Proposals and votes are queued until a
        stream can carry them.

        Raises:
            ValueError: ``msg`` is a Hello or an empty envelope.
        """
        envelope = _envelope(msg, self._tracing)
        return self._queue(peer_id, envelope.WhichOneof("body"), envelope.SerializeToString())

    def send_all(self, peer_ids: Iterable[str], msg: Outgoing) -> int:
        """:meth:`send` ``msg`` to each of ``peer_ids``; returns to how many it was queued.

        The message is converted and serialised once, and every neighbour's stream is
        written those same bytes (an ESP goes to every neighbour each frame).

        Raises:
            ValueError: ``msg`` is a Hello or an empty envelope.
        """
        envelope = _envelope(msg, self._tracing)
        body, data = envelope.WhichOneof("body"), envelope.SerializeToString()
        return sum(self._queue(peer, body, data) for peer in peer_ids)

    def broadcast(self, msg: Outgoing) -> int:
        """:meth:`send` ``msg`` to every neighbour; returns to how many it was queued."""
        return self.send_all(self.peers, msg)

    def _queue(self, peer_id: str, body: str | None, data: bytes) -> bool:
        """Queue a serialised envelope (``data``, carrying a ``body``) for ``peer_id`` (see
        :meth:`send`)."""
        link = self._links.get(peer_id)
        is_esp = body == "esp"
        if link is None:
            if is_esp:
                self.dropped_esps[peer_id] += 1
            else:
                self.dropped_control[peer_id] += 1
                self._log.warning("dropped a %s for %r: not a neighbour", body, peer_id)
            return False
        if is_esp:
            if link.session is None:
                self.dropped_esps[peer_id] += 1
                return False
            self.dropped_esps[peer_id] += link.outbox.put_esp(data)
            return True
        if not link.outbox.put_control(data):
            self.dropped_control[peer_id] += 1
            self._log.warning(
                "dropped a %s for %r: %d proposals and votes already queued",
                body,
                peer_id,
                self._control_capacity,
            )
            return False
        return True

    async def close(self) -> None:
        """End every link and dialer; the links cannot be used afterwards."""
        self._closed = True
        for peer in list(self._links):
            self._remove(peer)
        if self._dialers:
            await asyncio.gather(*self._dialers, return_exceptions=True)

    # -- links and sessions ------------------------------------------------------------------

    def _new_outbox(self) -> _Outbox:
        return _Outbox(self._esp_capacity, self._control_capacity)

    def _remove(self, peer_id: str) -> None:
        link = self._links.pop(peer_id)
        if link.dialer is not None:
            link.dialer.cancel()
        if link.session is not None:
            link.session.end()
        self._count_lost(link)

    def _count_lost(self, link: _Link) -> None:
        lost = link.outbox.control_pending
        if lost:
            self.dropped_control[link.peer_id] += lost
            self._log.warning(
                "%d proposals and votes for %r lost with the link", lost, link.peer_id
            )

    def _attach(
        self, peer_id: str, *, batches: bool, dialer: _Link | None = None
    ) -> _Session | None:
        """Make a new stream with ``peer_id`` the live one; None if it must not be used.

        ``batches``: the peer's Hello said it takes batches. A dialer passes its link, which
        must still be the peer's link; an accepted stream from a handler-approved neighbour
        not (yet) given to set_peers gets a link of its own.
        """
        if self._closed:
            return None
        link = self._links.get(peer_id)
        if dialer is not None and link is not dialer:
            return None
        if link is None:
            link = self._links[peer_id] = _Link(peer_id, self._new_outbox())
        session = _Session(peer_id, link.outbox, outbound=dialer is not None, batches=batches)
        old = link.session
        if old is not None:
            self._log.info("link %r: a newer stream replaces the live one", peer_id)
            old.end()
        self.dropped_esps[peer_id] += link.outbox.clear_esps()
        link.session = session
        self._log.info("link %r up (%s)", peer_id, "dialed" if session.outbound else "accepted")
        if self._on_link is not None:
            self._on_link(peer_id, True)
        return session

    def _detach(self, session: _Session) -> None:
        session.end()
        link = self._links.get(session.peer_id)
        if link is None or link.session is not session:
            return
        link.session = None
        self.dropped_esps[session.peer_id] += link.outbox.clear_esps()
        self._log.info("link %r down", session.peer_id)
        if self._on_link is not None:
            self._on_link(session.peer_id, False)
        if not link.configured:
            del self._links[session.peer_id]
            self._count_lost(link)

    async def _outbound(self, session: _Session) -> AsyncIterator[bytes]:
        """The messages to write on ``session``'s stream until it ends (Hello not included):
        whatever is queued when the stream can take a write, batched when the peer takes
        batches."""
        outbox = session.outbox
        peer = session.peer_id
        limit = MAX_BATCH_MESSAGES if session.batches else 1
        while not session.ended.is_set():
            taken = outbox.pop(limit)
            if not taken:
                await outbox.wait()
                continue
            self.sent[peer] += len(taken)
            self.writes[peer] += 1
            yield taken[0] if len(taken) == 1 else _batch(taken)

    async def _consume(
        self,
        session: _Session,
        messages: AsyncIterator[mesh_pb2.MeshMessage],
        checker: ExchangeStreamChecker,
    ) -> None:
        """Check and dispatch what the peer sends until its half of the stream ends."""
        peer = session.peer_id
        try:
            async for msg in messages:
                if session.ended.is_set():
                    return
                try:
                    checker.check(msg)
                except InvalidMessage as exc:
                    session.error = exc
                    self._invalid.warning(
                        peer, "link %r: invalid message, ending the stream: %s", peer, exc
                    )
                    return
                self._deliver(peer, msg)
        except grpc.aio.AbortError as exc:
            session.aborted = exc  # the call's status is sent; the handler ends it
        except grpc.aio.AioRpcError as exc:
            self._log.info("link %r: stream ended: %s %s", peer, exc.code().name, exc.details())
        except Exception as exc:  # the server's request iterator reports cancellation so
            self._log.debug("link %r: stream ended: %r", peer, exc)
        finally:
            session.end()

    def _deliver(self, peer: str, msg: mesh_pb2.MeshMessage) -> None:
        """Hand one valid message (each message of a valid batch, in order) to the handler."""
        body = msg.WhichOneof("body")
        if body == "batch":
            for item in msg.batch.messages:
                self._deliver(peer, item)
            return
        self.received[peer] += 1
        try:
            if body == "esp":
                self._handler.on_esp(convert.esp_from_proto(msg.esp))
            elif body == "proposal":
                self._handler.on_proposal(convert.proposal_from_proto(msg.proposal))
            elif body == "vote":
                self._handler.on_vote(convert.vote_from_proto(msg.vote))
        except Exception:
            # A handler bug must not cut the link to a neighbour; it is logged in full.
            self._log.exception("link %r: the handler failed on a %s", peer, body)

    # -- dialing -----------------------------------------------------------------------------

    async def _dial(self, link: _Link) -> None:
        """Keep a stream with ``link``'s peer up until the task is cancelled."""
        while True:
            # The first failure of an outage at INFO (a refusing neighbour shows), later DEBUG.
            async for attempt in retrying(
                f"link {link.peer_id!r}: dialing",
                lambda exc: isinstance(exc, _LinkFailed),
                attempts=None,
                backoff=self._backoff,
                rng=self._rng,
                logger=self._log,
                level=logging.INFO,
            ):
                with attempt:
                    await self._dial_once(link)
            # The stream was up for a while and has ended: redial soon, with a fresh backoff.
            await asyncio.sleep(self._rng.uniform(0.0, self._backoff.initial))

    async def _dial_once(self, link: _Link) -> None:
        """Open one stream and run it until it ends.

        Raises _LinkFailed (the dialer backs off) when the stream never got past the Hellos or
        ended within ``backoff_cap`` seconds.
        """
        try:
            await self._run_outbound_stream(link)
        except (_LinkFailed, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._log.exception("link %r: dialing failed unexpectedly", link.peer_id)
            raise _LinkFailed(repr(exc)) from exc

    async def _run_outbound_stream(self, link: _Link) -> None:
        peer, address = link.peer_id, link.address
        if address is None:
            raise _LinkFailed("no address")
        hello = _own_hello(self._handler)
        ready = asyncio.Event()
        session: _Session | None = None

        async def requests() -> AsyncIterator[mesh_pb2.MeshMessage | bytes]:
            yield mesh_pb2.MeshMessage(hello=hello)
            await ready.wait()
            if session is not None:
                async for msg in self._outbound(session):
                    yield msg

        channel = open_channel(address, tls=self._tls, server_name=peer)
        call: Any = None
        reader: asyncio.Task[None] | None = None
        try:
            call = _exchange_method(channel)(requests())
            responses = aiter(call)
            try:
                # asyncio.timeout, not wait_for: a dialer cancelled as the Hello arrives must
                # stop (services.common.waiting).
                async with asyncio.timeout(self._handshake_timeout):
                    first = await anext(responses)
            except StopAsyncIteration:
                raise _LinkFailed("the peer closed the stream before its hello") from None
            except TimeoutError:
                raise _LinkFailed(f"no hello within {self._handshake_timeout} s") from None
            except grpc.aio.AioRpcError as exc:
                raise _LinkFailed(f"{exc.code().name}: {exc.details()}") from None
            checker = ExchangeStreamChecker(self._handler.node_id)
            try:
                checker.check(first)
            except InvalidMessage as exc:
                self._log.warning("link %r at %s: invalid hello: %s", peer, address, exc)
                raise _LinkFailed(str(exc)) from None
            problem = _hello_problem(first.hello, hello, expected=peer)
            if problem is not None:
                self._log.warning("link %r at %s: %s: %s", peer, address, *problem)
                raise _LinkFailed(": ".join(problem))
            session = self._attach(peer, batches=first.hello.accepts_batches, dialer=link)
            if session is None:
                return
            ready.set()
            reader = asyncio.create_task(self._consume(session, responses, checker))
            up_since = time.monotonic()
            await session.ended.wait()
            lasted = time.monotonic() - up_since
            if lasted < self._backoff.maximum:
                # A stream that ends at once (a peer that accepts and then drops us) must not
                # be redialled in a tight loop: it counts as a failed attempt.
                raise _LinkFailed(f"the stream ended after {lasted:.2f} s")
        finally:
            # Let the request generator end (it waits for ``ready``): left suspended, gRPC's
            # task that reads it was destroyed pending, and closing it raised "asynchronous
            # generator is already running", on every refused dial.
            ready.set()
            if reader is not None:
                reader.cancel()
            if session is not None:
                self._detach(session)
            if call is not None:
                call.cancel()
            await channel.close()


class _EncoderMeshServicer(mesh_pb2_grpc.EncoderMeshServicer):
    """Thin servicer: checks and converts, then leaves the work to the links and handler."""

    def __init__(self, owner: MeshServer) -> None:
        self._owner = owner
        self._refusals = LimitedLog(log)

    async def Exchange(  # type: ignore[override]  # noqa: N802 -- the gRPC method's name
        self, request_iterator: AsyncIterator[mesh_pb2.MeshMessage], context: Any
    ) -> AsyncIterator[mesh_pb2.MeshMessage | bytes]:
        # An async generator (not context.write) so that tracing interceptors see the stream.
        # It yields serialised messages as well (see _add_servicer): not the stub's type.
        async for msg in self._owner._exchange(request_iterator, context):
            yield msg

    async def GetState(  # noqa: N802 -- the gRPC method's name
        self, request: mesh_pb2.GetStateRequest, context: Any
    ) -> mesh_pb2.EncoderState:
        try:
            validate_get_state_request(request)
        except InvalidMessage as exc:
            self._refusals.warning("invalid-state", "GetState refused: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        handler, _ = await self._owner._route(request.channel, context, "GetState")
        return handler.state()

    async def SetParameters(  # noqa: N802 -- the gRPC method's name
        self, request: mesh_pb2.SetParametersRequest, context: Any
    ) -> mesh_pb2.SetParametersResponse:
        # It changes the whole mesh: the operator's certificate only.
        await require_operator(context, "SetParameters")
        try:
            validate_set_parameters_request(request)
        except InvalidMessage as exc:
            self._refusals.warning("invalid", "SetParameters refused: %s", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        handler, _ = await self._owner._route(request.channel, context, "SetParameters")
        try:
            size = convert.size_from_proto(request.width, request.height)
            proposal_id, segment = handler.set_parameters(request.bitrate_kbps, size)
        except ValueError as exc:
            self._refusals.warning("refused", "SetParameters refused: %s", exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info(
            "proposed %s from segment %d (proposal %d, channel %s)",
            _asked(request.bitrate_kbps, size),
            segment,
            proposal_id,
            request.channel or self._owner.channels[0],
        )
        return mesh_pb2.SetParametersResponse(proposal_id=proposal_id, effective_segment=segment)


def _asked(bitrate_kbps: int, size: tuple[int, int] | None) -> str:
    """A SetParameters request for the log: what it changes."""
    asked = [f"{bitrate_kbps} kbit/s"] if bitrate_kbps else []
    if size is not None:
        asked.append(size_name(size))
    return " at ".join(asked)


class MeshServer:
    """Serves EncoderMesh (Exchange, GetState) with health and reflection.

    Accepted Exchange streams join ``links``, so a neighbour that dialed this encoder is
    reached by ``links.send`` exactly like one this encoder dialed. With ``tls`` it serves
    mutual TLS only, a caller's Hello must name the identity in its certificate, and
    SetParameters is the operator's. ``limits``: what one peer may open and send
    (``services.common.peer_limits``).

    ``handler`` and ``links`` serve ``channel``, the first channel (what a Hello or a request
    without a channel means); :meth:`add_channel` serves more through the same port.
    """

    def __init__(
        self,
        handler: MeshHandler,
        links: MeshLinks,
        *,
        channel: str = CHANNEL,
        interceptors: Sequence[Any] = (),
        tls: TlsFiles | None = None,
        limits: PeerLimits | None = None,
    ) -> None:
        self._handler = handler
        self._links = links
        self._channels: dict[str, tuple[MeshHandler, MeshLinks]] = {}
        self.add_channel(channel, handler, links)
        servicer = _EncoderMeshServicer(self)
        self._grpc = GrpcServer(
            {SERVICE_NAME: lambda server: _add_servicer(servicer, server)},
            interceptors=interceptors,
            tls=tls,
            limits=limits,
            weigh=_batch_weight,
        )
        self._sessions: set[_Session] = set()
        self._stopping = False
        #: Exchange streams accepted (past both Hellos), per caller.
        self.accepted: Counter[str] = Counter()
        #: Exchange streams refused or ended for a broken rule, per caller id ("" if unknown).
        self.refused: Counter[str] = Counter()
        self._refusals = LimitedLog(log)

    @property
    def port(self) -> int | None:
        """The bound port while serving."""
        return self._grpc.port

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels served, the first first."""
        return tuple(self._channels)

    def add_channel(self, channel: str, handler: MeshHandler, links: MeshLinks) -> None:
        """Serve ``channel`` too: streams whose Hello names it go to ``links`` and
        ``handler``, as do GetState and SetParameters requests that name it.

        Raises:
            ValueError: ``channel`` is not a channel name, or is served already.
        """
        try:
            check_channel_name(channel)
        except InvalidMessage as exc:
            raise ValueError(str(exc)) from None
        if channel in self._channels:
            raise ValueError(f"channel {channel!r} is served already")
        self._channels[channel] = (handler, links)

    async def _route(
        self, channel: str, context: Any, method: str, caller: str = ""
    ) -> tuple[MeshHandler, MeshLinks]:
        """The handler and links of the (valid) ``channel`` named by a call, the first
        channel's when it names none; a channel not served here ends the call with
        NOT_FOUND."""
        route = self._channels.get(channel or next(iter(self._channels)))
        if route is None:
            self.refused[caller] += 1
            self._refusals.warning(
                "channel",
                "refused %s from %s: channel %r is not encoded here",
                method,
                context.peer(),
                channel,
            )
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"channel {channel!r} is not encoded by {self._handler.node_id!r} "
                f"(its channels: {', '.join(self._channels)})",
            )
            raise AssertionError("unreachable: abort raises")  # pragma: no cover
        return route

    async def start(self, listen: str, *, health_listen: str | None = None) -> int:
        """Serve on ``listen`` (``host:port``, port 0 = any free port); returns the bound port.

        ``health_listen``: the plaintext health-only port (``GrpcServer.start``).
        """
        self._stopping = False
        return await self._grpc.start(listen, health_listen=health_listen)

    async def stop(self, grace: float) -> None:
        """End the accepted streams, report NOT_SERVING and stop within ``grace`` seconds."""
        self._stopping = True
        for session in list(self._sessions):
            session.end()
        await self._grpc.stop(grace)

    async def _exchange(
        self, requests: AsyncIterator[mesh_pb2.MeshMessage], context: Any
    ) -> AsyncIterator[mesh_pb2.MeshMessage | bytes]:
        """One accepted Exchange stream: Hellos, then both directions until it ends."""
        incoming = aiter(requests)
        timeout = self._links._handshake_timeout
        try:
            # asyncio.timeout, not wait_for: no task of its own, whose failure (a guard ending
            # the call as the client goes away) nobody would collect.
            async with asyncio.timeout(timeout):
                first = await anext(incoming)
        except StopAsyncIteration:
            return
        except TimeoutError:
            # A caller that never says who it is holds a stream and a task: not for long.
            self.refused[""] += 1
            self._refusals.warning(
                "silent", "refused an Exchange from %s: no hello", context.peer()
            )
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {timeout} s")
        checker = ExchangeStreamChecker(self._handler.node_id)
        try:
            checker.check(first)
        except InvalidMessage as exc:
            self.refused[""] += 1
            self._refusals.warning(
                "invalid", "refused an Exchange from %s: %s", context.peer(), exc
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        peer = first.hello.sender_id
        certified = peer_identity(context)
        if certified is not None and certified != peer:
            # A certificate for one encoder cannot speak as another.
            self.refused[peer] += 1
            self._refusals.warning(
                "impostor",
                "refused an Exchange from %s: its hello says %r, its certificate %r",
                context.peer(),
                peer,
                certified,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"hello.sender_id is {peer!r} but the caller's certificate is {certified!r}",
            )
        handler, links = await self._route(first.hello.channel, context, "an Exchange", peer)
        if not handler.is_neighbour(peer):
            self.refused[peer] += 1
            self._refusals.warning(
                "stranger",
                "refused an Exchange from %r at %s: not a neighbour",
                peer,
                context.peer(),
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{peer!r} is not a neighbour of {self._handler.node_id!r}",
            )
        hello = _own_hello(handler)
        problem = _hello_problem(first.hello, hello)
        if problem is not None:
            self.refused[peer] += 1
            self._refusals.warning(
                problem[0], "refused an Exchange from %r: %s: %s", peer, *problem
            )
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, ": ".join(problem))
        session = (
            None if self._stopping else links._attach(peer, batches=first.hello.accepts_batches)
        )
        if session is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the encoder is stopping")
            return
        self.accepted[peer] += 1
        self._sessions.add(session)
        # A fresh context: what the peer sends is not part of this call's (hours-long) span;
        # proposals and votes carry trace contexts of their own.
        reader = asyncio.create_task(
            links._consume(session, incoming, checker), context=contextvars.Context()
        )
        try:
            yield mesh_pb2.MeshMessage(hello=hello)
            async for msg in links._outbound(session):
                yield msg
            # The reader may be ending the call right now (a guard refused what it read):
            # let it finish, so that its abort is re-raised here and not lost.
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if session.aborted is not None:
                self.refused[peer] += 1
                raise session.aborted
            if session.error is not None:
                self.refused[peer] += 1
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(session.error))
        finally:
            reader.cancel()
            self._sessions.discard(session)
            links._detach(session)
