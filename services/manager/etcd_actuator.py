"""The embedded-mode actuator: the manager's decisions as etcd keys that encoders watch.

Theory of operation
-------------------
Key layout (:class:`~meshenc.wire.adjacency.EtcdLayout`, prefix ``P``, default ``/meshenc``)::

    P/topology/.epoch        decimal epoch of the last plan written
    P/topology/<encoder>     that encoder's adjacency document (JSON)
    P/encoders/<encoder>     the encoder's registration record, bound to its own lease
    P/manager/replicas       how many encoders the autoscaler asks for (decimal)

Scaling. :meth:`EtcdActuator.scale` writes the wish, within the bounds, to
``P/manager/replicas`` (fenced like a plan); the launcher that runs the encoders (``meshenc
up``) watches the key and starts or stops encoder processes to match it.

Publishing. The actuator mirrors ``P/topology/`` (read once, then kept up to date by its own
writes) and writes only the difference to the plan: changed documents are put, documents of
encoders no longer planned are deleted, and ``.epoch`` is raised when the plan's epoch is
higher. Every transaction is guarded by ``mod_revision(.epoch) == <the revision mirrored>``:
if anyone else wrote ``.epoch`` since (another manager), the transaction does nothing, the
mirror is read again and the plan is diffed anew — and refused with :class:`StalePlanError`
if ``.epoch`` is now above the plan's. So an older manager cannot overwrite a newer plan, and
no write is lost. When a fence is given (the manager's election, :mod:`services.manager.ha`),
each transaction also requires the leader key to still be the one this manager created, so a
manager that lost its leadership cannot write even before it notices.

A plan is one transaction unless it has more operations than etcd allows in one
(``--max-txn-ops``, 128 by default); then it is cut into several, the first carrying the
``.epoch`` update and every one guarded as above. Encoders read only their own key, so a plan
applied in a few steps is seen as it would be anyway: each encoder rewires when its own
document changes.

Members. Encoders announce themselves under ``P/encoders/<id>`` with their lease
(:class:`services.encoder.topology_source.EncoderRegistration`); the key vanishes when the
encoder stops or its lease expires. The actuator reads the prefix, then watches it from the
next revision; after a broken watch it resumes from the last revision seen, and when that
revision has been compacted it reads the prefix again and reports only the difference. Each
watch is also renewed every ``watch_timeout`` seconds, from the last revision, so a watch that
went silently stale cannot hold the manager blind for long. gRPC keepalive on the client's
channel (the caller's channel options) detects dead connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aetcd  # type: ignore[import-untyped]
import grpc

from meshenc.wire.adjacency import (
    AdjacencyDocument,
    EtcdLayout,
    InvalidDocument,
    parse_registration,
)
from services.common.etcd import RevisionCursor, watch_from_revision
from services.common.retry import DEFAULT_ATTEMPTS, Backoff, retrying
from services.common.streams import drain
from services.manager.actuators import (
    MemberEvent,
    MemberJoined,
    NotLeaderError,
    StalePlanError,
    check_plan,
    diff_members,
    follow_member,
    within_bounds,
)

__all__ = ["DEFAULT_MAX_TXN_OPS", "EtcdActuator", "Fence", "is_transient"]

log = logging.getLogger("meshenc.manager.etcd")

DEFAULT_MAX_TXN_OPS: Final = 128
"""etcd's default ``--max-txn-ops``: operations allowed in one transaction."""
DEFAULT_WATCH_TIMEOUT: Final = 300.0
"""Seconds after which a watch is renewed from the last revision seen."""

_PERMANENT = (
    aetcd.exceptions.InvalidArgumentError,
    aetcd.exceptions.UnauthenticatedError,
    aetcd.exceptions.PreconditionFailedError,
    aetcd.exceptions.RevisionCompactedError,
)


@dataclass(frozen=True, slots=True)
class Fence:
    """Writes are valid only while ``key`` exists with this ``create_revision`` (the
    manager's leader key as its election created it)."""

    key: bytes
    create_revision: int


class _Raced(Exception):  # noqa: N818 -- a retry signal, not an error of this program
    """Someone else wrote ``.epoch`` since it was read; read again and retry."""


def is_transient(error: BaseException) -> bool:
    """Worth retrying: a lost race, or etcd unreachable, slow or restarting."""
    if isinstance(error, _PERMANENT):
        return False
    return isinstance(
        error, _Raced | aetcd.exceptions.ClientError | grpc.RpcError | OSError | TimeoutError
    )


@dataclass(slots=True)
class _Mirror:
    """``P/topology/`` as last read or written."""

    documents: dict[str, bytes] = field(default_factory=dict)
    epoch: int = 0
    epoch_revision: int = 0  # mod_revision of .epoch; 0 while it does not exist


@dataclass(slots=True)
class _Registrations(RevisionCursor):
    """What the registration watch knows between its connections (and where the next one
    starts; no revision: read the prefix again)."""

    known: dict[str, MemberJoined] = field(default_factory=dict)


class EtcdActuator:
    """Publishes documents to etcd and follows the encoders' registrations.

    Args:
        client: an aetcd client (connects on first use); closed by :meth:`close` only when
            ``owns_client``.
        layout: the key layout (its prefix keeps several meshes apart in one etcd).
        fence: returns the manager's current :class:`Fence`, or None when it is not the
            active manager (then nothing is written: :class:`NotLeaderError`). Without it,
            writes are guarded by the epoch alone.
        max_ops_per_txn: etcd's ``--max-txn-ops``.
        watch_timeout: seconds after which the registration watch is renewed.
        attempts: tries per publish before a transient failure is reported.
        scale_bounds: (min, max) encoders for :meth:`scale`; None disables scaling.
    """

    def __init__(
        self,
        client: Any,
        *,
        layout: EtcdLayout | None = None,
        fence: Callable[[], Fence | None] | None = None,
        max_ops_per_txn: int = DEFAULT_MAX_TXN_OPS,
        watch_timeout: float = DEFAULT_WATCH_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        owns_client: bool = False,
        scale_bounds: tuple[int, int] | None = None,
    ) -> None:
        if max_ops_per_txn < 2:
            raise ValueError(f"max_ops_per_txn must be >= 2, got {max_ops_per_txn}")
        if scale_bounds is not None and not 0 <= scale_bounds[0] <= scale_bounds[1]:
            raise ValueError(f"scale bounds must be 0 <= min <= max, got {scale_bounds}")
        self.scale_bounds = scale_bounds
        self.layout = layout if layout is not None else EtcdLayout()
        self.max_ops_per_txn = max_ops_per_txn
        self.watch_timeout = watch_timeout
        self.attempts = attempts
        self._client = client
        self._owns_client = owns_client
        self._fence = fence
        self._mirror: _Mirror | None = None
        self._publishing = asyncio.Lock()
        #: Transactions that succeeded, and those whose guard failed.
        self.transactions = 0
        self.races = 0
        #: Prefix reads of the registrations (the first, and after compaction).
        self.lists = 0

    # -- publishing -------------------------------------------------------------------------------

    async def _read(self) -> _Mirror:
        mirror = _Mirror()
        for kv in await self._client.get_prefix(self.layout.topology):
            if kv.key == self.layout.epoch:
                try:
                    mirror.epoch = int(kv.value)
                except ValueError:
                    log.warning("ignoring malformed %r: %r", kv.key, kv.value[:40])
                mirror.epoch_revision = int(kv.mod_revision)
                continue
            encoder = self.layout.encoder_of(kv.key)
            if encoder is not None:
                mirror.documents[encoder] = kv.value
        return mirror

    async def published_epoch(self) -> int:
        async for attempt in retrying("reading the published epoch", is_transient):
            with attempt:
                self._mirror = await self._read()
        assert self._mirror is not None
        return self._mirror.epoch

    async def publish(self, documents: Mapping[str, AdjacencyDocument]) -> None:
        epoch = check_plan(documents)
        wanted = {
            encoder: (self.layout.document(encoder), document.to_json().encode())
            for encoder, document in documents.items()
        }
        async with self._publishing:
            async for attempt in retrying(
                f"publishing epoch {epoch} to etcd", is_transient, attempts=self.attempts
            ):
                with attempt:
                    await self._publish_once(epoch, wanted)

    async def _publish_once(self, epoch: int, wanted: Mapping[str, tuple[bytes, bytes]]) -> None:
        if self._mirror is None:
            self._mirror = await self._read()
        mirror = self._mirror
        if mirror.epoch > epoch:
            raise StalePlanError(epoch, mirror.epoch, f"etcd key {self.layout.epoch.decode()}")
        # (encoder, new value or None to delete), sorted for a stable order of operations.
        changes: list[tuple[str, bytes | None]] = [
            (encoder, value)
            for encoder, (_, value) in sorted(wanted.items())
            if mirror.documents.get(encoder) != value
        ]
        changes += [
            (encoder, None) for encoder in sorted(mirror.documents) if encoder not in wanted
        ]
        raise_epoch = epoch > mirror.epoch
        if not changes and not raise_epoch:
            return
        fence = None
        if self._fence is not None:
            fence = self._fence()
            if fence is None:
                raise NotLeaderError("this manager is not the active one; not publishing")
        room = self.max_ops_per_txn - 1  # one operation is kept for .epoch
        chunks = [changes[i : i + room] for i in range(0, len(changes), room)] or [[]]
        for index, chunk in enumerate(chunks):
            await self._transaction(
                mirror, chunk, epoch if index == 0 and raise_epoch else None, fence
            )
        log.info(
            "published epoch %d to etcd: %d documents changed in %d transaction(s)",
            epoch,
            len(changes),
            len(chunks),
        )

    async def _transaction(
        self,
        mirror: _Mirror,
        chunk: list[tuple[str, bytes | None]],
        new_epoch: int | None,
        fence: Fence | None,
    ) -> None:
        tx = self._client.transactions
        layout = self.layout
        compare = [tx.mod(layout.epoch) == mirror.epoch_revision]
        failure = [tx.get(layout.epoch)]
        if fence is not None:
            compare.append(tx.create(fence.key) == fence.create_revision)
            failure.append(tx.get(fence.key))
        success = [
            tx.put(layout.document(encoder), value)
            if value is not None
            else tx.delete(layout.document(encoder))
            for encoder, value in chunk
        ]
        if new_epoch is not None:
            success.append(tx.put(layout.epoch, str(new_epoch).encode()))
        succeeded, responses = await self._client.transaction(
            compare=compare, success=success, failure=failure
        )
        if not succeeded:
            self.races += 1
            self._mirror = None
            if fence is not None:
                holder = responses[1] if len(responses) > 1 else []
                if not holder or int(holder[0][1].create_revision) != fence.create_revision:
                    raise NotLeaderError(
                        f"this manager's leadership ({fence.key.decode()} created at revision "
                        f"{fence.create_revision}) has ended; not publishing"
                    )
            log.info("etcd: %s changed under us; reading the topology again", layout.epoch)
            raise _Raced()
        self.transactions += 1
        for encoder, value in chunk:
            if value is None:
                mirror.documents.pop(encoder, None)
            else:
                mirror.documents[encoder] = value
        if new_epoch is not None:
            first = responses[-1]
            mirror.epoch = new_epoch
            mirror.epoch_revision = int(first.response_put.header.revision)

    # -- members ----------------------------------------------------------------------------------

    def members(self) -> AsyncIterator[MemberEvent]:
        return drain(self._follow, name="registration-watch")

    async def _follow(self, emit: Callable[[MemberEvent | BaseException], None]) -> None:
        state = _Registrations()
        try:
            while True:
                async for attempt in retrying(
                    "encoder registration watch",
                    is_transient,
                    attempts=None,
                    backoff=Backoff(maximum=5.0),
                ):
                    with attempt:
                        await self._session(state, emit)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported to the consumer of members()
            emit(exc)

    def _member(self, encoder: str, value: bytes) -> MemberJoined | None:
        try:
            record = parse_registration(value)
        except InvalidDocument as exc:
            log.warning("ignoring the malformed registration of %s: %s", encoder, exc)
            return None
        return MemberJoined(encoder, record.address, record.capacity, record.zone)

    async def _session(
        self, state: _Registrations, emit: Callable[[MemberEvent | BaseException], None]
    ) -> None:
        """Read if needed, then watch until the renewal time; raises on trouble."""
        prefix = self.layout.encoders
        if state.revision is None:
            snapshot = await self._client.get_prefix(prefix)
            self.lists += 1
            current: dict[str, MemberJoined] = {}
            for kv in snapshot:
                encoder = self.layout.registered(kv.key)
                member = self._member(encoder, kv.value) if encoder else None
                if encoder and member:
                    current[encoder] = member
            for event in diff_members(state.known, current):
                emit(event)
            state.known = current
            state.revision = int(snapshot.header.revision)

        def on_event(event: Any) -> None:
            encoder = self.layout.registered(event.kv.key)
            if encoder is not None:
                member = self._member(encoder, event.kv.value) if event.kind == "PUT" else None
                follow_member(state.known, encoder, member, emit)

        await watch_from_revision(
            lambda start: self._client.watch_prefix(prefix, start_revision=start),
            cursor=state,
            on_event=on_event,
            what="registrations",
            renew_after=self.watch_timeout,
        )

    # -- the rest ---------------------------------------------------------------------------------

    async def scale(self, replicas: int) -> None:
        target = within_bounds(
            replicas, self.scale_bounds, "give the manager --autoscale-min/--autoscale-max"
        )
        key = self.layout.replicas
        async for attempt in retrying(
            f"asking for {target} encoders", is_transient, attempts=self.attempts
        ):
            with attempt:
                fence = None
                if self._fence is not None:
                    fence = self._fence()
                    if fence is None:
                        raise NotLeaderError("this manager is not the active one; not scaling")
                tx = self._client.transactions
                compare = [] if fence is None else [tx.create(fence.key) == fence.create_revision]
                succeeded, _ = await self._client.transaction(
                    compare=compare, success=[tx.put(key, str(target).encode())], failure=[]
                )
                if not succeeded:
                    raise NotLeaderError("this manager's leadership has ended; not scaling")
        log.info("asked for %d encoders (%s)", target, key.decode())

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()
