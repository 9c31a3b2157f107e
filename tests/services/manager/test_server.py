"""The Mesh Manager's servicer against real gRPC clients, real etcd and the real actuator.

What is shown: bad input gets a clear status and a log line and changes nothing; queries and
the watch stream; an encoder whose health stream dies is rewired around (and one that
reconnects in time is not); escalations get the core's verdict; a standby reports NOT_SERVING
and refuses writes; a new active manager continues above the published epoch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from meshenc.local.etcd import EtcdProcess
from meshenc.v1 import common_pb2, manager_pb2, manager_pb2_grpc, mesh_pb2
from meshenc.wire import convert
from meshenc.wire.adjacency import parse_adjacency
from meshenc.wire.convert import topology_to_proto
from services.manager.server import SERVICE_NAME
from tests.services.manager_support import Manager, start_manager, stop_manager

pytestmark = pytest.mark.asyncio

BASE_PORT = 7400  # registration addresses only; nothing dials them in these tests


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd for this module; each test keeps its keys under a prefix of its own."""
    log = Path(tmp_path_factory.mktemp("etcd")) / "etcd.log"
    process = EtcdProcess(log_path=log)
    try:
        yield process.start()
    finally:
        process.close()


@pytest_asyncio.fixture
async def manager(etcd: EtcdProcess) -> AsyncIterator[Manager]:
    running = await start_manager(etcd)
    try:
        yield running
    finally:
        await stop_manager(running)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until ``check`` holds, polling; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def report(encoder: str, **fields: Any) -> manager_pb2.HealthReport:
    values: dict[str, Any] = {"sent_unix_ns": time.time_ns(), "confidence": 0.9, **fields}
    return manager_pb2.HealthReport(encoder_id=encoder, **values)


async def reports(encoder: str, interval: float = 0.2) -> AsyncIterator[manager_pb2.HealthReport]:
    while True:
        yield report(encoder)
        await asyncio.sleep(interval)


async def mesh_of(manager: Manager, count: int) -> list[str]:
    """Register ``count`` encoders and wait for the plan that has all of them."""
    names = [f"enc-{i}" for i in range(count)]
    for i, name in enumerate(names):
        await manager.register(name, BASE_PORT + i)

    async def planned() -> bool:
        topology = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())
        return sorted(a.encoder_id for a in topology.adjacency) == names

    await eventually(planned)
    return names


def neighbours(topology: manager_pb2.Topology) -> dict[str, set[str]]:
    return {a.encoder_id: set(a.neighbour_ids) for a in topology.adjacency}


# --- bad input ------------------------------------------------------------------------------


def _proposal(proposer: str = "enc-0") -> mesh_pb2.ResyncProposal:
    return mesh_pb2.ResyncProposal(
        proposer_id=proposer, proposal_id=7, kind=common_pb2.CORRECTION_KIND_SLEW, shift_ns=1000
    )


def _vote(voter: str, approve: bool, proposer: str = "enc-0") -> mesh_pb2.ResyncVote:
    return mesh_pb2.ResyncVote(proposer_id=proposer, proposal_id=7, voter_id=voter, approve=approve)


def _escalation(**fields: Any) -> manager_pb2.Escalation:
    base: dict[str, Any] = {
        "encoder_id": "enc-0",
        "proposal": _proposal(),
        "votes": [_vote("enc-1", True)],
        "neighbour_count": 3,
        "sent_unix_ns": time.time_ns(),
    }
    base.update(fields)
    return manager_pb2.Escalation(**base)


BAD_REPORTS = {
    "confidence NaN": report("enc-0", confidence=math.nan),
    "load above 1": report("enc-0", cpu_load=1.5),
    "no timestamp": manager_pb2.HealthReport(encoder_id="enc-0", confidence=0.5),
    "bad id": report("enc 0"),
    "link to itself": report("enc-0", links=[manager_pb2.LinkStats(neighbour_id="enc-0")]),
    "duplicate links": report(
        "enc-0",
        links=[manager_pb2.LinkStats(neighbour_id="enc-1")] * 2,
    ),
    "rtt beyond 60 s": report(
        "enc-0", links=[manager_pb2.LinkStats(neighbour_id="enc-1", rtt_us=61_000_000)]
    ),
    "approved more than made": report(
        "enc-0", corrections=manager_pb2.CorrectionCounters(proposals_approved=1)
    ),
}

BAD_ESCALATIONS = {
    "no proposal": manager_pb2.Escalation(encoder_id="enc-0", sent_unix_ns=time.time_ns()),
    "someone else's proposal": _escalation(proposal=_proposal("enc-1")),
    "vote by the proposer": _escalation(votes=[_vote("enc-0", True)]),
    "vote on another proposal": _escalation(
        votes=[mesh_pb2.ResyncVote(proposer_id="enc-0", proposal_id=8, voter_id="enc-1")]
    ),
    "two votes by one voter": _escalation(votes=[_vote("enc-1", True), _vote("enc-1", False)]),
    "fewer neighbours than votes": _escalation(
        votes=[_vote("enc-1", True), _vote("enc-2", True)], neighbour_count=1
    ),
    "unknown kind": _escalation(
        proposal=mesh_pb2.ResyncProposal(
            proposer_id="enc-0", proposal_id=7, kind=common_pb2.CorrectionKind.ValueType(9)
        )
    ),
    "shift beyond 10 s": _escalation(
        proposal=mesh_pb2.ResyncProposal(
            proposer_id="enc-0",
            proposal_id=7,
            kind=common_pb2.CORRECTION_KIND_SLEW,
            shift_ns=11_000_000_000,
        )
    ),
}


async def test_bad_input_gets_invalid_argument_and_changes_nothing(
    manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    names = await mesh_of(manager, 4)
    before = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())
    accepted_before = sum(manager.shell.reports.values())

    for why, bad in BAD_REPORTS.items():
        call = manager.stub.ReportHealth(_once(bad))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, why
    for why, bad_escalation in BAD_ESCALATIONS.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await manager.stub.Escalate(bad_escalation)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, why
    queries: list[Callable[[], Awaitable[Any]]] = [
        lambda: manager.stub.GetTopology(manager_pb2.GetTopologyRequest(encoder_id="x" * 129)),
        lambda: manager.stub.GetSegments(manager_pb2.GetSegmentsRequest(segment_id="a/b")),
        lambda: _first(
            manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest(encoder_id="é"))
        ),
    ]
    for query in queries:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await query()
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    # A stream that switches identity half-way is cut at the second report.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await manager.stub.ReportHealth(_many(report("enc-1"), report("enc-2")))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "encoder_id" in (caught.value.details() or "")

    # One log line per method and status however many calls were refused (a flood of bad
    # calls cannot flood the log), each naming the method.
    refusals = [
        r.getMessage() for r in caplog.records if "refused (INVALID_ARGUMENT)" in r.getMessage()
    ]
    methods = ["ReportHealth", "Escalate", "GetTopology", "GetSegments", "WatchTopology"]
    assert [line.split()[0] for line in refusals] == methods, refusals
    # Nothing bad reached the core, and the manager still answers.
    assert sum(manager.shell.reports.values()) == accepted_before + 1  # enc-1's first report
    after = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())
    assert neighbours(after) == neighbours(before) and set(neighbours(after)) == set(names)
    assert (await _health(manager, SERVICE_NAME)) == health_pb2.HealthCheckResponse.SERVING


async def _once(item: manager_pb2.HealthReport) -> AsyncIterator[manager_pb2.HealthReport]:
    yield item
    await asyncio.sleep(5)  # keep the stream open: the server must end it


async def _many(*items: manager_pb2.HealthReport) -> AsyncIterator[manager_pb2.HealthReport]:
    for item in items:
        yield item
    await asyncio.sleep(5)


async def _first(call: Any) -> Any:
    async for item in call:
        return item
    return None


async def _health(manager: Manager, service: str) -> Any:
    stub = health_pb2_grpc.HealthStub(manager.channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return answer.status


# --- queries and the watch stream ---------------------------------------------------------


async def test_queries_answer_from_the_published_plan(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = await mesh_of(manager, 6)
    topology = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())
    graph = neighbours(topology)
    assert all(3 <= len(graph[n]) <= 5 for n in names)
    assert all(a in graph[b] for a in names for b in graph[a])  # symmetric
    # The documents in etcd say the same, with the registered addresses.
    for i, name in enumerate(names):
        stored = await manager.stored_document(name)
        assert stored is not None
        document = parse_adjacency(stored, expected_encoder=name)
        assert document.epoch == topology.epoch
        assert set(document.neighbours) == graph[name]
        assert document.work is None  # no work units: no placement, encoders do it all
        for neighbour, address in document.neighbours.items():
            assert address == f"127.0.0.1:{BASE_PORT + names.index(neighbour)}"
        del i
    one = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest(encoder_id="enc-3"))
    assert [a.encoder_id for a in one.adjacency] == ["enc-3"]
    segments = await manager.stub.GetSegments(manager_pb2.GetSegmentsRequest())
    assert sorted(m for s in segments.segments for m in s.member_ids) == names
    assert segments.topology_epoch == topology.epoch
    # Reads of one epoch are answered with the message built once for it, not rebuilt.
    builds: list[int] = []

    def counted(epoch: int, adjacency: Any) -> manager_pb2.Topology:
        builds.append(epoch)
        return topology_to_proto(epoch, adjacency)

    monkeypatch.setattr(convert, "topology_to_proto", counted)
    for _ in range(3):
        for encoder_id in ("", "enc-3"):
            again = await manager.stub.GetTopology(
                manager_pb2.GetTopologyRequest(encoder_id=encoder_id)
            )
            assert again == (topology if not encoder_id else one)
    assert builds == [topology.epoch] * len(builds) and len(builds) <= 1
    for missing in (
        manager.stub.GetTopology(manager_pb2.GetTopologyRequest(encoder_id="enc-9")),
        manager.stub.GetSegments(manager_pb2.GetSegmentsRequest(segment_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await missing
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_watch_sends_the_current_topology_then_each_new_one(manager: Manager) -> None:
    names = await mesh_of(manager, 4)
    current = (await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())).epoch
    everything = manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest())
    mine = manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest(encoder_id="enc-4"))
    caught_up = manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest(after_epoch=current))
    try:
        first = await asyncio.wait_for(everything.read(), 5)
        assert first.topology.epoch == current
        assert sorted(neighbours(first.topology)) == names
        not_yet = await asyncio.wait_for(mine.read(), 5)
        assert not_yet.topology.epoch == current and not not_yet.topology.adjacency

        await manager.register("enc-4", BASE_PORT + 4)
        joined = await asyncio.wait_for(everything.read(), 5)
        assert joined.topology.epoch == current + 1
        assert "enc-4" in neighbours(joined.topology)
        assert "enc-4" in joined.reason
        filtered = await asyncio.wait_for(mine.read(), 5)
        assert [a.encoder_id for a in filtered.topology.adjacency] == ["enc-4"]
        assert (
            set(filtered.topology.adjacency[0].neighbour_ids)
            == neighbours(joined.topology)["enc-4"]
        )
        # A watcher that already had the current epoch only hears the new one.
        newer = await asyncio.wait_for(caught_up.read(), 5)
        assert newer.topology.epoch == current + 1
    finally:
        for call in (everything, mine, caught_up):
            call.cancel()
    await eventually(lambda: _is(manager.shell.watchers == 0))


async def _is(value: bool) -> bool:
    return value


# --- failure reaction -------------------------------------------------------------------------


class Reporter:
    """One encoder's health stream on a connection of its own; :meth:`die` drops the
    connection as a killed process's kernel would."""

    def __init__(self, manager: Manager, encoder: str) -> None:
        self.channel = grpc.aio.insecure_channel(manager.address)
        stub = manager_pb2_grpc.MeshManagerStub(self.channel)
        self.call = stub.ReportHealth(reports(encoder))

    async def die(self) -> None:
        await self.channel.close()


async def test_an_encoder_whose_health_stream_dies_is_rewired_around(manager: Manager) -> None:
    names = await mesh_of(manager, 6)
    streams = {name: Reporter(manager, name) for name in names}
    watch = manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest())
    try:
        before = (await asyncio.wait_for(watch.read(), 5)).topology
        await eventually(lambda: _is(all(manager.shell.reports[n] >= 2 for n in names)))

        # enc-1 reconnects at once: it stays. Then enc-2's connection dies for good.
        await streams["enc-1"].die()
        streams["enc-1"] = Reporter(manager, "enc-1")
        await streams.pop("enc-2").die()
        update = await asyncio.wait_for(watch.read(), 5)
        after = neighbours(update.topology)
        assert "enc-2" not in after and "enc-1" in after
        assert "enc-2" in update.reason and "enc-1" not in update.reason
        for former in neighbours(before)["enc-2"]:
            assert len(after[former]) >= 3, "a former neighbour of enc-2 was left short"
        assert await manager.stored_document("enc-2") is None  # its document is withdrawn
        # Reconnecting later brings it back (it is still registered).
        streams["enc-2"] = Reporter(manager, "enc-2")
        back = await asyncio.wait_for(watch.read(), 5)
        assert "enc-2" in neighbours(back.topology)
    finally:
        watch.cancel()
        for reporter in streams.values():
            await reporter.die()


async def test_encoders_that_die_together_leave_in_one_epoch(manager: Manager) -> None:
    """Two health streams end 0.1 s apart (within ``DEPARTURE_BATCH``): the survivors are
    rewired once, by one epoch that takes out both."""
    names = await mesh_of(manager, 6)
    streams = {name: Reporter(manager, name) for name in names}
    watch = manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest())
    try:
        await asyncio.wait_for(watch.read(), 5)
        await eventually(lambda: _is(all(manager.shell.reports[n] >= 2 for n in names)))
        await streams.pop("enc-1").die()
        await asyncio.sleep(0.1)
        await streams.pop("enc-4").die()
        update = await asyncio.wait_for(watch.read(), 5)
        after = neighbours(update.topology)
        assert "enc-1" not in after and "enc-4" not in after, update.reason
        assert "enc-1 left" in update.reason and "enc-4 left" in update.reason
    finally:
        watch.cancel()
        for reporter in streams.values():
            await reporter.die()


async def test_an_encoder_whose_registration_ends_is_removed(manager: Manager) -> None:
    await mesh_of(manager, 5)
    watch = manager.stub.WatchTopology(manager_pb2.WatchTopologyRequest())
    try:
        await asyncio.wait_for(watch.read(), 5)
        await manager.unregister("enc-0")
        update = await asyncio.wait_for(watch.read(), 5)
        assert "enc-0" not in neighbours(update.topology)
        assert "registration" in update.reason or "enc-0 left" in update.reason
    finally:
        watch.cancel()


async def test_the_last_encoder_leaving_is_no_error_tick_after_tick(
    manager: Manager, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty mesh has nothing to publish: the documents of encoders that left are not
    replaced by a plan of epoch 0 (which the actuator must refuse, being older)."""
    names = await mesh_of(manager, 2)
    for name in names:
        await manager.unregister(name)

    async def emptied() -> bool:
        topology = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())
        return not topology.adjacency

    await eventually(emptied)
    caplog.clear()  # the leaves themselves are warnings
    with caplog.at_level(logging.WARNING, logger="meshenc"):
        await asyncio.sleep(1.0)  # ten ticks
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- escalations ------------------------------------------------------------------------------


async def test_escalations_get_the_cores_verdict_with_a_published_epoch(manager: Manager) -> None:
    await mesh_of(manager, 9)
    topology = await manager.stub.GetTopology(manager_pb2.GetTopologyRequest())
    voters = sorted(neighbours(topology)["enc-0"])
    outsider = next(n for n in neighbours(topology) if n not in voters and n != "enc-0")

    approved = await manager.stub.Escalate(
        _escalation(
            votes=[_vote(voters[0], True), _vote(voters[1], True), _vote(voters[2], False)],
            neighbour_count=len(voters),
        )
    )
    assert approved.verdict == manager_pb2.ESCALATION_VERDICT_APPLY
    assert approved.topology_epoch == topology.epoch
    assert "2 for, 1 against" in approved.reason

    # Votes from outside the proposer's neighbourhood count for nothing.
    outside = await manager.stub.Escalate(
        _escalation(votes=[_vote(outsider, True)], neighbour_count=len(voters))
    )
    assert outside.verdict == manager_pb2.ESCALATION_VERDICT_DEFER

    stranger = await manager.stub.Escalate(
        _escalation(
            encoder_id="enc-77",
            proposal=_proposal("enc-77"),
            votes=[_vote("enc-0", True, proposer="enc-77")],
        )
    )
    assert stranger.verdict == manager_pb2.ESCALATION_VERDICT_REJECT
    assert "not in the mesh" in stranger.reason


async def test_a_health_stream_that_never_reports_is_cut_off(etcd: EtcdProcess) -> None:
    quiet = await start_manager(etcd, first_report_timeout=0.3)

    async def silence() -> AsyncIterator[manager_pb2.HealthReport]:
        await asyncio.sleep(30)  # far longer than the test's patience
        yield report("enc-0")

    try:
        await mesh_of(quiet, 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(quiet.stub.ReportHealth(silence()), 5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no report within 0.3 s" in (caught.value.details() or "")
        # An encoder that reports at once is served as before.
        ack = await quiet.stub.ReportHealth(iter([report("enc-0")]))
        assert ack.reports_accepted == 1
    finally:
        await stop_manager(quiet)


# --- standby ----------------------------------------------------------------------------------


async def test_a_standby_is_not_serving_and_refuses_writes(etcd: EtcdProcess) -> None:
    standby = await start_manager(etcd, active=False)
    try:
        assert (await _health(standby, SERVICE_NAME)) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await _health(standby, "")) == health_pb2.HealthCheckResponse.SERVING
        writes: list[Callable[[], Awaitable[Any]]] = [
            lambda: standby.stub.ReportHealth(_once(report("enc-0"))),
            lambda: standby.stub.Escalate(_escalation()),
            lambda: _first(standby.stub.WatchTopology(manager_pb2.WatchTopologyRequest())),
        ]
        for write in writes:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await write()
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION

        # Taking over: SERVING, and writes are taken.
        await standby.server.set_active(True)
        assert (await _health(standby, SERVICE_NAME)) == health_pb2.HealthCheckResponse.SERVING
        await standby.register("enc-0", BASE_PORT)
        await standby.register("enc-1", BASE_PORT + 1)
        watch = standby.stub.WatchTopology(manager_pb2.WatchTopologyRequest())
        while True:  # one plan per registration, or one for both: bounded by the timeout
            update = await asyncio.wait_for(watch.read(), 5)
            if sorted(neighbours(update.topology)) == ["enc-0", "enc-1"]:
                break

        # Stepping back down ends the watch with UNAVAILABLE, so the client looks elsewhere.
        await standby.server.set_active(False)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(watch.read(), 5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (await _health(standby, SERVICE_NAME)) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await stop_manager(standby)


async def test_a_new_active_manager_continues_above_the_published_epoch(
    etcd: EtcdProcess,
) -> None:
    first = await start_manager(etcd)
    prefix = first.layout.prefix
    try:
        await mesh_of(first, 4)
        published = (await first.stub.GetTopology(manager_pb2.GetTopologyRequest())).epoch
        assert published >= 1
    finally:
        await stop_manager(first)
    second = await start_manager(etcd, prefix=prefix)
    try:
        for i in range(4):  # the same encoders, still registered under their leases
            await second.register(f"enc-{i}", BASE_PORT + i)

        async def replanned() -> bool:
            topology = await second.stub.GetTopology(manager_pb2.GetTopologyRequest())
            return len(topology.adjacency) == 4

        await eventually(replanned)
        topology = await second.stub.GetTopology(manager_pb2.GetTopologyRequest())
        assert topology.epoch > published
        document = await second.stored_document("enc-0")
        assert document is not None and parse_adjacency(document).epoch == topology.epoch
    finally:
        await stop_manager(second)
