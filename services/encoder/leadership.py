"""The encoder's segment leadership: the election core driven by real etcd.

Theory of operation
-------------------
:class:`Leadership` is a thin asyncio shell around :class:`meshenc.core.election.Election`.
It holds one etcd lease (kept alive at a third of its TTL), mirrors the segment's keys (one
prefix read, then one prefix watch from the revision after that read), turns every change of
the mirror into an observation for the core, and carries out the core's actions as etcd
requests with exactly the guards the actions state. Transaction answers are fed back too (the
failure branch of every guarded write reads the leader key), so a member learns at once that
a write of its own lost.

The encoder runtime tells it what the mesh knows: ranking inputs (:meth:`report`), links that
broke or came back (:meth:`peer_lost`, :meth:`peer_recovered`) and ESPs heard
(:meth:`peer_heard`). Those are the fast failure signals.

etcd going away (a failed request, a broken watch, a lease that cannot be kept alive) ends the
*session*: the core is told (:class:`EtcdLost`: it keeps the last known leader and reports
degraded), and the shell reconnects with the services' backoff (``services.common.retry``,
``SESSION_BACKOFF``), trying the
endpoints in turn. A new session reuses the lease if etcd still has it, else grants a new one,
reads the prefix again and watches from there; the core then publishes the candidacy again.
The encoder itself never stops or waits for any of this.

Key layout (``docs/leadership.md``), with ``P`` the prefix and ``S`` the segment::

    P/segments/S/candidates/<encoder>   ranking inputs (JSON), the encoder's lease
    P/segments/S/leader                 {"holder", "lease"}, bound to the holder's lease
    P/segments/S/suspects/<token>/<voter>  a voter's suspicion of tenure <token>, its lease
    P/segments/S/acts                   the leader's fenced act: {"holder", "token", "seq"}

An encoder with a region ``R`` (``--region``) stands under ``P/regions/R/segments/S/`` instead:
each region elects its own leader of a segment, so a segment's timing reference, its etcd
traffic and its failover stay inside the region, and a region cut off from the others keeps a
leader (its etcd permitting). Nothing on the frame path waits for etcd: ESPs and links only
feed the election core in memory, etcd requests run in the session's own tasks, and the
leader comes back to the sync engine as an event.

Each session dials one endpoint with its own client (``services.common.etcd``, TLS and
credentials included), the next endpoint after a failed session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aetcd  # type: ignore[import-untyped]
import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meshenc.core.election import (
    ActAsLeader,
    Action,
    ActObserved,
    CandidacyInfo,
    CandidatesObserved,
    ClaimLeadership,
    Election,
    ElectionConfig,
    ElectionSnapshot,
    EtcdConnected,
    EtcdLost,
    Event,
    HandOver,
    LeaderObserved,
    PeerHeard,
    PeerLost,
    PeerRecovered,
    PublishCandidacy,
    PublishSuspicion,
    RankInputs,
    RankInputsChanged,
    Resign,
    Role,
    ShuttingDown,
    SuspicionsObserved,
    TakeOver,
    WithdrawSuspicion,
)
from meshenc.core.machine import Tick
from services.common.etcd import EtcdSettings, connect_client
from services.common.retry import Backoff, retrying
from services.common.waiting import wait_until_set

__all__ = ["Leadership", "SegmentKeys", "connect_client", "decode_act", "decode_leader"]

log = logging.getLogger("meshenc.encoder.leadership")

TICK_INTERVAL: Final = 0.025
"""How often the core is ticked (silences, the leader's heartbeat, retries)."""
SESSION_BACKOFF: Final = Backoff(initial=0.1, maximum=2.0, jitter=0.2)
"""Delays between failed etcd sessions: 0.1 s doubling to 2 s, plus up to 0.2 s."""

_ETCD_ERRORS = (aetcd.exceptions.ClientError, grpc.RpcError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class SegmentKeys:
    """The etcd keys of one segment, in one region when ``region`` is set (see the module
    docstring)."""

    prefix: str
    segment: str
    region: str = ""

    @property
    def root(self) -> bytes:
        where = f"{self.prefix}/regions/{self.region}" if self.region else self.prefix
        return f"{where}/segments/{self.segment}/".encode()

    @property
    def candidates(self) -> bytes:
        return self.root + b"candidates/"

    def candidate(self, node: str) -> bytes:
        return self.candidates + node.encode()

    @property
    def leader(self) -> bytes:
        return self.root + b"leader"

    @property
    def suspects(self) -> bytes:
        return self.root + b"suspects/"

    def suspects_of(self, token: int) -> bytes:
        return self.suspects + f"{token}/".encode()

    def suspect(self, token: int, voter: str) -> bytes:
        return self.suspects_of(token) + voter.encode()

    @property
    def acts(self) -> bytes:
        return self.root + b"acts"


class _CandidacyValue(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    confidence: float = Field(ge=0.0, le=1.0)
    latency: float = Field(ge=0.0, le=60.0)
    neighbours: tuple[str, ...] = ()


class _LeaderValue(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    holder: str = Field(min_length=1, max_length=128)


class _ActValue(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    holder: str = Field(min_length=1, max_length=128)
    token: int = Field(ge=1)
    seq: int = Field(ge=0)


def decode_leader(value: bytes) -> str | None:
    """The holder named by a leader key's value, or None when the value is malformed."""
    try:
        return _LeaderValue.model_validate_json(value).holder
    except ValidationError:
        return None


def decode_act(value: bytes) -> tuple[str, int, int] | None:
    """(holder, token, seq) of an act's value, or None when the value is malformed."""
    try:
        act = _ActValue.model_validate_json(value)
    except ValidationError:
        return None
    return act.holder, act.token, act.seq


def _json(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()


class _SessionEnded(Exception):  # noqa: N818 -- an outcome, not an error of this program
    """A session with etcd ended (etcd unreachable, the watch broke); reconnect."""


class _ElectionReads:
    """What an election's holder shows of it (reads only), whichever election it holds now."""

    @property
    def _election(self) -> Election:
        raise NotImplementedError

    @property
    def leader(self) -> str | None:
        return self._election.leader

    @property
    def token(self) -> int:
        return self._election.token

    @property
    def degraded(self) -> bool:
        return self._election.degraded

    @property
    def role(self) -> Role:
        return self._election.role

    def admits(self, token: int) -> bool:
        """Whether a leader's act with fencing token ``token`` may be followed."""
        return self._election.admits(token)

    def snapshot(self) -> ElectionSnapshot:
        return self._election.snapshot()


class Leadership(_ElectionReads):
    """One encoder's part in its segment's leader election (see the module docstring).

    Args:
        node_id: this encoder's id.
        segment: its segment.
        settings: how to reach etcd.
        config: the election's settings (fast failover on or off among them).
        clock: monotonic seconds (injected so that tests may drive it).
        on_change: called (on the event loop) when the known leader or the degraded flag
            changes.
        region: this encoder's region ("": none); each region elects its own leader.
        logger: where it logs (a channel of several: a child logger named after it).
    """

    def __init__(
        self,
        node_id: str,
        segment: str,
        settings: EtcdSettings,
        config: ElectionConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ElectionSnapshot], None] | None = None,
        region: str = "",
        logger: logging.Logger = log,
    ) -> None:
        self._log = logger
        self.election = Election(node_id, config if config is not None else ElectionConfig())
        self.node_id = node_id
        self.segment = segment
        self.settings = settings
        self.keys = SegmentKeys(settings.prefix, segment, region)
        self._clock = clock
        self._on_change = on_change
        self._mirror: dict[bytes, Any] = {}
        self._pending: deque[Action] = deque()
        self._work = asyncio.Event()
        self._closing = asyncio.Event()
        self._lease_id: int | None = None
        self._client: Any = None
        self._endpoint_index = 0
        self._act_seq = 0
        self._view: tuple[str | None, int, bool] = (None, 0, True)
        self._bad_values: set[bytes] = set()
        #: Sessions started, acts written, and guarded writes that lost their guard.
        self.sessions = 0
        self.acts_written = 0
        self.writes_refused = 0
        #: When (on ``clock``) the newest act that landed was sent: this member led at some
        #: moment between then and its answer (-inf: no act landed yet).
        self.fenced_at = -math.inf
        #: Peers the election counts as lost, as last logged.
        self._lost_logged: frozenset[str] = frozenset()

    # -- what the runtime tells us -----------------------------------------------------------

    def report(self, inputs: RankInputs) -> None:
        """This encoder's ranking inputs as measured now."""
        self._feed(RankInputsChanged(inputs))

    def peer_lost(self, peer: str) -> None:
        """The mesh link to ``peer`` broke."""
        self._feed(PeerLost(peer))

    def peer_recovered(self, peer: str) -> None:
        """The mesh link to ``peer`` is up again."""
        self._feed(PeerRecovered(peer))

    def peer_heard(self, peer: str) -> None:
        """An ESP from ``peer`` arrived."""
        self._feed(PeerHeard(peer))

    # -- what the runtime asks ---------------------------------------------------------------

    @property
    def _election(self) -> Election:
        return self.election

    # -- the core ----------------------------------------------------------------------------

    def _feed(self, event: Event) -> None:
        self.election.step(self._clock(), event)
        self._collect()

    def _collect(self) -> None:
        actions = self.election.ready()
        if actions:
            self._pending.extend(actions)
            self._work.set()
        view = (self.election.leader, self.election.token, self.election.degraded)
        if view != self._view:
            self._view = view
            self._log.info(
                "segment %s: leader %s (token %d)%s",
                self.segment,
                view[0] or "none",
                view[1],
                ", etcd unavailable: degraded" if view[2] else "",
            )
            if self._on_change is not None:
                self._on_change(self.election.snapshot())

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Take part in the election until :meth:`close`; never raises for etcd trouble."""
        while not self._closing.is_set():
            try:
                async for attempt in retrying(
                    f"segment {self.segment}: etcd session",
                    lambda exc: isinstance(exc, _SessionEnded),
                    attempts=None,
                    stop_when=self._closing.is_set,
                    backoff=SESSION_BACKOFF,
                    sleep=self._sleep,
                    logger=self._log,
                ):
                    with attempt:
                        await self._session()
            except _SessionEnded:
                pass

    async def _sleep(self, seconds: float) -> None:
        """Back off, but wake at once when closing."""
        await wait_until_set(self._closing, seconds)

    async def close(self, *, resign: bool = True, timeout: float = 2.0) -> None:
        """Stop taking part, and make :meth:`run` return.

        With ``resign``, a leader first deletes its leader key (if it still holds it) and the
        lease is revoked, so the segment need not wait for it to expire (best effort: etcd
        may be away).
        """
        if self._closing.is_set():
            return
        client = self._client
        if resign and client is not None and not self.election.degraded:
            self.election.step(self._clock(), ShuttingDown())
            resignation = [a for a in self.election.ready() if isinstance(a, Resign)]
            try:
                async with asyncio.timeout(timeout):
                    for action in resignation:
                        await self._execute(client, action)
                    if self._lease_id is not None:
                        await client.revoke_lease(self._lease_id)
                self._log.info("segment %s: resigned, lease revoked", self.segment)
            except _ETCD_ERRORS as exc:
                self._log.warning("segment %s: could not resign cleanly: %r", self.segment, exc)
            except asyncio.CancelledError:
                # The session can end while we resign (a write of its own racing our revoke
                # finds the lease gone) and close the client under our request: gRPC reports
                # that as a cancellation. Only a cancellation of this task itself goes on.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                self._log.warning(
                    "segment %s: could not resign cleanly: the session closed", self.segment
                )
        self._closing.set()
        self._work.set()

    async def _session(self) -> None:
        """One connection to etcd, until it breaks (raises _SessionEnded) or we close."""
        endpoints = self.settings.endpoints
        endpoint = endpoints[self._endpoint_index % len(endpoints)]
        self._endpoint_index += 1
        client = connect_client(self.settings, endpoint)
        established = False
        try:
            try:
                await self._grant_lease(client)
                snapshot = await client.get_prefix(self.keys.root)
                watch = await client.watch_prefix(
                    self.keys.root, start_revision=snapshot.header.revision + 1
                )
            except _ETCD_ERRORS as exc:
                raise _SessionEnded(f"{endpoint}: {exc!r}") from exc
            established = True
            self._client = client
            self.sessions += 1
            self._log.info(
                "segment %s: etcd session %d at %s", self.segment, self.sessions, endpoint
            )
            self._mirror = {kv.key: kv for kv in snapshot}
            self._pending.clear()
            self._feed(EtcdConnected())
            self._feed_all(snapshot.header.revision)
            await self._serve(client, watch)
        finally:
            self._client = None
            if not self._closing.is_set() and established:
                self._pending.clear()
                self._feed(EtcdLost())
            with contextlib.suppress(*_ETCD_ERRORS):
                await asyncio.wait_for(client.close(), 1.0)

    async def _serve(self, client: Any, watch: Any) -> None:
        tasks = [
            asyncio.create_task(self._watch(watch), name="etcd-watch"),
            asyncio.create_task(self._keep_alive(client), name="etcd-keepalive"),
            asyncio.create_task(self._executor(client), name="etcd-executor"),
            asyncio.create_task(self._ticker(), name="election-tick"),
            asyncio.create_task(self._closing.wait(), name="closing"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._closing.is_set():
            return
        errors = [t.exception() for t in done if not t.cancelled() and t.exception()]
        raise _SessionEnded(repr(errors[0]) if errors else "the watch ended")

    async def _grant_lease(self, client: Any) -> None:
        """Keep the lease we had if etcd still has it (an outage shorter than the TTL)."""
        if self._lease_id is not None:
            info = await client.get_lease_info(self._lease_id, keys=False)
            if info.TTL > 0:
                return
            self._log.info(
                "segment %s: lease %x expired; granting a new one", self.segment, self._lease_id
            )
        lease = await client.lease(self.settings.lease_ttl)
        self._lease_id = int(lease.id)

    async def _keep_alive(self, client: Any) -> None:
        interval = self.settings.lease_ttl / 3.0
        while True:
            await asyncio.sleep(interval)
            assert self._lease_id is not None
            reply = await client.refresh_lease(self._lease_id)
            if reply is None or reply.TTL <= 0:
                # Revoked by a member that took over from us, or expired: start afresh with a
                # new lease; everything we published went with the old one.
                self._log.warning("segment %s: lease %x lost", self.segment, self._lease_id)
                self._lease_id = None
                await self._grant_lease(client)
                self._pending.clear()
                self._feed(EtcdConnected())
                self._feed_all(0)

    async def _ticker(self) -> None:
        while True:
            self._feed(Tick())
            self._log_lost()
            await asyncio.sleep(TICK_INTERVAL)

    def _log_lost(self) -> None:
        """One line when the election starts or stops counting a neighbour as lost: the
        moment the mesh noticed a silent (or disconnected) peer, readable from outside."""
        lost = frozenset(self.election.lost_peers)
        if lost == self._lost_logged:
            return
        timeout_ms = self.election.config.silence_timeout * 1000.0
        for peer in sorted(lost - self._lost_logged):
            self._log.warning(
                "segment %s: neighbour %s lost (link down, or no ESP for %.0f ms)",
                self.segment,
                peer,
                timeout_ms,
            )
        for peer in sorted(self._lost_logged - lost):
            self._log.info("segment %s: neighbour %s heard again", self.segment, peer)
        self._lost_logged = lost

    async def _executor(self, client: Any) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._pending and not self._closing.is_set():
                await self._execute(client, self._pending.popleft())

    # -- observations ------------------------------------------------------------------------

    async def _watch(self, watch: Any) -> None:
        async for event in watch:
            kv = event.kv
            if event.kind == "PUT":
                self._mirror[kv.key] = kv
            else:
                self._mirror.pop(kv.key, None)
            self._feed_key(kv.key, kv.mod_revision)

    def _feed_all(self, revision: int) -> None:
        self._feed(LeaderObserved(*self._leader_state(), revision=max(revision, 1)))
        self._feed(CandidatesObserved(self._candidates()))
        self._feed(SuspicionsObserved(self._suspicions()))

    def _feed_key(self, key: bytes, revision: int) -> None:
        if key == self.keys.leader:
            self._feed(LeaderObserved(*self._leader_state(), revision=revision))
        elif key.startswith(self.keys.candidates):
            self._feed(CandidatesObserved(self._candidates()))
        elif key.startswith(self.keys.suspects):
            self._feed(SuspicionsObserved(self._suspicions()))
        elif key == self.keys.acts and key in self._mirror:
            act = decode_act(self._mirror[key].value)
            if act is not None:
                self._feed(ActObserved(act[0], act[1]))

    def _malformed(self, key: bytes, what: str) -> None:
        if key not in self._bad_values:  # once per key, not once per event
            self._bad_values.add(key)
            self._log.warning("segment %s: ignoring malformed %s at %r", self.segment, what, key)

    def _leader_state(self) -> tuple[str | None, int, int]:
        kv = self._mirror.get(self.keys.leader)
        if kv is None:
            return None, 0, 0
        holder = decode_leader(kv.value)
        if holder is None:
            # Unreadable but present: it still blocks claims, and only its lease can end it.
            self._malformed(kv.key, "leader key")
            holder = "?"
        return holder, int(kv.lease), int(kv.mod_revision)

    def _candidates(self) -> dict[str, CandidacyInfo]:
        found: dict[str, CandidacyInfo] = {}
        prefix = self.keys.candidates
        for key, kv in self._mirror.items():
            if not key.startswith(prefix):
                continue
            node = key[len(prefix) :].decode(errors="replace")
            try:
                value = _CandidacyValue.model_validate_json(kv.value)
                inputs = RankInputs(value.confidence, value.latency, frozenset(value.neighbours))
            except (ValidationError, ValueError):
                self._malformed(key, "candidacy")
                continue
            if node:
                found[node] = CandidacyInfo(inputs, int(kv.lease))
        return found

    def _suspicions(self) -> dict[int, frozenset[str]]:
        found: dict[int, set[str]] = {}
        prefix = self.keys.suspects
        for key in self._mirror:
            if not key.startswith(prefix):
                continue
            token, _, voter = key[len(prefix) :].decode(errors="replace").partition("/")
            if not token.isdigit() or not voter:
                self._malformed(key, "suspicion key")
                continue
            found.setdefault(int(token), set()).add(voter)
        return {token: frozenset(voters) for token, voters in found.items()}

    # -- actions -----------------------------------------------------------------------------

    async def _execute(self, client: Any, action: Action) -> None:
        """Carry out one action with the guard it states; feed back what we learn."""
        keys, me, lease = self.keys, self.node_id, self._lease_id
        tx = client.transactions
        match action:
            case PublishCandidacy(inputs):
                value = _json(
                    confidence=inputs.confidence,
                    latency=inputs.latency if math.isfinite(inputs.latency) else 0.0,
                    neighbours=sorted(inputs.neighbours),
                )
                await client.put(keys.candidate(me), value, lease=lease)
            case ClaimLeadership():
                await self._guarded(
                    client,
                    "claim",
                    [tx.create(keys.leader) == 0],
                    [tx.put(keys.leader, _json(holder=me, lease=lease), lease=lease)],
                )
            case HandOver(token, successor, successor_lease):
                value = _json(holder=successor, lease=successor_lease)
                await self._guarded(
                    client,
                    f"handover to {successor}",
                    [tx.mod(keys.leader) == token],
                    [tx.put(keys.leader, value, lease=successor_lease)],
                )
            case Resign(token):
                await self._guarded(
                    client, "resign", [tx.mod(keys.leader) == token], [tx.delete(keys.leader)]
                )
            case PublishSuspicion(token):
                await client.put(keys.suspect(token, me), _json(voter=me), lease=lease)
                self._log.info("segment %s: suspect the leader of tenure %d", self.segment, token)
            case WithdrawSuspicion(token):
                await client.delete(keys.suspect(token, me))
            case TakeOver(token, voters, dead_lease):
                suspects = keys.suspects_of(token)
                won = await self._guarded(
                    client,
                    f"takeover of tenure {token}",
                    [tx.mod(keys.leader) == token]
                    + [tx.version(keys.suspect(token, v)) > 0 for v in voters],
                    [
                        tx.put(keys.leader, _json(holder=me, lease=lease), lease=lease),
                        tx.delete(suspects, range_end=aetcd.utils.prefix_range_end(suspects)),
                    ],
                )
                if won:
                    self._log.warning(
                        "segment %s: took over tenure %d (suspected by %s)",
                        self.segment,
                        token,
                        ", ".join(voters),
                    )
                    with contextlib.suppress(*_ETCD_ERRORS):
                        await client.revoke_lease(dead_lease)
            case ActAsLeader(token):
                self._act_seq += 1
                value = _json(holder=me, token=token, seq=self._act_seq)
                sent = self._clock()
                if await self._guarded(
                    client, "act", [tx.mod(keys.leader) == token], [tx.put(keys.acts, value)]
                ):
                    self.acts_written += 1
                    self.fenced_at = max(self.fenced_at, sent)

    async def _guarded(
        self, client: Any, what: str, compare: list[Any], success: list[Any]
    ) -> bool:
        """A transaction whose failure branch reads the leader key; feeds the outcome back."""
        tx = client.transactions
        succeeded, responses = await client.transaction(
            compare=compare, success=success, failure=[tx.get(self.keys.leader)]
        )
        if succeeded:
            first = responses[0] if responses else None
            if first is not None and first.WhichOneof("response") == "response_put":
                revision = int(first.response_put.header.revision)
                if success[0].key == self.keys.leader:
                    value = success[0].value
                    holder = decode_leader(value)
                    self._feed(
                        LeaderObserved(holder, int(success[0].lease or 0), revision, revision)
                    )
            return True
        self.writes_refused += 1
        self._log.debug("segment %s: %s refused by its guard", self.segment, what)
        found = responses[0] if responses else []
        if found:
            value, kv = found[0]
            self._feed(
                LeaderObserved(
                    decode_leader(value) or "?",
                    int(kv.lease),
                    int(kv.mod_revision),
                    int(kv.header.revision),
                )
            )
        return False


class SegmentLeadership(_ElectionReads):
    """An encoder's part in the election of whatever segment it is in now.

    The manager may move an encoder to another segment (its topology document names the
    segment). One :class:`Leadership` serves one segment, so a move ends the old one — a
    leader resigns, and the revoked lease takes the candidacy and suspicions with it, so the
    old segment elects at once — and starts a new one in the new segment, which is told the
    last ranking inputs and the mesh links still down. Moves are carried out one at a time,
    in order; a move to where the encoder already is, or is about to be, does nothing. Only
    the current :class:`Leadership` reaches ``on_change``.

    Args: as :class:`Leadership`; ``segment`` is the segment to start in.
    """

    def __init__(
        self,
        node_id: str,
        segment: str,
        settings: EtcdSettings,
        config: ElectionConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ElectionSnapshot], None] | None = None,
        region: str = "",
        logger: logging.Logger = log,
    ) -> None:
        self._log = logger
        self.node_id = node_id
        self.settings = settings
        self.region = region
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._inputs: RankInputs | None = None
        self._lost: set[str] = set()
        self._wanted = segment
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._running: asyncio.Event | None = None  # set once run() has returned
        self._resign, self._timeout = True, 2.0
        self.current = self._leadership(segment)
        #: Moves carried out.
        self.moves = 0

    def _leadership(self, segment: str) -> Leadership:
        leadership: Leadership

        def changed(snapshot: ElectionSnapshot) -> None:
            if leadership is self.current and self._on_change is not None:
                self._on_change(snapshot)

        leadership = Leadership(
            self.node_id,
            segment,
            self.settings,
            self._config,
            clock=self._clock,
            on_change=changed,
            region=self.region,
            logger=self._log,
        )
        if self._inputs is not None:
            leadership.report(self._inputs)
        for peer in sorted(self._lost):
            leadership.peer_lost(peer)
        return leadership

    @property
    def fenced_at(self) -> float:
        """The current segment's ``Leadership.fenced_at``."""
        return self.current.fenced_at

    # -- what the runtime tells us -----------------------------------------------------------

    def move_to(self, segment: str) -> None:
        """Stand for election in ``segment`` from now on (returns at once; see the class)."""
        if segment != self._wanted:
            self._wanted = segment
            self._wake.set()

    def report(self, inputs: RankInputs) -> None:
        self._inputs = inputs
        self.current.report(inputs)

    def peer_lost(self, peer: str) -> None:
        self._lost.add(peer)
        self.current.peer_lost(peer)

    def peer_recovered(self, peer: str) -> None:
        self._lost.discard(peer)
        self.current.peer_recovered(peer)

    def peer_heard(self, peer: str) -> None:
        self.current.peer_heard(peer)

    # -- what the runtime asks ---------------------------------------------------------------

    @property
    def segment(self) -> str:
        """The segment this encoder stands in now (the one it moves to, once moved)."""
        return self.current.segment

    @property
    def _election(self) -> Election:
        return self.current.election

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Take part, moving as told, until :meth:`close`; never raises for etcd trouble."""
        self._running = asyncio.Event()
        try:
            while True:
                current = self.current
                task = asyncio.create_task(current.run(), name=f"leadership-{current.segment}")
                while True:
                    self._wake.clear()
                    if self._closing.is_set() or self._wanted != current.segment or task.done():
                        break
                    wake = asyncio.create_task(self._wake.wait(), name="leadership-move")
                    try:
                        await asyncio.wait({task, wake}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        wake.cancel()
                if self._closing.is_set():
                    await current.close(resign=self._resign, timeout=self._timeout)
                    await task
                    return
                self._log.info("leaving segment %s for segment %s", current.segment, self._wanted)
                await current.close()
                await task
                if self._closing.is_set():
                    return
                self.current = self._leadership(self._wanted)
                self.moves += 1
                if self._on_change is not None:
                    self._on_change(self.current.snapshot())  # nobody known to lead there yet
        finally:
            self._running.set()

    async def close(self, *, resign: bool = True, timeout: float = 2.0) -> None:
        """Stop taking part (resigning, as :meth:`Leadership.close`); returns once :meth:`run`
        has returned (a move under way is finished first, without joining the new segment)."""
        if self._closing.is_set():
            return
        self._resign, self._timeout = resign, timeout
        self._closing.set()
        self._wake.set()
        if self._running is None:  # run() never started
            await self.current.close(resign=resign, timeout=timeout)
        else:
            await self._running.wait()
