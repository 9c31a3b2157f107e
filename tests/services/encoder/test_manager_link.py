"""The encoder's side of the manager link, against the real manager server and real etcd.

Shown: a report built from a fresh engine (nothing measured yet: NaN RTTs and deviations) is
valid on the wire; the link keeps trying while no manager listens and reports as soon as one
does; an escalation to an absent manager returns None instead of raising (the encoder keeps
its timeline).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from meshenc.core.engine import EngineConfig, Escalate, SyncEngine
from meshenc.core.messages import CorrectionKind, ResyncProposal, ResyncVote
from meshenc.core.timecode import FrameRate
from meshenc.core.votes import Outcome, Verdict
from meshenc.local.etcd import EtcdProcess
from meshenc.local.ports import free_ports
from meshenc.v1 import manager_pb2
from meshenc.wire import convert
from meshenc.wire.validation import validate_escalation, validate_health_report
from services.encoder.manager_link import ManagerLink, VoteLog
from tests.services.manager_support import start_manager, stop_manager

pytestmark = pytest.mark.asyncio


def _report(encoder: str = "enc-0") -> manager_pb2.HealthReport:
    engine = SyncEngine(encoder, EngineConfig(frame_rate=FrameRate.parse("30")), ["enc-1"])
    return convert.health_to_proto(
        encoder,
        engine.snapshot(time.time()),
        topology_epoch=0,
        cpu_load=float("nan"),
        encode_latency=0.0,
        segment="",
        connected=lambda _peer: False,
        sent_unix_ns=time.time_ns(),
    )


async def test_a_report_from_an_unmeasured_engine_is_valid() -> None:
    report = _report()
    validate_health_report(report)
    assert [link.connected for link in report.links] == [False]


async def test_the_escalation_carries_the_votes_received() -> None:
    proposal = ResyncProposal("enc-0", 3, CorrectionKind.SLEW, 0.004, topology_epoch=2)
    votes = VoteLog()
    traced = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"),)
    votes.record(ResyncVote("enc-0", 3, "enc-1", False, 0.012, "far off", traced))
    outcome = Outcome(proposal, Verdict.REJECTED, frozenset({"enc-2"}), frozenset({"enc-1"}), 1.0)
    request = convert.escalation_to_proto(proposal, votes.take(Escalate(outcome, 0.01)), 3, 1)
    validate_escalation(request)
    by_voter = {v.voter_id: v for v in request.votes}
    assert by_voter["enc-1"].estimated_deviation_ns == 12_000_000
    assert by_voter["enc-1"].reason == "far off" and not by_voter["enc-1"].approve
    assert dict(by_voter["enc-1"].trace_context) == dict(traced)  # as it arrived
    assert by_voter["enc-2"].approve  # counted, but its message was not kept
    assert request.neighbour_count == 3


async def test_a_proposals_account_gives_each_kept_rejections_reason() -> None:
    proposal = ResyncProposal("enc-0", 7, CorrectionKind.DROP, -0.033, topology_epoch=2)
    votes = VoteLog()
    votes.record(ResyncVote("enc-0", 7, "enc-1", False, 0.0, "no estimate"))
    votes.record(ResyncVote("enc-0", 7, "enc-3", True, 0.03, "closer"))
    votes.record(ResyncVote("enc-0", 7, "enc-4", False, 0.0125, "moves away"))
    votes.record(ResyncVote("enc-0", 6, "enc-2", False, 0.0, "moves away"))  # another proposal
    rejected = frozenset({"enc-1", "enc-2", "enc-4"})
    outcome = Outcome(proposal, Verdict.REJECTED, frozenset({"enc-3"}), rejected, 1.0)
    assert votes.account(outcome) == (
        "7 rejected (shift -33.0 ms; approvals ['enc-3'], rejections ['enc-1': no estimate, "
        "'enc-2', 'enc-4': moves away at +12.5 ms])"
    )
    change = ResyncProposal(
        "enc-0", 8, CorrectionKind.PARAMETER, 0.0, 2, effective_segment=9, bitrate_kbps=900
    )
    votes.record(ResyncVote("enc-0", 8, "enc-1", False, 0.0, "bad parameters"))
    refused = Outcome(change, Verdict.REJECTED, frozenset(), frozenset({"enc-1"}), 1.0)
    assert (
        votes.account(refused) == "8 rejected (approvals [], rejections ['enc-1': bad parameters])"
    )


async def test_the_link_reports_once_a_manager_listens(etcd: EtcdProcess) -> None:
    (port,) = free_ports(1)
    link = ManagerLink(f"127.0.0.1:{port}", _report, interval=0.1, backoff_cap=0.3)
    running = asyncio.create_task(link.run())
    try:
        assert await link.escalate(escalation_request(), timeout=0.5) is None
        await asyncio.sleep(0.5)  # a few failed attempts, none of them fatal
        assert not running.done()
        manager = await start_manager(etcd, listen=f"127.0.0.1:{port}")
        try:
            await manager.register("enc-0", 7400)
            deadline = time.monotonic() + 10.0
            while manager.shell.reports["enc-0"] < 2:
                assert time.monotonic() < deadline, "no report reached the manager"
                await asyncio.sleep(0.05)
            assert link.streams >= 1
        finally:
            await stop_manager(manager)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await link.close()


def escalation_request() -> manager_pb2.Escalation:
    proposal = ResyncProposal("enc-0", 1, CorrectionKind.SLEW, 0.001, topology_epoch=0)
    return convert.escalation_to_proto(proposal, (), 1, time.time_ns())
