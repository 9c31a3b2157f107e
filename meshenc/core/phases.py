"""The sync engine's two phase machines: where it stands on the lock, and on its own proposal.

Each is a small state with a transition table; a signal that has no entry for the current
phase changes nothing. The engine decides which signal a control step gives (from its
neighbourhood and the clock), the tables decide what it does, so every way into and out of a
phase is written in one place.

Lock (``LOCK_TRANSITIONS``)::

    LOCKING_IN --together--> AGREEING --dwelt--> LOCKED
         ^                      |                  |
         +--------apart---------+                  |
         +------------------split------------------+

*together*: every counted neighbour is within the consensus band; *apart*: one is not;
*dwelt*: together for ``lock_dwell`` since agreeing began; *split*: a locked neighbourhood
spread past the relock limit (or set aside too many outliers).

Own proposal (``PROPOSAL_TRANSITIONS``)::

    IDLE --proposed--> VOTING --accepted--> IDLE
     ^                   |  \
     |                   |   +--rewired--> IDLE
     +--quiet-- BACKING_OFF <--turned down--+
                     |
                     +--rewired--> IDLE

A correction that needs no vote applies without leaving IDLE. While VOTING nothing else
corrects; BACKING_OFF lasts a retry back-off (shorter while locking in, where turned-down
moves are routine), and a manager's APPLY verdict on the turned-down plan may still apply it.
*rewired*: while locking in, the neighbour set changed; an open move put to neighbours that
left is withdrawn, and a back-off ends (the neighbourhood that turned the last move down
is not the one it has now).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LOCK_TRANSITIONS",
    "PROPOSAL_TRANSITIONS",
    "LockPhase",
    "LockSignal",
    "LockState",
    "ProposalPhase",
    "ProposalSignal",
    "ProposalState",
]


class LockPhase(enum.Enum):
    LOCKING_IN = "locking in"
    AGREEING = "agreeing"
    LOCKED = "locked"


class LockSignal(enum.Enum):
    TOGETHER = "together"
    APART = "apart"
    DWELT = "dwelt"
    SPLIT = "split"


LOCK_TRANSITIONS: Final[Mapping[tuple[LockPhase, LockSignal], LockPhase]] = {
    (LockPhase.LOCKING_IN, LockSignal.TOGETHER): LockPhase.AGREEING,
    (LockPhase.AGREEING, LockSignal.APART): LockPhase.LOCKING_IN,
    (LockPhase.AGREEING, LockSignal.DWELT): LockPhase.LOCKED,
    (LockPhase.LOCKED, LockSignal.SPLIT): LockPhase.LOCKING_IN,
}


@dataclass(slots=True)
class LockState:
    """The lock phase, since when, and when the encoder last locked."""

    phase: LockPhase = LockPhase.LOCKING_IN
    #: When the current phase began (seconds, the engine's clock).
    since: float = -math.inf
    #: When the encoder last entered LOCKED (inf: never). Kept while it locks in again:
    #: neighbours first counted before it are judged as settled, later ones as newcomers.
    locked_since: float = math.inf

    @property
    def locked(self) -> bool:
        return self.phase is LockPhase.LOCKED

    def on(self, signal: LockSignal, now: float) -> None:
        """Apply ``signal`` at ``now`` through ``LOCK_TRANSITIONS``."""
        phase = LOCK_TRANSITIONS.get((self.phase, signal))
        if phase is None:
            return
        self.phase = phase
        self.since = now
        if phase is LockPhase.LOCKED:
            self.locked_since = now


class ProposalPhase(enum.Enum):
    IDLE = "idle"
    VOTING = "voting"
    BACKING_OFF = "backing off"


class ProposalSignal(enum.Enum):
    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    TURNED_DOWN = "turned down"
    QUIET = "quiet"
    REWIRED = "rewired"


PROPOSAL_TRANSITIONS: Final[Mapping[tuple[ProposalPhase, ProposalSignal], ProposalPhase]] = {
    (ProposalPhase.IDLE, ProposalSignal.PROPOSED): ProposalPhase.VOTING,
    (ProposalPhase.VOTING, ProposalSignal.ACCEPTED): ProposalPhase.IDLE,
    (ProposalPhase.VOTING, ProposalSignal.TURNED_DOWN): ProposalPhase.BACKING_OFF,
    (ProposalPhase.BACKING_OFF, ProposalSignal.QUIET): ProposalPhase.IDLE,
    (ProposalPhase.VOTING, ProposalSignal.REWIRED): ProposalPhase.IDLE,
    (ProposalPhase.BACKING_OFF, ProposalSignal.REWIRED): ProposalPhase.IDLE,
}


@dataclass(slots=True)
class ProposalState:
    """The phase of this encoder's own timing proposal, and until when it backs off."""

    phase: ProposalPhase = ProposalPhase.IDLE
    #: While BACKING_OFF: when the back-off ends.
    until: float = -math.inf

    def on(self, signal: ProposalSignal, *, until: float = -math.inf) -> None:
        """Apply ``signal`` through ``PROPOSAL_TRANSITIONS`` (``until``: a back-off's end)."""
        phase = PROPOSAL_TRANSITIONS.get((self.phase, signal))
        if phase is None:
            return
        self.phase = phase
        self.until = until if phase is ProposalPhase.BACKING_OFF else -math.inf

    def free(self, now: float) -> bool:
        """Whether a correction may be made at ``now``: no proposal open, no back-off running
        (one that is over ends here)."""
        if self.phase is ProposalPhase.BACKING_OFF and now >= self.until:
            self.on(ProposalSignal.QUIET)
        return self.phase is ProposalPhase.IDLE
