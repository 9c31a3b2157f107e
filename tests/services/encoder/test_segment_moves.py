"""Leadership follows the manager's segments, on a real etcd (``EtcdProcess``).

An encoder stands for election in the segment its topology document names: moved from A to
B, it resigns in A (its lease, and with it its candidacy, is revoked) and stands in B. The
shell (:class:`SegmentLeadership`) runs in this process against the real etcd; the last test
drives it through the encoder runtime's ``apply_topology``, as the topology source does.
Each test starts and stops its own etcd and bounds every wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from meshenc.core.election import ElectionSnapshot, RankInputs, Role
from meshenc.local.etcd import EtcdProcess
from meshenc.wire.adjacency import AdjacencyDocument
from services.common.etcd import EtcdClient, EtcdSettings, connect_client
from services.encoder.leadership import SegmentKeys, SegmentLeadership
from services.encoder.leadership_audit import audit, read_history
from services.encoder.runtime import EncoderRuntime
from services.encoder.settings import EncoderSettings

from .test_leadership import eventually, run

PREFIX = "/meshenc"


async def members_of(client: EtcdClient, segment: str) -> set[str]:
    """The candidacies under ``segment`` in etcd (each under its member's lease)."""
    prefix = SegmentKeys(PREFIX, segment).candidates
    found = await client.get_prefix(prefix)
    return {kv.key[len(prefix) :].decode() for kv in found}


async def leader_key(client: EtcdClient, segment: str) -> bytes | None:
    found = await client.get(SegmentKeys(PREFIX, segment).leader)
    return None if found is None else bytes(found.value)


def _member(
    name: str,
    settings: EtcdSettings,
    rank: float,
    on_change: Callable[[ElectionSnapshot], None] | None = None,
) -> SegmentLeadership:
    member = SegmentLeadership(name, "A", settings, on_change=on_change)
    member.report(RankInputs(confidence=rank, latency=0.001, neighbours=frozenset("ab") - {name}))
    return member


async def _stop(members: list[SegmentLeadership], tasks: list[asyncio.Task[None]]) -> None:
    for member in members:
        await member.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 10.0)


def test_two_members_moved_from_a_to_b_elect_in_b_and_leave_a_empty(etcd: EtcdProcess) -> None:
    settings = EtcdSettings(endpoints=(etcd.endpoint,), lease_ttl=2)
    a, b = _member("a", settings, 0.6), _member("b", settings, 0.9)

    async def scenario() -> None:
        client = connect_client(settings)
        tasks = [asyncio.create_task(m.run()) for m in (a, b)]
        try:
            await eventually(lambda: a.leader == b.leader == "b")
            assert await members_of(client, "A") == {"a", "b"}
            token_in_a = b.token
            for member in (a, b):
                member.move_to("B")
            await eventually(lambda: a.segment == b.segment == "B")
            await eventually(lambda: a.leader == b.leader == "b" and b.role is Role.LEADER)
            assert b.token > token_in_a  # a new tenure, in B
            assert await members_of(client, "B") == {"a", "b"}
            # Resigned in A: the leader key deleted, the candidacies gone with the leases.
            assert await members_of(client, "A") == set()
            assert await leader_key(client, "A") is None
            assert a.moves == b.moves == 1
        finally:
            await _stop([a, b], tasks)
        try:
            reports = {}
            for segment in ("A", "B"):
                keys = SegmentKeys(PREFIX, segment)
                reports[segment] = audit(await read_history(client, keys), keys)
        finally:
            await client.close()
        assert all(r.ok for r in reports.values()), reports
        # In each segment a may claim before b is there; then it hands over to the better b.
        assert [t.holder for t in reports["A"].tenures][-1] == "b", reports["A"]
        assert [t.holder for t in reports["B"].tenures][-1] == "b", reports["B"]

    run(scenario())


def test_the_member_that_stays_takes_over_the_segment_the_leader_left(etcd: EtcdProcess) -> None:
    """The leader moves away: the member left behind leads A at once (no lease expiry), and
    the mover leads B alone."""
    settings = EtcdSettings(endpoints=(etcd.endpoint,), lease_ttl=30)
    seen_by_b: list[ElectionSnapshot] = []  # what the runtime's engine would be told
    a, b = _member("a", settings, 0.6), _member("b", settings, 0.9, seen_by_b.append)

    async def scenario() -> None:
        client = connect_client(settings)
        tasks = [asyncio.create_task(m.run()) for m in (a, b)]
        try:
            await eventually(lambda: a.leader == b.leader == "b")
            b.move_to("B")
            # A 30 s lease would keep b's leader key for 30 s; resigning frees it at once.
            await eventually(lambda: a.leader == "a" and a.role is Role.LEADER, timeout=5.0)
            await eventually(lambda: b.segment == "B" and b.leader == "b")
            assert await members_of(client, "A") == {"a"}
            assert await members_of(client, "B") == {"b"}
            # b's engine was told, on the move, that nobody is known to lead b's new segment
            # yet, before it learnt that b leads it.
            leaders = [s.leader for s in seen_by_b]
            assert None in leaders[leaders.index("b") :], leaders
            assert leaders[-1] == "b"
        finally:
            await _stop([a, b], tasks)
            await client.close()

    run(scenario())


def test_moves_are_carried_out_in_order_and_an_undone_move_changes_nothing(
    etcd: EtcdProcess,
) -> None:
    settings = EtcdSettings(endpoints=(etcd.endpoint,), lease_ttl=2)
    a = _member("a", settings, 0.8)

    async def scenario() -> None:
        client = connect_client(settings)
        task = asyncio.create_task(a.run())
        try:
            await eventually(lambda: a.role is Role.LEADER)
            a.move_to("B")
            a.move_to("A")  # undone before it started: a stays where it is
            await asyncio.sleep(0.3)
            assert a.moves == 0 and a.segment == "A" and a.role is Role.LEADER
            for segment in ("B", "C", "D"):
                a.move_to(segment)
            await eventually(lambda: a.segment == "D" and a.role is Role.LEADER)
            assert a.moves == 1  # straight to the last segment asked for
            for segment in ("A", "B", "C"):
                assert await members_of(client, segment) == set(), segment
            assert await members_of(client, "D") == {"a"}
        finally:
            await _stop([a], [task])
            await client.close()

    run(scenario())


def test_the_encoder_runtime_moves_its_election_to_its_documents_segment(
    etcd: EtcdProcess, tmp_path: Path
) -> None:
    """``apply_topology`` with a document naming segment B: the encoder stands in B, and
    GetState says so; a later document without a segment brings it back to its
    ``--segment``."""
    etcd_settings = EtcdSettings(endpoints=(etcd.endpoint,), lease_ttl=2)
    settings = EncoderSettings(
        id="e1", listen="127.0.0.1:0", out=tmp_path, segment="home", etcd=etcd_settings
    )

    async def scenario() -> None:
        runtime = EncoderRuntime(settings)
        leadership = runtime.leadership
        assert leadership is not None
        client = connect_client(etcd_settings)
        task = asyncio.create_task(leadership.run())
        try:
            # The first document names no segment: the encoder stands in its --segment.
            runtime.apply_topology(AdjacencyDocument(1, "e1", {}, segment=""))
            await eventually(lambda: leadership.leader == "e1")
            assert await members_of(client, "home") == {"e1"}
            runtime.apply_topology(AdjacencyDocument(2, "e1", {}, segment="B"))
            assert runtime.segment == "B"
            await eventually(lambda: leadership.segment == "B" and leadership.leader == "e1")
            assert await members_of(client, "B") == {"e1"}
            assert await members_of(client, "home") == set()
            state = runtime.state()
            assert (state.segment_id, state.topology_epoch) == ("B", 2)
            runtime.apply_topology(AdjacencyDocument(3, "e1", {}, segment=""))
            await eventually(lambda: leadership.segment == "home" and leadership.leader == "e1")
            assert await members_of(client, "B") == set()
            state = runtime.state()
            assert (state.segment_id, state.topology_epoch) == ("home", 3)
        finally:
            await leadership.close()
            await asyncio.wait_for(task, 10.0)
            await runtime.links.close()
            await client.close()

    run(scenario())
