"""One registry node: the Kademlia core behind a grpc.aio Registry service.

Theory of operation
-------------------
The node is a thin shell around :class:`meshenc.core.kademlia.DhtNode` (routing table, record
store, periodic work); the core's time is ``time.monotonic()``. Records are stored as the
protobuf ``EncoderRecord`` they arrived as, under ``key_for(encoder_id)`` computed here (never
taken from the caller).

Serving (:class:`RegistryServicer`): every request is validated first
(``meshenc.wire.validation``); a violation is answered INVALID_ARGUMENT naming the field, and
logged, before anything touches the core. A request's ``sender`` (set by registry nodes only)
updates the routing table; pings the table asks for run in the background. FindValue answers
a record with its *remaining* ttl. Under mutual TLS a Store (an encoder's own or a node's
replication) is taken only with a record signed by its owner (``meshenc.wire.signature``,
checked against the node's CA after validation and the caller's checks): anything else is
refused with PERMISSION_DENIED and counted (``RegistryNode.forged``), one log line every 10 s.

Lookups, joins and periodic work go through
:func:`services.common.registry_client.run_lookup`, the same driver the client uses, with
this node's NodeInfo as sender so that the callees learn about it; answers and failures
update the routing table. Joining: ping the seeds until one answers (the services' backoff,
``JOIN_BACKOFF``, for ``join_timeout`` seconds), then look up the own id, then refresh every
bucket farther than the closest neighbour. Seeds that did not answer (replicas start in any
order) are pinged again in the background, at doubling intervals up to 30 s (``SEED_BACKOFF``),
until they do: a ping carries this node's NodeInfo, so both sides then know each other. A node
whose table is (or becomes) empty tries again every ``join_timeout`` seconds; a node without
seeds is the first of its network.
Every ``tick_interval`` seconds the core's ``tick`` expires records and returns bucket
refreshes and republications, which run as background tasks (at most ``MAX_BACKGROUND``).

Invariants: the servicer never lets an invalid message reach the core; a failure of another
node (timeout, error, invalid answer) only ever fails that one step; stopping cancels every
background task and closes every channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import secrets
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any, Final

import grpc

from meshenc.core.kademlia import (
    ID_BITS,
    Contact,
    DhtConfig,
    DhtNode,
    Lookup,
    PingContact,
    RefreshBucket,
    RepublishRecord,
    id_from_bytes,
    id_to_bytes,
    key_for,
    random_id_in_bucket,
)
from meshenc.v1 import registry_pb2, registry_pb2_grpc
from meshenc.wire.convert import contact_from_proto, contact_to_proto
from meshenc.wire.signature import ForgedRecord, RecordVerifier
from meshenc.wire.validation import (
    InvalidMessage,
    validate_find_node_request,
    validate_find_value_request,
    validate_ping_request,
    validate_store_request,
)
from services.common.grpc_server import GrpcServer
from services.common.log_limit import LimitedLog
from services.common.registry_client import (
    MAX_VERSION_LEAD_S,
    SERVICE_NAME,
    LookupReply,
    RegistryChannels,
    RegistryError,
    ask_registry_node,
    ping,
    run_lookup,
    store_on,
    version_ahead,
)
from services.common.retry import Backoff, retrying
from services.common.tls import (
    REGISTRY,
    record_verifier,
    refuse,
    require_identity,
    require_role,
)
from services.common.waiting import wait_until_set
from services.registry.settings import RegistrySettings
from services.registry.telemetry import watch_registry

__all__ = ["MAX_BACKGROUND", "RegistryNode", "RegistryServicer"]

log = logging.getLogger("meshenc.registry")

MAX_BACKGROUND: Final = 32
"""Background operations (pings, refreshes, republications) running at once at most."""
JOIN_BACKOFF: Final = Backoff(initial=0.1, maximum=2.0, jitter=0.1)
"""Delays between the join's pings of its seeds (for ``join_timeout`` seconds in all)."""
SEED_BACKOFF: Final = Backoff(initial=1.0, maximum=30.0, jitter=0.0)
"""Intervals between pings of a seed that did not answer the join: 1 s doubling to 30 s."""

Record = registry_pb2.EncoderRecord


class RegistryNode:
    """A registry node: serves the Registry service and takes part in the DHT.

    Args:
        settings: validated settings.
        rng: randomness for the node id (when not configured), refresh targets and jitter.
    """

    def __init__(self, settings: RegistrySettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random(secrets.randbits(64))
        self._config = DhtConfig(
            k=settings.k,
            alpha=settings.alpha,
            bucket_refresh_interval=settings.bucket_refresh_interval,
            republish_interval=settings.republish_interval,
        )
        self._node_id = (
            int(settings.node_id, 16)
            if settings.node_id is not None
            else self._rng.getrandbits(ID_BITS)
        )
        self._dht: DhtNode[Record] | None = None
        self._info = registry_pb2.NodeInfo()
        self._server = GrpcServer(
            {SERVICE_NAME: self._register}, tls=settings.tls, limits=settings.peer_limits
        )
        self._channels = RegistryChannels(tls=settings.tls)
        if settings.tls is not None:
            record_verifier(settings.tls)  # files that cannot check records fail at start
        self.forged = 0
        """Stores refused because the record was not signed by its owner."""
        self._background: set[asyncio.Task[Any]] = set()
        self._gate = asyncio.Semaphore(MAX_BACKGROUND)
        self._stop = asyncio.Event()
        self._joined = asyncio.Event()
        #: Seeds that never answered yet: pinged again in the background until they do.
        self._silent_seeds = set(settings.seeds)
        self._seed_greetings = 0

    # -- identity ------------------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def dht(self) -> DhtNode[Record]:
        if self._dht is None:
            raise RuntimeError("registry node not started")
        return self._dht

    @property
    def info(self) -> registry_pb2.NodeInfo:
        """This node's NodeInfo (id and advertised address); valid once started."""
        return self._info

    @property
    def port(self) -> int | None:
        return self._server.port

    def _verifier(self) -> RecordVerifier | None:
        """Under mutual TLS, the check of records against the CA file as it is now."""
        tls = self.settings.tls
        return None if tls is None else record_verifier(tls)

    def _register(self, server: Any) -> None:
        registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(self), server)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and serve; returns the bound port. Joining is :meth:`run`'s business."""
        port = await self._server.start(
            self.settings.listen, health_listen=self.settings.health_listen
        )
        advertise = self.settings.advertise
        if advertise is None:
            host = socket.gethostname() if self.settings.listens_everywhere else None
            advertise = f"{host or self.settings.listen_host}:{port}"
        own = Contact(self._node_id, advertise)
        self._info = contact_to_proto(own)
        self._dht = DhtNode(own, self._config, self._rng, time.monotonic())
        watch_registry(lambda: len(self.dht.table), lambda: len(self.dht.store))
        log.info("registry node %s serving as %s", self.node_id_hex, advertise)
        return port

    @property
    def node_id_hex(self) -> str:
        return id_to_bytes(self._node_id).hex()

    async def run(self) -> None:
        """:meth:`serve` until SIGTERM or SIGINT (the process's main loop)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self.serve()

    async def serve(self) -> None:
        """Serve, join and do the periodic work until :meth:`request_stop`; then stop."""
        if self._dht is None:
            await self.start()
        try:
            await self._maintain()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving and cancel everything under way. Safe to call twice."""
        self._stop.set()
        await self._server.stop(grace)
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channels.close()

    async def _maintain(self) -> None:
        next_join = next_seed_retry = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self.settings.seeds and not len(self.dht.table) and now >= next_join:
                next_join = now + self.settings.join_timeout
                self._spawn(self.join())
            elif self._joined.is_set() and self._silent_seeds and now >= next_seed_retry:
                # Seeds that were not up yet when this node joined: once they answer, both
                # sides know each other, whatever order the replicas started in.
                self._seed_greetings += 1
                next_seed_retry = now + SEED_BACKOFF.delay(self._seed_greetings, self._rng)
                self._spawn(self._greet_seeds(sorted(self._silent_seeds), quiet=True))
            for action in self.dht.tick(now):
                if isinstance(action, RefreshBucket):
                    self._spawn(self.lookup(action.target))
                elif isinstance(action, RepublishRecord):
                    self._spawn(self.republish(action.record.value, action.record.remaining(now)))
            await wait_until_set(self._stop, self.settings.tick_interval)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background, at most MAX_BACKGROUND at a time."""

        async def gated() -> None:
            async with self._gate:
                try:
                    await work
                except RegistryError as exc:
                    log.info("background registry work failed: %s", exc)
                except Exception:
                    log.exception("background registry work crashed")

        task = asyncio.get_running_loop().create_task(gated())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def run_pings(self) -> None:
        """Send the pings the routing table asked for (after every handled request)."""
        for action in self.dht.drain_actions():
            self._spawn(self._ping_contact(action))

    async def _ping_contact(self, action: PingContact) -> None:
        contact = action.contact
        try:
            answer = await ping(
                self._channels,
                contact.address,
                sender=self._info,
                timeout=self.settings.rpc_timeout,
            )
        except RegistryError:
            self.dht.contact_failed(contact.node_id)
            return
        if answer.node_id == contact.node_id:
            self.dht.heard_from(answer, time.monotonic())
        else:
            self.dht.contact_failed(contact.node_id)

    # -- joining -------------------------------------------------------------------------------

    async def join(self) -> bool:
        """Join through the seeds; False when none answered within ``join_timeout``."""
        seeds = self.settings.seeds
        if not seeds:
            return False
        try:
            async for attempt in retrying(
                f"joining through {', '.join(seeds)}",
                lambda exc: isinstance(exc, RegistryError),
                attempts=None,
                give_up_after=self.settings.join_timeout,
                backoff=JOIN_BACKOFF,
                rng=self._rng,
                logger=log,
                level=logging.DEBUG,  # the outcome is logged below
            ):
                with attempt:
                    await self._greet_seeds(seeds)
        except RegistryError as exc:
            log.warning("could not join through %s: %s", ", ".join(seeds), exc)
            return False
        own = self._node_id
        lookup = await self.lookup(own)
        nearest = lookup.closest() or self.dht.table.closest(own, 1)
        if nearest:
            start = (own ^ nearest[0].node_id).bit_length()
            await asyncio.gather(
                *(
                    self.lookup(random_id_in_bucket(own, index, self._rng))
                    for index in range(start, ID_BITS)
                )
            )
        self._joined.set()
        log.info("joined through %s: %d contacts", ", ".join(seeds), len(self.dht.table))
        return True

    async def _greet_seeds(self, seeds: list[str], *, quiet: bool = False) -> None:
        """Ping ``seeds`` as a registry node (so that they learn about this one) and add
        those that answer; raises RegistryError when no other node answered, unless quiet."""
        answers = await asyncio.gather(
            *(
                ping(self._channels, s, sender=self._info, timeout=self.settings.rpc_timeout)
                for s in seeds
            ),
            return_exceptions=True,
        )
        now = time.monotonic()
        others = []
        for seed, answer in zip(seeds, answers, strict=True):
            if isinstance(answer, Contact):
                self._silent_seeds.discard(seed)
                if answer.node_id != self._node_id:
                    others.append(answer)
                    self.dht.heard_from(answer, now)
        if not others and not quiet:
            raise RegistryError(f"no seed answered: {answers}")

    @property
    def joined(self) -> asyncio.Event:
        """Set once a join went through."""
        return self._joined

    # -- lookups and stores --------------------------------------------------------------------

    async def lookup(self, target: int, *, find_value: bool = False) -> Lookup[Record]:
        """Run a lookup from this node (its answers and failures update the table)."""
        lookup = self.dht.start_lookup(target, time.monotonic(), find_value=find_value)

        def ask(contact: Contact) -> Coroutine[Any, Any, LookupReply]:
            return ask_registry_node(
                self._channels,
                contact,
                target,
                find_value=find_value,
                sender=self._info,
                timeout=self.settings.rpc_timeout,
                verifier=self._verifier(),
            )

        def answered(contact: Contact) -> None:
            self.dht.heard_from(contact, time.monotonic())

        def failed(contact: Contact, exc: RegistryError) -> None:
            log.debug("lookup step to %s failed: %s", contact.address, exc)
            self.dht.contact_failed(contact.node_id)

        await run_lookup(lookup, ask, on_answer=answered, on_failure=failed)
        self.run_pings()
        return lookup

    async def republish(self, record: Record, remaining: float) -> int:
        """Store ``record`` with its remaining ttl on the k closest nodes of the moment."""
        ttl_ms = int(remaining * 1000)
        if ttl_ms < 1:
            return 0
        copy = Record()
        copy.CopyFrom(record)
        copy.ttl_ms = ttl_ms
        key = id_from_bytes(key_for(record.encoder_id))
        lookup = await self.lookup(key)
        replicas = self.dht.replicas(lookup)
        self.dht.republished(key, replicas)
        others = [c for c in replicas if c.node_id != self._node_id]
        answers = await asyncio.gather(
            *(
                store_on(
                    self._channels,
                    c,
                    copy,
                    sender=self._info,
                    timeout=self.settings.rpc_timeout,
                )
                for c in others
            ),
            return_exceptions=True,
        )
        for contact, answer in zip(others, answers, strict=True):
            if isinstance(answer, RegistryError):
                self.dht.contact_failed(contact.node_id)
        return sum(isinstance(a, registry_pb2.StoreResponse) for a in answers)

    # -- requests (called by the servicer with validated messages) -----------------------------

    def sender_of(self, request: Any) -> Contact | None:
        if not request.HasField("sender"):
            return None
        sender = contact_from_proto(request.sender)
        return None if sender.node_id == self._node_id else sender

    def check_signed(self, record: Record) -> None:
        """Return if ``record`` is signed by its owner, or this node runs in plaintext.

        Raises:
            ForgedRecord: it is not.
        """
        if (verifier := self._verifier()) is not None:
            verifier.check(record, datetime.datetime.now(datetime.UTC))

    def store_record(self, sender: Contact | None, record: Record) -> registry_pb2.StoreResponse:
        copy = Record()
        copy.CopyFrom(record)
        outcome = self.dht.handle_store(
            sender,
            id_from_bytes(key_for(record.encoder_id)),
            record.version,
            record.ttl_ms / 1000.0,
            copy,
            time.monotonic(),
        )
        return registry_pb2.StoreResponse(
            responder=self._info,
            stored=outcome.stored,
            current_version=outcome.current_version,
        )


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """The Registry RPCs: validate, hand to the node's core, answer."""

    def __init__(self, node: RegistryNode) -> None:
        self._node = node
        self._rejections = LimitedLog(log)

    async def _reject(self, method: str, context: Any, exc: InvalidMessage) -> None:
        self._rejections.warning(method, "rejected %s from %s: %s", method, context.peer(), exc)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {exc}")

    async def _check_sender(self, method: str, request: Any, context: Any) -> None:
        """A request that names a sender joins the callee's routing table: registry nodes'
        certificates only (PERMISSION_DENIED otherwise, under TLS)."""
        if request.HasField("sender"):
            await require_role(context, (REGISTRY,), f"{method} with a sender")

    async def Ping(  # noqa: N802 -- gRPC method name
        self, request: registry_pb2.PingRequest, context: Any
    ) -> registry_pb2.PingResponse:
        try:
            validate_ping_request(request)
        except InvalidMessage as exc:
            await self._reject("Ping", context, exc)
        await self._check_sender("Ping", request, context)
        node = self._node
        node.dht.heard_from(node.sender_of(request), time.monotonic())
        node.run_pings()
        return registry_pb2.PingResponse(responder=node.info)

    async def FindNode(  # noqa: N802 -- gRPC method name
        self, request: registry_pb2.FindNodeRequest, context: Any
    ) -> registry_pb2.FindNodeResponse:
        try:
            validate_find_node_request(request)
        except InvalidMessage as exc:
            await self._reject("FindNode", context, exc)
        await self._check_sender("FindNode", request, context)
        node = self._node
        contacts = node.dht.handle_find_node(
            node.sender_of(request), id_from_bytes(request.target), time.monotonic()
        )
        node.run_pings()
        return registry_pb2.FindNodeResponse(
            responder=node.info, nodes=[contact_to_proto(c) for c in contacts]
        )

    async def FindValue(  # noqa: N802 -- gRPC method name
        self, request: registry_pb2.FindValueRequest, context: Any
    ) -> registry_pb2.FindValueResponse:
        try:
            validate_find_value_request(request)
        except InvalidMessage as exc:
            await self._reject("FindValue", context, exc)
        await self._check_sender("FindValue", request, context)
        node = self._node
        now = time.monotonic()
        answer = node.dht.handle_find_value(
            node.sender_of(request), id_from_bytes(request.key), now
        )
        node.run_pings()
        if isinstance(answer, list):
            return registry_pb2.FindValueResponse(
                responder=node.info,
                closest=registry_pb2.NodeList(nodes=[contact_to_proto(c) for c in answer]),
            )
        record = Record()
        record.CopyFrom(answer.value)
        record.ttl_ms = max(1, min(record.ttl_ms, int(answer.remaining(now) * 1000)))
        return registry_pb2.FindValueResponse(responder=node.info, record=record)

    async def Store(  # noqa: N802 -- gRPC method name
        self, request: registry_pb2.StoreRequest, context: Any
    ) -> registry_pb2.StoreResponse:
        try:
            validate_store_request(request)
            ahead = version_ahead(request.record.version, time.time_ns())
            if ahead > MAX_VERSION_LEAD_S:
                # It would win over every refresh of the real owner until then.
                raise InvalidMessage(
                    "record.version",
                    f"is {ahead:.0f} s ahead of this replica's clock "
                    f"(at most {MAX_VERSION_LEAD_S:g} s)",
                )
        except InvalidMessage as exc:
            await self._reject("Store", context, exc)
        await self._check_sender("Store", request, context)
        if not request.HasField("sender"):
            # An encoder stores its own record, and only its own.
            await require_identity(context, request.record.encoder_id, "record.encoder_id")
        node = self._node
        try:
            node.check_signed(request.record)
        except ForgedRecord as exc:
            node.forged += 1
            await refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "Store:forged",
                f"Store: not signed by its owner: {exc}",
            )
        response = node.store_record(node.sender_of(request), request.record)
        node.run_pings()
        return response
