"""Manager high availability: of the replicas that run, one is active, through etcd.

Theory of operation
-------------------
Every replica campaigns for the key ``P/manager/leader`` (:class:`EtcdLayout`) with one
transaction: *if the key does not exist* (``create_revision == 0``), put our identity there,
bound to our lease. The winner is the active manager; its **fence** is the key's
``create_revision``, which no later holder can share. The others watch the key and campaign
again when it is deleted (resignation) or vanishes with its lease (a crash: at most the lease
TTL later; etcd 3.4 never expires a lease in under about 2.4 s).

The active manager keeps its lease alive every third of the TTL. It steps down by itself —
before etcd can expire its lease and elect someone else — when no keep-alive has succeeded for
two thirds of the TTL, when etcd says the lease is gone, or when the watch shows the key
deleted or created anew. Stepping down is announced at once (``on_change(False)``); the
replica then campaigns again like any other.

Timing alone cannot make two managers never overlap (a paused process does not know it
paused), so the writes themselves are fenced: :meth:`EtcdElection.fence` hands
:class:`~services.manager.etcd_actuator.EtcdActuator` the ``(key, create_revision)`` that every
one of its transactions compares. A deposed manager's write fails in etcd, whatever it
believes.

Invariants:

1. At most one replica's transaction can succeed for a given key creation, so at most one
   fence is valid at any revision.
2. ``is_leader`` is True only between a won campaign and the first sign of its end; the
   fence is None whenever ``is_leader`` is False.
3. Losing etcd never stops the process: the election retries with exponential backoff and
   jitter (tenacity) and reports standby meanwhile.

In Kubernetes, the same election runs on the chart's etcd (the manager already uses it);
a ``coordination.k8s.io`` Lease would need ``leases`` verbs in the manager's Role (see
``docs/actuators.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import aetcd  # type: ignore[import-untyped]

from meshenc.wire.adjacency import EtcdLayout
from services.common.retry import Backoff, retrying
from services.manager.etcd_actuator import Fence, is_transient

__all__ = ["DEFAULT_LEASE_TTL", "EtcdElection", "LeadershipLost"]

log = logging.getLogger("meshenc.manager.ha")

DEFAULT_LEASE_TTL: Final = 5
"""Seconds the active manager's lease outlives its last keep-alive."""


class LeadershipLost(Exception):  # noqa: N818 -- an outcome, not an error of this program
    """The active manager's lease or key is gone; campaign again."""


def _transient(error: BaseException) -> bool:
    return isinstance(error, LeadershipLost) or is_transient(error)


class EtcdElection:
    """One manager replica's part in the election (see the module docstring).

    Args:
        client: an aetcd client.
        identity: this replica's name (the pod name), stored in the leader key.
        layout: the key layout (its prefix).
        lease_ttl: seconds; the longest a crashed leader holds the mesh without a manager.
        on_change: called on the event loop with True when this replica becomes active and
            False when it stops being active.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        client: Any,
        identity: str,
        *,
        layout: EtcdLayout | None = None,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        if lease_ttl < 2:
            raise ValueError(f"lease_ttl must be >= 2 s, got {lease_ttl}")
        self.identity = identity
        self.layout = layout if layout is not None else EtcdLayout()
        self.lease_ttl = lease_ttl
        self._client = client
        self._on_change = on_change
        self._clock = clock
        self._lease: int | None = None
        self._fence: Fence | None = None
        self._holder: str | None = None
        self._closing = asyncio.Event()
        self._elected = asyncio.Event()
        #: Campaigns won, and times this replica stepped down.
        self.terms = 0
        self.step_downs = 0

    # -- what the manager asks ------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._fence is not None

    @property
    def leader(self) -> str | None:
        """The active manager as last observed (None: none known)."""
        return self._holder

    def fence(self) -> Fence | None:
        """The fence of this replica's current term, or None when it is not active."""
        return self._fence

    async def wait_elected(self) -> None:
        """Return once this replica is active."""
        await self._elected.wait()

    # -- state ----------------------------------------------------------------------------------

    def _become(self, fence: Fence | None, holder: str | None) -> None:
        was = self.is_leader
        self._fence = fence
        self._holder = holder
        if fence is not None:
            self._elected.set()
        else:
            self._elected.clear()
        if was != self.is_leader:
            if fence is not None:
                self.terms += 1
                log.info(
                    "%s is the active manager (fence %d)", self.identity, fence.create_revision
                )
            else:
                self.step_downs += 1
                log.warning("%s is no longer the active manager", self.identity)
            if self._on_change is not None:
                self._on_change(self.is_leader)

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign until :meth:`close`; never raises for etcd trouble."""
        while not self._closing.is_set():
            try:
                async for attempt in retrying(
                    "manager election",
                    _transient,
                    attempts=None,
                    backoff=Backoff(maximum=2.0),
                    logger=log,
                ):
                    with attempt:
                        await self._session()
                    if self._closing.is_set():
                        break
            finally:
                self._become(None, self._holder)

    async def close(self, *, resign: bool = True, timeout: float = 2.0) -> None:
        """Stop campaigning; with ``resign``, delete our leader key and revoke the lease
        (best effort) so a standby takes over at once."""
        self._closing.set()
        fence, lease = self._fence, self._lease
        self._become(None, None)
        if not resign:
            return
        tx = self._client.transactions
        try:
            async with asyncio.timeout(timeout):
                if fence is not None:
                    await self._client.transaction(
                        compare=[tx.create(fence.key) == fence.create_revision],
                        success=[tx.delete(fence.key)],
                        failure=[],
                    )
                if lease is not None:
                    await self._client.revoke_lease(lease)
            log.info("%s resigned", self.identity)
        except (aetcd.exceptions.ClientError, OSError, TimeoutError) as exc:
            log.warning("%s could not resign cleanly: %r", self.identity, exc)

    async def _session(self) -> None:
        """Hold a lease, campaign, and watch; returns only when closing, raises on trouble."""
        await self._ensure_lease()
        keep_alive = asyncio.create_task(self._keep_alive(), name="manager-lease")
        closing = asyncio.create_task(self._closing.wait(), name="closing")
        try:
            while not self._closing.is_set():
                revision = await self._campaign()
                follow = asyncio.create_task(self._follow(revision), name="leader-watch")
                done, _ = await asyncio.wait(
                    {follow, keep_alive, closing}, return_when=asyncio.FIRST_COMPLETED
                )
                if follow not in done:
                    follow.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await follow
                for task in done:
                    if task is not closing:
                        task.result()  # raises what ended it
        finally:
            for task in (keep_alive, closing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not self._closing.is_set():
                self._become(None, self._holder)

    async def _ensure_lease(self) -> None:
        if self._lease is not None:
            info = await self._client.get_lease_info(self._lease, keys=False)
            if info.TTL > 0:
                return
        lease = await self._client.lease(self.lease_ttl)
        self._lease = int(lease.id)

    async def _campaign(self) -> int:
        """Try to create the leader key; become active or standby. Returns the revision to
        watch the key from."""
        tx = self._client.transactions
        key = self.layout.manager_leader
        succeeded, responses = await self._client.transaction(
            compare=[tx.create(key) == 0],
            success=[tx.put(key, self.identity.encode(), lease=self._lease)],
            failure=[tx.get(key)],
        )
        if succeeded:
            revision = int(responses[0].response_put.header.revision)
            self._become(Fence(key, revision), self.identity)
            return revision + 1
        found = responses[0] if responses else []
        if not found:
            return 0  # deleted in between; the watch from "now" sees nothing, so recheck soon
        value, kv = found[0]
        if int(kv.lease) == self._lease:
            # Our own key from before a reconnect, still under our lease: still active.
            self._become(Fence(key, int(kv.create_revision)), self.identity)
        else:
            self._become(None, value.decode(errors="replace"))
        return int(kv.header.revision) + 1

    async def _follow(self, start_revision: int) -> None:
        """Return when the leader key is deleted or re-created (campaign again)."""
        if start_revision == 0:
            return
        key = self.layout.manager_leader
        watch = await self._client.watch(key, start_revision=start_revision)
        try:
            async for event in watch:
                if event.kind == "DELETE":
                    return
                fence = self._fence
                if fence is not None and int(event.kv.create_revision) != fence.create_revision:
                    return
                if fence is None:
                    self._holder = event.kv.value.decode(errors="replace")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), 1.0)
        raise LeadershipLost("the leader watch ended")

    async def _keep_alive(self) -> None:
        """Refresh the lease every third of the TTL; step down before etcd could expire it."""
        interval = self.lease_ttl / 3.0
        last_ok = self._clock()
        while True:
            await asyncio.sleep(interval)
            sent = self._clock()
            try:
                # asyncio.timeout, not wait_for: see services.common.waiting.
                async with asyncio.timeout(interval):
                    reply = await self._client.refresh_lease(self._lease)
            except (aetcd.exceptions.ClientError, OSError, TimeoutError) as exc:
                if self._clock() - last_ok >= self.lease_ttl * 2.0 / 3.0:
                    raise LeadershipLost(f"no lease keep-alive for too long ({exc!r})") from exc
                continue
            if reply is None or reply.TTL <= 0:
                self._lease = None
                raise LeadershipLost("the lease expired")
            last_ok = sent
