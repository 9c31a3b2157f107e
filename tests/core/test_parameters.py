"""Mesh-wide parameter changes: the schedule, and the engine's propose → agree → gossip flow."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from meshenc.core.engine import (
    EngineConfig,
    Escalate,
    ParametersAgreed,
    SendProposal,
    SyncEngine,
)
from meshenc.core.messages import CorrectionKind, ResyncProposal, ResyncVote
from meshenc.core.parameters import ParameterChange, Parameters, ParameterSchedule
from meshenc.core.timecode import FrameRate

from .engine_shell import EngineShell

FPS = FrameRate(30)
T = FPS.period
GOP = 30
START = FPS.slot_middle(FPS.slot(1.8e9))


def test_the_schedule_steps_at_the_effective_segment_only() -> None:
    schedule = ParameterSchedule(1500)
    assert schedule.adopt(ParameterChange(10, Parameters(800)), current_segment=5) == 10
    bitrates = [schedule.parameters_for(s).bitrate_kbps for s in (5, 9, 10, 11)]
    assert bitrates == [1500, 1500, 800, 800]
    assert schedule.pending(5) == ParameterChange(10, Parameters(800))
    assert schedule.pending(10) is None


def test_the_schedule_refuses_older_changes_and_settles_one_segment_on_the_lower_bitrate() -> None:
    schedule = ParameterSchedule(1500)
    assert schedule.adopt(ParameterChange(10, Parameters(800)), current_segment=5) == 10
    assert schedule.adopt(ParameterChange(8, Parameters(600)), current_segment=5) is None
    assert schedule.adopt(ParameterChange(10, Parameters(900)), current_segment=5) is None
    assert schedule.adopt(ParameterChange(10, Parameters(700)), current_segment=5) == 10
    assert schedule.parameters_for(10).bitrate_kbps == 700
    assert schedule.newest == ParameterChange(10, Parameters(700))


def test_a_change_learnt_after_its_segment_began_applies_from_the_next_one() -> None:
    """An encoder that was not there when the mesh agreed (a joiner): the segment it is in
    keeps its parameters, the next takes the change, and the change is passed on as agreed."""
    schedule = ParameterSchedule(1500)
    agreed = ParameterChange(5, Parameters(800, (320, 180)))
    assert schedule.adopt(agreed, current_segment=12) == 13
    assert schedule.parameters_for(12) == Parameters(1500)
    assert schedule.parameters_for(13) == agreed.parameters
    assert schedule.newest == agreed and schedule.pending(12) is None  # blocks no request
    assert schedule.adopt(agreed, current_segment=12) is None  # heard again: nothing new
    # A later change of the mesh, in time, takes over from its own segment.
    assert schedule.adopt(ParameterChange(15, Parameters(600)), current_segment=12) == 15
    assert schedule.parameters_for(14) == agreed.parameters
    assert schedule.parameters_for(15) == Parameters(600)


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
    assert agreed == [
        ParametersAgreed(
            ParameterChange(proposal.effective_segment, Parameters(800)),
            1,
            proposal.effective_segment,
        )
    ]
    esp = engine.encoded(now)[0][1]
    assert (esp.params_segment, esp.params_bitrate_kbps) == (proposal.effective_segment, 800)
    assert engine.engine.parameters_for(proposal.effective_segment - 1).bitrate_kbps == 1500
    assert engine.engine.parameters_for(proposal.effective_segment).bitrate_kbps == 800


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
    assert engine.engine.parameters_for(proposal.effective_segment).bitrate_kbps == 1500


@pytest.mark.parametrize(("bitrate_kbps", "size"), [(600, None), (700, (480, 270))])
def test_a_neighbour_adopts_an_agreed_change_from_an_esp_and_passes_it_on(
    bitrate_kbps: int, size: tuple[int, int] | None
) -> None:
    proposer = _engine("a", ["b", "c"])
    listener = _engine("b", ["a", "x"])
    _frames(proposer, range(40))
    _frames(listener, range(40))
    now = START + 40 * T
    proposal = _agreed(proposer, now, bitrate_kbps, size)
    esp = next(e for to, e in proposer.encoded(now) if to == "b")
    listener.esp(now, esp)
    adopted = [a for a in listener.drain() if isinstance(a, ParametersAgreed)]
    change = ParameterChange(proposal.effective_segment, Parameters(bitrate_kbps, size))
    assert adopted == [ParametersAgreed(change, 0, proposal.effective_segment)]
    relayed = next(e for to, e in listener.encoded(now) if to == "x")
    assert (relayed.params_segment, relayed.params_size) == (proposal.effective_segment, size)


def test_a_proposal_for_a_segment_already_begun_is_not_approved() -> None:
    late = _engine("b", ["a", "c"])
    _frames(late, range(100))  # well into segment 3
    proposal = ResyncProposal(
        "a", 9, CorrectionKind.PARAMETER, 0.0, 0, effective_segment=late.engine.current_segment,
        bitrate_kbps=600,
    )  # fmt: skip
    answer = late.proposal(START + 100 * T, proposal)
    assert answer is not None and not answer.vote.approve
    assert late.engine.parameters_for(late.engine.current_segment + 1).bitrate_kbps == 1500


def test_a_joiner_takes_the_meshs_parameters_from_its_next_segment() -> None:
    """The mesh agreed on a change before the joiner started: the ESPs it hears carry it, and
    from its next segment on it encodes with the mesh's parameters, not its own start ones."""
    proposer = _engine("a", ["b", "c"])
    _frames(proposer, range(40))
    now = START + 40 * T
    proposal = _agreed(proposer, now, 400, (192, 108))
    passed = 40 + (proposal.effective_segment - proposer.engine.current_segment + 2) * GOP
    _frames(proposer, range(40, passed))
    joiner = _engine("j", ["a"])
    _frames(joiner, range(passed - 3, passed))
    current = joiner.engine.current_segment
    assert current > proposal.effective_segment
    esp = next(e for to, e in proposer.encoded(START + passed * T) if to == "b")
    joiner.esp(START + passed * T, esp)
    (agreed,) = [a for a in joiner.drain() if isinstance(a, ParametersAgreed)]
    assert agreed.applies_from == current + 1
    assert joiner.engine.parameters_for(current) == Parameters(1500)
    assert joiner.engine.parameters_for(current + 1) == Parameters(400, (192, 108))
    # It passes the change on as the mesh agreed it.
    relayed = next(e for _, e in joiner.encoded(START + passed * T))
    assert (relayed.params_segment, relayed.params_size) == (proposal.effective_segment, (192, 108))


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
    assert (
        listener.engine.parameters_for(listener.engine.current_segment + 1000).bitrate_kbps == 1500
    )
    # A real change can still be proposed.
    proposal = _requested(listener, now, 600)
    lead = listener.engine.config.parameter_lead
    assert proposal.effective_segment == listener.engine.current_segment + lead


def test_two_changes_for_one_segment_settle_on_the_lower_bitrate_then_the_smaller_picture() -> None:
    schedule = ParameterSchedule(1500)
    assert schedule.adopt(ParameterChange(10, Parameters(800, (640, 360))), current_segment=5)
    assert not schedule.adopt(ParameterChange(10, Parameters(800, (1280, 720))), current_segment=5)
    assert schedule.adopt(ParameterChange(10, Parameters(800, (320, 180))), current_segment=5)
    assert not schedule.adopt(ParameterChange(10, Parameters(900, (160, 90))), current_segment=5)
    assert schedule.parameters_for(10) == Parameters(800, (320, 180))
    assert schedule.parameters_for(9) == Parameters(1500)  # the started size until then


def test_a_size_out_of_bounds_is_no_parameter() -> None:
    for size in ((321, 180), (320, 14), (3842, 2160), (0, 180)):
        with pytest.raises(ValueError, match="must be even"):
            Parameters(800, size)


def _agreed(
    engine: EngineShell, now: float, bitrate_kbps: int, size: tuple[int, int] | None
) -> ResyncProposal:
    """Ask ``engine`` for a change, have its neighbours b and c approve; the proposal."""
    proposal = engine.request(now, bitrate_kbps, size)
    assert isinstance(proposal, ResyncProposal), proposal
    for voter in "bc":
        engine.vote(now, ResyncVote(engine.engine.node_id, proposal.proposal_id, voter, True, 0.0))
    return proposal


def test_a_size_change_is_agreed_with_the_bitrate_as_agreed_and_reaches_the_frames() -> None:
    engine = _engine("a", ["b", "c", "d"])
    _frames(engine, range(40))
    now = START + 40 * T
    proposal = _agreed(engine, now, 0, (320, 180))  # the size alone
    assert (proposal.bitrate_kbps, proposal.size) == (1500, (320, 180))
    engine.drain()
    esp = engine.encoded(now)[0][1]
    assert (esp.params_segment, esp.params_bitrate_kbps, esp.params_size) == (
        proposal.effective_segment,
        1500,
        (320, 180),
    )
    # The frames: the started size up to the change, the new one from its first slot on.
    effective = proposal.effective_segment
    encoded: dict[int, Parameters] = {}
    for k in range(40, 40 + (effective + 1 - engine.engine.current_segment) * GOP):
        decision = engine.frame(START + k * T, k)
        encoded.update(zip(decision.timecodes, decision.parameters, strict=True))
    first = min(encoded)
    start_of_change = next(tc for tc in sorted(encoded) if tc // GOP == effective)
    assert start_of_change % GOP == 0  # a GOP's first slot
    assert {encoded[tc].size for tc in encoded if tc < start_of_change} == {None}
    assert {encoded[tc].size for tc in encoded if tc >= start_of_change} == {(320, 180)}
    assert first < start_of_change


def test_a_bitrate_change_after_a_size_change_keeps_the_size() -> None:
    engine = _engine("a", ["b", "c"])
    _frames(engine, range(40))
    first = _agreed(engine, START + 40 * T, 0, (320, 180))
    # Into the changed segment: the change is no longer pending.
    passed = 40 + (first.effective_segment - engine.engine.current_segment + 1) * GOP
    _frames(engine, range(40, passed))
    assert engine.engine.current_segment >= first.effective_segment
    second = _agreed(engine, START + passed * T, 600, None)
    assert (second.bitrate_kbps, second.size) == (600, (320, 180))
    assert engine.engine.parameters_for(second.effective_segment) == Parameters(600, (320, 180))
