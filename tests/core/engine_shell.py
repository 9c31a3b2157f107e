"""A test's shell around a SyncEngine: it steps the engine one event at a time and keeps every
action the engine decides, so a test can take the ones it is about and look at the rest.

It plays the part of the encoder's frame pipeline (services/encoder/pipeline.py) without
media: a captured picture's ``EncodeFrame`` is taken at once, and the test reports the
encoded hashes (``encoded``) when it wants the picture's ESPs.
"""

from __future__ import annotations

from typing import TypeVar

from meshenc.core.engine import (
    Action,
    EncodeFrame,
    EngineSnapshot,
    EscalationApproved,
    EspReceived,
    Event,
    FrameCaptured,
    FrameEncoded,
    InputResumed,
    LeaderChanged,
    NeighboursChanged,
    ParametersRefused,
    ParametersRequested,
    ProposalReceived,
    SendEsp,
    SendProposal,
    SendVote,
    Stalled,
    SyncEngine,
    VoteReceived,
)
from meshenc.core.machine import Tick
from meshenc.core.messages import EncodingStatePacket, ResyncProposal, ResyncVote

A = TypeVar("A")


class EngineShell:
    """Steps ``engine`` and keeps its actions (see the module docstring)."""

    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine
        self._kept: list[Action] = []

    def _step(self, now: float, event: Event) -> None:
        self.engine.step(now, event)
        self._kept += self.engine.ready()

    def _take(self, kind: type[A]) -> list[A]:
        taken: list[A] = []
        kept: list[Action] = []
        for action in self._kept:
            if isinstance(action, kind):
                taken.append(action)
            else:
                kept.append(action)
        self._kept = kept
        return taken

    def frame(self, now: float, fingerprint: int, periods: int | None = None) -> EncodeFrame:
        """Capture a picture; the engine's decision for it."""
        self._step(now, FrameCaptured(fingerprint, periods))
        (decision,) = self._take(EncodeFrame)
        return decision

    def encoded(
        self, now: float, hashes: tuple[tuple[int, bytes], ...] = ()
    ) -> list[tuple[str, EncodingStatePacket]]:
        """Report the last picture encoded; the ESPs to send, as (neighbour, ESP)."""
        self._step(now, FrameEncoded(hashes))
        return [(to, a.esp) for a in self._take(SendEsp) for to in a.to]

    def esp(self, now: float, esp: EncodingStatePacket) -> None:
        self._step(now, EspReceived(esp))

    def proposal(self, now: float, proposal: ResyncProposal) -> SendVote | None:
        """A neighbour's proposal; the vote the engine sends back (None: it sends none)."""
        self._step(now, ProposalReceived(proposal))
        votes = self._take(SendVote)
        assert len(votes) <= 1, votes
        return votes[0] if votes else None

    def vote(self, now: float, vote: ResyncVote) -> None:
        self._step(now, VoteReceived(vote))

    def request(
        self, now: float, bitrate_kbps: int, size: tuple[int, int] | None = None
    ) -> ResyncProposal | str:
        """Ask for a parameter change: the proposal sent, or the reason it was refused."""
        self._step(now, ParametersRequested(bitrate_kbps, size))
        refused = self._take(ParametersRefused)
        if refused:
            return refused[0].reason
        sent = [a for a in self._kept if isinstance(a, SendProposal)]
        return sent[-1].proposal

    def approve_escalation(self, now: float, proposal_id: int) -> None:
        self._step(now, EscalationApproved(proposal_id))

    def neighbours(
        self, neighbours: tuple[str, ...], epoch: int | None = None, now: float = 0.0
    ) -> None:
        self._step(now, NeighboursChanged(neighbours, epoch))

    def leader(self, leader: str | None) -> None:
        self._step(0.0, LeaderChanged(leader))

    def tick(self, now: float) -> None:
        self._step(now, Tick())

    def stalled(self, now: float, seconds: float) -> None:
        self._step(now, Stalled(seconds))

    def input_resumed(self, now: float) -> None:
        self._step(now, InputResumed())

    def snapshot(self, now: float) -> EngineSnapshot:
        return self.engine.snapshot(now)

    @property
    def deviation_noise(self) -> float:
        return self.engine.deviation_noise

    def drain(self) -> list[Action]:
        """Every action kept so far (and forget them)."""
        kept, self._kept = self._kept, []
        return kept
