"""Talking to the registry's Kademlia network: the lookup driver, the client, the record keeper.

Theory of operation
-------------------
The registry is a Kademlia DHT of registry nodes (``services.registry``). A record lives on
the k nodes closest to its key (``key_for(encoder_id)``). Anything that talks to the DHT runs
the core's :class:`~meshenc.core.kademlia.Lookup` over gRPC with :func:`run_lookup`: registry
nodes for their own lookups (joins, bucket refreshes, republication), and
:class:`RegistryClient` for encoders and the command line.

The client does the iterative lookup itself rather than asking one replica to do it: a
record's replicas are found the same way whether the client or a node looks, a dead replica
is just a failed step of the lookup (the others answer), and no registry node has to run
lookups on behalf of callers it does not know. It is configured with a few replica addresses
(entry points); it learns their ids with Ping and seeds every lookup with those that answer.
Callers outside the DHT never send a ``sender``, so they never enter routing tables.

- ``publish(record)``: node lookup for the record's key, then Store on the k closest that
  answered. It succeeds when at least one replica holds the record's version or a newer one.
- ``resolve(encoder_id)``: value lookup for the key; the first valid record returned wins
  (Kademlia's rule; replicas hold the same version once a publish reached them).
- :class:`RecordKeeper`: publishes an encoder's own record and republishes it with a higher
  version every third of its ttl, so two refreshes may fail before the record expires.

Every answer is validated (``meshenc.wire.validation``); an invalid answer, an error or a
timeout fails that step only. Under mutual TLS records are signed by their owners
(``meshenc.wire.signature``): the client signs what it publishes with its own certificate's
key, and a record a replica answers counts only if it is signed by its owner; a forged one
fails that step (:class:`ForgedRecordError`), is counted (``RegistryClient.forged``) and logged
once every 10 s, and the lookup goes on to the other replicas. Channels are opened on first
use and kept, at most ``MAX_CHANNELS`` of them (least recently used closed first).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc

from meshenc.core.kademlia import (
    DEFAULT_ALPHA,
    DEFAULT_K,
    Contact,
    Lookup,
    id_from_bytes,
    id_to_bytes,
    key_for,
)
from meshenc.v1 import registry_pb2, registry_pb2_grpc
from meshenc.wire.convert import contact_from_proto
from meshenc.wire.signature import ForgedRecord, RecordVerifier
from meshenc.wire.validation import (
    InvalidMessage,
    validate_encoder_record,
    validate_find_node_response,
    validate_find_value_response,
    validate_ping_response,
    validate_store_response,
)
from services.common.grpc_server import open_channel
from services.common.log_limit import LimitedLog
from services.common.retry import Backoff, retrying
from services.common.tls import (
    REGISTRY,
    TlsFiles,
    channel_credentials,
    record_signer,
    record_verifier,
)

__all__ = [
    "DEFAULT_RPC_TIMEOUT",
    "MAX_CHANNELS",
    "MAX_VERSION_LEAD_S",
    "SERVICE_NAME",
    "ForgedRecordError",
    "LookupReply",
    "RecordKeeper",
    "RegistryChannels",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "ask_registry_node",
    "next_version",
    "ping",
    "run_lookup",
    "store_on",
    "version_ahead",
]

log = logging.getLogger("meshenc.registry.client")

SERVICE_NAME: Final[str] = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
"""``meshenc.v1.Registry``: the name health and reflection report."""
DEFAULT_RPC_TIMEOUT: Final = 2.0
"""Seconds one registry call may take before that lookup step counts as failed."""
MAX_CHANNELS: Final = 256
"""Open channels kept to registry nodes (least recently used closed beyond this)."""


class RegistryError(Exception):
    """A registry call or lookup step failed (timeout, gRPC error, invalid answer)."""


class ForgedRecordError(RegistryError):
    """A replica answered a record its owner did not sign (under mutual TLS)."""


class RegistryUnavailable(RegistryError):  # noqa: N818 -- reads as the condition it names
    """No registry node could be reached (none of the entry points answered)."""


class RegistryChannels:
    """gRPC channels to registry nodes by address, opened on first use, LRU-bounded.

    With ``tls``, each channel is mutual TLS and the node must present the
    :data:`~services.common.tls.REGISTRY` identity; a channel made before the certificate
    files were renewed is opened again on its next use (calls still on the old one get
    :data:`DEFAULT_RPC_TIMEOUT` to finish).
    """

    def __init__(self, limit: int = MAX_CHANNELS, *, tls: TlsFiles | None = None) -> None:
        self._limit = limit
        self._tls = tls
        #: address -> (channel, the credentials it was made with; None in plaintext)
        self._channels: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def stub(self, address: str) -> registry_pb2_grpc.RegistryStub:
        credentials = channel_credentials(self._tls) if self._tls is not None else None
        kept = self._channels.pop(address, None)
        if kept is not None and kept[1] is not credentials:
            self._close_later(kept[0], grace=DEFAULT_RPC_TIMEOUT)
            kept = None
        if kept is None:
            kept = (open_channel(address, tls=self._tls, server_name=REGISTRY), credentials)
        self._channels[address] = kept
        while len(self._channels) > self._limit:
            _, (oldest, _) = self._channels.popitem(last=False)
            self._close_later(oldest, grace=None)
        return registry_pb2_grpc.RegistryStub(kept[0])

    def _close_later(self, channel: Any, grace: float | None) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace=grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), OrderedDict()
        await asyncio.gather(*(c.close(grace=None) for c, _ in channels), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _call(what: str, address: str, call: Awaitable[Any]) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise RegistryError(f"{what} {address}: {exc.code().name} {exc.details()}") from None


async def ping(
    channels: RegistryChannels,
    address: str,
    *,
    sender: registry_pb2.NodeInfo | None,
    timeout: float,
) -> Contact:
    """Ping a registry node by address; returns its contact (id and advertised address).

    Raises:
        RegistryError: no valid answer within ``timeout``.
    """
    request = registry_pb2.PingRequest(sender=sender)
    answer = await _call("Ping", address, channels.stub(address).Ping(request, timeout=timeout))
    try:
        validate_ping_response(answer)
    except InvalidMessage as exc:
        raise RegistryError(f"Ping {address}: invalid answer: {exc}") from None
    return contact_from_proto(answer.responder)


@dataclass(frozen=True, slots=True)
class LookupReply:
    """One lookup step's answer: closer nodes, or (value lookups) the record."""

    contacts: list[Contact]
    record: registry_pb2.EncoderRecord | None


async def ask_registry_node(
    channels: RegistryChannels,
    contact: Contact,
    target: int,
    *,
    find_value: bool,
    sender: registry_pb2.NodeInfo | None,
    timeout: float,
    verifier: RecordVerifier | None = None,
) -> LookupReply:
    """One lookup step: FindValue or FindNode on ``contact``, validated; with ``verifier``
    (mutual TLS), a record must be signed by its owner.

    Raises:
        ForgedRecordError: the record is not signed by its owner.
        RegistryError: on a timeout or error, an invalid answer, an answer from another node
            than the one asked, or a record whose key is not ``target``.
    """
    stub, address = channels.stub(contact.address), contact.address
    raw = id_to_bytes(target)
    nodes: Sequence[registry_pb2.NodeInfo]
    try:
        if find_value:
            request = registry_pb2.FindValueRequest(sender=sender, key=raw)
            value_answer: registry_pb2.FindValueResponse = await _call(
                "FindValue", address, stub.FindValue(request, timeout=timeout)
            )
            validate_find_value_response(value_answer)
            responder = value_answer.responder
        else:
            node_request = registry_pb2.FindNodeRequest(sender=sender, target=raw)
            node_answer: registry_pb2.FindNodeResponse = await _call(
                "FindNode", address, stub.FindNode(node_request, timeout=timeout)
            )
            validate_find_node_response(node_answer)
            responder, nodes = node_answer.responder, node_answer.nodes
    except InvalidMessage as exc:
        raise RegistryError(f"{address}: invalid answer: {exc}") from None
    if responder.node_id != id_to_bytes(contact.node_id):
        raise RegistryError(f"{address}: another node answered (its id changed)")
    if find_value:
        if value_answer.WhichOneof("result") == "record":
            if id_from_bytes(key_for(value_answer.record.encoder_id)) != target:
                raise RegistryError(f"{address}: returned a record of another key")
            if verifier is not None:
                try:
                    verifier.check(value_answer.record, datetime.datetime.now(datetime.UTC))
                except ForgedRecord as exc:
                    raise ForgedRecordError(
                        f"{address}: forged record of {value_answer.record.encoder_id!r}: {exc}"
                    ) from None
            return LookupReply([], value_answer.record)
        nodes = value_answer.closest.nodes
    return LookupReply([contact_from_proto(n) for n in nodes], None)


Asker = Callable[[Contact], Awaitable[LookupReply]]
"""Runs one lookup step against a contact (raises RegistryError when it fails)."""


async def run_lookup(
    lookup: Lookup[registry_pb2.EncoderRecord],
    ask: Asker,
    *,
    on_answer: Callable[[Contact], None] | None = None,
    on_failure: Callable[[Contact, RegistryError], None] | None = None,
) -> None:
    """Drive ``lookup`` to its end over the network: the core decides whom to ask, this
    sends the requests (``alpha`` in flight) and feeds back answers and failures."""
    pending: dict[asyncio.Task[LookupReply], Contact] = {}
    try:
        while True:
            for contact in lookup.next_requests():
                pending[asyncio.ensure_future(ask(contact))] = contact
            if lookup.done or not pending:
                return
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                contact = pending.pop(task)
                try:
                    reply = task.result()
                except RegistryError as exc:
                    lookup.failed(contact.node_id)
                    if on_failure is not None:
                        on_failure(contact, exc)
                    continue
                if on_answer is not None:
                    on_answer(contact)
                if reply.record is not None:
                    lookup.found(contact.node_id, reply.record)
                else:
                    lookup.answered(contact.node_id, reply.contacts)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def store_on(
    channels: RegistryChannels,
    contact: Contact,
    record: registry_pb2.EncoderRecord,
    *,
    sender: registry_pb2.NodeInfo | None,
    timeout: float,
) -> registry_pb2.StoreResponse:
    """Store ``record`` on one node (validated answer).

    Raises:
        RegistryError: on a timeout, an error or an invalid answer.
    """
    request = registry_pb2.StoreRequest(sender=sender, record=record)
    answer: registry_pb2.StoreResponse = await _call(
        "Store", contact.address, channels.stub(contact.address).Store(request, timeout=timeout)
    )
    try:
        validate_store_response(answer)
    except InvalidMessage as exc:
        raise RegistryError(f"Store {contact.address}: invalid answer: {exc}") from None
    return answer


def next_version(previous: int, now_unix_ns: int) -> int:
    """A record version above ``previous`` that also stays above what an earlier run of the
    same encoder published: microseconds since the Unix epoch, or ``previous + 1``."""
    return max(previous + 1, now_unix_ns // 1000)


MAX_VERSION_LEAD_S: Final = 60.0
"""How far (s) a record's version may run ahead of a replica's clock. Versions are the owner's
microseconds since the Unix epoch (:func:`next_version`), so an honest one is never much ahead;
a version far ahead would win over every refresh of the real owner until that time came."""


def version_ahead(version: int, now_unix_ns: int) -> float:
    """Seconds by which ``version`` (µs since the Unix epoch) is ahead of ``now_unix_ns``."""
    return (version - now_unix_ns // 1000) / 1e6


class RegistryClient:
    """Publishes and resolves encoder records through any reachable registry replica.

    Args:
        addresses: registry replicas to enter the DHT through (``host:port``); any one that
            answers is enough.
        k: the network's replication factor (a publish stores on the k closest).
        alpha: lookup requests in flight.
        rpc_timeout: seconds per call.
        tls: this process's TLS files (mutual TLS to every replica; records published are
            signed with its key, records resolved must be signed by their owners); plaintext,
            nothing signed or checked, when None.

    Raises:
        ValueError: the TLS files cannot be read, or the key cannot sign records.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        tls: TlsFiles | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("a registry client needs at least one replica address")
        self._addresses = list(dict.fromkeys(addresses))
        self._k, self._alpha, self._timeout = k, alpha, rpc_timeout
        self._channels = RegistryChannels(tls=tls)
        self._entries: dict[str, Contact] = {}
        # Made now, so that files that cannot sign fail at start; made again when they change.
        self._tls_files = tls
        if tls is not None:
            record_signer(tls)
            record_verifier(tls)
        self._forgeries = LimitedLog(log)
        self.forged = 0
        """Records dropped because their owner did not sign them (answered by a replica)."""

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channels.close()

    async def _entry_contacts(self) -> list[Contact]:
        """The entry replicas that answer, by id: known ones as they are, others pinged."""
        unknown = [a for a in self._addresses if a not in self._entries]
        if unknown:
            answers = await asyncio.gather(
                *(ping(self._channels, a, sender=None, timeout=self._timeout) for a in unknown),
                return_exceptions=True,
            )
            for address, answer in zip(unknown, answers, strict=True):
                if isinstance(answer, Contact):
                    self._entries[address] = answer
                else:
                    log.debug("registry entry %s did not answer: %s", address, answer)
        if not self._entries:
            raise RegistryUnavailable(
                f"no registry replica answered (tried {', '.join(self._addresses)})"
            )
        return list(self._entries.values())

    def _verifier(self) -> RecordVerifier | None:
        """Under mutual TLS, the check of records against the CA file as it is now."""
        return None if self._tls_files is None else record_verifier(self._tls_files)

    def _step_failed(self, contact: Contact, exc: RegistryError) -> None:
        if isinstance(exc, ForgedRecordError):
            self.forged += 1
            self._forgeries.warning("forged", "dropped a record: %s", exc)
        for address, known in list(self._entries.items()):
            if known.node_id == contact.node_id:
                del self._entries[address]  # pinged again before the next operation

    async def _lookup(self, target: int, *, find_value: bool) -> Lookup[registry_pb2.EncoderRecord]:
        seeds = await self._entry_contacts()
        lookup: Lookup[registry_pb2.EncoderRecord] = Lookup(
            target, seeds, k=self._k, alpha=self._alpha, find_value=find_value
        )

        def ask(contact: Contact) -> Awaitable[LookupReply]:
            return ask_registry_node(
                self._channels,
                contact,
                target,
                find_value=find_value,
                sender=None,
                timeout=self._timeout,
                verifier=self._verifier(),
            )

        await run_lookup(lookup, ask, on_failure=self._step_failed)
        return lookup

    async def publish(self, record: registry_pb2.EncoderRecord) -> int:
        """Store ``record`` on the k replicas closest to its key, signed with this client's
        key under mutual TLS (``record`` itself is left as it is).

        Returns:
            How many replicas hold this version or a newer one afterwards.

        Raises:
            InvalidMessage: the record breaks a wire rule (nothing is sent).
            RegistryUnavailable: no replica could be reached or none took the record.
        """
        validate_encoder_record(record)
        if self._tls_files is not None:
            signed = registry_pb2.EncoderRecord()
            signed.CopyFrom(record)
            record_signer(self._tls_files).sign(signed)
            record = signed
        lookup = await self._lookup(id_from_bytes(key_for(record.encoder_id)), find_value=False)
        replicas = lookup.closest()
        answers = await asyncio.gather(
            *(
                store_on(self._channels, c, record, sender=None, timeout=self._timeout)
                for c in replicas
            ),
            return_exceptions=True,
        )
        held = 0
        for contact, answer in zip(replicas, answers, strict=True):
            if isinstance(answer, registry_pb2.StoreResponse):
                held += answer.current_version >= record.version
            else:
                log.debug("store of %s on %s failed: %s", record.encoder_id, contact, answer)
        if not held:
            raise RegistryUnavailable(
                f"no replica took the record of {record.encoder_id!r} "
                f"({len(replicas)} found, {lookup.failures} failed)"
            )
        return held

    async def resolve(self, encoder_id: str) -> registry_pb2.EncoderRecord | None:
        """The record of ``encoder_id``, or None when no replica holds one (under mutual TLS:
        none signed by its owner).

        Raises:
            RegistryUnavailable: no replica could be reached.
        """
        lookup = await self._lookup(id_from_bytes(key_for(encoder_id)), find_value=True)
        return lookup.value

    async def resolve_many(
        self, encoder_ids: Iterable[str], *, concurrency: int = 8
    ) -> dict[str, registry_pb2.EncoderRecord | None]:
        """Resolve several encoders, ``concurrency`` lookups at a time."""
        ids = list(dict.fromkeys(encoder_ids))
        gate = asyncio.Semaphore(concurrency)

        async def one(encoder_id: str) -> registry_pb2.EncoderRecord | None:
            async with gate:
                return await self.resolve(encoder_id)

        records = await asyncio.gather(*(one(i) for i in ids))
        return dict(zip(ids, records, strict=True))


class RecordKeeper:
    """Keeps an encoder's own record in the registry until stopped.

    It publishes at once, then again with a higher version (:func:`next_version`) every
    ``ttl / 3`` and whenever :meth:`update` changes the record. A failed publish is retried
    with the services' backoff (``services.common.retry``) until the next refresh is due.

    Args:
        client: the registry client to publish through.
        record: the record to keep (its ``version`` is replaced on every publish).
    """

    def __init__(self, client: RegistryClient, record: registry_pb2.EncoderRecord) -> None:
        validate_encoder_record(record)
        self._client = client
        self._record = registry_pb2.EncoderRecord()
        self._record.CopyFrom(record)
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self.published = 0
        """How many publishes succeeded."""

    @property
    def record(self) -> registry_pb2.EncoderRecord:
        """The record as last published (or about to be)."""
        return self._record

    @property
    def refresh_interval(self) -> float:
        return self._record.ttl_ms / 1000.0 / 3.0

    def update(self, **fields: Any) -> None:
        """Change fields of the record (``health=...``, ``segment_id=...``); it is published
        with a new version right away.

        Raises:
            InvalidMessage: the changed record would break a wire rule (nothing changes).
        """
        changed = registry_pb2.EncoderRecord()
        changed.CopyFrom(self._record)
        for name, value in fields.items():
            setattr(changed, name, value)
        validate_encoder_record(changed)
        self._record = changed
        self._changed.set()

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        """Publish and refresh until :meth:`stop`."""
        while not self._stopped.is_set():
            self._changed.clear()
            self._record.version = next_version(self._record.version, time.time_ns())
            await self._publish_with_retries()
            waits = [asyncio.ensure_future(e.wait()) for e in (self._changed, self._stopped)]
            try:
                await asyncio.wait(waits, timeout=self.refresh_interval)
            finally:
                for w in waits:
                    w.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    async def _publish_with_retries(self) -> None:
        try:
            async for attempt in retrying(
                f"publishing the record of {self._record.encoder_id}",
                lambda exc: isinstance(exc, RegistryError),
                attempts=None,
                give_up_after=self.refresh_interval,
                backoff=Backoff(0.2, max(0.2, self.refresh_interval / 4), jitter=0.2),
                logger=log,
                level=logging.DEBUG,  # the outcome is logged below
            ):
                with attempt:
                    if self._stopped.is_set():
                        return
                    replicas = await self._client.publish(self._record)
            self.published += 1
            log.debug(
                "published %s v%d on %d replicas",
                self._record.encoder_id,
                self._record.version,
                replicas,
            )
        except RegistryError as exc:
            log.warning("could not publish the record of %s: %s", self._record.encoder_id, exc)
