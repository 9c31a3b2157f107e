"""The engine's phase machines follow their tables, and only their tables."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.phases import (
    LOCK_TRANSITIONS,
    PROPOSAL_TRANSITIONS,
    LockPhase,
    LockSignal,
    LockState,
    ProposalPhase,
    ProposalSignal,
    ProposalState,
)


def test_the_lock_is_reached_only_by_agreeing_for_the_dwell() -> None:
    lock = LockState()
    lock.on(LockSignal.DWELT, 1.0)  # not agreeing yet: nothing happens
    assert lock.phase is LockPhase.LOCKING_IN
    lock.on(LockSignal.TOGETHER, 2.0)
    assert (lock.phase, lock.since) == (LockPhase.AGREEING, 2.0)
    lock.on(LockSignal.TOGETHER, 2.1)  # still agreeing: the dwell runs from 2.0
    assert lock.since == 2.0
    lock.on(LockSignal.DWELT, 2.5)
    assert lock.locked and lock.locked_since == 2.5


def test_a_split_locks_in_again_and_remembers_when_it_last_locked() -> None:
    lock = LockState()
    for signal, at in ((LockSignal.TOGETHER, 1.0), (LockSignal.DWELT, 1.5)):
        lock.on(signal, at)
    lock.on(LockSignal.APART, 2.0)  # a locked encoder is not unlocked by one step apart
    assert lock.locked
    lock.on(LockSignal.SPLIT, 3.0)
    assert (lock.phase, lock.since, lock.locked_since) == (LockPhase.LOCKING_IN, 3.0, 1.5)


@given(st.lists(st.sampled_from(list(LockSignal)), max_size=40))
def test_every_lock_step_is_a_table_entry_or_nothing(signals: list[LockSignal]) -> None:
    lock = LockState()
    entered_locked = math.inf
    for at, signal in enumerate(signals):
        before = lock.phase
        lock.on(signal, float(at))
        expected = LOCK_TRANSITIONS.get((before, signal), before)
        assert lock.phase is expected
        if expected is LockPhase.LOCKED and before is not LockPhase.LOCKED:
            entered_locked = float(at)
        assert lock.locked_since == entered_locked


def _phase(proposal: ProposalState) -> ProposalPhase:
    return proposal.phase


def test_a_turned_down_proposal_backs_off_until_its_time() -> None:
    proposal = ProposalState()
    assert proposal.free(0.0)
    proposal.on(ProposalSignal.PROPOSED)
    assert not proposal.free(0.1)
    proposal.on(ProposalSignal.TURNED_DOWN, until=1.0)
    assert proposal.phase is ProposalPhase.BACKING_OFF
    assert not proposal.free(0.99)
    assert proposal.free(1.0)
    assert _phase(proposal) is ProposalPhase.IDLE  # the back-off ended there


@pytest.mark.parametrize("turned_down", [False, True], ids=["voting", "backing off"])
def test_a_rewiring_frees_a_proposal_at_once(turned_down: bool) -> None:
    proposal = ProposalState()
    proposal.on(ProposalSignal.PROPOSED)
    if turned_down:
        proposal.on(ProposalSignal.TURNED_DOWN, until=1.0)
    proposal.on(ProposalSignal.REWIRED)
    assert proposal.free(0.5)


def test_an_accepted_proposal_frees_at_once() -> None:
    proposal = ProposalState()
    proposal.on(ProposalSignal.PROPOSED)
    proposal.on(ProposalSignal.ACCEPTED)
    assert proposal.free(0.0)


@given(
    st.lists(st.tuples(st.sampled_from(list(ProposalSignal)), st.floats(0.0, 10.0)), max_size=40)
)
def test_every_proposal_step_is_a_table_entry_or_nothing(
    steps: list[tuple[ProposalSignal, float]],
) -> None:
    proposal = ProposalState()
    for signal, until in steps:
        before = proposal.phase
        proposal.on(signal, until=until)
        expected = PROPOSAL_TRANSITIONS.get((before, signal), before)
        assert proposal.phase is expected
        if expected is ProposalPhase.BACKING_OFF and before is not expected:
            assert proposal.until == until
