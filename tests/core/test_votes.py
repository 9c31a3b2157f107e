"""Resync proposal book and the voter's judgement.

The book is checked against a small reference tally written independently of it (first vote
per electorate member; accepted once approvals are more than half, rejected once even all
outstanding approvals could not make half). Nothing is mocked: the core is pure.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.messages import CorrectionKind, ResyncProposal, ResyncVote
from meshenc.core.votes import (
    IgnoredVotes,
    Outcome,
    ProposalBook,
    Verdict,
    judge_proposal,
    majority,
)

PROPOSER = "enc-p"


def _proposal(
    proposal_id: int = 1,
    *,
    kind: CorrectionKind = CorrectionKind.SLEW,
    shift: float = -0.004,
    effective_segment: int = 0,
    bitrate_kbps: int = 0,
) -> ResyncProposal:
    return ResyncProposal(
        proposer=PROPOSER,
        proposal_id=proposal_id,
        kind=kind,
        shift=shift,
        topology_epoch=7,
        effective_segment=effective_segment,
        bitrate_kbps=bitrate_kbps,
        trace_context=(("traceparent", "00-abc-def-01"),),  # as received: the voter ignores it
    )


def _vote(voter: str, approve: bool, proposal_id: int = 1, proposer: str = PROPOSER) -> ResyncVote:
    return ResyncVote(
        proposer=proposer,
        proposal_id=proposal_id,
        voter=voter,
        approve=approve,
        estimated_deviation=0.0,
    )


def _book(electorate: frozenset[str], *, timeout: float = 1.0) -> ProposalBook:
    """A book with proposal 1 opened at t=10 s."""
    book = ProposalBook()
    book.open(10.0, _proposal(1), electorate, timeout)
    return book


ABC = frozenset({"a", "b", "c"})


# --- majority -------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority_is_strictly_more_than_half(size: int, needed: int) -> None:
    assert majority(size) == needed


def test_majority_of_nobody_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        majority(0)


# --- opening --------------------------------------------------------------------------------


def test_open_rejects_empty_electorate() -> None:
    with pytest.raises(ValueError, match="empty"):
        ProposalBook().open(0.0, _proposal(), frozenset(), 1.0)


def test_open_rejects_proposer_in_its_own_electorate() -> None:
    with pytest.raises(ValueError, match="own electorate"):
        ProposalBook().open(0.0, _proposal(), frozenset({"a", PROPOSER}), 1.0)


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.inf, math.nan])
def test_open_rejects_bad_timeout(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        ProposalBook().open(0.0, _proposal(), ABC, timeout)


def test_reopening_an_open_id_is_an_error() -> None:
    book = _book(ABC)
    with pytest.raises(ValueError, match="already open"):
        book.open(10.5, _proposal(1, shift=0.002), ABC, 1.0)
    assert book.open_count == 1


def test_reusing_a_recently_closed_id_is_an_error() -> None:
    book = _book(ABC)
    book.record_vote(10.1, _vote("a", True))
    book.record_vote(10.2, _vote("b", True))
    with pytest.raises(ValueError, match="used recently"):
        book.open(11.0, _proposal(1), ABC, 1.0)


def test_open_count_tracks_undecided_proposals() -> None:
    book = ProposalBook()
    assert book.open_count == 0
    book.open(0.0, _proposal(1), ABC, 1.0)
    book.open(0.0, _proposal(2), ABC, 1.0)
    assert book.open_count == 2
    assert book.is_open(1)
    book.record_vote(0.1, _vote("a", False, proposal_id=1))
    book.record_vote(0.2, _vote("b", False, proposal_id=1))
    assert book.open_count == 1
    assert not book.is_open(1)
    assert book.is_open(2)


# --- deciding -------------------------------------------------------------------------------


def test_accepted_the_moment_a_majority_approves() -> None:
    book = _book(ABC)
    assert book.record_vote(10.1, _vote("a", True)) is None
    outcome = book.record_vote(10.2, _vote("c", True))
    assert outcome == Outcome(
        proposal=_proposal(1),
        verdict=Verdict.ACCEPTED,
        approvals=frozenset({"a", "c"}),
        rejections=frozenset(),
        decided_at=10.2,
    )
    assert book.open_count == 0


def test_half_is_not_a_majority() -> None:
    book = _book(frozenset({"a", "b", "c", "d"}))
    assert book.record_vote(10.1, _vote("a", True)) is None
    assert book.record_vote(10.2, _vote("b", True)) is None
    outcome = book.record_vote(10.3, _vote("c", True))
    assert outcome is not None
    assert outcome.verdict is Verdict.ACCEPTED


def test_rejected_as_soon_as_majority_is_out_of_reach() -> None:
    book = _book(frozenset({"a", "b", "c", "d"}))
    assert book.record_vote(10.1, _vote("a", True)) is None
    assert book.record_vote(10.2, _vote("b", False)) is None
    # 1 approval, 2 rejections, 1 outstanding: at most 2 of 4 approvals, not a majority.
    outcome = book.record_vote(10.3, _vote("c", False))
    assert outcome is not None
    assert outcome.verdict is Verdict.REJECTED
    assert outcome.approvals == frozenset({"a"})
    assert outcome.rejections == frozenset({"b", "c"})


def test_two_neighbours_need_both() -> None:
    book = _book(frozenset({"a", "b"}))
    outcome = book.record_vote(10.1, _vote("a", False))
    assert outcome is not None
    assert outcome.verdict is Verdict.REJECTED


def test_single_neighbour_decides_alone() -> None:
    book = _book(frozenset({"a"}))
    outcome = book.record_vote(10.1, _vote("a", True))
    assert outcome is not None
    assert outcome.verdict is Verdict.ACCEPTED


# --- ignored votes --------------------------------------------------------------------------


def test_votes_that_cannot_count_are_ignored_and_counted() -> None:
    book = _book(ABC)
    assert book.record_vote(10.1, _vote("a", True, proposal_id=99)) is None
    assert book.record_vote(10.1, _vote("a", True, proposer="enc-other")) is None
    assert book.record_vote(10.1, _vote("mallory", True)) is None
    assert book.record_vote(10.1, _vote(PROPOSER, True)) is None
    assert book.record_vote(10.2, _vote("a", True)) is None
    # A second vote from the same voter, even a different one, does not count.
    assert book.record_vote(10.3, _vote("a", False)) is None
    assert book.record_vote(10.3, _vote("a", True)) is None
    assert book.ignored == IgnoredVotes(unknown=2, outside_electorate=2, duplicate=2)
    assert book.ignored.total == 6
    assert book.open_count == 1


def test_votes_after_decision_are_ignored_as_closed() -> None:
    book = _book(ABC)
    book.record_vote(10.1, _vote("a", True))
    assert book.record_vote(10.2, _vote("b", True)) is not None
    assert book.record_vote(10.3, _vote("c", False)) is None
    assert book.ignored == IgnoredVotes(closed=1)


def test_a_withdrawn_proposal_keeps_its_votes_so_far_and_takes_no_more() -> None:
    book = _book(ABC)
    assert book.electorate(1) == ABC
    book.record_vote(10.1, _vote("a", True))
    outcome = book.withdraw(10.2, 1)
    assert outcome.verdict is Verdict.WITHDRAWN
    assert outcome.approvals == {"a"} and not outcome.rejections and outcome.decided_at == 10.2
    assert book.open_count == 0 and book.electorate(1) == frozenset()
    with pytest.raises(ValueError, match="not open"):
        book.withdraw(10.3, 1)  # closed: nothing to withdraw
    assert book.record_vote(10.3, _vote("b", True)) is None
    assert book.ignored == IgnoredVotes(closed=1)
    assert book.expire(20.0) == []


def test_votes_after_the_deadline_are_late() -> None:
    book = _book(ABC, timeout=1.0)
    assert book.record_vote(11.0, _vote("a", True)) is None  # exactly at the deadline: counts
    assert book.record_vote(11.01, _vote("b", True)) is None  # after: would have decided
    assert book.ignored == IgnoredVotes(late=1)
    assert book.open_count == 1


def test_forgotten_closed_ids_become_unknown_and_reusable() -> None:
    book = ProposalBook(closed_memory=1)
    for pid in (1, 2):
        book.open(0.0, _proposal(pid), frozenset({"a"}), 1.0)
        book.record_vote(0.1, _vote("a", True, proposal_id=pid))
    book.record_vote(0.2, _vote("a", True, proposal_id=1))
    book.record_vote(0.2, _vote("a", True, proposal_id=2))
    assert book.ignored == IgnoredVotes(unknown=1, closed=1)
    book.open(1.0, _proposal(1), frozenset({"a"}), 1.0)
    assert book.is_open(1)


def test_negative_closed_memory_is_an_error() -> None:
    with pytest.raises(ValueError, match="closed_memory"):
        ProposalBook(closed_memory=-1)


# --- expiry ---------------------------------------------------------------------------------


def test_expire_closes_overdue_proposals_in_deadline_order() -> None:
    book = ProposalBook()
    book.open(0.0, _proposal(5), ABC, 2.0)
    book.open(0.0, _proposal(3), ABC, 3.0)
    book.open(0.5, _proposal(4), ABC, 1.0)
    book.record_vote(0.6, _vote("a", True, proposal_id=5))
    assert book.next_deadline() == 1.5
    assert book.expire(1.5) == []
    outcomes = book.expire(2.5)
    assert [(o.proposal.proposal_id, o.verdict) for o in outcomes] == [
        (4, Verdict.EXPIRED),
        (5, Verdict.EXPIRED),
    ]
    assert outcomes[1].approvals == frozenset({"a"})
    assert all(o.decided_at == 2.5 for o in outcomes)
    assert book.open_count == 1
    assert book.next_deadline() == 3.0
    assert book.expire(2.5) == []


def test_next_deadline_is_none_when_nothing_is_open() -> None:
    assert ProposalBook().next_deadline() is None


def test_non_finite_time_is_an_error() -> None:
    book = _book(ABC)
    with pytest.raises(ValueError, match="now"):
        book.record_vote(math.nan, _vote("a", True))
    with pytest.raises(ValueError, match="now"):
        book.expire(math.inf)


# --- properties of the book -----------------------------------------------------------------

VOTER_IDS = [f"v{i}" for i in range(9)]


def _reference_verdict(electorate: frozenset[str], votes: list[tuple[str, bool]]) -> Verdict | None:
    """First-vote-per-member tally, decided at the earliest prefix that settles it."""
    first: dict[str, bool] = {}
    for voter, approve in votes:
        if voter not in electorate or voter in first:
            continue
        first[voter] = approve
        yes = sum(first.values())
        no = len(first) - yes
        if 2 * yes > len(electorate):
            return Verdict.ACCEPTED
        if 2 * (len(electorate) - no) <= len(electorate):
            return Verdict.REJECTED
    return None


@st.composite
def _elections(draw: st.DrawFn) -> tuple[frozenset[str], list[tuple[str, bool]]]:
    electorate = frozenset(draw(st.sets(st.sampled_from(VOTER_IDS[:7]), min_size=1)))
    votes = draw(
        st.lists(st.tuples(st.sampled_from(VOTER_IDS), st.booleans()), max_size=25),
    )
    return electorate, votes


@given(_elections())
def test_book_agrees_with_reference_and_decides_at_most_once(
    election: tuple[frozenset[str], list[tuple[str, bool]]],
) -> None:
    electorate, votes = election
    book = ProposalBook()
    book.open(0.0, _proposal(), electorate, 100.0)
    outcomes = [
        outcome
        for i, (voter, approve) in enumerate(votes)
        if (outcome := book.record_vote(float(i), _vote(voter, approve))) is not None
    ]
    assert len(outcomes) <= 1
    expected = _reference_verdict(electorate, votes)
    assert (outcomes[0].verdict if outcomes else None) == expected
    assert book.open_count == (0 if outcomes else 1)
    # Every vote either counted (once per member, until decided) or was ignored.
    if outcomes:
        counted = len(outcomes[0].approvals | outcomes[0].rejections)
    else:
        counted = len({voter for voter, _ in votes if voter in electorate})
    assert book.ignored.total == len(votes) - counted
    if outcomes:
        outcome = outcomes[0]
        assert outcome.approvals <= electorate
        assert outcome.rejections <= electorate
        assert not outcome.approvals & outcome.rejections
        if outcome.verdict is Verdict.ACCEPTED:
            assert 2 * len(outcome.approvals) > len(electorate)
        # Further votes never produce a second outcome.
        assert book.record_vote(1000.0, _vote(sorted(electorate)[0], True)) is None
        assert book.expire(1e9) == []


@given(
    st.sets(st.sampled_from(VOTER_IDS), min_size=1).flatmap(
        lambda electorate: st.tuples(
            st.just(frozenset(electorate)),
            st.lists(
                st.tuples(st.sampled_from(sorted(electorate)), st.booleans()),
                unique_by=lambda v: v[0],
            ).flatmap(lambda votes: st.tuples(st.just(votes), st.permutations(votes))),
        )
    )
)
def test_vote_order_does_not_change_the_verdict(
    case: tuple[frozenset[str], tuple[list[tuple[str, bool]], list[tuple[str, bool]]]],
) -> None:
    electorate, (votes, shuffled) = case

    def run(order: list[tuple[str, bool]]) -> Verdict | None:
        book = ProposalBook()
        book.open(0.0, _proposal(), electorate, 100.0)
        for voter, approve in order:
            outcome = book.record_vote(1.0, _vote(voter, approve))
            if outcome is not None:
                return outcome.verdict
        return None

    assert run(votes) == run(shuffled)


@given(
    n_honest=st.integers(min_value=1, max_value=6),
    n_liars=st.integers(min_value=0, max_value=6),
    true_deviation=st.floats(min_value=-0.02, max_value=0.02),
    noise=st.lists(st.floats(min_value=-0.0005, max_value=0.0005), min_size=6, max_size=6),
    push=st.floats(min_value=0.002, max_value=0.1),
)
def test_liars_in_the_minority_cannot_pull_an_encoder_away(
    n_honest: int, n_liars: int, true_deviation: float, noise: list[float], push: float
) -> None:
    """A proposal that moves the proposer away from the honest view never passes."""
    if n_liars >= n_honest:
        n_liars = n_honest - 1
    tolerance = 0.001
    # A shift that increases the true deviation by ``push`` (> tolerance + noise).
    shift = push if true_deviation >= 0 else -push
    proposal = _proposal(shift=shift)
    honest = [f"h{i}" for i in range(n_honest)]
    liars = [f"l{i}" for i in range(n_liars)]
    book = ProposalBook()
    book.open(0.0, proposal, frozenset(honest + liars), 1.0)
    verdicts = []
    for i, voter in enumerate(liars):
        lie = ResyncVote(PROPOSER, proposal.proposal_id, voter, True, -shift, "closer")
        if (outcome := book.record_vote(0.1 + i * 0.01, lie)) is not None:
            verdicts.append(outcome.verdict)
    for i, voter in enumerate(honest):
        vote = judge_proposal(proposal, voter, true_deviation + noise[i], tolerance)
        assert not vote.approve
        if (outcome := book.record_vote(0.5 + i * 0.01, vote)) is not None:
            verdicts.append(outcome.verdict)
    assert verdicts == [Verdict.REJECTED]


# --- the voter ------------------------------------------------------------------------------


def test_voter_approves_a_shift_towards_its_view() -> None:
    vote = judge_proposal(_proposal(shift=-0.008), "a", 0.010, 0.001)
    assert vote.approve
    assert vote.reason == "closer"
    assert (vote.proposer, vote.proposal_id, vote.voter) == (PROPOSER, 1, "a")
    assert vote.estimated_deviation == 0.010
    assert vote.trace_context == ()  # the voter's shell sends its own context


def test_voter_rejects_a_shift_away_from_its_view() -> None:
    vote = judge_proposal(_proposal(shift=+0.008), "a", 0.010, 0.001)
    assert not vote.approve
    assert vote.reason == "moves away"


def test_voter_rejects_an_overshoot_that_ends_further_away() -> None:
    # From +10 ms to -12 ms: the proposer crosses the voter's view and lands further off.
    vote = judge_proposal(_proposal(shift=-0.022), "a", 0.010, 0.001)
    assert not vote.approve


@pytest.mark.parametrize("shift", [0.0, -0.020])
def test_voter_rejects_a_correction_that_is_no_closer(shift: float) -> None:
    # -20 ms mirrors the proposer from +10 ms to -10 ms: as far off as before.
    vote = judge_proposal(_proposal(shift=shift), "a", 0.010, 0.001)
    assert not vote.approve
    assert vote.reason == "moves away"


def test_voter_approves_a_small_move_that_stays_within_tolerance() -> None:
    vote = judge_proposal(_proposal(shift=+0.0005), "a", 0.0005, 0.001)
    assert vote.approve
    assert vote.reason == "within tolerance"


def test_voter_without_estimate_rejects() -> None:
    vote = judge_proposal(_proposal(kind=CorrectionKind.DROP, shift=-0.04), "a", None, 0.001)
    assert not vote.approve
    assert vote.reason == "no estimate"
    assert vote.estimated_deviation == 0.0


@pytest.mark.parametrize("shift", [math.nan, math.inf, -math.inf])
def test_voter_rejects_a_malformed_shift_instead_of_raising(shift: float) -> None:
    vote = judge_proposal(_proposal(kind=CorrectionKind.DUPLICATE, shift=shift), "a", 0.04, 0.001)
    assert not vote.approve
    assert vote.reason == "invalid shift"


@pytest.mark.parametrize(
    ("segment", "bitrate", "approve"),
    [(12, 4500, True), (0, 4500, False), (12, 0, False), (-1, -5, False)],
)
def test_parameter_proposals_need_a_segment_and_a_bitrate(
    segment: int, bitrate: int, approve: bool
) -> None:
    proposal = _proposal(
        kind=CorrectionKind.PARAMETER, shift=0.0, effective_segment=segment, bitrate_kbps=bitrate
    )
    assert judge_proposal(proposal, "a", None, 0.001).approve is approve


def test_voter_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="own proposal"):
        judge_proposal(_proposal(), PROPOSER, 0.0, 0.001)
    with pytest.raises(ValueError, match="tolerance"):
        judge_proposal(_proposal(), "a", 0.0, -0.001)
    with pytest.raises(ValueError, match="estimated_deviation"):
        judge_proposal(_proposal(), "a", math.nan, 0.001)


@given(
    kind=st.sampled_from([CorrectionKind.SLEW, CorrectionKind.DROP, CorrectionKind.DUPLICATE]),
    deviation=st.floats(min_value=-1.0, max_value=1.0),
    shift=st.floats(min_value=-1.0, max_value=1.0),
    tolerance=st.floats(min_value=0.0, max_value=0.01),
)
def test_an_approved_correction_never_moves_the_proposer_away_beyond_tolerance(
    kind: CorrectionKind, deviation: float, shift: float, tolerance: float
) -> None:
    vote = judge_proposal(_proposal(kind=kind, shift=shift), "a", deviation, tolerance)
    after = abs(deviation + shift)
    if vote.approve:
        assert after < abs(deviation) or after <= tolerance
    else:
        assert after > tolerance
        assert after >= abs(deviation)
