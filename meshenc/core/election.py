"""Segment leader election on a linearizable store, with fenced fast failover.

Theory of operation
-------------------
One :class:`Election` runs per encoder per segment. It never talks to etcd itself: the shell
feeds it what it observed (:class:`CandidatesObserved`, :class:`LeaderObserved`,
:class:`SuspicionsObserved`, :class:`ActObserved`, the mesh's :class:`PeerLost` /
:class:`PeerRecovered` / :class:`PeerHeard`, and :class:`EtcdLost` / :class:`EtcdConnected`),
steps it with :class:`~meshenc.core.machine.Tick` on a timer and with :class:`ShuttingDown` when
it stops, and carries out the actions :meth:`Election.ready` returns (in order) as etcd
requests; :mod:`meshenc.core.machine` states that convention. Every etcd write the election
asks for is a transaction whose guard the shell must apply exactly as the action states; the
election's safety rests on those guards, not on its own view being right.

*Candidacy.* Each member publishes its ranking inputs (confidence, latency, neighbours) under
its lease (:class:`PublishCandidacy`). The ranking is :func:`meshenc.core.leader.choose_leader`,
so every member that sees the same candidates picks the same leader.

*Claim.* With no leader key, the best-ranked live candidate claims at once
(:class:`ClaimLeadership`: create the leader key if absent, under the claimant's lease); any
other candidate claims after ``claim_grace`` (in case the best one's view differs). The leader
key's ``mod_revision`` is the leader's *fencing token*.

*Hysteresis.* A leader that sees a candidate better than itself by more than ``hysteresis``
for ``handover_dwell`` without a break hands over atomically (:class:`HandOver`: put the leader
key naming the successor, under the successor's lease, guarded by the leader key still
carrying the leader's token). Round-trip times on a busy host swing by more than the
hysteresis for a moment; without the dwell, such moments moved the lead back and forth.

*Fast failover.* Lease expiry takes seconds; the mesh notices a dead peer within a few frames
(a broken stream, or no ESP for ``silence_timeout``). A follower that loses the leader that way
publishes a suspicion of the leader's *tenure* (:class:`PublishSuspicion`, a key named by the
token, under the follower's lease) and withdraws it when the leader is heard again. Once a
majority of the *electorate* -- the other candidates that have the leader as a mesh neighbour
-- suspect the current tenure, the best-ranked live member takes over, the others only after
``claim_grace`` (:class:`TakeOver`: one transaction guarded by the leader key's
``mod_revision`` being the suspected token *and* every counted suspicion key existing, which
puts its own leader key and clears the suspicions; the shell then revokes the old leader's
lease).

*Acting and fencing.* Only a leader acts, and every act carries its token
(:class:`ActAsLeader`); in etcd an act is a write guarded by ``mod_revision(leader) ==
token``, so it lands only inside its author's tenure. Followers accept an act only if its token
is at least the highest token they have seen (:meth:`Election.admits`).

*etcd unavailable.* :class:`EtcdLost` keeps the last known leader and token and marks the
election degraded; no etcd action is emitted until :class:`EtcdConnected`, after which the
candidacy (and a standing suspicion) is published again and the observations start afresh.

Invariants:

1. Two leaders never act at once: an act lands only while the leader key carries its author's
   token, and a key has one value at a time. This holds whatever the election believes; the
   election only decides *when to try*.
2. A takeover never happens without a majority of the electorate suspecting the very tenure
   it ends: a suspicion names a token, and the takeover is guarded by each counted suspicion
   key and by the token.
3. Observations of the leader key never go backwards: one older (by store revision) than the
   newest applied is ignored, so a slow transaction answer cannot undo a newer watch event.
4. The election emits no etcd action while degraded and forgets no leader because etcd is
   away.
5. A write is not re-attempted within ``retry_interval`` of the same attempt, so a lost or
   slow answer cannot make the election flood etcd.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshenc.core.leader import DEFAULT_HYSTERESIS, DEFAULT_LATENCY_SCALE, Candidate, choose_leader
from meshenc.core.leader import score as rank_score
from meshenc.core.machine import Tick, check_time
from meshenc.core.votes import majority

__all__ = [
    "ActAsLeader",
    "ActObserved",
    "Action",
    "CandidacyInfo",
    "CandidatesObserved",
    "ClaimLeadership",
    "Election",
    "ElectionConfig",
    "ElectionSnapshot",
    "EtcdConnected",
    "EtcdLost",
    "Event",
    "HandOver",
    "LeaderObserved",
    "PeerHeard",
    "PeerLost",
    "PeerRecovered",
    "PublishCandidacy",
    "PublishSuspicion",
    "RankInputs",
    "RankInputsChanged",
    "Resign",
    "Role",
    "ShuttingDown",
    "SuspicionsObserved",
    "TakeOver",
    "WithdrawSuspicion",
]


class Role(enum.Enum):
    """What this member is in its segment, as far as it knows."""

    LEADER = "leader"
    FOLLOWER = "follower"
    #: No leader is known (none elected yet, or the last one is gone).
    LEADERLESS = "leaderless"


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Settings of one election. Durations in seconds.

    Attributes:
        hysteresis: score margin a challenger must exceed to take leadership from a live
            leader (see :func:`meshenc.core.leader.choose_leader`).
        latency_scale: see :func:`meshenc.core.leader.score`.
        fast_failover: suspect and take over a leader the mesh lost; when False, only the
            leader's lease expiry ends its tenure.
        act_interval: how often a leader repeats its fenced act (its heartbeat).
        retry_interval: the same write is not attempted again sooner than this.
        claim_grace: without a leader, members other than the best-ranked claim after this.
        silence_timeout: a peer that was heard and then sent nothing for this long is lost.
        handover_dwell: a challenger must stay better than the leader by the hysteresis this
            long, without a break, before the leader hands over.
        lone_witness_wait: when the electorate is a single member, its suspicion must have
            lasted this long before it takes over.
        republish_interval: ranking inputs are re-published at most this often...
        republish_margin: ...and only when their score moved by more than this.
    """

    hysteresis: float = DEFAULT_HYSTERESIS
    latency_scale: float = DEFAULT_LATENCY_SCALE
    fast_failover: bool = True
    act_interval: float = 0.1
    retry_interval: float = 0.25
    claim_grace: float = 0.5
    silence_timeout: float = 0.3
    handover_dwell: float = 3.0
    lone_witness_wait: float = 1.0
    republish_interval: float = 1.0
    republish_margin: float = DEFAULT_HYSTERESIS / 2

    def __post_init__(self) -> None:
        for name in (
            "act_interval",
            "retry_interval",
            "claim_grace",
            "silence_timeout",
            "handover_dwell",
            "lone_witness_wait",
            "republish_interval",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        if not (math.isfinite(self.republish_margin) and self.republish_margin >= 0.0):
            raise ValueError(f"republish_margin must be >= 0, got {self.republish_margin!r}")


@dataclass(frozen=True, slots=True)
class RankInputs:
    """What a member publishes about itself to be ranked.

    Attributes:
        confidence: self-assessed, in [0, 1].
        latency: seconds, >= 0 (the member's mean round-trip time to its mesh neighbours).
        neighbours: the member's mesh neighbours (they can notice its death quickly).
    """

    confidence: float
    latency: float
    neighbours: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Candidate's own checks give the messages; the id is a placeholder.
        Candidate("x", self.confidence, self.latency)


@dataclass(frozen=True, slots=True)
class CandidacyInfo:
    """One published candidacy as observed in etcd: ranking inputs and the member's lease."""

    inputs: RankInputs
    lease: int


# -- events (inputs) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CandidatesObserved:
    """The segment's published candidacies now (id → candidacy); replaces the last set."""

    candidates: Mapping[str, CandidacyInfo]


@dataclass(frozen=True, slots=True)
class LeaderObserved:
    """The leader key as of store revision ``revision``.

    Attributes:
        holder: the leader's id, or None when the key is absent.
        lease: the lease the key is bound to (0 when absent).
        token: the key's ``mod_revision``: the leader's fencing token (0 when absent).
        revision: the store revision at which this was true (a read's header revision, an
            event's revision); older observations than the newest applied are ignored.
    """

    holder: str | None
    lease: int
    token: int
    revision: int


@dataclass(frozen=True, slots=True)
class SuspicionsObserved:
    """Suspicion keys now: leader token → ids of the members suspecting that tenure."""

    suspicions: Mapping[int, frozenset[str]]


@dataclass(frozen=True, slots=True)
class ActObserved:
    """A leader's fenced act was seen (it raises the highest token this member has seen)."""

    holder: str
    token: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The mesh link to ``peer`` broke."""

    peer: str


@dataclass(frozen=True, slots=True)
class PeerRecovered:
    """The mesh link to ``peer`` is up again."""

    peer: str


@dataclass(frozen=True, slots=True)
class PeerHeard:
    """An ESP from ``peer`` arrived (a peer silent for ``silence_timeout`` counts as lost)."""

    peer: str


@dataclass(frozen=True, slots=True)
class RankInputsChanged:
    """This member's own ranking inputs, as measured now."""

    inputs: RankInputs


@dataclass(frozen=True, slots=True)
class EtcdLost:
    """etcd cannot be reached (requests fail, the watch broke)."""


@dataclass(frozen=True, slots=True)
class EtcdConnected:
    """etcd is reachable with a live lease; fresh observations follow."""


@dataclass(frozen=True, slots=True)
class ShuttingDown:
    """This member is stopping: a leader resigns (:class:`Resign`) if it still holds the key.

    Nothing else is decided on this event (no act, claim or vote on the way out).
    """


Event = (
    CandidatesObserved
    | LeaderObserved
    | SuspicionsObserved
    | ActObserved
    | PeerLost
    | PeerRecovered
    | PeerHeard
    | RankInputsChanged
    | EtcdLost
    | EtcdConnected
    | ShuttingDown
    | Tick
)


# -- actions (outputs) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishCandidacy:
    """Put this member's candidacy key (its ranking inputs) under its own lease."""

    inputs: RankInputs


@dataclass(frozen=True, slots=True)
class ClaimLeadership:
    """Create the leader key naming this member, under its lease, only if the key is absent."""


@dataclass(frozen=True, slots=True)
class HandOver:
    """If the leader key still carries ``token``: put it naming ``successor``, under
    ``successor_lease``."""

    token: int
    successor: str
    successor_lease: int


@dataclass(frozen=True, slots=True)
class Resign:
    """If the leader key still carries ``token``: delete it (clean shutdown)."""

    token: int


@dataclass(frozen=True, slots=True)
class PublishSuspicion:
    """Put this member's suspicion of the tenure ``token`` under its own lease."""

    token: int


@dataclass(frozen=True, slots=True)
class WithdrawSuspicion:
    """Delete this member's suspicion of the tenure ``token``."""

    token: int


@dataclass(frozen=True, slots=True)
class TakeOver:
    """One transaction: if the leader key carries ``token`` and every suspicion key of
    ``voters`` for ``token`` exists, put the leader key naming this member under its lease
    and delete the suspicions of ``token``. On success, revoke ``dead_lease``."""

    token: int
    voters: tuple[str, ...]
    dead_lease: int


@dataclass(frozen=True, slots=True)
class ActAsLeader:
    """Write the fenced act: only if the leader key still carries ``token``."""

    token: int


Action = (
    PublishCandidacy
    | ClaimLeadership
    | HandOver
    | Resign
    | PublishSuspicion
    | WithdrawSuspicion
    | TakeOver
    | ActAsLeader
)


@dataclass(frozen=True, slots=True)
class ElectionSnapshot:
    """What an operator (GetState) sees of the election."""

    role: Role
    leader: str | None
    token: int
    highest_token: int
    degraded: bool
    candidates: tuple[str, ...]
    lost_peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Leader:
    holder: str
    lease: int
    token: int


@dataclass(slots=True)
class _Peer:
    link_down: bool = False
    last_heard: float | None = None


@dataclass(slots=True)
class _Attempts:
    """When each kind of write was last attempted, and for which target."""

    at: dict[str, tuple[float, object]] = field(default_factory=dict)

    def allowed(self, kind: str, target: object, now: float, interval: float) -> bool:
        last = self.at.get(kind)
        return last is None or last[1] != target or now - last[0] >= interval

    def record(self, kind: str, target: object, now: float) -> None:
        self.at[kind] = (now, target)


class Election:
    """The leader election of one member of one segment (see the module docstring).

    Args:
        node_id: this member's id.
        config: the election's settings.
    """

    __slots__ = (
        "_actions",
        "_attempts",
        "_candidates",
        "_challenger",
        "_config",
        "_connected",
        "_highest_token",
        "_inputs",
        "_last_act",
        "_leader",
        "_leader_seen",
        "_leaderless_since",
        "_lost_since",
        "_my_suspicion",
        "_node_id",
        "_now",
        "_peers",
        "_published",
        "_suspicions",
    )

    def __init__(self, node_id: str, config: ElectionConfig | None = None) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        self._node_id = node_id
        self._config = config if config is not None else ElectionConfig()
        self._actions: list[Action] = []
        self._attempts = _Attempts()
        self._candidates: dict[str, CandidacyInfo] = {}
        self._connected = False
        self._highest_token = 0
        self._inputs: RankInputs | None = None
        self._published: tuple[RankInputs, float] | None = None
        self._last_act: float | None = None
        self._leader: _Leader | None = None
        self._leader_seen = 0
        self._leaderless_since: float | None = None
        self._lost_since: float | None = None
        self._my_suspicion: int | None = None
        #: The candidate that ranks better than this leader by the hysteresis, and since when.
        self._challenger: tuple[str, float] | None = None
        self._now: float | None = None
        self._peers: dict[str, _Peer] = {}
        self._suspicions: dict[int, frozenset[str]] = {}

    # -- queries -----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def config(self) -> ElectionConfig:
        return self._config

    @property
    def leader(self) -> str | None:
        """The last known leader (kept while etcd is away), or None."""
        return None if self._leader is None else self._leader.holder

    @property
    def token(self) -> int:
        """The last known leader's fencing token (0: no leader known)."""
        return 0 if self._leader is None else self._leader.token

    @property
    def degraded(self) -> bool:
        """True while etcd is unreachable (the last known leader is kept)."""
        return not self._connected

    @property
    def role(self) -> Role:
        if self._leader is None:
            return Role.LEADERLESS
        return Role.LEADER if self._leader.holder == self._node_id else Role.FOLLOWER

    def admits(self, token: int) -> bool:
        """Whether a leader's act carrying ``token`` may be followed.

        Only an act whose token is at least the highest this member has seen: a deposed
        leader that has not noticed yet carries an older token.
        """
        return token > 0 and token >= self._highest_token

    def lost(self, peer: str) -> bool:
        """Whether the mesh has lost ``peer`` (link down, or silent after being heard)."""
        state = self._peers.get(peer)
        if state is None:
            return False
        if state.link_down:
            return True
        return (
            state.last_heard is not None
            and self._now is not None
            and self._now - state.last_heard > self._config.silence_timeout
        )

    @property
    def lost_peers(self) -> tuple[str, ...]:
        """The peers the mesh has lost (``lost``), sorted: what a shell that logs losses
        asks many times a second, without the rest of a snapshot."""
        return tuple(sorted(p for p in self._peers if self.lost(p)))

    def snapshot(self) -> ElectionSnapshot:
        return ElectionSnapshot(
            role=self.role,
            leader=self.leader,
            token=self.token,
            highest_token=self._highest_token,
            degraded=self.degraded,
            candidates=tuple(sorted(self._candidates)),
            lost_peers=self.lost_peers,
        )

    def ready(self) -> list[Action]:
        """The actions decided since the last call, in the order they must be carried out."""
        actions, self._actions = self._actions, []
        return actions

    # -- inputs ------------------------------------------------------------------------------

    def step(self, now: float, event: Event) -> None:
        """Apply one event, then decide what to do (see :meth:`ready`).

        A :class:`~meshenc.core.machine.Tick` only lets time pass: silences, the leader's
        heartbeat, grace periods, retries. :class:`ShuttingDown` decides nothing but the
        resignation.
        """
        check_time(now)
        self._now = now
        match event:
            case ShuttingDown():
                self._resign()
                return
            case Tick():
                pass
            case CandidatesObserved(candidates):
                self._candidates = dict(candidates)
            case LeaderObserved():
                self._observe_leader(event)
            case SuspicionsObserved(suspicions):
                self._suspicions = dict(suspicions)
            case ActObserved(_, token):
                self._highest_token = max(self._highest_token, token)
            case PeerLost(peer):
                self._peers.setdefault(peer, _Peer()).link_down = True
            case PeerRecovered(peer):
                self._peers.setdefault(peer, _Peer()).link_down = False
            case PeerHeard(peer):
                state = self._peers.setdefault(peer, _Peer())
                state.last_heard = now
            case RankInputsChanged(inputs):
                self._inputs = inputs
            case EtcdLost():
                self._connected = False
            case EtcdConnected():
                self._connected = True
                # Everything published may have gone with an expired lease, and the
                # observations that follow are a fresh start.
                self._published = None
                self._my_suspicion = None
                self._leader_seen = 0
                self._attempts = _Attempts()
        self._decide(now)

    # -- decisions ---------------------------------------------------------------------------

    def _resign(self) -> None:
        """A leader deletes its leader key on the way out (if it still holds it)."""
        if self._leader is not None and self._leader.holder == self._node_id:
            self._actions.append(Resign(self._leader.token))

    def _observe_leader(self, event: LeaderObserved) -> None:
        if event.revision < self._leader_seen:
            return
        self._leader_seen = event.revision
        previous = self._leader
        if event.holder is None:
            self._leader = None
        else:
            self._leader = _Leader(event.holder, event.lease, event.token)
            self._highest_token = max(self._highest_token, event.token)
        if previous != self._leader:
            self._last_act = None
            self._lost_since = None
            self._leaderless_since = None

    def _live(self, *, exclude: str | None = None) -> list[Candidate]:
        """Observed candidates this member does not consider lost, as rank candidates."""
        return [
            Candidate(node, info.inputs.confidence, info.inputs.latency)
            for node, info in sorted(self._candidates.items())
            if node != exclude and (node == self._node_id or not self.lost(node))
        ]

    def _choose(self, candidates: list[Candidate], incumbent: str | None) -> str | None:
        return choose_leader(
            candidates,
            incumbent,
            hysteresis=self._config.hysteresis,
            latency_scale=self._config.latency_scale,
        )

    def _try(self, kind: str, target: object, now: float) -> bool:
        if not self._attempts.allowed(kind, target, now, self._config.retry_interval):
            return False
        self._attempts.record(kind, target, now)
        return True

    def _decide(self, now: float) -> None:
        if not self._connected or self._inputs is None:
            return
        self._publish_candidacy(now)
        if self._node_id not in self._candidates or self._leader_seen == 0:
            # Not ranked yet, or the leader key not read since connecting: nothing to claim,
            # vote on or take over.
            return
        leader = self._leader
        if leader is None:
            self._lead_if_leaderless(now)
        elif leader.holder == self._node_id:
            self._lead(now, leader)
        else:
            self._follow(now, leader)

    def _publish_candidacy(self, now: float) -> None:
        assert self._inputs is not None
        inputs = self._inputs
        if self._published is not None:
            before, at = self._published
            if before == inputs or now - at < self._config.republish_interval:
                return
            scale = self._config.latency_scale
            moved = abs(
                rank_score(Candidate("x", inputs.confidence, inputs.latency), scale)
                - rank_score(Candidate("x", before.confidence, before.latency), scale)
            )
            if moved <= self._config.republish_margin and before.neighbours == inputs.neighbours:
                return
        self._published = (inputs, now)
        self._actions.append(PublishCandidacy(inputs))

    def _lead_if_leaderless(self, now: float) -> None:
        if self._leaderless_since is None:
            self._leaderless_since = now
        if self._my_suspicion is not None:
            self._actions.append(WithdrawSuspicion(self._my_suspicion))
            self._my_suspicion = None
        best = self._choose(self._live(), None)
        waited = now - self._leaderless_since >= self._config.claim_grace
        if (best == self._node_id or waited) and self._try("claim", None, now):
            self._actions.append(ClaimLeadership())

    def _lead(self, now: float, leader: _Leader) -> None:
        if self._last_act is None or now - self._last_act >= self._config.act_interval:
            self._last_act = now
            self._actions.append(ActAsLeader(leader.token))
        chosen = self._choose(self._live(), self._node_id)
        if chosen is None or chosen == self._node_id:
            self._challenger = None
            return
        if self._challenger is None or self._challenger[0] != chosen:
            self._challenger = (chosen, now)
        if now - self._challenger[1] < self._config.handover_dwell:
            return
        successor = self._candidates[chosen]
        if self._try("handover", (leader.token, chosen), now):
            self._actions.append(HandOver(leader.token, chosen, successor.lease))

    def _follow(self, now: float, leader: _Leader) -> None:
        if self._my_suspicion is not None and self._my_suspicion != leader.token:
            self._actions.append(WithdrawSuspicion(self._my_suspicion))
            self._my_suspicion = None
        lost = self._config.fast_failover and self.lost(leader.holder)
        if not lost:
            self._lost_since = None
            if self._my_suspicion is not None:
                self._actions.append(WithdrawSuspicion(self._my_suspicion))
                self._my_suspicion = None
            return
        if self._lost_since is None:
            self._lost_since = now
        if self._my_suspicion is None:
            self._my_suspicion = leader.token
            self._actions.append(PublishSuspicion(leader.token))
        electorate = self._electorate(leader.holder)
        voters = self._suspicions.get(leader.token, frozenset()) & electorate
        if not electorate or len(voters) < majority(len(electorate)):
            return
        if len(electorate) == 1 and now - self._lost_since < self._config.lone_witness_wait:
            # One witness is one link's word: on a busy host a live leader goes quiet for a
            # few hundred ms now and then, and with no second witness that alone deposed it.
            return
        best = self._choose(self._live(exclude=leader.holder), None)
        waited = now - self._lost_since >= self._config.claim_grace
        if (best == self._node_id or waited) and self._try("takeover", leader.token, now):
            self._actions.append(TakeOver(leader.token, tuple(sorted(voters)), leader.lease))

    def _electorate(self, leader: str) -> frozenset[str]:
        """The other candidates that can notice the leader's death: its mesh neighbours.

        A candidacy that lists no neighbours (a mesh not known yet) counts as a neighbour of
        everyone, so a segment without topology information still reaches a majority.
        """
        return frozenset(
            node
            for node, info in self._candidates.items()
            if node != leader and (not info.inputs.neighbours or leader in info.inputs.neighbours)
        )
