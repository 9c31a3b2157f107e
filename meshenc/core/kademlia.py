"""Kademlia: node ids and the XOR metric, k-bucket routing tables, iterative lookups, records.

Theory of operation
-------------------
Registry nodes and record keys share one 160-bit id space. The distance between two ids is
their XOR read as an unsigned integer (:func:`distance`); a record lives on the ``k`` nodes
whose ids are closest to its key, ``key_for(encoder_id)`` = SHA-1 of the encoder id. Ids are
``int`` inside the core (XOR and comparison are single operations) and 20 big-endian bytes on
the wire (:func:`id_from_bytes`, :func:`id_to_bytes`).

:class:`RoutingTable` keeps, for each bit position ``i``, a bucket of at most ``k`` contacts
whose distance from the owner has its highest set bit at ``i`` (:func:`bucket_index`). A
bucket is ordered least-recently seen first. A contact heard from moves to the tail; a
newcomer to a full bucket goes to that bucket's replacement cache, and if the bucket's
least-recently seen contact has been silent for ``ping_after`` seconds the table asks its
caller to ping it (:class:`PingContact`): an answer keeps the old contact (long-lived nodes
are the likeliest to stay), a failure evicts it and promotes the freshest replacement. A
contact whose requests fail is evicted at once when a replacement is waiting, otherwise after
``max_failures`` consecutive failures.

:class:`Lookup` is the iterative lookup as a state machine, driven by its caller: it is seeded
with the caller's closest contacts; :meth:`Lookup.next_requests` names the contacts to ask
next (at most ``alpha`` in flight, always the closest not yet asked among the ``k`` closest
live candidates); the caller feeds back each answer (:meth:`Lookup.answered` with the nodes it
returned, :meth:`Lookup.found` with a record) or failure (:meth:`Lookup.failed`, a timeout or
an error). It is done when a value was found (value lookups), or when the ``k`` closest
candidates that have not failed have all answered and nothing is in flight. Every candidate
carries a hop count: 1 for the seeds, one more than the node that first named it for the
rest; the lookup's :attr:`Lookup.hops` is the hop count of the node that returned the value
(or the deepest node among the ``k`` closest for node lookups).

:class:`RecordStore` keeps records under their key with an absolute expiry. A record replaces
the stored one only with a strictly higher version; an expired record counts as absent. Every
stored record is due for republication to the ``k`` closest nodes after
``republish_interval`` seconds (with random jitter, so that the replicas do not all republish
at once); receiving the same version from another replica pushes that date back, since that
replica has just republished it. A node that republishes and finds itself no longer among the
``k`` closest (nodes joined nearer the key) hands the record over: it stops republishing it
and serves it until it expires. Republication carries the *remaining* time to live, so a
record whose owner stopped refreshing it dies everywhere when its original ttl runs out.

:class:`DhtNode` joins the three for one registry node: it answers requests (updating its
table from every sender that is a registry node), starts lookups seeded from its table, and
on :meth:`DhtNode.tick` expires records and returns the periodic work: bucket refreshes (a
lookup of a random id in every bucket no lookup touched for ``bucket_refresh_interval``
seconds) and record republication. Pings the table asks for are queued and drained with
:meth:`DhtNode.drain_actions`.

Invariants:

1. Deterministic: the same inputs (including ``now`` and the injected randomness) give the
   same table, lookup order and actions. Ties in distance cannot happen between distinct ids.
2. A bucket never holds more than ``k`` contacts, never the owner, never one id twice, and
   every contact in bucket ``i`` has ``bucket_index(owner, id) == i``.
3. A lookup never has more than ``alpha`` requests in flight, never asks a node twice, and
   never asks the id it excludes (its owner).
4. A record store never holds a record of lower version than one it held before under the
   same key, unless that one had expired.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_K",
    "ID_BITS",
    "ID_BYTES",
    "MAX_K",
    "Action",
    "Contact",
    "DhtConfig",
    "DhtNode",
    "Lookup",
    "PingContact",
    "Randomness",
    "RecordStore",
    "RefreshBucket",
    "RepublishRecord",
    "RoutingTable",
    "StoreOutcome",
    "StoredRecord",
    "bucket_index",
    "distance",
    "id_from_bytes",
    "id_to_bytes",
    "key_for",
    "random_id_in_bucket",
]

ID_BITS = 160
"""Bits in a node id or record key."""
ID_BYTES = ID_BITS // 8
"""Bytes in a node id or record key on the wire."""
DEFAULT_K = 20
"""Bucket size and replication factor (the paper's value)."""
DEFAULT_ALPHA = 3
"""Requests a lookup keeps in flight (the paper's value)."""
MAX_K = 64
"""Largest k: a response lists at most this many nodes."""

V = TypeVar("V")


class Randomness(Protocol):
    """The random source the core is given (``random.Random`` fits); the core owns none."""

    def getrandbits(self, k: int, /) -> int: ...

    def random(self) -> float: ...


# --- ids and the metric -----------------------------------------------------------------------


def key_for(encoder_id: str) -> bytes:
    """The DHT key of an encoder's record: SHA-1 of its id (UTF-8), 20 bytes."""
    return hashlib.sha1(encoder_id.encode("utf-8"), usedforsecurity=False).digest()


def id_from_bytes(raw: bytes) -> int:
    """A 20-byte wire id as the core's integer.

    Raises:
        ValueError: when ``raw`` is not exactly 20 bytes.
    """
    if len(raw) != ID_BYTES:
        raise ValueError(f"a node id or key is exactly {ID_BYTES} bytes, got {len(raw)}")
    return int.from_bytes(raw, "big")


def id_to_bytes(node_id: int) -> bytes:
    """The core's integer id as 20 big-endian bytes.

    Raises:
        ValueError: when ``node_id`` is negative or has more than 160 bits.
    """
    if not 0 <= node_id < 1 << ID_BITS:
        raise ValueError(f"a node id is an integer in [0, 2^{ID_BITS}), got {node_id}")
    return node_id.to_bytes(ID_BYTES, "big")


def distance(a: int, b: int) -> int:
    """The Kademlia distance: XOR of the two ids, as an unsigned integer."""
    return a ^ b


def bucket_index(own: int, other: int) -> int:
    """The bucket of ``other`` in ``own``'s table: the highest bit in which the ids differ.

    Raises:
        ValueError: when the ids are equal (a node has no bucket for itself).
    """
    if own == other:
        raise ValueError("a node has no bucket for its own id")
    return (own ^ other).bit_length() - 1


def random_id_in_bucket(own: int, index: int, rng: Randomness) -> int:
    """A random id that falls into bucket ``index`` of ``own``'s table (for bucket refresh)."""
    if not 0 <= index < ID_BITS:
        raise ValueError(f"bucket index must be in [0, {ID_BITS}), got {index}")
    high = (own >> (index + 1)) << (index + 1)
    flipped = (((own >> index) & 1) ^ 1) << index
    return high | flipped | rng.getrandbits(index)


# --- configuration and actions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    """A registry node as others know it: its id and where it serves."""

    node_id: int
    address: str


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """The parameters of one Kademlia network; every node of it should use the same.

    Attributes:
        k: bucket size and replication factor, 1..64.
        alpha: requests in flight per lookup, 1..k.
        ping_after: seconds of silence after which a full bucket's least-recently seen
            contact is pinged before a newcomer may take its place.
        max_failures: consecutive failures after which a contact is evicted even when no
            replacement is waiting.
        bucket_refresh_interval: seconds without a lookup in a bucket's range after which
            the bucket is refreshed.
        republish_interval: seconds after which a node republishes a record it holds to
            the k closest nodes (unless another replica did so meanwhile).
        republish_jitter: fraction of ``republish_interval`` drawn at random on top of it,
            so that the replicas of a record do not republish at the same moment.
    """

    k: int = DEFAULT_K
    alpha: int = DEFAULT_ALPHA
    ping_after: float = 900.0
    max_failures: int = 3
    bucket_refresh_interval: float = 3600.0
    republish_interval: float = 3600.0
    republish_jitter: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in [1, {MAX_K}], got {self.k}")
        if not 1 <= self.alpha <= self.k:
            raise ValueError(f"alpha must be in [1, k={self.k}], got {self.alpha}")
        if self.max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {self.max_failures}")
        for name in ("ping_after", "bucket_refresh_interval", "republish_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        if not 0.0 <= self.republish_jitter <= 1.0:
            raise ValueError(f"republish_jitter must be in [0, 1], got {self.republish_jitter}")


@dataclass(frozen=True, slots=True)
class PingContact:
    """Ping this contact; report the answer with ``heard_from`` or the failure with
    ``contact_failed``. Decides whether it keeps its bucket slot."""

    contact: Contact


@dataclass(frozen=True, slots=True)
class RefreshBucket:
    """Run a node lookup for ``target`` (a random id in a bucket nobody looked into lately)."""

    target: int


@dataclass(frozen=True, slots=True)
class RepublishRecord(Generic[V]):
    """Store ``record`` on the k closest nodes to its key, with its remaining ttl."""

    record: StoredRecord[V]


Action = PingContact | RefreshBucket | RepublishRecord[V]
"""What a :class:`DhtNode` asks its caller to do."""


# --- routing table ----------------------------------------------------------------------------


class _Entry:
    """A contact in a bucket, with what the table knows of its liveness."""

    __slots__ = ("contact", "failures", "last_seen")

    def __init__(self, contact: Contact, last_seen: float) -> None:
        self.contact = contact
        self.last_seen = last_seen
        self.failures = 0


class RoutingTable:
    """The k-buckets of one node (see the module's theory of operation).

    Args:
        own_id: the owner's id; never stored.
        config: k, ping_after, max_failures, bucket_refresh_interval.
        now: creation time; buckets count as refreshed then.
    """

    __slots__ = (
        "_buckets",
        "_config",
        "_entries",
        "_lowest",
        "_own",
        "_pinging",
        "_refreshed",
        "_spares",
    )

    def __init__(self, own_id: int, config: DhtConfig, now: float) -> None:
        self._own = own_id
        self._config = config
        # dicts keep insertion order: first = least recently seen.
        self._buckets: list[dict[int, _Entry]] = [{} for _ in range(ID_BITS)]
        self._spares: list[dict[int, _Entry]] = [{} for _ in range(ID_BITS)]
        self._pinging: dict[int, int] = {}
        self._refreshed = [now] * ID_BITS
        #: Every entry of every bucket, by id.
        self._entries: dict[int, _Entry] = {}
        #: The closest non-empty bucket (``ID_BITS`` while the table is empty).
        self._lowest = ID_BITS

    @property
    def own_id(self) -> int:
        return self._own

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def contacts(self) -> Iterator[Contact]:
        """Every contact, bucket by bucket from the closest, least recently seen first."""
        for bucket in self._buckets:
            for entry in bucket.values():
                yield entry.contact

    def bucket(self, index: int) -> list[Contact]:
        """Bucket ``index``, least recently seen first."""
        return [entry.contact for entry in self._buckets[index].values()]

    def replacements(self, index: int) -> list[Contact]:
        """Bucket ``index``'s replacement cache, oldest first."""
        return [entry.contact for entry in self._spares[index].values()]

    def seen(self, contact: Contact, now: float) -> PingContact | None:
        """``contact`` was heard from (a request from it, or an answer by it).

        Returns:
            A ping to send when the contact's bucket is full and its least recently seen
            contact has been silent for ``ping_after`` seconds (and no ping is under way).
        """
        node_id = contact.node_id
        if node_id == self._own:
            return None
        index = (self._own ^ node_id).bit_length() - 1
        bucket = self._buckets[index]
        entry = bucket.pop(node_id, None)
        if entry is not None:
            entry.contact = contact
            entry.last_seen = now
            entry.failures = 0
            bucket[node_id] = entry
            if self._pinging and self._pinging.get(index) == node_id:
                del self._pinging[index]
            return None
        if len(bucket) < self._config.k:
            self._spares[index].pop(node_id, None)
            bucket[node_id] = self._entries[node_id] = _Entry(contact, now)
            self._lowest = min(self._lowest, index)
            return None
        spares = self._spares[index]
        spare = spares.pop(node_id, None) or _Entry(contact, now)
        spare.contact, spare.last_seen = contact, now
        spares[node_id] = spare
        if len(spares) > self._config.k:
            del spares[next(iter(spares))]
        if index in self._pinging:
            return None
        oldest = next(iter(bucket.values()))
        if now - oldest.last_seen < self._config.ping_after:
            return None
        self._pinging[index] = oldest.contact.node_id
        return PingContact(oldest.contact)

    def failed(self, node_id: int) -> None:
        """A request to ``node_id`` failed (timeout or error); it may lose its slot."""
        if node_id == self._own:
            return
        index = (self._own ^ node_id).bit_length() - 1
        spares = self._spares[index]
        spares.pop(node_id, None)
        bucket = self._buckets[index]
        entry = bucket.get(node_id)
        if entry is None:
            return
        if self._pinging.get(index) == node_id:
            del self._pinging[index]
        entry.failures += 1
        if not spares and entry.failures < self._config.max_failures:
            return
        del bucket[node_id]
        del self._entries[node_id]
        if spares:
            newest = next(reversed(spares))
            bucket[newest] = self._entries[newest] = spares.pop(newest)
        elif not bucket and index == self._lowest:
            self._rescan_lowest()

    def closest(self, target: int, count: int, *, exclude: int | None = None) -> list[Contact]:
        """Up to ``count`` contacts closest to ``target``, closest first.

        Buckets are visited in distance order rather than sorting the whole table: bucket
        ``i = bucket_index(own, target)`` holds everything closer than ``2^i``, buckets below
        ``i`` everything in ``[2^i, 2^(i+1))``, and each bucket above ``i`` a range of its own.
        """
        by_distance = target.__xor__
        chosen: list[int] = []
        for ids in self._groups(target):
            if exclude is not None and exclude in ids:
                ids.remove(exclude)
            ids.sort(key=by_distance)
            chosen.extend(ids)
            if len(chosen) >= count:
                del chosen[count:]
                break
        entries = self._entries
        return [entries[node_id].contact for node_id in chosen]

    def _groups(self, target: int) -> Iterator[list[int]]:
        """The table's ids in groups of increasing distance from ``target`` (see closest)."""
        buckets = self._buckets
        if target == self._own:
            for bucket in buckets:
                if bucket:
                    yield list(bucket)
            return
        index = (self._own ^ target).bit_length() - 1
        if buckets[index]:
            yield list(buckets[index])
        below = [node_id for bucket in buckets[self._lowest : index] for node_id in bucket]
        if below:
            yield below
        for bucket in buckets[index + 1 :]:
            if bucket:
                yield list(bucket)

    def _rescan_lowest(self) -> None:
        self._lowest = next((i for i, bucket in enumerate(self._buckets) if bucket), ID_BITS)

    def touched(self, target: int, now: float) -> None:
        """A lookup for ``target`` ran: its bucket counts as refreshed."""
        if target != self._own:
            self._refreshed[(self._own ^ target).bit_length() - 1] = now

    def stale_buckets(self, now: float) -> list[int]:
        """Buckets to refresh: from the closest non-empty one outwards, those no lookup
        touched for ``bucket_refresh_interval`` seconds. (The buckets closer than the closest
        neighbour would not exist in the paper's split-bucket tree.)"""
        interval = self._config.bucket_refresh_interval
        if now - min(self._refreshed) < interval:
            return []
        return [i for i in range(self._lowest, ID_BITS) if now - self._refreshed[i] >= interval]


# --- lookup -----------------------------------------------------------------------------------


class _Asked(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    ANSWERED = "answered"
    FAILED = "failed"


class _Candidate:
    __slots__ = ("contact", "hop", "state")

    def __init__(self, contact: Contact, hop: int) -> None:
        self.contact = contact
        self.hop = hop
        self.state = _Asked.NEW


class Lookup(Generic[V]):
    """One iterative lookup (see the module's theory of operation).

    Args:
        target: the id or key looked up.
        seeds: the caller's closest known contacts to ``target``.
        k: how many closest nodes the lookup converges on.
        alpha: requests in flight at most.
        find_value: stop as soon as a node returns a value.
        exclude: an id never to ask or return (the caller's own).
    """

    __slots__ = (
        "_alpha",
        "_candidates",
        "_done",
        "_exclude",
        "_failures",
        "_find_value",
        "_in_flight",
        "_k",
        "_order",
        "_sent",
        "_target",
        "_value",
        "_value_from",
    )

    def __init__(
        self,
        target: int,
        seeds: Iterable[Contact],
        *,
        k: int = DEFAULT_K,
        alpha: int = DEFAULT_ALPHA,
        find_value: bool = False,
        exclude: int | None = None,
    ) -> None:
        if not 1 <= alpha <= k:
            raise ValueError(f"need 1 <= alpha <= k, got alpha={alpha}, k={k}")
        self._target = target
        self._k = k
        self._alpha = alpha
        self._find_value = find_value
        self._exclude = exclude
        self._candidates: dict[int, _Candidate] = {}
        # (distance, candidate): XOR distances to one target are unique, so the candidate
        # itself is never compared.
        self._order: list[tuple[int, _Candidate]] = []
        self._in_flight = 0
        self._sent = 0
        self._failures = 0
        self._value: V | None = None
        self._value_from: _Candidate | None = None
        self._done = False
        self._add(seeds, hop=1)
        self._update_done()

    @property
    def target(self) -> int:
        return self._target

    @property
    def done(self) -> bool:
        return self._done

    @property
    def value(self) -> V | None:
        """The value found (value lookups), else None."""
        return self._value

    @property
    def value_from(self) -> Contact | None:
        """The node that returned the value."""
        return None if self._value_from is None else self._value_from.contact

    @property
    def requests_sent(self) -> int:
        return self._sent

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def hops(self) -> int:
        """The value's hop count, or the deepest hop among the k closest that answered."""
        if self._value_from is not None:
            return self._value_from.hop
        return max((c.hop for c in self._answered()), default=0)

    def closest(self) -> list[Contact]:
        """The k closest nodes that answered, closest first."""
        return [c.contact for c in self._answered()]

    def next_requests(self) -> list[Contact]:
        """The contacts to ask now; they count as in flight until answered or failed."""
        if self._done:
            return []
        room = self._alpha - self._in_flight
        picks: list[_Candidate] = []
        live = 0
        for _, candidate in self._order:
            state = candidate.state
            if state is _Asked.FAILED:
                continue
            live += 1
            if state is _Asked.NEW and len(picks) < room:
                picks.append(candidate)
            if live >= self._k or len(picks) >= room:
                break
        for candidate in picks:
            candidate.state = _Asked.WAITING
        self._in_flight += len(picks)
        self._sent += len(picks)
        return [c.contact for c in picks]

    def answered(self, node_id: int, contacts: Iterable[Contact]) -> None:
        """``node_id`` answered with the nodes it knows closest to the target."""
        candidate = self._settle(node_id, _Asked.ANSWERED)
        if candidate is not None:
            self._add(contacts, hop=candidate.hop + 1)
            self._update_done()

    def found(self, node_id: int, value: V) -> None:
        """``node_id`` answered with the value; a value lookup is then done."""
        candidate = self._settle(node_id, _Asked.ANSWERED)
        if candidate is None:
            return
        if self._find_value and self._value_from is None:
            self._value, self._value_from = value, candidate
        self._update_done()

    def failed(self, node_id: int) -> None:
        """The request to ``node_id`` failed (timeout, error, invalid answer)."""
        if self._settle(node_id, _Asked.FAILED) is not None:
            self._failures += 1
            self._update_done()

    def _settle(self, node_id: int, state: _Asked) -> _Candidate | None:
        """Mark an in-flight request settled; None for an unsolicited or late answer."""
        candidate = self._candidates.get(node_id)
        if candidate is None or candidate.state is not _Asked.WAITING:
            return None
        candidate.state = state
        self._in_flight -= 1
        return candidate

    def _add(self, contacts: Iterable[Contact], hop: int) -> None:
        """Add the contacts not known yet, at ``hop`` (a candidate keeps the hop of the node
        that first named it)."""
        candidates, exclude = self._candidates, self._exclude
        fresh = [c for c in contacts if c.node_id not in candidates and c.node_id != exclude]
        order, target = self._order, self._target
        for contact in fresh:
            node_id = contact.node_id
            if node_id not in candidates:  # an answer may name a node twice
                candidate = candidates[node_id] = _Candidate(contact, hop)
                bisect.insort(order, (node_id ^ target, candidate))

    def _answered(self) -> list[_Candidate]:
        result: list[_Candidate] = []
        for _, candidate in self._order:
            if candidate.state is _Asked.ANSWERED:
                result.append(candidate)
                if len(result) >= self._k:
                    break
        return result

    def _update_done(self) -> None:
        if self._done:
            return
        if self._value_from is not None:
            self._done = True
            return
        if self._in_flight:
            return
        live = 0
        for _, candidate in self._order:
            state = candidate.state
            if state is _Asked.FAILED:
                continue
            if state is _Asked.NEW:
                return
            live += 1
            if live >= self._k:
                break
        self._done = True


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRecord(Generic[V]):
    """A record as a node holds it: the value is opaque to the core."""

    key: int
    version: int
    expires_at: float
    value: V

    def remaining(self, now: float) -> float:
        """Seconds of ttl left at ``now`` (<= 0 once expired)."""
        return self.expires_at - now


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The answer to a store: whether the offered record is now held, and the held version."""

    stored: bool
    current_version: int


class _Slot(Generic[V]):
    __slots__ = ("record", "republish_at")

    def __init__(self, record: StoredRecord[V], republish_at: float) -> None:
        self.record = record
        self.republish_at = republish_at


class RecordStore(Generic[V]):
    """Records by key, with the version rule, expiry and republication dates.

    Args:
        republish_interval: seconds after which a held record is due for republication.
        jitter: fraction of the interval added at random to each date.
        rng: draws the jitter.
    """

    __slots__ = ("_interval", "_jitter", "_rng", "_slots")

    def __init__(self, republish_interval: float, jitter: float, rng: Randomness) -> None:
        self._interval = republish_interval
        self._jitter = jitter
        self._rng = rng
        self._slots: dict[int, _Slot[V]] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[int]:
        """The keys held (a snapshot: the store may change while it is read)."""
        return iter(list(self._slots))

    def _next_republish(self, now: float) -> float:
        return now + self._interval * (1.0 + self._jitter * self._rng.random())

    def put(self, key: int, version: int, ttl: float, value: V, now: float) -> StoreOutcome:
        """Offer a record; it is stored only over nothing, an expired record or a lower version.

        Raises:
            ValueError: for a version < 1 or a ttl that is not positive and finite.
        """
        if version < 1:
            raise ValueError(f"record version must be >= 1, got {version}")
        if not (math.isfinite(ttl) and ttl > 0.0):
            raise ValueError(f"record ttl must be positive and finite, got {ttl!r}")
        slot = self._slots.get(key)
        if slot is not None and slot.record.expires_at > now:
            held = slot.record.version
            if version <= held:
                if version == held:
                    # Another replica just republished it to the k closest: no need to.
                    slot.republish_at = max(slot.republish_at, self._next_republish(now))
                return StoreOutcome(stored=False, current_version=held)
        record = StoredRecord(key=key, version=version, expires_at=now + ttl, value=value)
        self._slots[key] = _Slot(record, self._next_republish(now))
        return StoreOutcome(stored=True, current_version=version)

    def get(self, key: int, now: float) -> StoredRecord[V] | None:
        """The live record under ``key``, or None."""
        slot = self._slots.get(key)
        if slot is None or slot.record.expires_at <= now:
            return None
        return slot.record

    def republish_at(self, key: int) -> float | None:
        """When the record under ``key`` is next due for republication."""
        slot = self._slots.get(key)
        return None if slot is None else slot.republish_at

    def stop_republishing(self, key: int) -> None:
        """Never republish the record under ``key`` again (it is still served until it
        expires, and a newer version stored later is republished as usual)."""
        slot = self._slots.get(key)
        if slot is not None:
            slot.republish_at = math.inf

    def expire(self, now: float) -> list[int]:
        """Drop every record whose ttl ran out; returns their keys."""
        gone = [key for key, slot in self._slots.items() if slot.record.expires_at <= now]
        for key in gone:
            del self._slots[key]
        return gone

    def due_for_republish(self, now: float) -> list[StoredRecord[V]]:
        """Live records whose republication date has come; each gets its next date."""
        due: list[StoredRecord[V]] = []
        for slot in self._slots.values():
            if slot.republish_at <= now < slot.record.expires_at:
                due.append(slot.record)
                slot.republish_at = self._next_republish(now)
        return due


# --- one node ---------------------------------------------------------------------------------


class DhtNode(Generic[V]):
    """One registry node's Kademlia state: routing table, record store, periodic work.

    Args:
        own: this node's id and address.
        config: the network's parameters.
        rng: randomness for refresh targets and republication jitter.
        now: creation time.
    """

    __slots__ = ("_actions", "_config", "_own", "_rng", "store", "table")

    def __init__(self, own: Contact, config: DhtConfig, rng: Randomness, now: float) -> None:
        self._own = own
        self._config = config
        self._rng = rng
        self.table = RoutingTable(own.node_id, config, now)
        self.store: RecordStore[V] = RecordStore(
            config.republish_interval, config.republish_jitter, rng
        )
        self._actions: list[PingContact] = []

    @property
    def own(self) -> Contact:
        return self._own

    @property
    def config(self) -> DhtConfig:
        return self._config

    def heard_from(self, contact: Contact | None, now: float) -> None:
        """A registry node sent a request or an answer (None: a caller outside the DHT)."""
        if contact is None:
            return
        ping = self.table.seen(contact, now)
        if ping is not None:
            self._actions.append(ping)

    def contact_failed(self, node_id: int) -> None:
        """A request to ``node_id`` (a lookup step, a ping, a store) failed."""
        self.table.failed(node_id)

    def handle_find_node(self, sender: Contact | None, target: int, now: float) -> list[Contact]:
        """Answer FindNode: the k closest contacts to ``target``."""
        self.heard_from(sender, now)
        return self.table.closest(target, self._config.k)

    def handle_find_value(
        self, sender: Contact | None, key: int, now: float
    ) -> StoredRecord[V] | list[Contact]:
        """Answer FindValue: the record when held, else the k closest contacts to ``key``."""
        self.heard_from(sender, now)
        record = self.store.get(key, now)
        if record is not None:
            return record
        return self.table.closest(key, self._config.k)

    def handle_store(
        self, sender: Contact | None, key: int, version: int, ttl: float, value: V, now: float
    ) -> StoreOutcome:
        """Answer Store: keep the record if it is newer than what is held."""
        self.heard_from(sender, now)
        return self.store.put(key, version, ttl, value, now)

    def start_lookup(self, target: int, now: float, *, find_value: bool = False) -> Lookup[V]:
        """A lookup for ``target`` seeded from this node's table (which counts as refreshed)."""
        self.table.touched(target, now)
        seeds = self.table.closest(target, self._config.k)
        return Lookup(
            target,
            seeds,
            k=self._config.k,
            alpha=self._config.alpha,
            find_value=find_value,
            exclude=self._own.node_id,
        )

    def replicas(self, lookup: Lookup[V]) -> list[Contact]:
        """Where a record under ``lookup.target`` belongs: the k closest of the lookup's
        result and this node itself."""
        target = lookup.target
        pool = [*lookup.closest(), self._own]
        pool.sort(key=lambda c: c.node_id ^ target)
        return pool[: self._config.k]

    def republished(self, key: int, replicas: list[Contact]) -> None:
        """This node republished the record under ``key`` to ``replicas`` (from
        :meth:`replicas`). When it is not one of them, the k closest nodes now hold the record
        and republish it among themselves: this node hands it over and stops republishing
        it, or every node that churn pushed out of the k closest would keep republishing."""
        if all(contact.node_id != self._own.node_id for contact in replicas):
            self.store.stop_republishing(key)

    def tick(self, now: float) -> list[Action[V]]:
        """Expire records and return the periodic work due at ``now``: bucket refreshes
        (their buckets count as refreshed from now on) and republications."""
        self.store.expire(now)
        actions: list[Action[V]] = []
        for index in self.table.stale_buckets(now):
            target = random_id_in_bucket(self._own.node_id, index, self._rng)
            self.table.touched(target, now)
            actions.append(RefreshBucket(target))
        actions.extend(RepublishRecord(r) for r in self.store.due_for_republish(now))
        return actions

    def drain_actions(self) -> list[PingContact]:
        """Pings the routing table asked for since the last drain."""
        actions, self._actions = self._actions, []
        return actions
