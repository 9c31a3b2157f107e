"""Where an encoder learns its neighbours: its ConfigMap, its etcd key, or ``--peers``.

Theory of operation
-------------------
Each source is an async iterator of this encoder's
:class:`~meshenc.wire.adjacency.AdjacencyDocument`. The runtime applies each document it
receives (``mesh.set_peers(doc.neighbours)``, the engine events ``NeighboursChanged(doc.neighbours,
doc.epoch)`` and ``LeaderChanged(doc.leader or None)``); it never has to filter:

- a document is yielded only when its text differs from the last one yielded;
- a document with a lower epoch than the last one yielded is ignored (epochs never go down;
  a lower one is a stale write), and so is one of the same epoch with a lower placement
  number (``work_version``); one with the same epoch is otherwise applied (the segment, the
  leader or the placement changed within the epoch);
- an invalid document is ignored, logged at most once per 10 s however many come (each
  source's ``LimitedLog``), and the document applied last is kept; a deleted one is ignored
  too (the manager is away or the encoder was scaled away): the mesh keeps running on the
  last topology.

Sources:

- :class:`~services.encoder.kubernetes_topology.KubernetesTopologySource` (a module of its own,
  imported only in cluster mode: the Kubernetes client takes a good part of a second to
  import, and a restarted encoder waits for it) reads ConfigMap ``<pod>-adjacency`` through the API
  (a mounted ConfigMap file can lag by a minute): a list by ``metadata.name`` field selector,
  then a watch with ``timeoutSeconds`` and a client read timeout a little longer; every new
  watch starts from the last ``resourceVersion`` seen (bookmarks included), after a clean end,
  a dropped connection or a silent one alike; 410 Gone lists again.
- :class:`EtcdTopologySource` reads ``P/topology/<encoder>`` and watches it from the next
  revision, resuming from the last revision seen after a broken watch, reading again when
  that revision was compacted, and renewing the watch every ``watch_timeout`` seconds.
- :func:`static_topology` is ``--peers``: one document, epoch 1, and the iterator ends.
- :func:`registry_topology` is ``--peers`` given as bare ids with ``--registry``: the
  addresses are resolved through the DHT registry (any replica), and resolved again every
  ``interval`` seconds; a document (epoch 1, 2, ...) is yielded whenever the resolved set
  changes, so an encoder that moved or came late is found without a restart.

:class:`EncoderRegistration` is the other direction in embedded mode: it keeps
``P/encoders/<encoder>`` (address, capacity, zone) under the encoder's own lease, so the
manager sees the encoder come, and go when it stops (revoked) or dies (expired).

Failures of the API server or etcd are retried for ever with exponential backoff and jitter
(``services.common.retry``); only a permission error (403) or a missing prefix configuration
ends a source, with an error that names what was refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aetcd  # type: ignore[import-untyped]
import aiohttp
import grpc
from tenacity import AsyncRetrying

from meshenc.v1 import registry_pb2
from meshenc.wire.adjacency import (
    AdjacencyDocument,
    EtcdLayout,
    InvalidDocument,
    RegistrationRecord,
    parse_adjacency,
)
from services.common.etcd import DEFAULT_LEASE_TTL, RevisionCursor, watch_from_revision
from services.common.log_limit import LimitedLog
from services.common.registry_client import RegistryClient, RegistryError
from services.common.retry import Backoff, retrying
from services.common.streams import Emit, drain
from services.common.waiting import wait_until_set

__all__ = [
    "EncoderRegistration",
    "EtcdTopologySource",
    "LatestDocument",
    "TopologySourceError",
    "follow",
    "registry_topology",
    "static_topology",
    "transient",
]

log = logging.getLogger("meshenc.encoder.topology")

_Emit = Emit[AdjacencyDocument]


class TopologySourceError(RuntimeError):
    """The source cannot work (permission refused, bad configuration): not retried."""


def transient(error: BaseException) -> bool:
    """Whether a failure of a source's session is worth retrying (etcd, the network)."""
    if isinstance(
        error,
        aetcd.exceptions.InvalidArgumentError
        | aetcd.exceptions.UnauthenticatedError
        | aetcd.exceptions.RevisionCompactedError,
    ):
        return False
    return isinstance(
        error,
        aiohttp.ClientError | TimeoutError | OSError | aetcd.exceptions.ClientError | grpc.RpcError,
    )


def _retrying(
    what: str, maximum: float = 5.0, retried: Callable[[BaseException], bool] = transient
) -> AsyncRetrying:
    """For ever, transient failures only (the services' one backoff policy)."""
    return retrying(what, retried, attempts=None, backoff=Backoff(maximum=maximum), logger=log)


async def follow(
    what: str,
    session: Callable[[_Emit], Awaitable[None]],
    emit: _Emit,
    explain: Callable[[BaseException], BaseException] = lambda exc: exc,
    retried: Callable[[BaseException], bool] = transient,
) -> None:
    """Run ``session`` again and again, retrying ``retried`` failures for ever; the error that
    ends it (as ``explain`` words it) is emitted to the source's consumer."""
    try:
        while True:
            async for attempt in _retrying(what, retried=retried):
                with attempt:
                    await session(emit)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        emit(explain(exc))


class LatestDocument:
    """Decides which stored texts become documents (see the module docstring)."""

    def __init__(self, encoder: str, where: str) -> None:
        self.encoder = encoder
        self.where = where
        self.current: AdjacencyDocument | None = None
        self._last_text: str | None = None
        self._rejected: str | None = None
        self._log = LimitedLog(log)
        #: Texts ignored: invalid, or of a lower epoch.
        self.ignored = 0

    def offer(self, text: str | None) -> AdjacencyDocument | None:
        """The document to apply for ``text`` (None: nothing to apply)."""
        if text is None:
            if self._last_text is not None and self._rejected != "":
                self._rejected = ""
                log.warning(
                    "%s: document deleted; keeping epoch %s",
                    self.where,
                    self.current.epoch if self.current else "-",
                )
            return None
        if text == self._last_text:
            return None
        try:
            document = parse_adjacency(text, expected_encoder=self.encoder)
        except InvalidDocument as exc:
            self.ignored += 1
            if text != self._rejected:
                self._rejected = text
                self._log.warning(
                    "invalid",
                    "%s: ignoring an invalid document (%s); keeping epoch %s",
                    self.where,
                    exc,
                    self.current.epoch if self.current else "-",
                )
            return None
        if self.current is not None and document.order < self.current.order:
            self.ignored += 1
            self._log.warning(
                "stale",
                "%s: ignoring epoch %d (placement %d), older than the applied epoch %d "
                "(placement %d)",
                self.where,
                document.epoch,
                document.work_version,
                self.current.epoch,
                self.current.work_version,
            )
            return None
        self._last_text = text
        self._rejected = None
        self.current = document
        return document


async def static_topology(
    encoder: str, peers: Mapping[str, str], *, segment: str = "", leader: str = ""
) -> AsyncIterator[AdjacencyDocument]:
    """``--peers`` as a source: one document (epoch 1), then the iterator ends.

    Raises:
        InvalidDocument: for peers that break the document rules (checked before yielding).
    """
    yield AdjacencyDocument(1, encoder, dict(peers), segment, leader)


async def registry_topology(
    encoder: str,
    peers: Mapping[str, str],
    registry: RegistryClient,
    *,
    segment: str = "",
    interval: float = 5.0,
) -> AsyncIterator[AdjacencyDocument]:
    """``--peers`` whose addresses come from the DHT registry (see the module docstring).

    Peers given with an address keep it; the others are resolved by id. A peer the registry
    does not know yet (or whose record says it is unhealthy) is left out until it is found.
    """
    epoch = 0
    last: dict[str, str] | None = None
    wanted = [peer for peer, address in peers.items() if not address]
    while True:
        found = {peer: address for peer, address in peers.items() if address}
        try:
            records = await registry.resolve_many(wanted)
        except RegistryError as exc:
            log.warning("registry: cannot resolve %s: %s", ", ".join(wanted), exc)
            records = {}
        for peer, record in records.items():
            if record is not None and record.health != registry_pb2.ENCODER_HEALTH_UNHEALTHY:
                found[peer] = record.address
        if found != last:
            missing = sorted(set(peers) - set(found))
            if missing:
                log.info("registry: %s not resolved yet", ", ".join(missing))
            epoch += 1
            last = found
            yield AdjacencyDocument(epoch, encoder, dict(found), segment, "")
        await asyncio.sleep(interval)


# --- Kubernetes ----------------------------------------------------------------------------


# --- etcd ----------------------------------------------------------------------------------


class EtcdTopologySource:
    """This encoder's etcd key (see the module docstring).

    Args:
        client: an aetcd client (the caller closes it).
        encoder: this encoder's id.
        layout: the key layout (its prefix).
        watch_timeout: seconds after which the watch is renewed from the last revision.
    """

    def __init__(
        self,
        client: Any,
        encoder: str,
        *,
        layout: EtcdLayout | None = None,
        watch_timeout: float = 300.0,
    ) -> None:
        self.layout = layout if layout is not None else EtcdLayout()
        self.key = self.layout.document(encoder)
        self.watch_timeout = watch_timeout
        self._client = client
        self._latest = LatestDocument(encoder, f"etcd key {self.key.decode()}")
        self._cursor = RevisionCursor()
        #: Reads of the key (the first, and after compaction), and watches started.
        self.reads = 0
        self.watches = 0

    def __aiter__(self) -> AsyncIterator[AdjacencyDocument]:
        return drain(self._run)

    async def _run(self, emit: _Emit) -> None:
        await follow(f"watching {self.key.decode()}", self._session, emit)

    def _offer(self, value: bytes | None, emit: _Emit) -> None:
        document = self._latest.offer(None if value is None else value.decode(errors="replace"))
        if document is not None:
            emit(document)

    async def _session(self, emit: _Emit) -> None:
        if self._cursor.revision is None:
            # A range of exactly this key: unlike get, it reports the revision when absent.
            found = await self._client.get_range(self.key, self.key + b"\x00")
            self.reads += 1
            self._offer(found[0].value if len(found) else None, emit)
            self._cursor.revision = int(found.header.revision)
        self.watches += 1
        await watch_from_revision(
            lambda start: self._client.watch(self.key, start_revision=start),
            cursor=self._cursor,
            on_event=lambda event: self._offer(
                event.kv.value if event.kind == "PUT" else None, emit
            ),
            what=self.key.decode(),
            renew_after=self.watch_timeout,
        )


class EncoderRegistration:
    """Keeps ``P/encoders/<encoder>`` under this encoder's lease (embedded mode).

    Args:
        client: an aetcd client (the caller closes it).
        encoder: this encoder's id.
        record: what to announce (address, capacity, zone).
        layout: the key layout (its prefix).
        lease_ttl: seconds the key outlives the encoder's last keep-alive.
    """

    def __init__(
        self,
        client: Any,
        encoder: str,
        record: RegistrationRecord,
        *,
        layout: EtcdLayout | None = None,
        lease_ttl: int = DEFAULT_LEASE_TTL,
    ) -> None:
        if lease_ttl < 2:
            raise ValueError(f"lease_ttl must be >= 2 s, got {lease_ttl}")
        self.layout = layout if layout is not None else EtcdLayout()
        self.key = self.layout.registration(encoder)
        self.record = record
        self.lease_ttl = lease_ttl
        self.registered = asyncio.Event()
        self._client = client
        self._lease: int | None = None
        self._closing = asyncio.Event()
        #: Leases granted (a new one after each expiry).
        self.leases = 0

    async def run(self) -> None:
        """Register and keep the registration alive until :meth:`close`; etcd trouble is
        retried, never raised."""
        while not self._closing.is_set():
            async for attempt in _retrying(f"registering {self.key.decode()}", maximum=2.0):
                with attempt:
                    await self._session()

    async def update(self, record: RegistrationRecord) -> None:
        """Announce a new address, capacity or zone (written at once when registered)."""
        self.record = record
        if self._lease is not None:
            await self._client.put(self.key, record.to_json().encode(), lease=self._lease)

    async def close(self, timeout: float = 2.0) -> None:
        """Stop, and revoke the lease so the manager sees this encoder leave at once."""
        self._closing.set()
        lease, self._lease = self._lease, None
        self.registered.clear()
        if lease is None:
            return
        try:
            await asyncio.wait_for(self._client.revoke_lease(lease), timeout)
        except (aetcd.exceptions.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not revoke the registration lease: %r", exc)

    async def _session(self) -> None:
        if self._lease is not None:
            info = await self._client.get_lease_info(self._lease, keys=False)
            if info.TTL <= 0:
                log.warning("registration lease %x expired; registering again", self._lease)
                self._lease = None
        if self._lease is None:
            self._lease = int((await self._client.lease(self.lease_ttl)).id)
            self.leases += 1
        await self._client.put(self.key, self.record.to_json().encode(), lease=self._lease)
        self.registered.set()
        interval = self.lease_ttl / 3.0
        while not await wait_until_set(self._closing, interval):
            reply = await self._client.refresh_lease(self._lease)
            if reply is None or reply.TTL <= 0:
                self.registered.clear()
                self._lease = None
                raise aetcd.exceptions.ClientError("registration lease lost")
