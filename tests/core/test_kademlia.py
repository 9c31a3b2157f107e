"""The Kademlia core: ids and the XOR metric, k-buckets, lookups, records, periodic work.

Lookups run against networks of real :class:`DhtNode` instances, driven synchronously by a
small loop in this file (answers delivered one at a time, in request order); their results
are checked against a brute-force sort of all node ids. Nothing is mocked: the core is pure.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshenc.core.kademlia import (
    ID_BITS,
    Contact,
    DhtConfig,
    DhtNode,
    Lookup,
    PingContact,
    RecordStore,
    RefreshBucket,
    RepublishRecord,
    RoutingTable,
    bucket_index,
    distance,
    id_from_bytes,
    id_to_bytes,
    key_for,
    random_id_in_bucket,
)

ids = st.integers(min_value=0, max_value=(1 << ID_BITS) - 1)


def contact(node_id: int) -> Contact:
    return Contact(node_id, f"node-{node_id % 1000}:7500")


# --- ids and the metric -----------------------------------------------------------------------


def test_key_is_the_sha1_of_the_encoder_id() -> None:
    # FIPS 180 test vector: SHA-1("abc").
    assert key_for("abc").hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert len(key_for("enc-1")) == 20
    assert key_for("enc-1") != key_for("enc-2")


@given(ids)
def test_ids_survive_the_wire(node_id: int) -> None:
    raw = id_to_bytes(node_id)
    assert len(raw) == 20
    assert id_from_bytes(raw) == node_id


@pytest.mark.parametrize("raw", [b"", b"\x00" * 19, b"\x00" * 21])
def test_wire_ids_of_the_wrong_length_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="exactly 20 bytes"):
        id_from_bytes(raw)


@pytest.mark.parametrize("node_id", [-1, 1 << ID_BITS])
def test_ids_outside_160_bits_cannot_be_encoded(node_id: int) -> None:
    with pytest.raises(ValueError, match="160"):
        id_to_bytes(node_id)


@given(ids, ids, ids)
def test_xor_is_a_metric(a: int, b: int, c: int) -> None:
    assert distance(a, a) == 0
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, b) == distance(b, a)
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(ids, ids)
def test_xor_is_unidirectional(a: int, d: int) -> None:
    """Exactly one id lies at a given distance from another: lookups for one key converge."""
    (b,) = [a ^ d]
    assert distance(a, b) == d


@given(ids, st.integers(min_value=0, max_value=ID_BITS - 1), st.randoms(use_true_random=False))
def test_random_ids_fall_into_the_bucket_asked_for(
    own: int, index: int, rng: random.Random
) -> None:
    target = random_id_in_bucket(own, index, rng)
    assert bucket_index(own, target) == index
    assert 2**index <= distance(own, target) < 2 ** (index + 1)


def test_a_node_has_no_bucket_for_itself() -> None:
    with pytest.raises(ValueError, match="own id"):
        bucket_index(5, 5)


# --- routing table ----------------------------------------------------------------------------

OWN = 0
"""Owner id of the hand-built tables: bucket i then holds ids in [2^i, 2^(i+1))."""


def table(k: int = 3, **config: float) -> RoutingTable:
    return RoutingTable(OWN, DhtConfig(k=k, alpha=1, **config), now=0.0)  # type: ignore[arg-type]


def fill(t: RoutingTable, node_ids: Iterable[int], now: float = 0.0) -> list[PingContact]:
    pings = []
    for node_id in node_ids:
        ping = t.seen(contact(node_id), now)
        if ping is not None:
            pings.append(ping)
    return pings


def test_a_bucket_is_least_recently_seen_first() -> None:
    t = table()
    fill(t, [8, 9, 10])  # bucket 3
    assert [c.node_id for c in t.bucket(3)] == [8, 9, 10]
    t.seen(contact(8), 1.0)
    assert [c.node_id for c in t.bucket(3)] == [9, 10, 8]


def test_a_full_bucket_pings_its_silent_oldest_before_a_newcomer_gets_in() -> None:
    t = table(ping_after=60.0)
    fill(t, [8, 9, 10], now=0.0)
    pings = fill(t, [11], now=100.0)
    assert pings == [PingContact(contact(8))]
    assert 11 not in t
    assert [c.node_id for c in t.replacements(3)] == [11]
    # A second newcomer does not start a second ping while one is under way.
    assert fill(t, [12], now=101.0) == []

    # The oldest answers: it stays (moved to the tail), the newcomers wait.
    t.seen(contact(8), 102.0)
    assert [c.node_id for c in t.bucket(3)] == [9, 10, 8]
    assert 11 not in t and 12 not in t


def test_a_silent_oldest_that_fails_its_ping_makes_room_for_the_freshest_newcomer() -> None:
    t = table(ping_after=60.0)
    fill(t, [8, 9, 10], now=0.0)
    (ping,) = fill(t, [11, 12], now=100.0)
    t.failed(ping.contact.node_id)
    assert 8 not in t
    assert [c.node_id for c in t.bucket(3)] == [9, 10, 12]
    assert [c.node_id for c in t.replacements(3)] == [11]


def test_a_recently_seen_oldest_is_not_pinged() -> None:
    t = table(ping_after=60.0)
    fill(t, [8, 9, 10], now=0.0)
    assert fill(t, [11], now=30.0) == []
    assert [c.node_id for c in t.bucket(3)] == [8, 9, 10]
    assert [c.node_id for c in t.replacements(3)] == [11]


def test_without_a_replacement_a_contact_survives_a_few_failures() -> None:
    t = table(max_failures=3)
    fill(t, [8])
    t.failed(8)
    t.failed(8)
    assert 8 in t
    t.failed(8)
    assert 8 not in t
    assert len(t) == 0


def test_hearing_from_a_contact_clears_its_failures() -> None:
    t = table(max_failures=2)
    fill(t, [8])
    t.failed(8)
    t.seen(contact(8), 1.0)
    t.failed(8)
    assert 8 in t


def test_the_owner_never_enters_its_own_table() -> None:
    t = table()
    assert t.seen(contact(OWN), 0.0) is None
    assert len(t) == 0 and OWN not in t


@settings(max_examples=60)
@given(
    own=ids,
    others=st.lists(ids, min_size=1, max_size=300),
    k=st.integers(min_value=1, max_value=8),
    target=ids,
)
def test_table_invariants_and_closest_match_brute_force(
    own: int, others: list[int], k: int, target: int
) -> None:
    t = RoutingTable(own, DhtConfig(k=k, alpha=1), now=0.0)
    for node_id in others:
        t.seen(contact(node_id), 0.0)
    stored = [c.node_id for c in t.contacts()]
    assert len(stored) == len(set(stored)) == len(t)
    assert own not in stored
    for index in range(ID_BITS):
        bucket = t.bucket(index)
        assert len(bucket) <= k
        assert all(bucket_index(own, c.node_id) == index for c in bucket)
    # Each bucket keeps the first k distinct ids it was offered (nobody failed).
    first_seen: dict[int, list[int]] = {}
    for node_id in dict.fromkeys(others):
        if node_id != own:
            first_seen.setdefault(bucket_index(own, node_id), []).append(node_id)
    for index, members in first_seen.items():
        assert {c.node_id for c in t.bucket(index)} == set(members[:k])

    if not stored:
        return
    count = min(len(stored), 5)
    expected = sorted(stored, key=lambda i: i ^ target)[:count]
    assert [c.node_id for c in t.closest(target, count)] == expected
    excluded = expected[0]
    assert excluded not in [c.node_id for c in t.closest(target, count, exclude=excluded)]


def test_buckets_go_stale_without_lookups_and_a_lookup_refreshes_them() -> None:
    t = table(bucket_refresh_interval=100.0)
    fill(t, [8, 300])  # buckets 3 and 8
    assert t.stale_buckets(99.0) == []
    stale = t.stale_buckets(100.0)
    # From the closest non-empty bucket outwards: buckets below 3 would not exist.
    assert stale == list(range(3, ID_BITS))
    t.touched(310, 100.0)  # a lookup in bucket 8's range
    assert 8 not in t.stale_buckets(150.0)
    assert 9 in t.stale_buckets(150.0)


# --- lookups ----------------------------------------------------------------------------------


def network(size: int, config: DhtConfig, seed: int) -> dict[int, DhtNode[str]]:
    """``size`` nodes, each having heard of every other node in a random order."""
    rng = random.Random(seed)
    nodes: dict[int, DhtNode[str]] = {}
    while len(nodes) < size:
        node_id = rng.getrandbits(ID_BITS)
        nodes[node_id] = DhtNode(contact(node_id), config, rng, 0.0)
    everyone = [n.own for n in nodes.values()]
    for node in nodes.values():
        for other in rng.sample(everyone, len(everyone)):
            node.heard_from(other, 0.0)
    return nodes


def drive(
    lookup: Lookup[str],
    nodes: dict[int, DhtNode[str]],
    *,
    alive: set[int] | None = None,
    alpha: int,
) -> list[int]:
    """Deliver the lookup's requests one at a time; returns the order nodes were asked in."""
    asked: list[int] = []
    queue: deque[Contact] = deque()
    for _ in range(100_000):
        queue.extend(lookup.next_requests())
        assert lookup.in_flight <= alpha
        if lookup.done or not queue:
            break
        callee = queue.popleft()
        asked.append(callee.node_id)
        if alive is not None and callee.node_id not in alive:
            lookup.failed(callee.node_id)
            continue
        answer = nodes[callee.node_id].handle_find_value(None, lookup.target, 0.0)
        if isinstance(answer, list):
            lookup.answered(callee.node_id, answer)
        else:
            lookup.found(callee.node_id, answer.value)
    assert lookup.done
    return asked


def test_a_seeded_lookup_needs_seeds() -> None:
    lookup: Lookup[str] = Lookup(1, [], k=3, alpha=1)
    assert lookup.done
    assert lookup.next_requests() == [] and lookup.closest() == []


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000), target=ids)
def test_node_lookups_converge_on_the_k_closest_nodes(seed: int, target: int) -> None:
    config = DhtConfig(k=8, alpha=3)
    nodes = network(200, config, seed)
    origin = next(iter(nodes.values()))
    lookup = origin.start_lookup(target, 0.0)
    asked = drive(lookup, nodes, alpha=config.alpha)
    assert len(asked) == len(set(asked)), "a node was asked twice"
    assert origin.own.node_id not in asked
    others = [i for i in nodes if i != origin.own.node_id]
    expected = sorted(others, key=lambda i: i ^ target)[: config.k]
    assert [c.node_id for c in lookup.closest()] == expected
    assert lookup.hops >= 1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000), target=ids)
def test_lookups_route_around_dead_nodes(seed: int, target: int) -> None:
    config = DhtConfig(k=8, alpha=3)
    nodes = network(200, config, seed)
    rng = random.Random(seed)
    origin = next(iter(nodes.values())).own.node_id
    dead = set(rng.sample([i for i in nodes if i != origin], 60))
    alive = set(nodes) - dead
    lookup = nodes[origin].start_lookup(target, 0.0)
    asked = drive(lookup, nodes, alive=alive, alpha=config.alpha)
    found = [c.node_id for c in lookup.closest()]
    # Nodes answer with their k closest, dead ones included, so fewer than k live nodes may
    # be reachable; but what is found is alive, in order, and starts with the closest.
    closest_alive = min(alive - {origin}, key=lambda i: i ^ target)
    assert found[0] == closest_alive
    assert set(found) <= alive
    assert found == sorted(found, key=lambda i: i ^ target)
    # Every dead node asked counts as a failure (a lookup may also never meet one).
    assert lookup.failures == len(dead.intersection(asked))


def test_a_value_lookup_stops_at_the_first_node_holding_the_value() -> None:
    config = DhtConfig(k=8, alpha=1)
    nodes = network(100, config, seed=7)
    key = id_from_bytes(key_for("enc-42"))
    holder = sorted(nodes, key=lambda i: i ^ key)[0]
    nodes[holder].handle_store(None, key, 1, 60.0, "record of enc-42", 0.0)
    origin = next(i for i in nodes if i != holder)
    lookup = nodes[origin].start_lookup(key, 0.0, find_value=True)
    asked = drive(lookup, nodes, alpha=1)
    assert lookup.value == "record of enc-42"
    assert lookup.value_from is not None and lookup.value_from.node_id == holder
    assert asked[-1] == holder
    assert 1 <= lookup.hops <= len(asked)


def test_a_value_lookup_without_a_holder_ends_empty_on_the_k_closest() -> None:
    config = DhtConfig(k=5, alpha=2)
    nodes = network(60, config, seed=3)
    origin = next(iter(nodes))
    lookup = nodes[origin].start_lookup(12345, 0.0, find_value=True)
    drive(lookup, nodes, alpha=2)
    assert lookup.value is None
    expected = sorted((i for i in nodes if i != origin), key=lambda i: i ^ 12345)[:5]
    assert [c.node_id for c in lookup.closest()] == expected


def test_late_and_unsolicited_answers_are_ignored() -> None:
    lookup: Lookup[str] = Lookup(0, [contact(4), contact(8)], k=2, alpha=1)
    (first,) = lookup.next_requests()
    lookup.found(99, "forged")  # never asked
    lookup.failed(first.node_id)
    lookup.answered(first.node_id, [contact(1)])  # after its failure
    assert lookup.value is None
    assert 1 not in [c.node_id for c in lookup.closest()]


# --- records ----------------------------------------------------------------------------------


def store(interval: float = 100.0, jitter: float = 0.0) -> RecordStore[str]:
    return RecordStore(interval, jitter, random.Random(1))


def test_only_a_higher_version_replaces_a_record() -> None:
    s = store()
    assert s.put(1, 5, 60.0, "v5", 0.0).stored
    lower = s.put(1, 4, 60.0, "v4", 1.0)
    equal = s.put(1, 5, 60.0, "v5 again", 1.0)
    assert (lower.stored, lower.current_version) == (False, 5)
    assert (equal.stored, equal.current_version) == (False, 5)
    record = s.get(1, 2.0)
    assert record is not None and record.value == "v5"
    higher = s.put(1, 6, 60.0, "v6", 3.0)
    assert (higher.stored, higher.current_version) == (True, 6)
    record = s.get(1, 3.0)
    assert record is not None and record.value == "v6"


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=30))
def test_the_held_version_is_the_highest_offered(versions: list[int]) -> None:
    s = store()
    for when, version in enumerate(versions):
        outcome = s.put(7, version, 1000.0, f"v{version}", float(when))
        assert outcome.current_version == max(versions[: when + 1])
    record = s.get(7, float(len(versions)))
    assert record is not None and record.version == max(versions)


def test_records_expire_after_their_ttl_and_then_any_version_is_taken() -> None:
    s = store()
    s.put(1, 9, 10.0, "v9", 0.0)
    assert s.get(1, 9.9) is not None
    assert s.get(1, 10.0) is None
    assert s.put(1, 2, 10.0, "v2", 11.0).stored  # the expired v9 no longer counts
    assert s.expire(20.9) == []
    assert s.expire(21.0) == [1]
    assert len(s) == 0


@pytest.mark.parametrize(("version", "ttl"), [(0, 1.0), (1, 0.0), (1, float("inf"))])
def test_records_need_a_version_and_a_finite_ttl(version: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        store().put(1, version, ttl, "x", 0.0)


def test_records_are_due_for_republication_after_the_interval() -> None:
    s = store(interval=100.0, jitter=0.25)
    s.put(1, 1, 1000.0, "a", 0.0)
    due_at = s.republish_at(1)
    assert due_at is not None and 100.0 <= due_at <= 125.0
    assert s.due_for_republish(due_at - 0.001) == []
    (due,) = s.due_for_republish(due_at)
    assert due.value == "a"
    # Rescheduled: not due again at once.
    assert s.due_for_republish(due_at) == []


def test_receiving_the_same_version_postpones_republication() -> None:
    s = store(interval=100.0)
    s.put(1, 1, 1000.0, "a", 0.0)
    s.put(1, 1, 1000.0, "a", 90.0)  # another replica republished it
    assert s.due_for_republish(100.0) == []
    assert s.republish_at(1) == 190.0


def test_expired_records_are_not_republished() -> None:
    s = store(interval=100.0)
    s.put(1, 1, 50.0, "a", 0.0)
    assert s.due_for_republish(100.0) == []


# --- one node ---------------------------------------------------------------------------------


def test_a_node_hands_over_a_record_it_is_no_longer_close_to() -> None:
    config = DhtConfig(k=2, alpha=1, republish_interval=10.0, republish_jitter=0.0)
    node: DhtNode[str] = DhtNode(contact(0b1000), config, random.Random(1), 0.0)
    key = 0b0001
    node.handle_store(None, key, 1, 100.0, "r", 0.0)
    closer = [contact(0b0000), contact(0b0011)]
    lookup: Lookup[str] = Lookup(key, closer, k=2, alpha=2)
    for c in lookup.next_requests():
        lookup.answered(c.node_id, [])
    replicas = node.replicas(lookup)
    assert [c.node_id for c in replicas] == [0b0000, 0b0011]
    node.republished(key, replicas)
    assert [a for a in node.tick(50.0) if isinstance(a, RepublishRecord)] == []
    assert node.store.get(key, 50.0) is not None  # still served until it expires


def test_tick_returns_refreshes_and_republications_with_the_remaining_ttl() -> None:
    config = DhtConfig(
        k=2, alpha=1, bucket_refresh_interval=50.0, republish_interval=10.0, republish_jitter=0.0
    )
    node: DhtNode[str] = DhtNode(contact(0), config, random.Random(1), 0.0)
    node.heard_from(contact(0b100), 0.0)  # bucket 2
    node.handle_store(None, 77, 3, 30.0, "r", 0.0)
    actions = node.tick(10.0)
    (republish,) = [a for a in actions if isinstance(a, RepublishRecord)]
    assert republish.record.version == 3
    assert republish.record.remaining(10.0) == pytest.approx(20.0)
    assert not [a for a in actions if isinstance(a, RefreshBucket)]

    refreshes = [a for a in node.tick(50.0) if isinstance(a, RefreshBucket)]
    assert sorted(bucket_index(0, r.target) for r in refreshes) == list(range(2, ID_BITS))
    assert [a for a in node.tick(51.0) if isinstance(a, RefreshBucket)] == []
    node.tick(30.0)
    assert node.store.get(77, 30.0) is None


def test_requests_from_registry_nodes_fill_the_table_and_pings_are_queued() -> None:
    config = DhtConfig(k=1, alpha=1, ping_after=10.0)
    node: DhtNode[str] = DhtNode(contact(0), config, random.Random(1), 0.0)
    node.handle_find_node(contact(8), 5, 0.0)
    node.handle_find_node(None, 5, 0.0)  # a caller outside the DHT
    assert [c.node_id for c in node.table.contacts()] == [8]
    node.handle_store(contact(9), 1, 1, 10.0, "x", 20.0)  # bucket 3 is full, 8 is silent
    assert node.drain_actions() == [PingContact(contact(8))]
    assert node.drain_actions() == []


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="k must be"):
        DhtConfig(k=0)
    with pytest.raises(ValueError, match="alpha"):
        DhtConfig(k=2, alpha=3)
    with pytest.raises(ValueError, match="republish_interval"):
        DhtConfig(republish_interval=0.0)
