"""Resync proposals and votes: a correction passes only if most neighbours agree it helps.

Theory of operation
-------------------
Before a significant correction an encoder puts a :class:`~meshenc.core.messages.ResyncProposal`
to its current neighbours. Each neighbour judges it from its *own* measurement of the proposer
(:func:`judge_proposal`) and answers with a :class:`~meshenc.core.messages.ResyncVote`. The
proposer's :class:`ProposalBook` counts the votes and decides:

- ACCEPTED the moment strictly more than half of the electorate has approved;
- REJECTED the moment a majority can no longer be reached (the rejections alone exceed what
  the electorate can spare);
- EXPIRED when the deadline passes undecided (:meth:`ProposalBook.expire`).

What to do with an outcome is the caller's business: ACCEPTED means apply the correction;
REJECTED and EXPIRED mean do not apply it and escalate to the Mesh Manager. The book never
applies, sends or escalates anything itself.

Invariants (each holds after every call):

1. A proposal is decided at most once. Once decided it is closed; later votes for it are
   ignored and counted, never re-decided.
2. ACCEPTED implies approvals from strictly more than ``len(electorate) / 2`` *distinct*
   members of the electorate.
3. Each voter counts once: its first vote stands, later ones are ignored as duplicates. A voter
   that could change its mind after seeing how the vote goes could swing it.
4. The electorate is fixed when the proposal opens. Topology changes during the vote do not
   change who counts, so nobody can reshape the electorate to get a correction through.
5. Given the same set of (first) votes from distinct voters, the verdict does not depend on the
   order they arrive in: approvals and rejections from distinct voters cannot both reach their
   thresholds, since that would take more voters than the electorate has.
6. Votes arriving after the deadline do not count (they are ignored as late); the proposal is
   reported EXPIRED by the next :meth:`ProposalBook.expire`.

Why a vote at all: a lying or broken neighbour must not be able to pull an honest encoder off
the timeline. A single neighbour's view cannot move the proposer; most of them, each from its
own measurement, must agree that the correction brings the proposer closer to them.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field, fields

from meshenc.core.messages import CorrectionKind, ResyncProposal, ResyncVote
from meshenc.core.parameters import ParameterChange, Parameters

__all__ = [
    "IgnoredVotes",
    "Outcome",
    "ProposalBook",
    "Verdict",
    "judge_proposal",
    "majority",
]


class Verdict(enum.Enum):
    """How a proposal ended. Only ACCEPTED lets the proposer apply its correction."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXPIRED = "expired"
    #: The proposer took it back before a verdict (its neighbours changed while it was open).
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decided proposal, with the votes that had been counted when it was decided."""

    proposal: ResyncProposal
    verdict: Verdict
    approvals: frozenset[str]
    rejections: frozenset[str]
    decided_at: float


@dataclass(frozen=True, slots=True)
class IgnoredVotes:
    """Votes the book ignored, by reason. Non-zero counts are worth a metric and a look.

    ``unknown``: no such proposal open or recently closed (or the vote names another
    proposer); ``closed``: the proposal was already decided; ``late``: it arrived after the
    deadline; ``outside_electorate``: the voter was not a neighbour when the proposal opened;
    ``duplicate``: the voter had already voted.
    """

    unknown: int = 0
    closed: int = 0
    late: int = 0
    outside_electorate: int = 0
    duplicate: int = 0

    @property
    def total(self) -> int:
        """All ignored votes, whatever the reason."""
        return self.unknown + self.closed + self.late + self.outside_electorate + self.duplicate


def majority(electorate_size: int) -> int:
    """Approvals needed to accept: strictly more than half of the electorate.

    Raises:
        ValueError: if the electorate is empty (nobody could ever approve).
    """
    if electorate_size <= 0:
        raise ValueError(f"electorate must not be empty, got size {electorate_size}")
    return electorate_size // 2 + 1


@dataclass(slots=True)
class _Ballot:
    """The mutable tally of one open proposal (private: only the book changes it)."""

    proposal: ResyncProposal
    electorate: frozenset[str]
    deadline: float
    approvals: set[str] = field(default_factory=set)
    rejections: set[str] = field(default_factory=set)

    def verdict(self) -> Verdict | None:
        needed = majority(len(self.electorate))
        if len(self.approvals) >= needed:
            return Verdict.ACCEPTED
        # Rejected once even every outstanding voter approving could not reach a majority.
        if len(self.rejections) > len(self.electorate) - needed:
            return Verdict.REJECTED
        return None

    def outcome(self, verdict: Verdict, now: float) -> Outcome:
        return Outcome(
            proposal=self.proposal,
            verdict=verdict,
            approvals=frozenset(self.approvals),
            rejections=frozenset(self.rejections),
            decided_at=now,
        )


def _check_time(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


class ProposalBook:
    """The open resync proposals of one encoder, and the votes on them.

    Sans-IO: feed it the proposals the encoder sends (:meth:`open`), the votes it receives
    (:meth:`record_vote`) and timer ticks (:meth:`expire`, due at :meth:`next_deadline`); it
    returns :class:`Outcome` values. Applying an ACCEPTED correction and escalating a
    REJECTED or EXPIRED one to the Mesh Manager is the caller's job.

    Args:
        closed_memory: how many decided proposal ids to remember, so that stray votes for them
            are counted as ``closed`` rather than ``unknown`` and the ids are not reused while
            such votes may still be in flight.
    """

    __slots__ = ("_closed", "_closed_memory", "_closed_order", "_ignored", "_open")

    def __init__(self, *, closed_memory: int = 256) -> None:
        if closed_memory < 0:
            raise ValueError(f"closed_memory must be >= 0, got {closed_memory}")
        self._closed_memory = closed_memory
        self._open: dict[int, _Ballot] = {}
        self._closed: set[int] = set()
        self._closed_order: deque[int] = deque()
        self._ignored: dict[str, int] = {f.name: 0 for f in fields(IgnoredVotes)}

    @property
    def open_count(self) -> int:
        """How many proposals are still undecided."""
        return len(self._open)

    @property
    def ignored(self) -> IgnoredVotes:
        """A snapshot of the ignored-vote counters."""
        return IgnoredVotes(**self._ignored)

    def is_open(self, proposal_id: int) -> bool:
        """Whether the proposal is still waiting for votes."""
        return proposal_id in self._open

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (None when nothing is open).

        A proposal expires at any ``now`` strictly after this time.
        """
        if not self._open:
            return None
        return min(ballot.deadline for ballot in self._open.values())

    def open(
        self,
        now: float,
        proposal: ResyncProposal,
        electorate: frozenset[str],
        timeout: float,
    ) -> None:
        """Start counting votes on a proposal the encoder is about to send.

        Args:
            now: the caller's clock, seconds.
            proposal: the proposal being sent.
            electorate: the proposer's neighbours at this moment; they alone may vote.
            timeout: seconds after ``now`` at which an undecided proposal expires.

        Raises:
            ValueError: on an empty electorate, an electorate that includes the proposer
                (nobody votes on their own correction), a non-positive or non-finite timeout,
                or a proposal id that is open or recently closed (late votes for the old
                proposal would otherwise count for the new one).
        """
        _check_time("now", now)
        if not electorate:
            raise ValueError(f"proposal {proposal.proposal_id}: electorate must not be empty")
        if proposal.proposer in electorate:
            raise ValueError(
                f"proposal {proposal.proposal_id}: proposer {proposal.proposer!r} "
                "cannot be in its own electorate"
            )
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be positive and finite, got {timeout!r}")
        if proposal.proposal_id in self._open:
            raise ValueError(f"proposal {proposal.proposal_id} is already open")
        if proposal.proposal_id in self._closed:
            raise ValueError(f"proposal id {proposal.proposal_id} was used recently; use a new id")
        self._open[proposal.proposal_id] = _Ballot(
            proposal=proposal, electorate=frozenset(electorate), deadline=now + timeout
        )

    def record_vote(self, now: float, vote: ResyncVote) -> Outcome | None:
        """Count one vote; return the outcome if this vote decided the proposal.

        Votes that cannot count (see :class:`IgnoredVotes`) are ignored and tallied, never
        raised: they arrive from the network, and a broken neighbour must not be able to
        crash the proposer.
        """
        _check_time("now", now)
        ballot = self._open.get(vote.proposal_id)
        if ballot is None or ballot.proposal.proposer != vote.proposer:
            if ballot is None and vote.proposal_id in self._closed:
                self._ignore("closed")
            else:
                self._ignore("unknown")
            return None
        if now > ballot.deadline:
            self._ignore("late")
            return None
        if vote.voter not in ballot.electorate:
            self._ignore("outside_electorate")
            return None
        if vote.voter in ballot.approvals or vote.voter in ballot.rejections:
            self._ignore("duplicate")
            return None
        (ballot.approvals if vote.approve else ballot.rejections).add(vote.voter)
        verdict = ballot.verdict()
        if verdict is None:
            return None
        self._close(vote.proposal_id)
        return ballot.outcome(verdict, now)

    def electorate(self, proposal_id: int) -> frozenset[str]:
        """Who may vote on an open proposal (empty when it is not open)."""
        ballot = self._open.get(proposal_id)
        return frozenset() if ballot is None else ballot.electorate

    def withdraw(self, now: float, proposal_id: int) -> Outcome:
        """Close an open proposal as WITHDRAWN, with the votes counted so far. Votes arriving
        for it later count as ``closed``.

        Raises:
            ValueError: the proposal is not open (never opened, or already decided).
        """
        _check_time("now", now)
        ballot = self._open.get(proposal_id)
        if ballot is None:
            raise ValueError(f"proposal {proposal_id} is not open")
        self._close(proposal_id)
        return ballot.outcome(Verdict.WITHDRAWN, now)

    def expire(self, now: float) -> list[Outcome]:
        """Close every proposal whose deadline is strictly before ``now``, as EXPIRED.

        Returns the outcomes ordered by deadline, then proposal id, so that every run over
        the same inputs reports them in the same order.
        """
        _check_time("now", now)
        due = sorted(
            (ballot.deadline, proposal_id)
            for proposal_id, ballot in self._open.items()
            if now > ballot.deadline
        )
        outcomes: list[Outcome] = []
        for _, proposal_id in due:
            ballot = self._open[proposal_id]
            self._close(proposal_id)
            outcomes.append(ballot.outcome(Verdict.EXPIRED, now))
        return outcomes

    def _ignore(self, reason: str) -> None:
        self._ignored[reason] += 1

    def _close(self, proposal_id: int) -> None:
        del self._open[proposal_id]
        if self._closed_memory == 0:
            return
        self._closed.add(proposal_id)
        self._closed_order.append(proposal_id)
        while len(self._closed_order) > self._closed_memory:
            self._closed.discard(self._closed_order.popleft())


def judge_proposal(
    proposal: ResyncProposal,
    voter: str,
    estimated_deviation: float | None,
    tolerance: float,
) -> ResyncVote:
    """Decide, from the voter's own measurement, whether a proposal helps.

    A timeline correction (SLEW, DROP, DUPLICATE) adds ``proposal.shift`` to the proposer's
    label, so the deviation the voter sees goes from ``d`` to ``d + shift``. The voter
    approves when that brings the proposer closer (``|d + shift| < |d|``) or leaves it within
    ``tolerance``; otherwise it rejects. A voter with no estimate of the proposer rejects:
    it cannot vouch for what it has not measured. A PARAMETER change does not move the label,
    so it needs no estimate; the voter approves a positive segment and bitrate here and checks
    that the segment is a future GOP boundary where it knows its own segment count.

    Args:
        proposal: the proposal received; untrusted, so malformed content is rejected rather
            than raised.
        voter: the voting encoder's id.
        estimated_deviation: the voter's estimate, in seconds, of the proposer's label minus
            its own for the same picture, now; None when it has none.
        tolerance: seconds of deviation the voter accepts as "in lock".

    Returns:
        The vote, carrying the voter's estimate (0.0 when it has none) and a short reason.

    Raises:
        ValueError: on the voter's own bad inputs: a negative or non-finite tolerance, a
            non-finite estimate, or a voter judging its own proposal.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance!r}")
    if estimated_deviation is not None and not math.isfinite(estimated_deviation):
        raise ValueError(f"estimated_deviation must be finite or None, got {estimated_deviation!r}")
    if voter == proposal.proposer:
        raise ValueError(f"{voter!r} cannot vote on its own proposal")

    approve, reason = _assess(proposal, estimated_deviation, tolerance)
    return ResyncVote(
        proposer=proposal.proposer,
        proposal_id=proposal.proposal_id,
        voter=voter,
        approve=approve,
        estimated_deviation=0.0 if estimated_deviation is None else estimated_deviation,
        reason=reason,
    )


def _assess(
    proposal: ResyncProposal, estimated_deviation: float | None, tolerance: float
) -> tuple[bool, str]:
    if proposal.kind is CorrectionKind.PARAMETER:
        try:
            ParameterChange(
                proposal.effective_segment, Parameters(proposal.bitrate_kbps, proposal.size)
            )
        except ValueError:
            return False, "bad parameters"
        return True, "parameters valid"
    if not math.isfinite(proposal.shift):
        return False, "invalid shift"
    if estimated_deviation is None:
        return False, "no estimate"
    before = abs(estimated_deviation)
    after = abs(estimated_deviation + proposal.shift)
    if after <= tolerance:
        return True, "within tolerance"
    if after < before:
        return True, "closer"
    return False, "moves away"
