"""Mesh-wide parameter changes: the schedule, and the engine's propose → agree → gossip flow."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from meshenc.core.engine import (
    EngineConfig,
    Escalate,
    ParametersAgreed,
    SendProposal,
    SyncEngine,
)
from meshenc.core.messages import CorrectionKind, ResyncProposal, ResyncVote
from meshenc.core.parameters import ParameterChange, ParameterSchedule
from meshenc.core.timecode import FrameRate

from .engine_shell import EngineShell

FPS = FrameRate(30)
T = FPS.period
GOP = 30
START = FPS.slot_middle(FPS.slot(1.8e9))


def test_the_schedule_steps_at_the_effective_segment_only() -> None:
    schedule = ParameterSchedule(1500)
    assert schedule.adopt(ParameterChange(10, 800), current_segment=5)
    assert [schedule.bitrate_for(s) for s in (5, 9, 10, 11)] == [1500, 1500, 800, 800]
    assert schedule.pending(5) == ParameterChange(10, 800)
    assert schedule.pending(10) is None


def test_the_schedule_refuses_late_and_older_changes() -> None:
    schedule = ParameterSchedule(1500)
    assert not schedule.adopt(ParameterChange(5, 800), current_segment=5)  # already begun
    assert schedule.adopt(ParameterChange(10, 800), current_segment=5)
    assert not schedule.adopt(ParameterChange(8, 600), current_segment=5)  # older than ours
    assert not schedule.adopt(ParameterChange(10, 900), current_segment=5)  # same, higher
    assert schedule.adopt(ParameterChange(10, 700), current_segment=5)  # same, lower: wins
    assert schedule.bitrate_for(10) == 700
    assert schedule.newest == ParameterChange(10, 700)


def _engine(name: str, neighbours: list[str]) -> EngineShell:
    config = EngineConfig(frame_rate=FPS, gop=GOP, bitrate_kbps=1500)
    return EngineShell(SyncEngine(name, config, neighbours))


def _frames(engine: EngineShell, pictures: range) -> None:
    for k in pictures:
        engine.frame(START + k * T, k)


def _requested(engine: EngineShell, now: float, bitrate_kbps: int) -> ResyncProposal:
    """Ask for a change that must be proposed."""
    proposal = engine.request(now, bitrate_kbps)
    assert isinstance(proposal, ResyncProposal), proposal
    return proposal


def _proposal(actions: Sequence[object]) -> ResyncProposal:
    sent = [a for a in actions if isinstance(a, SendProposal)]
    assert len(sent) == 1
    return sent[0].proposal


def test_a_change_needs_frames_neighbours_and_no_pending_change() -> None:
    assert _engine("a", ["b"]).request(START, 800) == "no frame encoded yet"
    lonely = _engine("a", [])
    _frames(lonely, range(3))
    assert lonely.request(START, 800) == "no neighbours to agree with"
    busy = _engine("a", ["b", "c"])
    _frames(busy, range(3))
    _requested(busy, START, 800)
    refused = busy.request(START, 700)
    assert isinstance(refused, str) and refused.startswith("a change is already pending")
    sent = [a.proposal.bitrate_kbps for a in busy.drain() if isinstance(a, SendProposal)]
    assert sent == [800]


def test_an_approved_change_is_agreed_and_rides_in_every_esp() -> None:
    engine = _engine("a", ["b", "c", "d"])
    _frames(engine, range(40))  # segment 1 of the timeline's GOPs
    now = START + 40 * T
    proposal = _requested(engine, now, 800)
    assert proposal.kind is CorrectionKind.PARAMETER
    assert proposal.effective_segment == engine.engine.current_segment + 3
    assert _proposal(engine.drain()) == proposal
    for voter in "bc":
        engine.vote(now, ResyncVote("a", proposal.proposal_id, voter, True, 0.0))
    agreed = [a for a in engine.drain() if isinstance(a, ParametersAgreed)]
    assert agreed == [ParametersAgreed(ParameterChange(proposal.effective_segment, 800), 1)]
    esp = engine.encoded(now)[0][1]
    assert (esp.params_segment, esp.params_bitrate_kbps) == (proposal.effective_segment, 800)
    assert engine.engine.bitrate_for(proposal.effective_segment - 1) == 1500
    assert engine.engine.bitrate_for(proposal.effective_segment) == 800


def test_a_rejected_change_is_escalated_and_not_agreed() -> None:
    engine = _engine("a", ["b", "c"])
    _frames(engine, range(40))
    now = START + 40 * T
    proposal = _requested(engine, now, 800)
    engine.drain()
    for voter in "bc":
        engine.vote(now, ResyncVote("a", proposal.proposal_id, voter, False, 0.0))
    actions = engine.drain()
    assert [a for a in actions if isinstance(a, Escalate)]
    assert not [a for a in actions if isinstance(a, ParametersAgreed)]
    assert engine.engine.bitrate_for(proposal.effective_segment) == 1500


def test_a_neighbour_adopts_an_agreed_change_from_an_esp_and_passes_it_on() -> None:
    proposer = _engine("a", ["b", "c"])
    listener = _engine("b", ["a", "x"])
    _frames(proposer, range(40))
    _frames(listener, range(40))
    now = START + 40 * T
    proposal = _requested(proposer, now, 600)
    for voter in "bc":
        proposer.vote(now, ResyncVote("a", proposal.proposal_id, voter, True, 0.0))
    esp = next(e for to, e in proposer.encoded(now) if to == "b")
    listener.esp(now, esp)
    adopted = [a for a in listener.drain() if isinstance(a, ParametersAgreed)]
    assert adopted == [ParametersAgreed(ParameterChange(proposal.effective_segment, 600), 0)]
    relayed = next(e for to, e in listener.encoded(now) if to == "x")
    assert relayed.params_segment == proposal.effective_segment


def test_a_change_for_a_segment_already_begun_is_neither_approved_nor_adopted() -> None:
    late = _engine("b", ["a", "c"])
    _frames(late, range(100))  # well into segment 3
    proposal = ResyncProposal(
        "a", 9, CorrectionKind.PARAMETER, 0.0, 0, effective_segment=late.engine.current_segment,
        bitrate_kbps=600,
    )  # fmt: skip
    answer = late.proposal(START + 100 * T, proposal)
    assert answer is not None and not answer.vote.approve
    assert late.engine.bitrate_for(late.engine.current_segment) == 1500


def test_a_change_announced_far_ahead_is_not_adopted_and_blocks_nothing() -> None:
    # A neighbour (lying, or broken) announces an "agreed" change for a segment no proposal of
    # this mesh could have named: adopting it would block every real change until then.
    listener = _engine("b", ["a", "c"])
    _frames(listener, range(40))
    now = START + 40 * T
    sender = _engine("a", ["b"])
    _frames(sender, range(40))
    esp = next(e for to, e in sender.encoded(now) if to == "b")
    far = dataclasses.replace(
        esp, params_segment=listener.engine.current_segment + 1000, params_bitrate_kbps=64
    )
    listener.esp(now, far)
    assert not [a for a in listener.drain() if isinstance(a, ParametersAgreed)]
    assert listener.engine.bitrate_for(listener.engine.current_segment + 1000) == 1500
    # A real change can still be proposed.
    proposal = _requested(listener, now, 600)
    lead = listener.engine.config.parameter_lead
    assert proposal.effective_segment == listener.engine.current_segment + lead
