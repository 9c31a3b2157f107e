"""The embedded-mode actuator and the manager election on a real etcd (nothing mocked).

Each test starts its own etcd (``EtcdProcess``: the real binary, free ports, a temporary data
folder) and stops it; the actuator, the encoders' registrations and the election run in the
test process against it over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from meshenc.local.etcd import EtcdProcess
from meshenc.wire.adjacency import AdjacencyDocument, EtcdLayout, RegistrationRecord
from services.encoder.topology_source import EncoderRegistration
from services.manager.actuators import (
    Actuator,
    MemberJoined,
    MemberLeft,
    NotLeaderError,
    ScalingNotSupportedError,
    StalePlanError,
)
from services.manager.etcd_actuator import EtcdActuator, Fence, _Registrations
from services.manager.ha import EtcdElection
from tests.services.support import Collector, etcd_client

pytestmark = pytest.mark.asyncio

LAYOUT = EtcdLayout("/meshenc")


def plan(epoch: int, count: int, segment: str = "s1") -> dict[str, AdjacencyDocument]:
    names = [f"enc-{i}" for i in range(count)]
    docs = {}
    for index, name in enumerate(names):
        others = {names[(index + 1) % count], names[index - 1]} - {name}
        docs[name] = AdjacencyDocument(
            epoch, name, {o: f"127.0.0.1:{7400 + names.index(o)}" for o in others}, segment
        )
    return docs


async def register(client: Any, encoder: str, address: str) -> Any:
    """Write a registration as an encoder would (without a lease)."""
    key = LAYOUT.registration(encoder)
    return await client.put(key, RegistrationRecord(address).to_json().encode())


async def stored(client: Any) -> tuple[dict[str, bytes], int]:
    """The topology keys (by encoder, .epoch as ".epoch") and etcd's current revision."""
    found = await client.get_prefix(LAYOUT.topology)
    keys = {kv.key[len(LAYOUT.topology) :].decode(): kv.value for kv in found}
    return keys, int(found.header.revision)


async def test_publish_writes_only_changes_in_one_transaction(etcd: EtcdProcess) -> None:
    """A plan is one transaction with ``.epoch``; the same plan again writes nothing (etcd's
    revision does not move); a change writes that key alone; a dropped encoder's key goes."""
    client = etcd_client(etcd)
    act = EtcdActuator(client, owns_client=True)
    try:
        assert isinstance(act, Actuator)
        first = plan(1, 4)
        await act.publish(first)
        keys, revision = await stored(client)
        assert keys.pop(".epoch") == b"1"
        assert keys == {n: d.to_json().encode() for n, d in first.items()}
        assert act.transactions == 1

        await act.publish(plan(1, 4))
        assert (await stored(client))[1] == revision, "an unchanged plan must not write"

        second = dict(first)
        second["enc-2"] = AdjacencyDocument(1, "enc-2", first["enc-2"].neighbours, "s2", "enc-0")
        await act.publish(second)
        after = await client.get_prefix(LAYOUT.topology)
        changed = {kv.key for kv in after if kv.mod_revision > revision}
        assert changed == {LAYOUT.document("enc-2")}

        third = plan(2, 3)
        await act.publish(third)
        keys, _ = await stored(client)
        assert keys.pop(".epoch") == b"2"
        assert keys == {n: d.to_json().encode() for n, d in third.items()}
        assert await EtcdActuator(client).published_epoch() == 2
    finally:
        await act.close()


async def test_older_manager_cannot_overwrite_a_newer_plan(etcd: EtcdProcess) -> None:
    """Manager A published epoch 5; manager B then epoch 6. A's next write (its view of
    ``.epoch`` is stale) fails its guard in etcd; A reads again, finds epoch 6 and refuses
    with StalePlanError; B's plan stays."""
    client = etcd_client(etcd)
    try:
        a = EtcdActuator(client)
        b = EtcdActuator(client)
        await a.publish(plan(5, 3))
        newer = plan(6, 3, segment="s9")
        await b.publish(newer)
        with pytest.raises(StalePlanError) as raised:
            await a.publish(plan(5, 3, segment="old"))
        assert (raised.value.ours, raised.value.stored) == (5, 6)
        assert a.races == 1
        keys, _ = await stored(client)
        assert keys.pop(".epoch") == b"6"
        assert keys == {n: d.to_json().encode() for n, d in newer.items()}
    finally:
        await client.close()


async def test_lost_race_at_the_same_epoch_is_retried(etcd: EtcdProcess) -> None:
    """Someone rewrote ``.epoch`` (same value) after A read it: A's transaction fails its
    guard, A reads again and publishes on top; the result is A's plan."""
    client = etcd_client(etcd)
    try:
        a = EtcdActuator(client)
        await a.publish(plan(3, 3))
        await client.put(LAYOUT.epoch, b"3")
        wanted = plan(4, 3, segment="s4")
        await a.publish(wanted)
        assert a.races == 1
        keys, _ = await stored(client)
        assert keys.pop(".epoch") == b"4"
        assert keys == {n: d.to_json().encode() for n, d in wanted.items()}
    finally:
        await client.close()


async def test_large_plan_is_split_into_guarded_transactions(etcd: EtcdProcess) -> None:
    """300 documents with etcd's 128 operations per transaction: three transactions, the
    whole plan stored."""
    client = etcd_client(etcd)
    try:
        act = EtcdActuator(client)
        big = plan(1, 300)
        await act.publish(big)
        assert act.transactions == 3
        keys, _ = await stored(client)
        assert len(keys) == 301
        assert keys["enc-299"] == big["enc-299"].to_json().encode()
    finally:
        await client.close()


async def test_fenced_actuator_stops_writing_when_leadership_moves(etcd: EtcdProcess) -> None:
    """With a fence, a write whose leader key was re-created by someone else fails in etcd
    (NotLeaderError) and changes nothing; no fence at all means no write either."""
    client = etcd_client(etcd)
    try:
        key = LAYOUT.manager_leader
        put = await client.put(key, b"manager-a")
        fence = Fence(key, int(put.header.revision))
        current: list[Fence | None] = [fence]
        act = EtcdActuator(client, fence=lambda: current[0])
        await act.publish(plan(1, 2))
        await client.delete(key)
        await client.put(key, b"manager-b")
        with pytest.raises(NotLeaderError):
            await act.publish(plan(2, 2))
        keys, _ = await stored(client)
        assert keys[".epoch"] == b"1"
        current[0] = None
        with pytest.raises(NotLeaderError):
            await act.publish(plan(2, 2))
        assert (await stored(client))[0][".epoch"] == b"1"
        with pytest.raises(ScalingNotSupportedError):
            await act.scale(3)
    finally:
        await client.close()


async def test_scale_writes_the_wish_within_bounds_while_this_manager_leads(
    etcd: EtcdProcess,
) -> None:
    """The launcher follows ``P/manager/replicas``: a wish beyond the bounds is clamped, and a
    manager whose leadership ended writes none."""
    client = etcd_client(etcd)
    try:
        key = LAYOUT.manager_leader
        put = await client.put(key, b"manager-a")
        current: list[Fence | None] = [Fence(key, int(put.header.revision))]
        act = EtcdActuator(client, fence=lambda: current[0], scale_bounds=(2, 4))

        async def wish() -> bytes | None:
            found = await client.get(LAYOUT.replicas)
            return None if found is None else bytes(found.value)

        await act.scale(3)
        assert await wish() == b"3"
        await act.scale(9)
        assert await wish() == b"4"
        await act.scale(0)
        assert await wish() == b"2"
        await client.delete(key)
        await client.put(key, b"manager-b")
        with pytest.raises(NotLeaderError):
            await act.scale(3)
        current[0] = None
        with pytest.raises(NotLeaderError):
            await act.scale(3)
        assert await wish() == b"2"
    finally:
        await client.close()


async def test_members_follow_registrations(etcd: EtcdProcess) -> None:
    """Encoders registering under their leases join; updating capacity is a new join;
    closing (lease revoked) is a leave; a malformed registration is ignored."""
    client = etcd_client(etcd)
    act = EtcdActuator(client)
    members = Collector(act.members())
    registrations = [
        EncoderRegistration(client, f"enc-{i}", RegistrationRecord(f"127.0.0.1:{7400 + i}", 2))
        for i in range(2)
    ]
    tasks = [asyncio.create_task(r.run()) for r in registrations]
    try:
        joined = await members.take(2)
        assert sorted(joined, key=lambda e: e.encoder) == [
            MemberJoined("enc-0", "127.0.0.1:7400", 2),
            MemberJoined("enc-1", "127.0.0.1:7401", 2),
        ]
        await client.put(LAYOUT.registration("enc-9"), b'{"address": "nowhere"}')
        await registrations[0].update(RegistrationRecord("127.0.0.1:7400", 8, "zone-a"))
        assert await members.take(1) == [MemberJoined("enc-0", "127.0.0.1:7400", 8, "zone-a")]
        await registrations[1].close()
        assert await members.take(1) == [MemberLeft("enc-1")]
        await members.quiet()
    finally:
        for registration in registrations:
            await registration.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await members.close()
        await client.close()


@pytest.mark.slow
async def test_members_survive_an_etcd_restart(etcd: EtcdProcess) -> None:
    """etcd stops and starts again: the watch resumes from the last revision (no new read)
    and reports an encoder that registers afterwards."""
    client = etcd_client(etcd)
    act = EtcdActuator(client)
    members = Collector(act.members())
    second = etcd_client(etcd)
    try:
        await register(client, "enc-0", "10.0.0.1:1")
        await members.take(1)
        etcd.stop()
        await asyncio.sleep(0.5)
        etcd.start()
        await register(second, "enc-1", "10.0.0.2:1")
        assert await members.take(1, timeout=20) == [MemberJoined("enc-1", "10.0.0.2:1")]
        assert act.lists == 1
    finally:
        await members.close()
        await client.close()
        await second.close()


async def test_registration_watch_reads_again_after_compaction(etcd: EtcdProcess) -> None:
    """The revision to resume from was compacted: the watch reads the prefix again and
    reports only the difference to what it had announced."""
    client = etcd_client(etcd)
    try:
        act = EtcdActuator(client)
        old = await register(client, "enc-0", "10.0.0.1:1")
        state = _Registrations(
            known={
                "enc-0": MemberJoined("enc-0", "10.0.0.1:1"),
                "gone": MemberJoined("gone", "10.0.0.3:1"),
            },
            revision=int(old.header.revision),
        )
        await register(client, "enc-1", "10.0.0.2:1")
        latest = await client.put(b"/elsewhere", b"x")
        await client.compact(int(latest.header.revision))
        emitted: list[Any] = []
        await act._session(state, emitted.append)  # the watch is refused: compacted
        assert state.revision is None and emitted == []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await act._session(state, emitted.append)  # reads again, then watches
        assert emitted == [MemberLeft("gone"), MemberJoined("enc-1", "10.0.0.2:1")]
        assert act.lists == 1
    finally:
        await client.close()


async def test_one_active_manager_and_handover_on_resignation(etcd: EtcdProcess) -> None:
    """Two replicas campaign: exactly one is active and holds a fence; when it resigns the
    other becomes active at once, with a different fence, and the old fence no longer
    writes."""
    clients = [etcd_client(etcd) for _ in range(2)]
    changes: dict[str, list[bool]] = {"a": [], "b": []}
    elections = [
        EtcdElection(clients[0], "a", lease_ttl=3, on_change=changes["a"].append),
        EtcdElection(clients[1], "b", lease_ttl=3, on_change=changes["b"].append),
    ]
    tasks = [asyncio.create_task(e.run()) for e in elections]
    try:
        waits = [asyncio.ensure_future(e.wait_elected()) for e in elections]
        try:
            async with asyncio.timeout(10):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        await asyncio.sleep(0.3)
        leaders = [e for e in elections if e.is_leader]
        assert len(leaders) == 1
        first = leaders[0]
        standby = elections[1 - elections.index(first)]
        assert standby.fence() is None
        async with asyncio.timeout(5):
            while standby.leader != first.identity:
                await asyncio.sleep(0.02)
        old_fence = first.fence()
        assert old_fence is not None
        await first.close()
        async with asyncio.timeout(5):
            await standby.wait_elected()
        new_fence = standby.fence()
        assert new_fence is not None and new_fence.create_revision > old_fence.create_revision
        assert changes[first.identity] == [True, False]
        assert changes[standby.identity] == [True]
        stale = EtcdActuator(clients[0], fence=lambda: old_fence)
        with pytest.raises(NotLeaderError):
            await stale.publish(plan(1, 2))
        await EtcdActuator(clients[1], fence=standby.fence).publish(plan(1, 2))
    finally:
        for election in elections:
            await election.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in clients:
            await client.close()


@pytest.mark.slow
async def test_standby_takes_over_when_the_active_manager_dies(etcd: EtcdProcess) -> None:
    """The active replica vanishes without resigning (its task cancelled, its lease left to
    expire): the standby becomes active once etcd expires the lease."""
    clients = [etcd_client(etcd) for _ in range(2)]
    first = EtcdElection(clients[0], "a", lease_ttl=2)
    first_task = asyncio.create_task(first.run())
    second = EtcdElection(clients[1], "b", lease_ttl=2)
    second_task: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(10):
            await first.wait_elected()
        second_task = asyncio.create_task(second.run())
        async with asyncio.timeout(5):
            while second.leader != "a":
                await asyncio.sleep(0.02)
        assert not second.is_leader
        first_task.cancel()  # a crash: no resignation, no more keep-alives
        with contextlib.suppress(asyncio.CancelledError):
            await first_task
        async with asyncio.timeout(15):
            await second.wait_elected()
        holder = await clients[1].get(LAYOUT.manager_leader)
        assert holder is not None and holder.value == b"b"
    finally:
        await second.close()
        for task in (first_task, second_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for client in clients:
            await client.close()
