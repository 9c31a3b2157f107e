"""A discrete-event simulator of the registry's Kademlia network, running the real core.

Every simulated node is a :class:`meshenc.core.kademlia.DhtNode`; lookups are the core's
:class:`~meshenc.core.kademlia.Lookup` state machines, fed by simulated messages. Only the
network and the clock are simulated: one heap of events ordered by virtual time (ties by
insertion order, so a run is a function of its configuration and seed).

A run, in virtual time:

1. Bootstrap ``nodes`` nodes with random 160-bit ids (see *Bootstrap* below).
2. Publish ``records`` records during ``publish_window`` seconds, each from a random node:
   a node lookup for its key, then a Store on the k closest (the publisher included when it
   is one of them).
3. Until ``duration``: ``churn × nodes`` churn events at uniform random times, each making a
   random live node leave silently (it stops answering, as after kill -9) and a new node join
   through a random live node; and ``lookups`` value lookups at uniform random times, each
   from a random live node for a random published key. Replicas republish their records every
   ``republish_interval`` seconds (with the core's jitter) to the k closest nodes of the
   moment, with the remaining ttl; the ttl outlasts the run, so nothing expires.

Messages take a one-way delay drawn uniformly from ``delay_ms``; a request to a node that has
left fails after ``rpc_timeout`` seconds (the simulator schedules that timeout only for
requests that will fail: every live node answers long before it). A joining node asks its
seed for nodes close to its own id and then refreshes every bucket farther than its closest
neighbour, as the Kademlia paper describes.

Bootstrap: ``"join"`` builds the network by real joins, one node after another (a node joins
once its predecessor's join finished). ``"fast"`` fills every table directly: bucket ``i`` of
a node gets up to ``k`` nodes drawn at random from all nodes whose ids fall in that bucket's
range (a contiguous range of the sorted ids). That is the table of a node that has heard of
every node, in a random order: the buckets near a node's own id (which are not full) hold the
same members as after joins; far buckets, which joins fill with whoever happened to be met
first, hold a random k of their range instead. It is a fast path for large networks, not a
replay of joins; the churn that follows runs real joins either way.

A lookup succeeds when it returns the record; its hops are the hop count of the node that
returned it (0 when the origin held the record itself).
"""

from __future__ import annotations

import bisect
import heapq
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from meshenc.core.kademlia import (
    ID_BITS,
    Contact,
    DhtConfig,
    DhtNode,
    Lookup,
    PingContact,
    RefreshBucket,
    RepublishRecord,
    random_id_in_bucket,
)

__all__ = ["Bootstrap", "DhtSimConfig", "DhtSimResult", "percentile", "run_dht"]

Bootstrap = Literal["fast", "join"]

_ADDRESS: Final = "sim"
"""Simulated nodes are reached by id; their address is never read."""


@dataclass(frozen=True, slots=True)
class DhtSimConfig:
    """One simulated run. Times in seconds of virtual time, delays in milliseconds."""

    nodes: int
    churn: float = 0.2
    lookups: int = 1000
    records: int = 200
    k: int = 20
    alpha: int = 3
    delay_ms: tuple[float, float] = (10.0, 100.0)
    rpc_timeout: float = 1.0
    duration: float = 600.0
    publish_window: float = 30.0
    republish_interval: float = 120.0
    bootstrap: Bootstrap = "fast"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError(f"nodes must be >= 2, got {self.nodes}")
        if not 0.0 <= self.churn <= 1.0:
            raise ValueError(f"churn must be in [0, 1], got {self.churn}")
        if self.lookups < 0 or self.records < 1:
            raise ValueError("lookups must be >= 0 and records >= 1")
        low, high = self.delay_ms
        if not 0.0 <= low <= high or high / 1000.0 * 2 >= self.rpc_timeout:
            raise ValueError("need 0 <= delay low <= high, and a round trip below rpc_timeout")
        if not 0.0 < self.publish_window < self.duration:
            raise ValueError("need 0 < publish_window < duration")
        if self.bootstrap not in ("fast", "join"):
            raise ValueError(f"bootstrap must be 'fast' or 'join', got {self.bootstrap!r}")
        DhtConfig(k=self.k, alpha=self.alpha)  # validates k and alpha


@dataclass(frozen=True, slots=True)
class DhtSimResult:
    """What a run measured."""

    config: DhtSimConfig
    lookups: int
    found: int
    hops: tuple[int, ...]
    """Hops of every successful lookup."""
    requests: tuple[int, ...]
    """Requests sent by every lookup."""
    latencies: tuple[float, ...]
    """Virtual seconds from start to end of every lookup."""
    joins: int
    leaves: int
    timeouts: int
    events: int
    wall_s: float
    bootstrap_s: float
    """Wall seconds spent building the initial network (part of ``wall_s``)."""
    replicas_at_end: float
    """Mean number of live nodes holding each record at the end of the run."""

    @property
    def success_rate(self) -> float:
        return self.found / self.lookups if self.lookups else 1.0

    @property
    def hops_median(self) -> float | None:
        return statistics.median(self.hops) if self.hops else None

    @property
    def hops_p99(self) -> float | None:
        return percentile(self.hops, 0.99)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.config.nodes,
            "churn": self.config.churn,
            "k": self.config.k,
            "alpha": self.config.alpha,
            "records": self.config.records,
            "bootstrap": self.config.bootstrap,
            "seed": self.config.seed,
            "lookups": self.lookups,
            "found": self.found,
            "success_rate": self.success_rate,
            "hops_median": self.hops_median,
            "hops_p99": self.hops_p99,
            "requests_median": statistics.median(self.requests) if self.requests else None,
            "latency_median_s": statistics.median(self.latencies) if self.latencies else None,
            "latency_p99_s": percentile(self.latencies, 0.99),
            "joins": self.joins,
            "leaves": self.leaves,
            "timeouts": self.timeouts,
            "events": self.events,
            "replicas_at_end": self.replicas_at_end,
            "wall_s": self.wall_s,
            "bootstrap_s": self.bootstrap_s,
            "config": asdict(self.config),
        }


def percentile(values: tuple[int, ...] | tuple[float, ...], q: float) -> float | None:
    """The ``q`` quantile by the nearest-rank method (a value that occurred), or None."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return float(ordered[int(rank) - 1])


@dataclass(slots=True)
class _Operation:
    """A lookup under way at one node, and what to do once it is done."""

    origin: int
    lookup: Lookup[int]
    started: float
    on_done: Callable[[_Operation, float], None]
    value_lookup: bool = False
    finished: bool = False


@dataclass(slots=True)
class _Stats:
    hops: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    found: int = 0
    timeouts: int = 0
    joins: int = 0
    leaves: int = 0


class _Network:
    """The simulated world: nodes, the event heap and the operations in flight."""

    def __init__(self, config: DhtSimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.dht_config = DhtConfig(
            k=config.k,
            alpha=config.alpha,
            republish_interval=config.republish_interval,
        )
        self.nodes: dict[int, DhtNode[int]] = {}
        self.alive: list[int] = []
        self._slot: dict[int, int] = {}
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.now = 0.0
        self.events = 0
        self.stats = _Stats()
        self.keys: list[int] = []
        self._low = config.delay_ms[0] / 1000.0
        self._span = (config.delay_ms[1] - config.delay_ms[0]) / 1000.0

    # -- plumbing ------------------------------------------------------------------------------

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (when, self._seq, action, args))

    def delay(self) -> float:
        return self._low + self._span * self.rng.random()

    def run_until(self, end: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= end:
            now, _, action, args = heapq.heappop(heap)
            self.now = now
            self.events += 1
            action(now, *args)

    def new_node(self, now: float) -> DhtNode[int]:
        node_id = self.rng.getrandbits(ID_BITS)
        while node_id in self.nodes:
            node_id = self.rng.getrandbits(ID_BITS)
        node: DhtNode[int] = DhtNode(Contact(node_id, _ADDRESS), self.dht_config, self.rng, now)
        self.nodes[node_id] = node
        self._slot[node_id] = len(self.alive)
        self.alive.append(node_id)
        return node

    def leave(self, node_id: int) -> None:
        """The node stops answering; it stays in others' tables until they notice."""
        slot = self._slot.pop(node_id)
        last = self.alive.pop()
        if last != node_id:
            self.alive[slot] = last
            self._slot[last] = slot

    def is_alive(self, node_id: int) -> bool:
        return node_id in self._slot

    def random_alive(self) -> int:
        return self.alive[int(self.rng.random() * len(self.alive))]

    # -- requests ------------------------------------------------------------------------------

    def start(self, op: _Operation, now: float) -> None:
        self.advance(op, now)

    def advance(self, op: _Operation, now: float) -> None:
        if op.finished:
            return
        if not self.is_alive(op.origin):
            op.finished = True  # its node left; nobody waits for the answer
            return
        for contact in op.lookup.next_requests():
            self.at(now + self.delay(), self._request_arrives, op, contact.node_id, now)
        if op.lookup.done:
            op.finished = True
            op.on_done(op, now)

    def _request_arrives(self, now: float, op: _Operation, callee_id: int, sent: float) -> None:
        if not self.is_alive(callee_id):
            self.at(sent + self.config.rpc_timeout, self._request_failed, op, callee_id)
            return
        callee = self.nodes[callee_id]
        caller = self.nodes[op.origin].own
        if op.value_lookup:
            answer = callee.handle_find_value(caller, op.lookup.target, now)
        else:
            answer = callee.handle_find_node(caller, op.lookup.target, now)
        self._send_pings(callee, now)
        self.at(now + self.delay(), self._answer_arrives, op, callee.own, answer)

    def _answer_arrives(self, now: float, op: _Operation, callee: Contact, answer: Any) -> None:
        if op.finished or not self.is_alive(op.origin):
            return
        origin = self.nodes[op.origin]
        origin.heard_from(callee, now)
        self._send_pings(origin, now)
        if isinstance(answer, list):
            op.lookup.answered(callee.node_id, answer)
        else:
            op.lookup.found(callee.node_id, answer.value)
        self.advance(op, now)

    def _request_failed(self, now: float, op: _Operation, callee_id: int) -> None:
        self.stats.timeouts += 1
        if not self.is_alive(op.origin):
            return
        self.nodes[op.origin].contact_failed(callee_id)
        op.lookup.failed(callee_id)
        self.advance(op, now)

    def _send_pings(self, node: DhtNode[int], now: float) -> None:
        for ping in node.drain_actions():
            self._ping(node, ping, now)

    def _ping(self, node: DhtNode[int], ping: PingContact, now: float) -> None:
        target = ping.contact.node_id
        if self.is_alive(target):
            self.at(now + 2 * self.delay(), self._ping_answered, node.own.node_id, ping.contact)
        else:
            self.at(now + self.config.rpc_timeout, self._ping_failed, node.own.node_id, target)

    def _ping_answered(self, now: float, node_id: int, contact: Contact) -> None:
        if self.is_alive(node_id):
            self.nodes[node_id].heard_from(contact, now)

    def _ping_failed(self, now: float, node_id: int, target: int) -> None:
        self.stats.timeouts += 1
        if self.is_alive(node_id):
            self.nodes[node_id].contact_failed(target)

    # -- stores and republication --------------------------------------------------------------

    def publish(
        self, now: float, origin: int, key: int, version: int, ttl: float, *, again: bool = False
    ) -> None:
        """A node lookup for ``key`` from ``origin``, then a Store on the k closest
        (``again``: a republication by a replica)."""
        if not self.is_alive(origin):
            return
        node = self.nodes[origin]

        def store_on_replicas(op: _Operation, when: float) -> None:
            replicas = node.replicas(op.lookup)
            if again:
                node.republished(key, replicas)
            for replica in replicas:
                if replica.node_id == origin:
                    self._store_arrives(when, origin, None, key, version, ttl - (when - now))
                else:
                    self.at(
                        when + self.delay(),
                        self._store_arrives,
                        replica.node_id,
                        node.own,
                        key,
                        version,
                        ttl - (when - now),
                    )

        self.start(_Operation(origin, node.start_lookup(key, now), now, store_on_replicas), now)

    def _store_arrives(
        self,
        now: float,
        node_id: int,
        sender: Contact | None,
        key: int,
        version: int,
        ttl: float,
    ) -> None:
        if not self.is_alive(node_id) or ttl <= 0:
            return
        node = self.nodes[node_id]
        outcome = node.handle_store(sender, key, version, ttl, key, now)
        self._send_pings(node, now)
        if outcome.stored:
            due = node.store.republish_at(key)
            if due is not None:
                self.at(due, self._tick, node_id)

    def _tick(self, now: float, node_id: int) -> None:
        if not self.is_alive(node_id):
            return
        node = self.nodes[node_id]
        for action in node.tick(now):
            if isinstance(action, RepublishRecord):
                record = action.record
                self.publish(
                    now, node_id, record.key, record.version, record.remaining(now), again=True
                )
            elif isinstance(action, RefreshBucket):
                self.refresh(now, node_id, action.target)
        dates = [node.store.republish_at(key) for key in node.store]
        upcoming = [due for due in dates if due is not None and due > now]
        if upcoming:
            self.at(min(upcoming), self._tick, node_id)

    # -- joins ---------------------------------------------------------------------------------

    def refresh(self, now: float, origin: int, target: int) -> None:
        node = self.nodes[origin]
        self.start(_Operation(origin, node.start_lookup(target, now), now, _ignore), now)

    def join(self, now: float, seed: int, on_joined: Callable[[float], None] | None) -> None:
        """A new node joins through ``seed``: a lookup of its own id, then bucket refreshes."""
        node = self.new_node(now)
        self.stats.joins += 1
        node.heard_from(self.nodes[seed].own, now)
        own = node.own.node_id

        def refresh_far_buckets(op: _Operation, when: float) -> None:
            closest = op.lookup.closest() or node.table.closest(own, 1)
            if closest:
                nearest = (own ^ closest[0].node_id).bit_length() - 1
                for index in range(nearest + 1, ID_BITS):
                    self.refresh(when, own, random_id_in_bucket(own, index, self.rng))
            if on_joined is not None:
                on_joined(when)

        self.start(_Operation(own, node.start_lookup(own, now), now, refresh_far_buckets), now)

    def churn(self, now: float) -> None:
        leaving = self.random_alive()
        self.leave(leaving)
        self.stats.leaves += 1
        self.join(now, self.random_alive(), None)

    # -- measured lookups ----------------------------------------------------------------------

    def measured_lookup(self, now: float) -> None:
        origin = self.random_alive()
        key = self.keys[int(self.rng.random() * len(self.keys))]
        node = self.nodes[origin]
        if node.store.get(key, now) is not None:
            self._record(found=True, hops=0, requests=0, latency=0.0)
            return

        def measured(op: _Operation, when: float) -> None:
            lookup = op.lookup
            self._record(
                found=lookup.value is not None,
                hops=lookup.hops,
                requests=lookup.requests_sent,
                latency=when - op.started,
            )

        lookup = node.start_lookup(key, now, find_value=True)
        self.start(_Operation(origin, lookup, now, measured, value_lookup=True), now)

    def _record(self, *, found: bool, hops: int, requests: int, latency: float) -> None:
        stats = self.stats
        stats.requests.append(requests)
        stats.latencies.append(latency)
        if found:
            stats.found += 1
            stats.hops.append(hops)

    # -- bootstrap -----------------------------------------------------------------------------

    def bootstrap_fast(self) -> None:
        """Fill every table from the sorted ids (see the module docstring)."""
        for _ in range(self.config.nodes):
            self.new_node(0.0)
        ordered = sorted(self.nodes)
        k = self.config.k
        sample = self.rng.sample
        for own, node in self.nodes.items():
            for index in range(ID_BITS - 1, -1, -1):
                subtree = (own >> (index + 1)) << (index + 1)
                first = bisect.bisect_left(ordered, subtree)
                if bisect.bisect_left(ordered, subtree + (2 << index), first) - first <= 1:
                    break  # only this node below: every closer bucket is empty
                low = subtree | ((((own >> index) & 1) ^ 1) << index)
                start = bisect.bisect_left(ordered, low, first)
                stop = bisect.bisect_left(ordered, low + (1 << index), start)
                members = ordered[start:stop]
                if len(members) > k:
                    members = sample(members, k)
                for member in members:
                    node.table.seen(self.nodes[member].own, 0.0)

    def bootstrap_join(self) -> None:
        """Build the network by joins, one after another, from a first node."""
        self.new_node(0.0)
        remaining = self.config.nodes - 1

        def next_join(now: float) -> None:
            nonlocal remaining
            if remaining > 0:
                remaining -= 1
                self.join(now, self.random_alive(), next_join)

        next_join(0.0)
        self.run_until(float("inf"))
        self.stats.joins = 0


def _ignore(_op: _Operation, _when: float) -> None:
    return None


def run_dht(config: DhtSimConfig) -> DhtSimResult:
    """Simulate one run (see the module docstring) and measure its value lookups."""
    wall_start = time.perf_counter()
    net = _Network(config)
    if config.bootstrap == "fast":
        net.bootstrap_fast()
    else:
        net.bootstrap_join()
    bootstrap_s = time.perf_counter() - wall_start
    # Virtual time restarts after a join bootstrap: everything below is relative to it.
    base = net.now
    rng = net.rng
    window = config.publish_window
    ttl = 2 * config.duration + window
    for _ in range(config.records):
        key = rng.getrandbits(ID_BITS)
        net.keys.append(key)
        net.at(base + rng.random() * window, _publish_from_random, net, key, ttl)
    span = config.duration - window
    for _ in range(round(config.churn * config.nodes)):
        net.at(base + window + rng.random() * span, _churn_event, net)
    for _ in range(config.lookups):
        net.at(base + window + rng.random() * span, _lookup_event, net)
    net.run_until(base + config.duration)
    # Let the lookups still under way finish; no new work starts (time stops at duration
    # for churn and lookups, which were all scheduled before it).
    net.run_until(base + config.duration + 10 * config.rpc_timeout)
    replicas = [
        sum(
            1
            for node_id in net.alive
            if net.nodes[node_id].store.get(key, base + config.duration) is not None
        )
        for key in net.keys
    ]
    stats = net.stats
    return DhtSimResult(
        config=config,
        lookups=len(stats.requests),
        found=stats.found,
        hops=tuple(stats.hops),
        requests=tuple(stats.requests),
        latencies=tuple(stats.latencies),
        joins=stats.joins,
        leaves=stats.leaves,
        timeouts=stats.timeouts,
        events=net.events,
        wall_s=time.perf_counter() - wall_start,
        bootstrap_s=bootstrap_s,
        replicas_at_end=statistics.fmean(replicas) if replicas else 0.0,
    )


def _publish_from_random(now: float, net: _Network, key: int, ttl: float) -> None:
    net.publish(now, net.random_alive(), key, 1, ttl)


def _churn_event(now: float, net: _Network) -> None:
    net.churn(now)


def _lookup_event(now: float, net: _Network) -> None:
    net.measured_lookup(now)
