"""How much one peer may ask of a server: streams open at once, and messages per second.

A caller that opens streams without end, or sends messages as fast as the network carries
them, costs a server memory and CPU that its honest peers then lack. :class:`PeerLimiter`, an
interceptor of every meshenc server, keeps per peer:

- the calls it has open that stream in either direction (``Exchange``, ``ReportHealth``,
  ``WatchTopology``, health ``Watch``, reflection): one more than ``max_streams`` is refused at
  once;
- a token bucket of request messages (each unary request, each message of a stream, parsable
  or not; a request that carries several, like a mesh batch, counts as many as the server's
  ``weigh`` says): it refills at ``max_messages_per_second`` and holds at most
  ``BURST_SECONDS`` of them; a message finding it short ends its call.

Either refusal is RESOURCE_EXHAUSTED with one log line per kind every 10 s (``LimitedLog``).

A peer is the identity in its certificate at the caller's IP address under mutual TLS (every
connection of an encoder is one peer; the registry nodes, which share one identity, are one
peer per host), and the caller's IP address alone in plaintext (there is no identity; every
process of one host is then one peer, so a host running many encoders in plaintext may need
higher limits).
The defaults leave an order of magnitude of room above what an honest peer sends: one Exchange
stream per neighbour carrying about one ESP per frame, one health report a second.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

import grpc
from pydantic import BaseModel, ConfigDict, Field

from services.common.call_guard import guard
from services.common.log_limit import LimitedLog
from services.common.tls import peer_identity

__all__ = [
    "BURST_SECONDS",
    "DEFAULT_MAX_MESSAGES_PER_SECOND",
    "DEFAULT_MAX_STREAMS",
    "PeerLimiter",
    "PeerLimits",
    "peer_key",
]

log = logging.getLogger("meshenc.grpc")

DEFAULT_MAX_STREAMS: Final = 64
"""Streaming calls one peer may have open at once by default (an encoder needs one Exchange
per neighbour it dials, or one health stream and a watch)."""
DEFAULT_MAX_MESSAGES_PER_SECOND: Final = 1000.0
"""Request messages per second one peer may send by default (an encoder at 30 fps sends about
30 ESPs a second per neighbour)."""
BURST_SECONDS: Final = 2.0
"""How many seconds' worth of messages a peer may send at once after a quiet spell."""
MAX_TRACKED_PEERS: Final = 4096
"""Peers remembered at most; beyond, those without an open stream are forgotten (their bucket
starts full again): memory stays bounded whatever the callers' addresses."""


class PeerLimits(BaseModel):
    """The per-peer limits of one server (``--max-streams-per-peer``,
    ``--max-messages-per-peer``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_streams: Annotated[int, Field(ge=1, le=100_000)] = DEFAULT_MAX_STREAMS
    max_messages_per_second: Annotated[float, Field(gt=0.0, le=1e7)] = (
        DEFAULT_MAX_MESSAGES_PER_SECOND
    )

    @property
    def burst(self) -> float:
        """The bucket's size: the messages a peer may send at once."""
        return max(1.0, self.max_messages_per_second * BURST_SECONDS)


def peer_key(context: Any) -> str:
    """Who is calling, for the limits: the certificate's identity at the caller's IP address
    (``e1@ipv4:10.0.0.7``), or the address alone in plaintext (``ipv6:[::1]``)."""
    address = str(context.peer())
    if address.startswith(("ipv4:", "ipv6:")):
        address = address.rpartition(":")[0]
    identity = peer_identity(context)
    return address if identity is None else f"{identity}@{address}"


@dataclass(slots=True)
class _Peer:
    streams: int
    tokens: float
    refilled_at: float


class PeerLimiter(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """See the module docstring."""

    def __init__(
        self,
        limits: PeerLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        weigh: Callable[[object], int] | None = None,
    ) -> None:
        self.limits = limits if limits is not None else PeerLimits()
        self._clock = clock
        self._weigh = weigh
        self._peers: dict[str, _Peer] = {}
        #: The peer of each open streaming call, by the call's context: a stream's messages
        #: are counted against it without working out who is calling for each of them.
        self._streaming: dict[int, tuple[str, _Peer]] = {}
        self._log = LimitedLog(log)
        #: Calls refused, per kind ("streams", "messages").
        self.refused: dict[str, int] = {"streams": 0, "messages": 0}

    @property
    def open_streams(self) -> int:
        """Streaming calls being served now, over every peer."""
        return len(self._streaming)

    def _peer(self, key: str) -> _Peer:
        peer = self._peers.get(key)
        if peer is None:
            if len(self._peers) >= MAX_TRACKED_PEERS:
                for idle in [k for k, p in self._peers.items() if p.streams == 0]:
                    del self._peers[idle]
            peer = self._peers[key] = _Peer(0, self.limits.burst, self._clock())
        return peer

    async def _refuse(self, kind: str, context: Any, message: str) -> None:
        self.refused[kind] += 1
        self._log.warning(kind, "refused a call from %s: %s", context.peer(), message)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    async def _take_token(self, request: Any, context: Any) -> None:
        streaming = self._streaming.get(id(context))
        if streaming is not None:
            key, peer = streaming
        else:
            key = peer_key(context)
            peer = self._peer(key)
        now = self._clock()
        limits = self.limits
        peer.tokens = min(
            limits.burst, peer.tokens + (now - peer.refilled_at) * limits.max_messages_per_second
        )
        peer.refilled_at = now
        # Never more than a full bucket: a request heavier than that would be refused for ever.
        cost = 1.0 if self._weigh is None else min(float(self._weigh(request)), limits.burst)
        if peer.tokens < cost:
            await self._refuse(
                "messages",
                context,
                f"{key} sends more than {limits.max_messages_per_second:g} messages/s",
            )
        peer.tokens -= cost

    @contextlib.asynccontextmanager
    async def _stream_slot(self, context: Any) -> AsyncIterator[None]:
        key = peer_key(context)
        peer = self._peer(key)
        if peer.streams >= self.limits.max_streams:
            await self._refuse(
                "streams",
                context,
                f"{key} has {peer.streams} streams open, at most {self.limits.max_streams}",
            )
        peer.streams += 1
        self._streaming[id(context)] = (key, peer)
        try:
            yield
        finally:
            del self._streaming[id(context)]
            peer.streams -= 1

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        return guard(handler, each=self._take_token, hold_stream=self._stream_slot)
