"""The per-encoder sync engine: frames and packets in, timecodes, packets and corrections out.

Theory of operation
-------------------
An encoder stamps every captured picture with its own clock (the picture's measured arrival).
The engine smooths that stamp (``CaptureSmoother``: a fit of the source's cadence, counted in
the source's own periods when the shell passes them, whose gain follows the jitter it
measures), adds its correction term and gets the picture's *label*; the timecode is the
label's frame slot (``FrameCaptured`` in, ``EncodeFrame`` out). After encoding, the shell
reports the access units' hashes (``FrameEncoded``) and sends the Encoding State Packets that
come back (``SendEsp``) to every neighbour.

From neighbours' ESPs the engine learns, per picture fingerprint, how far their uncorrected
labels are from its own. One Kalman filter per neighbour tracks that deviation and its rate
(``DeviationFilter``); adding both sides' known corrections gives the corrected deviation now
and ``horizon`` seconds ahead. Every ``control_interval`` the engine condenses the neighbours
it trusts (trust is lost on evidence: filter rejections, disagreeing frame hashes) into one
error ``E``:

- *locking in*: ``E`` is the distance of the label from the middle of the slot its anchor's
  label is in (``meshenc.core.anchor``: the smallest id it reaches through neighbours it
  counts, whose offset it learns from its neighbours' ESPs without waiting for anyone to
  move), or, when some neighbours hold a lock, from their densest group's centre (a newcomer
  comes to the mesh; of locked neighbours on different timelines, those on the best-named).
  Every encoder aims for the same slot middle at once, so the mesh locks in about one vote
  after it is measured, and never onto a slot boundary. Once every counted
  neighbour has stayed within ``consensus_band`` for ``lock_dwell``, the encoder is locked.
- *locked*: ``E`` is the distance of the label from the middle of the slot of the densest
  group's centre (at most ``tolerated_outliers`` set aside, a centre just before a boundary
  counting as in the next slot). A follower that counts its segment's elected leader among
  that group takes the leader's slot instead (``LeaderChanged``): the leader is the segment's
  timing reference, so followers on either side of a boundary still pick one slot. If the
  neighbourhood spreads past the relock limit, the encoder locks in again, so groups that
  locked into adjacent slots come to one anchor. A locked encoder counts only the neighbours that
  say (in their ESPs) they are locked too, when any do: a newcomer still locking in comes to
  the mesh instead of unlocking it (while the locked are more than the others).
- *two timelines*: a locked encoder names its timeline (``meshenc.core.timeline``; after
  itself when its anchor, whose name the timeline would take, is whole frames away) and does
  not count a locked neighbour on a differently named timeline a frame or so away. Where a
  group meets a better-named timeline, or hears of one through the beacons every encoder
  passes on, it learns a merge route to it through its own members, and once two witnesses
  have held it for ``merge_confirm`` the whole group jumps to it at the start of one
  scheduled segment, holding still around the jump (``merge_settle``).

Thresholds (consensus band, lock-in trigger, vote tolerance, relock limit, the predictive
trigger through ``ControlView.noise``) are fractions of a frame raised to ``noise_margin``
standard deviations of a deviation estimate, which follows from the measured capture jitter
(``deviation_noise``). No lock-in move is proposed while a sending neighbour is unmeasured. A
voter judges a neighbour that says it is locked against the middle of the slot it sees the
timeline in (or the adjacent one near their boundary), anyone else against its own error.

Where the engine stands is two explicit phase machines (``meshenc.core.phases``): the lock
(locking in → agreeing → locked, and back on a split) and its own proposal (idle → voting →
idle, or backing off after a refusal). Their transition tables are the only ways between
phases; ``_control`` only decides which signal a step gives.

A shell whose process stood still (SIGSTOP, a frozen VM, a loop that did not run) says so
(``Stalled``): the pictures and ESPs it missed cannot be made up, so the engine vouches for no
segment (``vouches``) until it has proved itself identical again: a whole segment's worth of
timecodes whose frame hashes equal a neighbour's, with none differing since the stall. Per
segment, ``agreed`` says whether some neighbour's frame hashes equalled this encoder's for at
least half of the segment's timecodes with none differing: the evidence, segment by segment,
that its copy is not its own alone.

Locking in, every move is a correction; locked, the policy decides (predictive acts on the
error predicted ``horizon`` ahead and steers the label rate; reactive acts past the half-frame
boundary). Significant corrections go to the neighbours' vote (``ProposalBook``); the rest apply
at once. A locked encoder's rejected or unanswered proposals are escalated (locking in,
rejections are routine and only delay the next try). ``docs/sync.md`` explains the choices.

The engine never reads a clock and never does IO. It has the shape of every core
(``meshenc.core.machine``): one way in, ``step(now, event)`` with ``now`` in seconds on this
encoder's clock, and one way out, ``ready()``, the batch of everything to encode, send, apply
and escalate, in the order it was decided. Everything else only reads.

Invariants
----------
- Emitted timecodes strictly increase; a gap is filled by duplicates so the output stays
  continuous (``EncodeFrame.timecodes`` lists every slot the picture fills).
- The correction only changes through ``_apply`` (one place that also records the event).
- At most one own proposal is open at a time; nothing else corrects while it is.
- Memory is bounded: per neighbour at most ``history`` unmatched fingerprints are kept.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from math import isfinite
from typing import NamedTuple

from meshenc.core.anchor import Anchor, choose_anchor
from meshenc.core.capture import CaptureSmoother
from meshenc.core.confidence import HealthSignals, confidence
from meshenc.core.kalman import DeviationFilter, KalmanTuning
from meshenc.core.link import LinkMeter
from meshenc.core.machine import Tick, check_time
from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.core.parameters import ParameterChange, Parameters, ParameterSchedule
from meshenc.core.phases import (
    LockPhase,
    LockSignal,
    LockState,
    ProposalPhase,
    ProposalSignal,
    ProposalState,
)
from meshenc.core.policy import (
    ControlView,
    PlannedCorrection,
    PolicyTuning,
    Strategy,
    classify_shift,
    make_policy,
    plan_shift,
    time_to_boundary,
)
from meshenc.core.robust import consensus
from meshenc.core.timecode import FrameRate, SegmentLayout
from meshenc.core.timeline import MIN_WITNESSES, MergeRoute, choose_beacon, choose_route
from meshenc.core.votes import Outcome, ProposalBook, Verdict, judge_proposal

__all__ = [
    "NOTHING_WRITTEN",
    "NO_IDENTITY",
    "Action",
    "CorrectionApplied",
    "EncodeFrame",
    "EngineConfig",
    "EngineSnapshot",
    "Escalate",
    "EscalationApproved",
    "EspReceived",
    "Event",
    "FrameCaptured",
    "FrameEncoded",
    "InputResumed",
    "LeaderChanged",
    "LoadMeasured",
    "LockInTurnedDown",
    "NeighbourSnapshot",
    "NeighboursChanged",
    "ParametersAgreed",
    "ParametersRefused",
    "ParametersRequested",
    "ProposalReceived",
    "SegmentGivenUp",
    "SegmentWritten",
    "SendEsp",
    "SendProposal",
    "SendVote",
    "Stalled",
    "SyncEngine",
    "VoteReceived",
]


#: The identity of a picture that cannot be told apart from its neighbours: never matched.
NO_IDENTITY = 0

#: Segments whose hash agreement with each neighbour is kept (``SyncEngine.agreed``).
_AGREEMENT_SEGMENTS = 6


class _Written(NamedTuple):
    """A segment as an encoder wrote it: the SHA-256 of its bytes, and whether that encoder
    vouched for it (wrote it under its shared name rather than aside)."""

    digest: bytes
    vouched: bool


#: Outputs whose digests are kept per encoder: as many as the units a health report names.
_DIGEST_UNITS = 64


def _writes(nb: _Neighbour, unit: str, segment: int) -> bool:
    """Whether ``nb`` is writing ``unit`` and will announce ``segment``: it vouched for the
    segment before and has announced nothing later of that output."""
    before = nb.digests.get((unit, segment - 1))
    return (
        before is not None
        and before.vouched
        and not any(u == unit and s > segment for u, s in nb.digests)
    )


def _newest_per_output(
    digests: dict[tuple[str, int], _Written],
) -> tuple[tuple[str, int, _Written], ...]:
    """Each output's newest written segment and its digest, by output name."""
    newest: dict[str, int] = {}
    for unit, segment in digests:
        newest[unit] = max(segment, newest.get(unit, segment))
    return tuple((unit, newest[unit], digests[unit, newest[unit]]) for unit in sorted(newest))


def _keep(
    digests: dict[tuple[str, int], _Written], unit: str, segment: int, written: _Written
) -> None:
    """Remember a written segment of an output (``unit``: "" the whole output, else a placed
    rung), the newest ``_AGREEMENT_SEGMENTS`` segments only: an output no longer written
    (its rung handed on) is forgotten with them."""
    digests[unit, segment] = written
    newest = max(s for _, s in digests)
    for key in [k for k in digests if k[1] <= newest - _AGREEMENT_SEGMENTS]:
        del digests[key]
    while len(digests) > _DIGEST_UNITS * _AGREEMENT_SEGMENTS:
        del digests[min(digests, key=lambda k: k[1])]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of one engine. Durations in seconds."""

    frame_rate: FrameRate
    strategy: Strategy = Strategy.PREDICTIVE
    #: Frames per GOP (= per segment) and the bitrate the mesh starts with.
    gop: int = 60
    bitrate_kbps: int = 1500
    #: A parameter change takes effect this many segments after the one being encoded, which
    #: leaves the vote and the gossip across the mesh seconds to finish.
    parameter_lead: int = 3
    policy: PolicyTuning = field(default_factory=PolicyTuning)
    kalman: KalmanTuning = field(default_factory=KalmanTuning)
    #: Time between control steps (filter updates and policy decisions).
    control_interval: float = 0.1
    #: Neighbour estimates need this many filter updates before they count.
    min_updates: int = 3
    #: A neighbour silent for this long no longer counts (its streams broke or it died).
    stale_after: float = 1.0
    #: Once locked, neighbours this many frames from the densest group are set aside, at most
    #: ``tolerated_outliers`` of them (a liar, a newcomer, an encoder whose clock stepped).
    outlier: float = 1.5
    tolerated_outliers: int = 1
    #: A neighbour whose filter rejected a measurement, or whose frame hashes disagree with
    #: ours at equal timecodes while the others' agree, is not counted for this long.
    suspicion: float = 30.0
    #: Every counted neighbour must stay within ``consensus_band`` this long before the
    #: encoder counts as locked.
    lock_dwell: float = 0.5
    #: A neighbour first counted after this encoder locked is a newcomer for this many
    #: segments: while unlocked it does not count against the locked encoder's locked
    #: neighbours (it is coming to them).
    newcomer_segments: float = 2.0
    #: A locked encoder whose counted neighbours spread wider than this many times the
    #: policy's tolerance locks in again (two groups locked into adjacent slots are a whole
    #: frame apart; a held neighbourhood stays within a tolerance either side)...
    relock_spread: float = 2.0
    #: ...but never below this many frames.
    relock_min: float = 0.75
    #: While locking in, every mesh strategy moves towards its target (the middle of its
    #: anchor's slot, or its locked neighbours' centre) as soon as it is this many frames away
    #: (the strategies differ in how they hold a lock, not in how they get one).
    lock_trigger: float = 0.05
    #: A vote not decided this long after the slowest voter's measured round trip counts as
    #: rejected.
    vote_timeout: float = 0.3
    #: After a rejected proposal, wait this long before proposing again...
    retry_backoff: float = 1.0
    #: ...or this long while locking in, when rejections are the norm rather than a sign of
    #: trouble: everyone moves at once, and each neighbour judges from its own, still noisy,
    #: view of where the timeline is.
    lock_in_retry_backoff: float = 0.7
    #: A manager's APPLY verdict on an escalated plan counts only this long after the vote.
    escalation_expiry: float = 1.0
    #: Unmatched fingerprints kept per neighbour, and own frames kept for matching.
    history: int = 64
    #: Every n-th ESP echoes the neighbour's last send time (for RTT).
    echo_every: int = 8
    #: Tolerance (frames) within which a voter accepts a proposer's resulting deviation.
    vote_tolerance: float = 0.25
    #: An encoder locking in locks once every counted neighbour has stayed within this many
    #: frames of it for ``lock_dwell``.
    consensus_band: float = 0.25
    #: A centre this close (frames) before a slot boundary counts as in the next slot, so
    #: encoders whose estimates straddle the boundary still pick the same slot.
    boundary_bias: float = 0.1
    #: The thresholds above are fractions of a frame, but none may fall below what the
    #: measured noise can fake: the consensus band, the vote tolerance and (through
    #: ``ControlView.noise``) the policy's trigger are at least this many standard deviations
    #: of a deviation estimate, the lock-in trigger at least half as many. The deviation
    #: noise follows from the capture jitter each encoder measures (``CaptureSmoother``).
    noise_margin: float = 4.0
    #: ...and the consensus band stays below this many frames whatever the noise (beyond it,
    #: agreement could no longer tell neighbours in adjacent slots apart).
    max_band: float = 0.4
    #: A locked group moves to a better-named timeline (``meshenc.core.timeline``) once its
    #: route has been seen on enough witnesses, the same whole frames away, for this long...
    merge_confirm: float = 2.0
    #: ...at the start of the segment this many segments after the one being encoded (time
    #: for the schedule to reach the whole group)...
    merge_lead: int = 2
    #: ...and holds still (no correction, no relock) from the schedule until this long after
    #: its jump, while its neighbours make theirs.
    merge_settle: float = 1.0

    @property
    def segments(self) -> SegmentLayout:
        """How timecodes group into segments (``gop`` frames each)."""
        return SegmentLayout(self.gop)


# --- events: what the shell tells the engine --------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameCaptured:
    """A picture was captured at ``now`` (its measured arrival on this encoder's clock).

    ``fingerprint`` is the picture's identity, the same on every encoder (the source's own
    timestamp where it has one); ``NO_IDENTITY`` when the picture cannot be told apart from
    its neighbours (black, a freeze): it still gets its timecode, but it is never matched
    against a neighbour's label, so it can never mismeasure. ``periods`` is how many frame
    periods passed since the previous picture when the source's own timestamps say so
    (otherwise they are counted from the arrival times). The engine answers with
    ``EncodeFrame``.
    """

    fingerprint: int
    periods: int | None = None

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(self, fingerprint: int, periods: int | None = None) -> None:
        object.__setattr__(self, "fingerprint", fingerprint)
        object.__setattr__(self, "periods", periods)


@dataclass(frozen=True, slots=True)
class FrameEncoded:
    """The shell carried out the last ``EncodeFrame``: the hash of each access unit it wrote,
    as (timecode, hash). The engine answers with the ESPs that describe the picture."""

    hashes: tuple[tuple[int, bytes], ...] = ()

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(self, hashes: tuple[tuple[int, bytes], ...] = ()) -> None:
        object.__setattr__(self, "hashes", hashes)


@dataclass(frozen=True, slots=True)
class EspReceived:
    """A neighbour's Encoding State Packet arrived (ignored unless from a current neighbour)."""

    esp: EncodingStatePacket

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(self, esp: EncodingStatePacket) -> None:
        object.__setattr__(self, "esp", esp)


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """A neighbour's proposal arrived: the engine answers with ``SendVote``."""

    proposal: ResyncProposal


@dataclass(frozen=True, slots=True)
class VoteReceived:
    """A neighbour's vote on one of this engine's proposals arrived."""

    vote: ResyncVote


@dataclass(frozen=True, slots=True)
class LoadMeasured:
    """The shell's measurements of its own health, for the confidence score."""

    cpu_load: float
    encode_latency: float


@dataclass(frozen=True, slots=True)
class NeighboursChanged:
    """The neighbour set (and the topology epoch it came with); filters of neighbours that
    stay are kept."""

    neighbours: tuple[str, ...]
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """The segment's elected leader (None: none known). A locked follower takes the leader's
    slot as the timeline whenever the leader is a neighbour it counts and sits in the densest
    group; the leader itself, and followers that do not see it, hold the densest group's slot."""

    leader: str | None


@dataclass(frozen=True, slots=True)
class ParametersRequested:
    """An operator asked for a mesh-wide change of bitrate, picture size or both (0 or None:
    keep that one as agreed): the engine proposes it ``parameter_lead`` segments ahead
    (``SendProposal``), or says why not (``ParametersRefused``)."""

    bitrate_kbps: int = 0
    size: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class EscalationApproved:
    """The Mesh Manager ruled that an escalated proposal applies after all. Only the newest
    escalated plan applies, only while no own proposal is open and within
    ``escalation_expiry`` of the vote (a verdict on an older plan would move the label by a
    shift computed for a moment that has passed): then a ``CorrectionApplied`` carries its id."""

    proposal_id: int


@dataclass(frozen=True, slots=True)
class Stalled:
    """This encoder stood still for ``seconds`` (its own monotonic clock jumped against its
    frame schedule: the process was stopped, its machine frozen, its loop blocked). What it
    missed meanwhile cannot be made up, so it vouches for nothing until it is identical again
    (see ``SyncEngine.vouches``)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class InputResumed:
    """The input is back after a loss the shell filled in with pictures of its own (on the
    capture fit's cadence, with ``NO_IDENTITY``): the fit starts again from the next picture's
    arrival, so the labels neighbours measure go on from the source's arrivals, not from the
    times the shell made up (``CaptureSmoother.resume``)."""


@dataclass(frozen=True, slots=True)
class SegmentWritten:
    """The shell wrote ``segment`` (every rung of it): ``digest`` is the SHA-256 of its bytes
    (for a ladder, over every rung's in ladder order). The ESPs carry the newest one, so that
    a segment counts as agreed only where a neighbour's bytes are the same
    (``SyncEngine.agreed``): frame hashes cover the video, not what else the segment holds
    (its audio, whose place follows the first picture's source time: in a still stretch two
    copies a frame apart have the same video and their audio a frame apart). Where rungs are
    placed on different encoders, each rung written is its own ``unit``, compared with the
    neighbours that write that rung."""

    segment: int
    digest: bytes
    #: Whether the shell wrote it under its shared name (it vouched for it), not aside.
    vouched: bool
    #: Which output: "" the whole output (every rung), else a placed rung's name.
    unit: str = ""


#: The digest announced for a segment given up (``SegmentGivenUp``): the SHA-256 of no bytes,
#: which no segment file has.
NOTHING_WRITTEN = hashlib.sha256(b"").digest()


@dataclass(frozen=True, slots=True)
class SegmentGivenUp:
    """The shell will not write ``segment`` of output ``unit``: it fell behind its input and
    shed the segment in progress, or the rung was handed to another encoder from this segment
    on. The ESPs announce it like a copy written aside, under ``NOTHING_WRITTEN``: a neighbour
    whose copy waited for this encoder's digest (it vouched for the segment before,
    ``SyncEngine.agreed``) stops waiting, and the frame hashes decide. Without it the
    neighbour waited until this encoder announced a later segment of the rung — two segments
    on, or never — past the time it holds a copy: a placed rung whose other holder fell
    behind, or handed it on, lost the segment at the origin although a vouched copy of it
    existed."""

    segment: int
    unit: str = ""


Event = (
    EspReceived
    | FrameCaptured
    | FrameEncoded
    | ProposalReceived
    | VoteReceived
    | LoadMeasured
    | NeighboursChanged
    | LeaderChanged
    | ParametersRequested
    | EscalationApproved
    | Stalled
    | InputResumed
    | SegmentWritten
    | SegmentGivenUp
    | Tick
)


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodeFrame:
    """Encode the picture just captured into each of ``timecodes``, with the agreed parameters
    of each one's segment (``parameters``, one per timecode); then report ``FrameEncoded``.

    ``timecodes`` is empty when the picture is dropped, one entry normally, several when the
    output has a gap to fill (the picture is repeated into each slot). ``label`` is the
    picture's corrected capture stamp.
    """

    fingerprint: int
    label: float
    timecodes: tuple[int, ...]
    parameters: tuple[Parameters, ...]

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(
        self,
        fingerprint: int,
        label: float,
        timecodes: tuple[int, ...],
        parameters: tuple[Parameters, ...],
    ) -> None:
        object.__setattr__(self, "fingerprint", fingerprint)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "timecodes", timecodes)
        object.__setattr__(self, "parameters", parameters)


@dataclass(frozen=True, slots=True)
class SendEsp:
    """Send this Encoding State Packet to every listed neighbour (one, when it echoes that
    neighbour's own send time)."""

    esp: EncodingStatePacket
    to: tuple[str, ...]

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(self, esp: EncodingStatePacket, to: tuple[str, ...]) -> None:
        object.__setattr__(self, "esp", esp)
        object.__setattr__(self, "to", to)


@dataclass(frozen=True, slots=True)
class SendProposal:
    """Send this proposal to every listed neighbour."""

    proposal: ResyncProposal
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendVote:
    """Send this vote back to the proposer of ``proposal``, the proposal it answers (whose
    trace context the vote continues)."""

    vote: ResyncVote
    proposal: ResyncProposal

    @property
    def to(self) -> str:
        return self.proposal.proposer


@dataclass(frozen=True, slots=True)
class Escalate:
    """A locked encoder's proposal was rejected or timed out: tell the Mesh Manager (or log,
    without one). Its verdict may come back as ``EscalationApproved``."""

    outcome: Outcome
    error: float


@dataclass(frozen=True, slots=True)
class LockInTurnedDown:
    """A lock-in move was turned down, no majority answered in time, or it was withdrawn (its
    neighbours changed: ``retry_at`` is then at once); the encoder proposes again from
    ``retry_at``. Nothing to escalate: while everyone moves at once, each judging
    from its own view, turned-down lock-in moves are the norm. Shells say so, so that a slow
    lock-in can be read from outside."""

    outcome: Outcome
    retry_at: float


@dataclass(frozen=True, slots=True)
class CorrectionApplied:
    """The correction term changed. ``lead`` as in ``PlannedCorrection``."""

    at: float
    kind: CorrectionKind
    shift: float
    new_rate: float
    lead: float
    proposal_id: int


@dataclass(frozen=True, slots=True)
class ParametersAgreed:
    """The mesh agreed on new encoding parameters from ``change.effective_segment`` on; this
    encoder applies them from ``applies_from`` (later only for a change it learnt after its
    segment had begun: it joined or restarted since)."""

    change: ParameterChange
    #: The proposal this encoder made for it, or 0 when it was learnt from a neighbour.
    proposal_id: int
    applies_from: int


@dataclass(frozen=True, slots=True)
class ParametersRefused:
    """A requested parameter change cannot be proposed now; ``reason`` says why."""

    request: ParametersRequested
    reason: str


Action = (
    EncodeFrame
    | SendEsp
    | SendProposal
    | SendVote
    | Escalate
    | LockInTurnedDown
    | CorrectionApplied
    | ParametersAgreed
    | ParametersRefused
)


@dataclass(frozen=True, slots=True)
class NeighbourSnapshot:
    neighbour: str
    deviation: float
    predicted: float
    rate: float
    rtt: float
    jitter: float
    loss: float
    trusted: bool
    updates: int
    #: Seconds until the deviation, at its current rate, reaches half a frame (NaN: never).
    crossing_in: float
    #: Whether the neighbour said, in its last ESP, that it holds a lock.
    locked: bool
    #: The confidence the neighbour reported in its last ESP, 0..1 (0 before any).
    confidence: float = 0.0
    #: What the neighbour reported of itself in its last ESP (seconds; 0 before any): its mean
    #: encode time, and its mean round trip and jitter over its own links. For operators: the
    #: engine's timing uses its own measurements of the link.
    reported_encode_latency: float = 0.0
    reported_rtt: float = 0.0
    reported_jitter: float = 0.0
    #: Nothing heard from it within ``stale_after`` (it went silent, or was never heard): it
    #: does not count towards the timeline.
    silent: bool = False


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """What an operator wants to see of one engine (for GetState and reports)."""

    node_id: str
    strategy: Strategy
    #: Whether the encoder holds a lock (its neighbourhood agrees on the timeline).
    locked: bool
    timecode: int | None
    label: float
    correction: float
    correction_rate: float
    error: float
    predicted_error: float
    confidence: float
    neighbours: tuple[NeighbourSnapshot, ...]
    corrections: dict[CorrectionKind, int]
    recent_corrections: tuple[CorrectionApplied, ...]
    escalations: int
    open_proposals: int
    #: The parameters of the segment being encoded, and a change agreed for a later one.
    parameters: Parameters
    pending_change: ParameterChange | None
    #: Since a stall (``Stalled``), not yet proved identical again: vouches for nothing.
    unproven: bool = False
    #: Whether its output is the mesh's now (``SyncEngine.vouches``).
    vouches: bool = False


# --- per-neighbour state ----------------------------------------------------------------------


class _Neighbour:
    __slots__ = (
        "acc_count",
        "acc_sum",
        "acc_time",
        "corr_at",
        "counted_since",
        "digests",
        "filter",
        "hash_agreement",
        "last",
        "link",
        "pending",
        "rejected_seen",
        "suspect_until",
        "unhashed",
    )

    def __init__(self, tuning: KalmanTuning) -> None:
        self.filter = DeviationFilter(tuning)
        self.link = LinkMeter()
        self.pending: dict[int, tuple[float, int, bytes]] = {}
        #: The neighbour's frame hashes for our pictures not encoded yet, by timecode: an
        #: encoder whose input lags its neighbours' hears their hashes before it has its own.
        self.unhashed: dict[int, bytes] = {}
        #: The segments the neighbour wrote, by segment (``SegmentWritten``).
        self.digests: dict[tuple[str, int], _Written] = {}
        #: When this neighbour was first counted (since it last fell silent).
        self.counted_since: float | None = None
        self.acc_count = 0
        self.acc_sum = 0.0
        self.acc_time = 0.0
        #: The neighbour's newest ESP (what it says of itself: lock, confidence, anchor, its
        #: correction), and when it arrived on our clock.
        self.last: EncodingStatePacket | None = None
        self.corr_at = 0.0
        self.hash_agreement = 1.0
        self.suspect_until = -math.inf
        self.rejected_seen = 0

    @property
    def locked(self) -> bool:
        return self.last is not None and self.last.locked

    @property
    def confidence(self) -> float:
        return 0.0 if self.last is None else self.last.confidence

    @property
    def corr_rate(self) -> float:
        return 0.0 if self.last is None else self.last.correction_rate

    @property
    def anchor(self) -> Anchor | None:
        """The anchor the neighbour last announced, as it announced it."""
        last = self.last
        if last is None or not last.anchor:
            return None
        return Anchor(last.anchor, last.anchor_hops, last.anchor_offset)

    @property
    def beacon(self) -> MergeRoute | None:
        """The timeline beacon the neighbour last announced, as it announced it."""
        last = self.last
        if last is None or not last.beacon_timeline:
            return None
        return MergeRoute(
            last.beacon_timeline, last.beacon_hops, last.beacon_offset, (last.beacon_origin,)
        )

    def add_sample(self, at: float, deviation: float) -> None:
        self.acc_count += 1
        self.acc_sum += deviation
        self.acc_time += at

    def fold_samples(self, noise_floor: float) -> None:
        """Feed the mean of the samples gathered since the last control step to the filter.

        Samples of successive frames are strongly correlated (capture times are smoothed), so
        their mean is one measurement, not ``n`` independent ones; its variance is at least
        ``noise_floor`` (s², from the measured capture jitter).
        """
        n = self.acc_count
        if n == 0:
            return
        self.filter.update(self.acc_time / n, self.acc_sum / n, noise_floor)
        self.acc_count = 0
        self.acc_sum = self.acc_time = 0.0

    def correction_at(self, now: float) -> float:
        last = self.last
        if last is None:
            return 0.0
        return last.correction + last.correction_rate * (now - self.corr_at)


# --- the engine -------------------------------------------------------------------------------


class SyncEngine:
    """One encoder's view of the mesh and its timeline."""

    def __init__(self, node_id: str, config: EngineConfig, neighbours: Iterable[str] = ()) -> None:
        self.node_id = node_id
        self.config = config
        self.policy = make_policy(config.strategy, config.frame_rate, config.policy)
        self.topology_epoch = 0
        self._period = config.frame_rate.period
        self._segments = config.segments
        self._smoother = CaptureSmoother(self._period)
        self._capture_restarts = 0
        self._neighbours: dict[str, _Neighbour] = {}
        self._own: dict[int, tuple[float, float, int]] = {}
        self._hashes: dict[int, bytes] = {}
        #: The digests of the segments this encoder wrote, by output and segment
        #: (``SegmentWritten``).
        self._segment_digests: dict[tuple[str, int], _Written] = {}
        #: What the ESPs announce, one entry per ESP in turn: each output's newest segment
        #: and its digest (remade on ``SegmentWritten``, not per ESP).
        self._announced: tuple[tuple[str, int, _Written], ...] = ()
        self._corr = 0.0
        self._corr_rate = 0.0
        self._corr_at = 0.0
        self._last_tc: int | None = None
        self._last: EncodeFrame | None = None
        self._last_raw = 0.0
        self._sequence = 0
        self._next_control = -math.inf
        self._proposals = ProposalBook()
        self._proposal_ids = 0
        self._open: tuple[int, PlannedCorrection, float] | None = None
        self._escalated: tuple[int, PlannedCorrection, float] | None = None
        self._schedule = ParameterSchedule(config.bitrate_kbps)
        self._parameter_proposals: dict[int, ParameterChange] = {}
        #: Neighbours' proposals waiting for this encoder's estimate of their proposer, and
        #: until when (``_on_proposal``): one per proposer, the newest.
        self._deferred: dict[str, tuple[ResyncProposal, float]] = {}
        self._proposal = ProposalState()
        self._actions: list[Action] = []
        self._recent: deque[CorrectionApplied] = deque(maxlen=16)
        self._counts: dict[CorrectionKind, int] = dict.fromkeys(CorrectionKind, 0)
        self._escalations = 0
        self._lock = LockState()
        self._settled_unlocked = 0
        #: After a stall: timecodes whose hashes matched a neighbour's since (None: no stall
        #: to recover from), and the newest of them.
        self._proof: int | None = None
        self._proof_tc = -1
        #: Per recent segment, per neighbour: [timecodes whose hashes equalled ours, whether
        #: one differed] (``agreed``).
        self._agreement: dict[int, dict[str, list[int]]] = {}
        self._leader: str | None = None
        self._anchor = Anchor(node_id, 0, 0.0)
        #: The timeline this encoder is locked on ("" while not locked), the route to a
        #: better-named one (``meshenc.core.timeline``), since when that route has pointed
        #: the same whole frames away on enough witnesses, and until when it holds still
        #: after a merge.
        self._timeline = ""
        self._route: MergeRoute | None = None
        self._route_key: tuple[str, int] | None = None
        self._route_since = math.inf
        self._settle_until = -math.inf
        #: The timeline beacon this encoder passes on (``meshenc.core.timeline``), and the
        #: anchor found whole frames away ("": none) since when (``_hold_timeline``).
        self._beacon: MergeRoute | None = None
        self._far_anchor = ""
        self._far_since = math.inf
        #: Since when no neighbour has been heard (None: one is), as of the last control step.
        self._alone_since: float | None = None
        self._error = 0.0
        self._slot_errors: tuple[float, ...] = (0.0,)
        self._predicted_error = 0.0
        self._health = HealthSignals(
            cpu_load=0.0,
            encode_latency=0.0,
            frame_period=self._period,
            esp_loss=0.0,
            jitter=0.0,
            corrections_per_minute=0.0,
        )
        self._confidence = confidence(self._health)
        self._set_neighbours(neighbours)

    # -- the one way in and the one way out (``meshenc.core.machine``) --------------------------

    def step(self, now: float, event: Event) -> None:
        """Apply one event observed at ``now`` (seconds on this encoder's clock)."""
        if not isfinite(now):
            check_time(now)  # raises
        # Most events are ESPs, then pictures: no pattern matching for them.
        if event.__class__ is EspReceived:
            self._on_esp(now, event.esp)
            return
        if event.__class__ is FrameCaptured:
            self._on_frame(now, event.fingerprint, event.periods)
            return
        match event:
            case EspReceived(esp):
                self._on_esp(now, esp)
            case FrameCaptured(fingerprint, periods):
                self._on_frame(now, fingerprint, periods)
            case FrameEncoded(hashes):
                for timecode, frame_hash in hashes:
                    self._record_hash(timecode, frame_hash)
                self._publish(now)
            case ProposalReceived(proposal):
                self._on_proposal(now, proposal)
            case VoteReceived(vote):
                outcome = self._proposals.record_vote(now, vote)
                if outcome is not None:
                    self._settle(now, outcome)
            case LoadMeasured(cpu_load, encode_latency):
                self._report_load(cpu_load, encode_latency)
            case NeighboursChanged(neighbours, epoch):
                self._rewire(now, neighbours, epoch)
            case LeaderChanged(leader):
                self._leader = leader
            case ParametersRequested():
                self._request_parameters(now, event)
            case EscalationApproved(proposal_id):
                self._apply_escalated(now, proposal_id)
            case Stalled():
                self._proof, self._proof_tc = 0, self._last_tc if self._last_tc is not None else -1
            case InputResumed():
                self._smoother.resume()
            case SegmentWritten(segment, digest, vouched, unit):
                self._wrote(unit, segment, _Written(digest, vouched))
            case SegmentGivenUp(segment, unit):
                self._wrote(unit, segment, _Written(NOTHING_WRITTEN, False))
            case Tick():
                self._tick_votes(now)

    def _wrote(self, unit: str, segment: int, written: _Written) -> None:
        """Keep what this encoder wrote of ``segment`` (or gave up), and what its ESPs announce."""
        _keep(self._segment_digests, unit, segment, written)
        self._announced = _newest_per_output(self._segment_digests)

    def ready(self) -> list[Action]:
        """Everything decided since the last call, in the order it must be carried out."""
        actions, self._actions = self._actions, []
        return actions

    # -- topology ------------------------------------------------------------------------------

    def _set_neighbours(self, neighbours: Iterable[str], epoch: int | None = None) -> None:
        """Replace the neighbour set, keeping the filters of neighbours that stay."""
        wanted = [n for n in neighbours if n != self.node_id]
        self._neighbours = {
            n: self._neighbours.get(n) or _Neighbour(self.config.kalman) for n in wanted
        }
        if epoch is not None:
            self.topology_epoch = epoch

    def _rewire(self, now: float, neighbours: Iterable[str], epoch: int | None) -> None:
        """A new neighbour set. While locking in, the proposal state follows it: an open move
        put to a neighbour that left is withdrawn (that vote will not come, and the move was
        planned from its estimate), and a back-off ends (the neighbourhood that turned the
        last move down is not the one it has now). Without this it waited out the vote and the
        lock-in back-off before proposing to the neighbours it has now: in real overload
        trials, survivors of a relief whose moves had gone to killed encoders saw them expire
        unanswered and moved again only after the back-off, up to 1.2 s after the rewiring."""
        before = set(self._neighbours)
        self._set_neighbours(neighbours, epoch)
        if self._neighbours.keys() == before or self._lock.locked:
            return
        opened = self._open
        if opened is not None:
            if self._proposals.electorate(opened[0]) <= self._neighbours.keys():
                return  # nobody it was put to left: its verdict still comes
            self._open = None
            outcome = self._proposals.withdraw(now, opened[0])
            self._actions.append(LockInTurnedDown(outcome, now))
        self._proposal.on(ProposalSignal.REWIRED)

    @property
    def neighbours(self) -> tuple[str, ...]:
        return tuple(self._neighbours)

    def _electorate(self, now: float) -> frozenset[str]:
        """Who votes on a proposal: the neighbours heard from within ``stale_after`` (all of
        them when none is). A neighbour that is configured but silent — not started yet, dead,
        cut off — cannot vote, and must not make a majority impossible (measured: two encoders
        whose third neighbour had not started yet could not move towards each other at all)."""
        oldest = now - self.config.stale_after
        live = frozenset(
            name for name, nb in self._neighbours.items() if nb.link.last_received_at >= oldest
        )
        return live or frozenset(self._neighbours)

    def _counted_electorate(self, now: float) -> frozenset[str]:
        """Who votes on a move of this encoder's timeline: the electorate less the neighbours
        it does not trust (``_trusted``), whose views its move leaves out too (all of the
        electorate when it trusts none of them). Measured: three real encoders, the anchor's
        labels jumped at its start; the other two did not count it for ``suspicion`` and
        locked in towards each other, while it counted them and voted every move of theirs
        down (``moves away``, judged from its own view of the timeline): none locked for the
        whole 30 s run."""
        electorate = self._electorate(now)
        trusted = frozenset(
            name for name in electorate if self._trusted(self._neighbours[name], now)
        )
        return trusted or electorate

    def _vote_timeout(self, electorate: frozenset[str]) -> float:
        """How long a proposal waits for its votes: ``vote_timeout`` beyond the slowest
        voter's measured round trip, so a mesh whose links are long-haul ones can still
        decide (measured: with a fixed 0.3 s every vote over 150 ms links timed out, and no
        proposal ever passed). The round trip counts up to ``stale_after``: a link slower
        than that (or one whose RTT samples include a partition's backlog) is no voter's."""
        rtts = [
            rtt
            for name in electorate
            if (nb := self._neighbours.get(name)) is not None and not math.isnan(rtt := nb.link.rtt)
        ]
        return self.config.vote_timeout + min(max(rtts, default=0.0), self.config.stale_after)

    @property
    def alone(self) -> bool:
        """No neighbour heard, as of the last control step: this encoder's slot is the
        timeline (see ``vouches``)."""
        return self._alone_since is not None

    def vouches(self, now: float) -> bool:
        """Whether this encoder's output is the mesh's: it has held its lock for a whole
        segment, and every neighbour it counts (newcomers aside) says it is locked too, as of
        the last control step. While the mesh is still settling — an encoder that locked alone,
        neighbours still moving, groups meeting — its segments may not be the ones the mesh
        settles on. After a stall, not until it has proved itself identical again: a whole
        segment's worth of timecodes (after the stall) whose frame hashes equal a neighbour's,
        none differing meanwhile. An encoder that has heard no neighbour for a whole segment
        and is not locked vouches for the slot it holds alone: there is no other timeline to
        be on."""
        if self._proof is not None:
            return False
        lock = self._lock
        segment = self._segments.duration(self._period)
        alone = self._alone_since
        if alone is not None and not lock.locked:
            # Nobody heard: it holds its own slot (``_hold_alone``), and that is the timeline
            # (a first encoder, a mesh of one) until a neighbour speaks.
            return now - alone >= segment
        settled = now - lock.locked_since >= segment
        return lock.locked and settled and self._settled_unlocked == 0

    def correction(self, now: float) -> float:
        return self._corr + self._corr_rate * (now - self._corr_at)

    # -- frames --------------------------------------------------------------------------------

    def _on_frame(self, now: float, fingerprint: int, periods: int | None) -> None:
        """Decide the captured picture's timecode(s) (``FrameCaptured``), then, every
        ``control_interval``, take a control step."""
        smoother = self._smoother
        smoothed = smoother.update(now, periods)
        if smoother.restarts != self._capture_restarts:
            # The fit started again on earlier readings: it had started on late ones, and
            # every neighbour measured against its times so far carries that lateness (a
            # filter fed with it keeps the bias for seconds). Measure them all afresh.
            self._capture_restarts = smoother.restarts
            for nb in self._neighbours.values():
                nb.filter.reset()
                nb.acc_count = 0
                nb.acc_sum = nb.acc_time = 0.0
        raw = smoothed.time
        label = raw + self.correction(now)
        route = self._route
        if route is not None and route.segment > 0 and self._merge_due(now, label, route):
            label = raw + self.correction(now)
        if self.policy.counts_frames and self._last_tc is not None:
            tc = self._last_tc + smoothed.periods
        else:
            tc = self.config.frame_rate.slot(label)
        last = self._last_tc
        if last is None or tc == last + 1:
            timecodes: tuple[int, ...] = (tc,)
        elif tc <= last:
            timecodes = ()
        else:
            timecodes = tuple(range(last + 1, tc + 1))
        if timecodes:
            self._last_tc = timecodes[-1]
        segment_of = self._segments.segment_of
        parameters_for = self._schedule.parameters_for
        if len(timecodes) == 1:
            parameters: tuple[Parameters, ...] = (parameters_for(segment_of(timecodes[0])),)
        else:
            parameters = tuple(parameters_for(segment_of(tc)) for tc in timecodes)
        decision = EncodeFrame(fingerprint, label, timecodes, parameters)
        self._actions.append(decision)
        self._last = decision
        self._last_raw = raw
        self._remember(fingerprint, raw, now, tc)
        if self.policy.uses_mesh:
            self._tick_votes(now)
            if now >= self._next_control:
                self._next_control = now + self.config.control_interval
                self._control(now, label)
                if self._deferred:
                    self._answer_deferred(now)

    def _remember(self, fingerprint: int, raw: float, now: float, tc: int) -> None:
        """Keep the picture's smoothed capture time to measure the neighbours against it."""
        if fingerprint == NO_IDENTITY:
            return
        own = self._own
        own[fingerprint] = (raw, now, tc)
        if len(own) > self.config.history:
            del own[next(iter(own))]
        for nb in self._neighbours.values():
            theirs = nb.pending.pop(fingerprint, None)
            if theirs is not None:
                nb.add_sample(now, raw - theirs[0])
                if theirs[2] and theirs[1] == tc:
                    self._await_hash(nb, tc, theirs[2])

    def _await_hash(self, nb: _Neighbour, timecode: int, frame_hash: bytes) -> None:
        """Keep a neighbour's hash of the same picture at the same timecode until ours is
        known (``_record_hash`` compares them)."""
        unhashed = nb.unhashed
        unhashed[timecode] = frame_hash
        if len(unhashed) > self.config.history:
            del unhashed[next(iter(unhashed))]

    def _record_hash(self, timecode: int, frame_hash: bytes) -> None:
        hashes = self._hashes
        hashes[timecode] = frame_hash
        if len(hashes) > self.config.history:
            del hashes[next(iter(hashes))]
        for sender, nb in self._neighbours.items():
            if nb.unhashed and (theirs := nb.unhashed.pop(timecode, None)) is not None:
                self._compare_hash(sender, nb, timecode, frame_hash == theirs)

    def _publish(self, now: float) -> None:
        """The ESPs describing the last captured picture, one per neighbour."""
        last = self._last
        if last is None or not self._neighbours:
            return
        self._sequence += 1
        tc = last.timecodes[-1] if last.timecodes else self.config.frame_rate.slot(last.label)
        newest = self._schedule.newest
        # The optional parts are given to the constructor, not added by ``replace`` after:
        # this runs once per frame, and ``replace`` costs twice a construction.
        if announced := self._announced:
            unit, segment, written = announced[self._sequence % len(announced)]
            digest, vouched = written.digest, written.vouched
        else:
            unit, segment, digest, vouched = "", 0, b"", False
        route = self._route
        beacon = self._beacon
        esp = EncodingStatePacket(
            sender=self.node_id,
            sequence=self._sequence,
            topology_epoch=self.topology_epoch,
            timecode=tc,
            frame_hash=self._hashes.get(tc, b"") if last.timecodes else b"",
            fingerprint=last.fingerprint,
            label=last.label,
            correction=last.label - self._last_raw,
            correction_rate=self._corr_rate,
            encode_latency=self._health.encode_latency,
            rtt=self._mean_rtt(),
            jitter=self._health.jitter,
            confidence=self._confidence,
            sent_at=now,
            locked=self._lock.locked,
            params_segment=newest.effective_segment if newest else 0,
            params_bitrate_kbps=newest.bitrate_kbps if newest else 0,
            params_size=newest.size if newest else None,
            anchor=self._anchor.node,
            anchor_hops=self._anchor.hops,
            anchor_offset=self._anchor.offset,
            timeline=self._timeline,
            written_segment=segment,
            segment_digest=digest,
            segment_vouched=vouched,
            segment_unit=unit,
            merge_timeline=route.timeline if route is not None else "",
            merge_hops=route.hops if route is not None else 0,
            merge_offset=route.offset if route is not None else 0.0,
            merge_witnesses=route.witnesses if route is not None else (),
            merge_segment=route.segment if route is not None else 0,
            beacon_timeline=beacon.timeline if beacon is not None else "",
            beacon_hops=beacon.hops if beacon is not None else 0,
            beacon_offset=beacon.offset if beacon is not None else 0.0,
            beacon_origin=beacon.witnesses[0] if beacon is not None else "",
        )
        actions = self._actions
        if self._sequence % self.config.echo_every:
            actions.append(SendEsp(esp, tuple(self._neighbours)))
            return
        for name, nb in self._neighbours.items():
            sequence, sent_at, hold = nb.link.echo(now)
            if sequence:
                echoed = esp.echoing(sequence, sent_at, hold)
                actions.append(SendEsp(echoed, (name,)))
            else:
                actions.append(SendEsp(esp, (name,)))

    def _report_load(self, cpu_load: float, encode_latency: float) -> None:
        links = [nb.link for nb in self._neighbours.values()]
        loss = sum(link.loss for link in links) / len(links) if links else 0.0
        jitter = sum(link.jitter for link in links) / len(links) if links else 0.0
        recent = sum(1 for c in self._recent if c.at > self._last_raw - 60.0)
        self._health = HealthSignals(
            cpu_load=min(max(cpu_load, 0.0), 1.0),
            encode_latency=max(encode_latency, 0.0),
            frame_period=self._period,
            esp_loss=min(max(loss, 0.0), 1.0),
            jitter=jitter,
            corrections_per_minute=float(recent),
        )
        self._confidence = confidence(self._health)

    # -- packets from neighbours ---------------------------------------------------------------

    def _on_esp(self, now: float, esp: EncodingStatePacket) -> None:
        nb = self._neighbours.get(esp.sender)
        if nb is None:
            return
        if -math.inf < nb.link.last_received_at < now - self.config.stale_after:
            # Back after a silence (it stood still, or this encoder did, or the link was cut):
            # whatever moved meanwhile, re-measure it from scratch. A filter that predicted
            # across the silence rejects the new labels as jumps, and a voter judging from it
            # turned down every correction of an encoder back from a SIGSTOP, a frame off.
            nb.filter.reset()
            nb.pending.clear()
        nb.link.on_packet(now, esp.sequence, esp.sent_at, esp.echo_sent_at, esp.echo_hold)
        nb.last = esp
        if esp.segment_digest and esp.written_segment > 0:
            # Every ESP repeats the sender's newest segment (of one output): keep it once.
            key = (esp.segment_unit, esp.written_segment)
            known = nb.digests.get(key)
            if known is None or known != (esp.segment_digest, esp.segment_vouched):
                _keep(
                    nb.digests,
                    esp.segment_unit,
                    esp.written_segment,
                    _Written(esp.segment_digest, esp.segment_vouched),
                )
        nb.corr_at = now
        if (
            esp.params_segment > 0
            and esp.params_bitrate_kbps > 0
            and not self._is_newest(esp)
            and esp.params_segment <= self.current_segment + self.config.parameter_lead + 1
        ):
            # An agreed change is proposed ``parameter_lead`` segments ahead of its proposer,
            # whose segment is at most one from ours; one announced further ahead was agreed by
            # nobody, and adopting it would block every real change until its segment came
            # (one change at a time).
            self._learn(
                ParameterChange(
                    esp.params_segment, Parameters(esp.params_bitrate_kbps, esp.params_size)
                ),
                0,
            )
        if esp.fingerprint == NO_IDENTITY:
            return
        theirs_raw = esp.label - esp.correction
        mine = self._own.get(esp.fingerprint)
        if mine is None:
            pending = nb.pending
            pending[esp.fingerprint] = (theirs_raw, esp.timecode, esp.frame_hash)
            if len(pending) > self.config.history:
                del pending[next(iter(pending))]
            return
        own_raw, at, own_tc = mine
        nb.add_sample(at, own_raw - theirs_raw)
        if esp.frame_hash and own_tc == esp.timecode:
            own_hash = self._hashes.get(own_tc)
            if own_hash:
                self._compare_hash(esp.sender, nb, own_tc, own_hash == esp.frame_hash)
            else:
                self._await_hash(nb, own_tc, esp.frame_hash)

    def _is_newest(self, esp: EncodingStatePacket) -> bool:
        """Whether the ESP's agreed change is this encoder's newest already (the common case
        once a change is agreed: every ESP repeats it)."""
        newest = self._schedule.newest
        return (
            newest is not None
            and newest.effective_segment == esp.params_segment
            and newest.bitrate_kbps == esp.params_bitrate_kbps
            and newest.size == esp.params_size
        )

    def _compare_hash(self, sender: str, nb: _Neighbour, timecode: int, same: bool) -> None:
        """One frame hash of the same picture at the same timecode, ours against a
        neighbour's: its standing, a stalled encoder's proof, and the segment's agreement."""
        nb.hash_agreement += 0.05 * ((1.0 if same else 0.0) - nb.hash_agreement)
        if self._proof is not None:
            self._prove(timecode, same)
        self._tally(sender, timecode, same)

    def _tally(self, neighbour: str, timecode: int, same: bool) -> None:
        """Count a frame hash compared with a neighbour's towards its segment's agreement."""
        segment = self._segments.segment_of(timecode)
        agreement = self._agreement
        if segment not in agreement:
            if agreement and segment < min(agreement):
                return  # older than anything kept: decided long ago
            agreement[segment] = {}
            while len(agreement) > _AGREEMENT_SEGMENTS:
                del agreement[min(agreement)]
        tallies = agreement[segment]
        tally = tallies.get(neighbour)
        if tally is None:
            tally = tallies[neighbour] = [0, 0]
        if same:
            tally[0] += 1
        else:
            tally[1] = 1

    def agreed(self, segment: int, now: float, unit: str = "") -> bool:
        """Whether ``segment``'s bytes (of output ``unit``: "" the whole output, else a placed
        rung) are not this encoder's alone: a neighbour wrote the same (``SegmentWritten``,
        its digest in its ESPs); else, where no neighbour heard vouched for other bytes of it
        or is about to announce it (it vouched for the segment before), or this encoder has
        not written the segment, a neighbour's frame hashes equalled ours for at least half
        of its timecodes, none differing. (A neighbour that wrote it aside, locking in or
        slipped, holds nothing back: a placed rung has few holders, and the healthy one's
        copy must not wait on the other's.) An encoder whose timeline slipped while it
        thought itself locked (a busy machine, a resumed process) has no such neighbour, and
        its copy must not go out under the shared name; nor one whose video agreed but
        whose segment did not (measured: an encoder back from an input loss wrote a segment
        with the mesh's video and less of its audio; two busy ones, in a still stretch, a
        frame apart with the same video and their audio a frame apart). With no neighbour
        heard within ``stale_after`` (the last one standing) there is no one to agree or
        disagree, and its own vouching has to do."""
        oldest = now - self.config.stale_after
        heard = [nb for nb in self._neighbours.values() if nb.link.last_received_at >= oldest]
        if not heard:
            return True
        own = self._segment_digests.get((unit, segment))
        if own is not None:
            waiting = False
            for nb in heard:
                theirs = nb.digests.get((unit, segment))
                if theirs is not None and theirs.digest == own.digest:
                    return True
                # A vouched copy with other bytes withholds ours; so does a writer that
                # vouched for the segment before and has not written this one yet.
                waiting = waiting or (
                    theirs.vouched if theirs is not None else _writes(nb, unit, segment)
                )
            if waiting:
                return False
        needed = self.hashes_needed
        return any(
            matched >= needed and not differed
            for matched, differed in self._agreement.get(segment, {}).values()
        )

    @property
    def hashes_needed(self) -> int:
        """Frame hashes alike (of one neighbour, none differing) that agree a segment where
        no neighbour's digest decides (``agreed``): half of a segment's timecodes."""
        return (self._segments.gop + 1) // 2

    def agreement_account(self, segment: int, now: float, unit: str = "") -> str:
        """What each neighbour said of ``segment`` (of output ``unit``), for the log line of a
        copy that was never agreed (``agreed``): its digest (the same bytes, other bytes it
        vouched for or wrote aside, given up, due, or none) and how many of its frame hashes
        equalled ours, so that a segment missing at the origin can be explained from the
        log."""
        oldest = now - self.config.stale_after
        own = self._segment_digests.get((unit, segment))
        tallies = self._agreement.get(segment, {})
        parts = []
        for name in sorted(self._neighbours):
            nb = self._neighbours[name]
            if nb.link.last_received_at < oldest:
                parts.append(f"{name}: not heard")
                continue
            theirs = nb.digests.get((unit, segment))
            if theirs is None:
                said = "its digest due" if _writes(nb, unit, segment) else "no digest"
            elif own is not None and theirs.digest == own.digest:
                said = "the same bytes"
            elif theirs.digest == NOTHING_WRITTEN:
                said = "gave it up"
            else:
                said = "other bytes, " + ("vouched" if theirs.vouched else "aside")
            matched, differed = tallies.get(name, (0, 0))
            alike = f"{matched} frame hashes alike" + (", one differing" if differed else "")
            parts.append(f"{name}: {said}, {alike}")
        return "; ".join(parts) if parts else "no neighbours"

    def confirmed(self, segment: int, unit: str = "") -> bool:
        """Whether a neighbour that vouched for ``segment`` (of output ``unit``) wrote the
        same bytes as this encoder. This encoder's own copy went aside (it was locking in,
        resuming, or not sure of its timeline), but bytes equal to a vouched copy are the
        mesh's segment whatever this encoder's state was: the copy may take the shared name.
        (Two copies that no one vouched for prove nothing by agreeing: they may share one
        mistake.)"""
        own = self._segment_digests.get((unit, segment))
        return own is not None and any(
            (theirs := nb.digests.get((unit, segment))) is not None
            and theirs.vouched
            and theirs.digest == own.digest
            for nb in self._neighbours.values()
        )

    def _prove(self, timecode: int, same: bool) -> None:
        """After a stall: count timecodes (newer than the stall) whose hashes match a
        neighbour's; a difference starts the count again; a segment's worth ends the proof."""
        assert self._proof is not None
        if not same:
            self._proof, self._proof_tc = 0, max(self._proof_tc, timecode)
        elif timecode > self._proof_tc:
            self._proof, self._proof_tc = self._proof + 1, timecode
            if self._proof >= self._segments.gop:
                self._proof = None

    def _on_proposal(self, now: float, proposal: ResyncProposal) -> None:
        """Vote on a neighbour's proposal from this engine's own estimate of the proposer
        (none when the proposer is not a current neighbour). A voter still measuring the
        proposer answers once it has measured it (``_answer_deferred``)."""
        nb = self._neighbours.get(proposal.proposer)
        if nb is None:
            return
        if proposal.kind is CorrectionKind.PARAMETER:
            if proposal.effective_segment <= self.current_segment:
                late = ResyncVote(proposal.proposer, proposal.proposal_id, self.node_id, False, 0.0)
                self._actions.append(
                    SendVote(replace(late, reason="segment already begun"), proposal)
                )
            else:
                self._vote(now, proposal, nb)
            return
        if self._measuring(now, nb):
            # Its estimate is a control step or two away (the proposer's filter of this
            # encoder reached ``min_updates`` first): a refusal now would be for want of it, not
            # a judgment, and would cost the proposer the lock-in retry (measured in simulated
            # cold starts: first lock-in moves turned down by "no estimate" votes). One
            # proposal per proposer waits.
            self._deferred[proposal.proposer] = (proposal, now + self.config.vote_timeout)
            return
        self._vote(now, proposal, nb)

    def _measuring(self, now: float, nb: _Neighbour) -> bool:
        """Whether ``nb`` is heard but not yet measured (its estimate does not count yet)."""
        return nb.filter.updates < self.config.min_updates and self._heard(now, nb)

    def _heard(self, now: float, nb: _Neighbour) -> bool:
        """Whether ``nb`` was heard within ``stale_after``."""
        return now - nb.link.last_received_at < self.config.stale_after

    def _answer_deferred(self, now: float) -> None:
        """After a control step: vote on the proposals that waited for an estimate, once it is
        there; refuse for want of it once ``vote_timeout`` has passed since the proposal
        arrived (about when the proposer's book gives up on it: its deadline is the timeout
        plus the round trip, from the sending); forget a proposer no longer a neighbour."""
        for proposer, (proposal, until) in list(self._deferred.items()):
            nb = self._neighbours.get(proposer)
            if nb is None:
                del self._deferred[proposer]
            elif now >= until or not self._measuring(now, nb):
                del self._deferred[proposer]
                self._vote(now, proposal, nb)

    def _vote(self, now: float, proposal: ResyncProposal, nb: _Neighbour) -> None:
        """Judge ``proposal`` from this engine's estimate of ``nb``, its proposer."""
        estimates: list[float | None] = [None]
        cfg = self.config
        if nb.filter.updates >= cfg.min_updates and self._heard(now, nb):
            # The filter tracks (own - theirs); the proposer's offset from our label is the
            # opposite, and from where we believe the timeline should be (our label minus our
            # own error) it is that plus our error. Judging against the timeline rather than
            # our own label lets a mesh that is split into two camps vote itself back
            # together. Every encoder aims for the middle of a slot, locked or locking in, so
            # the proposer is judged against the middle of the slot this encoder sees the
            # timeline in (either slot, when the timeline sits near their boundary).
            deviation = nb.filter.at(now) + self.correction(now) - nb.correction_at(now)
            estimates = [reference - deviation for reference in self._slot_errors]
        tolerance = self._thresholds()[2]
        votes = [judge_proposal(proposal, self.node_id, e, tolerance) for e in estimates]
        vote = next((v for v in votes if v.approve), votes[0])
        self._actions.append(SendVote(vote, proposal))

    @property
    def current_segment(self) -> int:
        """The segment of the newest output slot (-1 before the first frame)."""
        return -1 if self._last_tc is None else self._segments.segment_of(self._last_tc)

    def parameters_for(self, segment: int) -> Parameters:
        """The agreed parameters of ``segment``."""
        return self._schedule.parameters_for(segment)

    def _request_parameters(self, now: float, request: ParametersRequested) -> None:
        """Propose a mesh-wide parameter change ``parameter_lead`` segments ahead, unless no
        frame is encoded yet, no neighbour can agree, or another change is still pending. The
        change carries every parameter: those not asked for as agreed for its segment."""
        pending = self._schedule.pending(self.current_segment)
        if self._last_tc is None:
            refused = "no frame encoded yet"
        elif not self._neighbours:
            refused = "no neighbours to agree with"
        elif pending is not None or self._parameter_proposals:
            refused = f"a change is already pending: {pending}"
        else:
            refused = ""
        if refused:
            self._actions.append(ParametersRefused(request, refused))
            return
        segment = self.current_segment + self.config.parameter_lead
        agreed = self._schedule.parameters_for(segment)
        change = ParameterChange(
            segment,
            Parameters(
                request.bitrate_kbps or agreed.bitrate_kbps,
                agreed.size if request.size is None else request.size,
            ),
        )
        self._proposal_ids += 1
        proposal = ResyncProposal(
            proposer=self.node_id,
            proposal_id=self._proposal_ids,
            kind=CorrectionKind.PARAMETER,
            shift=0.0,
            topology_epoch=self.topology_epoch,
            effective_segment=change.effective_segment,
            bitrate_kbps=change.bitrate_kbps,
            size=change.size,
        )
        electorate = self._electorate(now)
        self._proposals.open(now, proposal, electorate, self._vote_timeout(electorate))
        self._parameter_proposals[proposal.proposal_id] = change
        self._actions.append(SendProposal(proposal, tuple(sorted(electorate))))

    def _learn(self, change: ParameterChange, proposal_id: int) -> None:
        applies_from = self._schedule.adopt(change, self.current_segment)
        if applies_from is not None:
            self._counts[CorrectionKind.PARAMETER] += 1
            self._actions.append(ParametersAgreed(change, proposal_id, applies_from))

    # -- control -------------------------------------------------------------------------------

    def _tick_votes(self, now: float) -> None:
        if self._proposals.open_count:
            for outcome in self._proposals.expire(now):
                self._settle(now, outcome)

    def _control(self, now: float, label: float) -> None:
        cfg = self.config
        period = self._period
        neighbours = self._neighbours.values()
        jumped = []
        noise_floor = self.deviation_noise**2
        for nb in neighbours:
            nb.fold_samples(noise_floor)
            if nb.filter.rejected != nb.rejected_seen:
                nb.rejected_seen = nb.filter.rejected
                jumped.append(nb)
        if len(jumped) >= 2 and 2 * len(jumped) > len(self._neighbours):
            # Most neighbours seem to have jumped at once: it is this encoder that did (its
            # clock stepped, its ingest path changed). Re-measure everyone; suspect no one.
            for nb in jumped:
                nb.filter.reset()
        else:
            for nb in jumped:
                nb.suspect_until = now + cfg.suspicion
        self._doubt_self(now)
        my_corr = self.correction(now)
        deviations = [0.0]
        locked: list[float] = []
        locked_on: list[str] = []  # the timeline each of ``locked`` says it is on
        reference = None
        oldest = now - cfg.stale_after
        heard_any = False
        newcomer_since = now - cfg.newcomer_segments * self._segments.duration(period)
        unmeasured = 0
        settled_unlocked = 0
        heard: list[Anchor] = []
        band, lock_trigger, _ = self._thresholds()
        names: list[str] = []
        routes: list[MergeRoute] = []
        beacons: list[MergeRoute] = []
        for name, nb in self._neighbours.items():
            kf = nb.filter
            fresh = nb.link.last_received_at >= oldest
            heard_any = heard_any or fresh
            if not fresh:
                nb.counted_since = None  # silent: when it speaks again, it is new again
            if fresh and kf.updates < cfg.min_updates:
                unmeasured += 1
            if kf.updates >= cfg.min_updates and fresh and self._trusted(nb, now):
                if nb.counted_since is None:
                    nb.counted_since = now
                kf.predict(now)
                deviation = kf.deviation + my_corr - nb.correction_at(now)
                # A beacon that started here is this encoder's own, coming back: ignored.
                beacon = nb.beacon
                if (
                    beacon is not None
                    and beacon.witnesses[0] != self.node_id
                    and (carried := beacon.via(deviation)) is not None
                ):
                    beacons.append(carried)
                if nb.locked and self._hear_timeline(name, nb, deviation, band, names, routes):
                    continue
                deviations.append(deviation)
                if nb.locked:
                    locked.append(deviation)
                    locked_on.append(nb.last.timeline if nb.last is not None else "")
                elif nb.counted_since <= max(newcomer_since, self._lock.locked_since):
                    settled_unlocked += 1
                if name == self._leader:
                    reference = deviation
                announced = nb.anchor
                relayed = announced.via(deviation) if announced is not None else None
                if relayed is not None:
                    heard.append(relayed)
        # The encoder can vouch for its output while it is locked and every neighbour it counts
        # (a newcomer aside) says it is locked too: the neighbourhood holds one timeline.
        self._settled_unlocked = settled_unlocked
        if heard_any:
            self._alone_since = None
        elif self._alone_since is None:
            self._alone_since = now
        self._anchor = choose_anchor(self.node_id, heard)
        # What it passes on while not locked; locked, ``_hold_timeline`` adds its own.
        passed_on = self._beacon = choose_beacon(beacons)
        if len(deviations) == 1:
            if not self._lock.locked and not unmeasured:
                self._hold_alone(now, label, lock_trigger)
            return
        lock = self._lock
        if lock.locked:
            self._hold_timeline(now, names, routes, beacons)
            if now < self._settle_until or (self._route is not None and self._route.segment > 0):
                # A merge is scheduled or just made: neighbours jump at the same segment
                # boundary, each when its own picture gets there, and for a moment look whole
                # frames away. Hold still until they have.
                return
            unlocked = len(deviations) - 1 - len(locked)
            if locked and unlocked > 0 and settled_unlocked < len(locked):
                # A locked encoder holds the timeline with the neighbours that hold it too:
                # one still locking in (a newcomer, an encoder back from a fault) comes to
                # them, and must not make them lock in again on its way. Only while they are
                # more than the unlocked neighbours that have had time to lock in, though: a
                # group locked a frame off the rest of its neighbourhood would otherwise hold
                # its slot for ever, its unlocked neighbours never agreeing with it (measured:
                # a 100-encoder world whose locked pair, and a 60 fps world whose locked
                # triangle with two locked and two unlocked neighbours each, never let the
                # mesh lock). A newcomer (first counted after this encoder locked) counts
                # against them only after ``newcomer_segments`` (measured: a third encoder
                # joining a locked pair pulled both a frame); neighbours counted before the
                # lock count at once, so lock-in at start is as without newcomers.
                deviations = [0.0, *locked]
                reference = reference if reference in locked else None
            view_of_mesh = consensus(deviations, cfg.outlier * period)
            if view_of_mesh.set_aside > cfg.tolerated_outliers or view_of_mesh.spread > max(
                cfg.relock_min * period, cfg.relock_spread * self._tolerance()
            ):
                # The neighbourhood no longer agrees: lock in again, towards the locked
                # neighbours' densest group or the anchor, so that the disagreement is resolved
                # (two groups locked into adjacent slots would otherwise each hold their own).
                lock.on(LockSignal.SPLIT, now)
        fr = cfg.frame_rate
        if lock.locked:
            centre = view_of_mesh.mean
            if reference is not None and view_of_mesh.low <= reference <= view_of_mesh.high:
                centre = reference
            target = fr.slot(label - centre + cfg.boundary_bias * period)
            error = label - fr.slot_middle(target)
            self._slot_errors = (error,)
        else:
            self._timeline = ""
            self._beacon = passed_on  # its own is gone with the lock (a split this step)
            self._route = None
            self._route_key = None
            # Locking in, the encoder comes to its locked neighbours' densest group when any
            # neighbour holds a lock (it is a newcomer, or back from a fault), and otherwise
            # aims for the middle of the slot its anchor's label is in (``meshenc.core.anchor``).
            # Its neighbours' estimates of a timeline within the consensus band of a slot
            # boundary straddle the boundary, so it judges their proposals by the middle of
            # either slot.
            best = ""
            if locked:
                locked, best = self._toward_the_best_named(locked, locked_on, deviations)
                error = consensus(locked, cfg.outlier * period).mean
                timeline = label - error + cfg.boundary_bias * period
            else:
                timeline = label - self._anchor.offset + cfg.boundary_bias * period
                error = label - fr.slot_middle(fr.slot(timeline))
            self._slot_errors = tuple(
                label - fr.slot_middle(slot)
                for slot in sorted({fr.slot(timeline - band), fr.slot(timeline + band)})
            )
            # It locks with its neighbours together around it and itself at its target (the
            # middle of its anchor's slot, of the adjacent one at their boundary, or its locked
            # neighbours' centre). Together alone is not enough: a group whose moves towards
            # the anchor were still being voted on locked where it stood, whole frames off
            # the anchor's slot, and held that slot until a merge seconds later (measured in
            # simulated meshes of 50 and 100 encoders).
            if max(deviations) > band or min(deviations) < -band:
                lock.on(LockSignal.APART, now)
            elif (
                lock.phase is LockPhase.AGREEING
                and now - lock.since >= cfg.lock_dwell
                and min(abs(error), *(abs(e) for e in self._slot_errors)) <= band
            ):
                lock.on(LockSignal.DWELT, now)
                # Named at once after the locked neighbours it came to, so that its first
                # locked step already tells their timeline from another's (unnamed, it
                # counted the other timeline's neighbours, split and locked in again).
                self._timeline = best
            else:
                lock.on(LockSignal.TOGETHER, now)
        drift = (self._smoother.period - period) / period + self._corr_rate
        self._error = error
        self._predicted_error = error + drift * cfg.policy.horizon
        if not self._proposal.free(now):
            return
        view = ControlView(
            now=now,
            label=label,
            error=error,
            error_rate=drift,
            correction_rate=self._corr_rate,
            noise=self.deviation_noise,
            rate_noise=self._smoother.period_noise,
        )
        if lock.locked:
            plan = self.policy.decide(view)
        elif abs(error) > lock_trigger and not unmeasured:
            # Lock-in moves go to the vote like any significant correction: besides guarding
            # against bad data, the vote damps lock-in, since only moves that most neighbours
            # (each from its own view) agree with happen at all. None is proposed while a
            # neighbour that is sending is not yet measured: the mean is not yet the
            # neighbourhood's, and such a neighbour's vote is a refusal for want of an
            # estimate (measured: every first lock-in move of a 50 fps world turned down,
            # each refusal costing the 0.7 s retry).
            plan = plan_shift(cfg.frame_rate, cfg.policy, view, self._corr_rate, math.nan)
        else:
            plan = None
        if plan is None:
            steered = self.policy.steer(view)
            if steered != self._corr_rate:
                self._corr = my_corr
                self._corr_at = now
                self._corr_rate = steered
            return
        if not plan.needs_vote:
            self._apply(now, plan, 0)
            return
        self._proposal_ids += 1
        proposal = ResyncProposal(
            proposer=self.node_id,
            proposal_id=self._proposal_ids,
            kind=plan.kind,
            shift=plan.shift,
            topology_epoch=self.topology_epoch,
        )
        electorate = self._counted_electorate(now)
        self._proposals.open(now, proposal, electorate, self._vote_timeout(electorate))
        self._open = (self._proposal_ids, plan, error)
        self._proposal.on(ProposalSignal.PROPOSED)
        self._actions.append(SendProposal(proposal, tuple(sorted(electorate))))

    def _toward_the_best_named(
        self, locked: list[float], locked_on: list[str], deviations: list[float]
    ) -> tuple[list[float], str]:
        """Locking in: the deviations of the locked neighbours to come to, and the timeline
        they are on ("" when none says). With locked neighbours on different timelines whole
        frames apart, those on the best-named one, the timeline kept when they merge; the
        others are also taken out of ``deviations``, so they do not keep it from locking.
        Coming to their densest group instead, an encoder between two groups followed the
        nearer and could never lock (measured: a real encoder with two neighbours on one
        timeline and one on another, a frame apart, unlocked for a whole run, and neither
        group saw the other locked to merge with)."""
        named = {name for name in locked_on if name}
        best = min(named, default="")
        if len(named) < 2:
            return locked, best
        kept = [d for d, name in zip(locked, locked_on, strict=True) if name == best]
        centre = consensus(kept, self.config.outlier * self._period).mean
        foreign = self.config.relock_min * self._period
        for d, name in zip(locked, locked_on, strict=True):
            if name and name != best and abs(d - centre) >= foreign:
                deviations.remove(d)
        return kept, best

    def _hear_timeline(
        self,
        name: str,
        nb: _Neighbour,
        deviation: float,
        band: float,
        names: list[str],
        routes: list[MergeRoute],
    ) -> bool:
        """What a counted, locked neighbour says of timelines (``meshenc.core.timeline``): one
        in this encoder's slot names its timeline and passes on its merge route; one at least
        ``relock_min`` frames away, on a timeline named otherwise than this locked encoder's,
        is a direct sighting of that timeline. Returns True for the latter: a neighbour on
        another timeline is not part of this encoder's lock (the worse-named side comes over
        by a merge; before, the two sides' meeting points locked in again and again, each
        coming back to its own side's densest group, when the two were less than the outlier
        distance apart). Nearer than ``relock_min`` the neighbour counts as before: whether
        it is in the next slot or the same one, noisy, is for the relock rules to settle
        (measured: with half a frame, real encoders on a starved CPU merged twice at start-up
        over 17 ms, which is noise, not another timeline)."""
        esp = nb.last
        if esp is None or not esp.timeline:
            return False
        foreign = self.config.relock_min * self._period
        if abs(deviation) <= band:
            names.append(esp.timeline)
            if esp.merge_timeline:
                heard = MergeRoute(
                    esp.merge_timeline,
                    esp.merge_hops,
                    esp.merge_offset,
                    esp.merge_witnesses,
                    esp.merge_segment,
                ).via(deviation)
                if heard is not None and abs(heard.offset) > foreign:
                    routes.append(heard)
        elif self._timeline and esp.timeline != self._timeline and abs(deviation) > foreign:
            routes.append(MergeRoute(esp.timeline, 1, deviation, (name,)))
            return True
        return False

    def _hold_timeline(
        self, now: float, names: list[str], routes: list[MergeRoute], beacons: list[MergeRoute]
    ) -> None:
        """Name the timeline this locked encoder holds, start its beacon, and keep its route to
        a better-named one, scheduling the move once the route is confirmed
        (``meshenc.core.timeline``)."""
        # A timeline named after this encoder's anchor is the anchor's slot. As far from the
        # anchor as would split a locked neighbourhood (whole frames), this encoder is not on
        # it, whatever its locked neighbours in its slot call their timeline (they locked onto
        # a group that locked off the anchor): it names its timeline after itself instead, and
        # the anchor's timeline, better named, wins. Nearer, it is the policy's own wander
        # (measured: at 0.75 frame, reactive encoders renamed and merged as they drifted);
        # briefer than ``merge_confirm``, noise summed over many links (measured: real
        # encoders on a starved CPU, 5 to 9 links from their anchor, read it 0.8 frame away
        # for under a second).
        cfg = self.config
        anchor = self._anchor
        foreign = cfg.relock_min * self._period
        apart = max(foreign, cfg.relock_spread * self._tolerance())
        far = anchor.node if anchor.hops and abs(anchor.offset) >= apart else ""
        if far != self._far_anchor:
            self._far_anchor, self._far_since = far, now
        doubted = far if now - self._far_since >= cfg.merge_confirm else ""
        if doubted:
            names = [name for name in names if name != doubted]
        if not self._timeline or self._timeline == doubted:
            # Just locked (or its name doubted): the name its locked neighbours in this slot
            # hold, or else its anchor's, or its own when the anchor is elsewhere.
            self._timeline = min(names, default=self.node_id if doubted else anchor.node)
        elif names:
            self._timeline = min(self._timeline, *names)
        own = MergeRoute(self._timeline, 0, 0.0, (self.node_id,))
        self._beacon = choose_beacon([own, *beacons])
        heard = choose_route(self._timeline, beacons, 0)
        if heard is not None and abs(heard.offset) > foreign:
            # A better-named timeline whole frames away, heard of through encoders that need
            # not be locked (a group held apart from the rest by encoders that cannot lock
            # sees no one of the rest directly): a route like a direct sighting, its witnesses
            # the encoders locked on that timeline that the beacons started from.
            routes.append(heard)
        segment = self.current_segment
        route = choose_route(self._timeline, routes, segment)
        if route is None:
            self._route = None
            self._route_key = None
            return
        key = (route.timeline, round(route.offset / self._period))
        confirmed = len(route.witnesses) >= MIN_WITNESSES
        previous = self._route
        if key != self._route_key or not confirmed:
            self._route_key = key if confirmed else None
            self._route_since = now if confirmed else math.inf
            previous = None
        # A schedule is taken from a neighbour, kept or made only while the route names
        # enough witnesses; made only once it has held for ``merge_confirm``.
        scheduled = []
        if confirmed:
            if route.segment > segment:
                scheduled.append(route.segment)
            if previous is not None and previous.segment > segment:
                scheduled.append(previous.segment)
            if not scheduled and now - self._route_since >= cfg.merge_confirm:
                scheduled.append(segment + cfg.merge_lead)
        self._route = replace(route, segment=min(scheduled, default=0))

    def _merge_due(self, now: float, label: float, route: MergeRoute) -> bool:
        """Move to the route's timeline if this picture is the first of its scheduled segment
        on either timeline: a move back drops the pictures that would fall into the segment
        before, a move forward fills the end of the segment before with repeats, so the
        scheduled segment is the winner's from its first frame. Returns whether it moved.
        The move needs no vote: every encoder of the group makes it at the same boundary."""
        fr = self.config.frame_rate
        shift = -route.offset
        if self._segments.segment_of(max(fr.slot(label), fr.slot(label + shift))) < route.segment:
            return False
        kind = classify_shift(fr, label, shift)
        self._apply(now, PlannedCorrection(kind, shift, self._corr_rate, math.nan, False), 0)
        self._timeline = route.timeline
        self._beacon = None  # it named the timeline left; the next control step starts anew
        self._route = None
        self._route_key = None
        self._settle_until = now + self.config.merge_settle
        return True

    def _hold_alone(self, now: float, label: float, trigger: float) -> None:
        """No neighbour to agree with yet: hold the middle of this encoder's own slot, as an
        anchor does. Encoders that join later and take it as their anchor then find it where
        it stays (measured: the first of three real encoders started 5 s apart, left off the
        middle, jumped a frame when the second arrived and wrote a segment no one else did)."""
        fr = self.config.frame_rate
        error = label - fr.slot_middle(fr.slot(label + self.config.boundary_bias * self._period))
        self._error = error
        self._slot_errors = (error,)
        if abs(error) <= trigger or not self._proposal.free(now):
            return
        view = ControlView(
            now=now,
            label=label,
            error=error,
            error_rate=0.0,
            correction_rate=self._corr_rate,
            noise=self.deviation_noise,
            rate_noise=self._smoother.period_noise,
        )
        # Nobody to ask: the move applies at once, whatever its size.
        self._apply(now, plan_shift(fr, self.config.policy, view, self._corr_rate, math.nan), 0)

    @property
    def deviation_noise(self) -> float:
        """Standard deviation (s) of one estimate of a neighbour's deviation: both labels'
        smoothing noise, the neighbour's taken to be like this encoder's own (same source,
        same kind of ingest)."""
        return math.sqrt(2.0) * self._smoother.noise

    def _thresholds(self) -> tuple[float, float, float]:
        """The consensus band, lock-in trigger and vote tolerance now (s): fractions of a
        frame, raised to ``noise_margin`` deviations of the measured noise where that is more."""
        cfg = self.config
        period = self._period
        floor = cfg.noise_margin * self.deviation_noise
        band = min(max(cfg.consensus_band * period, floor), cfg.max_band * period)
        trigger = max(cfg.lock_trigger * period, 0.5 * floor)
        tolerance = max(cfg.vote_tolerance * period, floor)
        return band, trigger, tolerance

    def _tolerance(self) -> float:
        """How far (s) the policy lets the error grow before it acts, noise included."""
        return max(
            self.policy.tolerance * self._period, self.config.noise_margin * self.deviation_noise
        )

    def _doubt_self(self, now: float) -> None:
        """When most neighbours still speaking are suspects, the evidence is against this
        encoder: re-measure them from scratch and suspect none.

        Neighbours that jump together are caught at once (``_control``); ones whose filters
        reject a measurement a few control steps apart are suspected one by one. Measured in a
        chaos run: a locked encoder whose slew had moved it suspected its three neighbours in
        turn (one of them frozen), counted nobody, and held its lock on its own clock for 24 s
        while it drifted half a frame away from the mesh and wrote seven segments no one
        else did."""
        oldest = now - self.config.stale_after
        speaking = [nb for nb in self._neighbours.values() if nb.link.last_received_at >= oldest]
        suspects = [nb for nb in speaking if now < nb.suspect_until]
        if suspects and 2 * len(suspects) > len(speaking):
            for nb in suspects:
                nb.suspect_until = -math.inf
                nb.filter.reset()

    def _trusted(self, nb: _Neighbour, now: float) -> bool:
        """A neighbour counts unless there is evidence against it: its filter recently had to
        reject a measurement (labels that jump), or its frame hashes disagree with ours at
        equal timecodes while most other neighbours' agree (it lies, or encodes differently).
        Distance alone is no evidence: an honest neighbour may still be locking in."""
        if now < nb.suspect_until:
            return False
        if nb.hash_agreement >= 0.5:
            return True
        others = [o.hash_agreement for o in self._neighbours.values() if o is not nb]
        return not others or sorted(others)[len(others) // 2] < 0.9

    def _settle(self, now: float, outcome: Outcome) -> None:
        change = self._parameter_proposals.pop(outcome.proposal.proposal_id, None)
        if change is not None:
            if outcome.verdict is Verdict.ACCEPTED:
                self._learn(change, outcome.proposal.proposal_id)
            else:
                self._escalations += 1
                self._actions.append(Escalate(outcome, 0.0))
            return
        if self._open is None or outcome.proposal.proposal_id != self._open[0]:
            return
        _, plan, error = self._open
        self._open = None
        if outcome.verdict is Verdict.ACCEPTED:
            self._proposal.on(ProposalSignal.ACCEPTED)
            self._apply(now, plan, outcome.proposal.proposal_id)
            return
        cfg = self.config
        if not self._lock.locked:
            # While locking in, turned-down moves are the norm (everyone moves at once, each
            # judging from its own noisy view): nothing for the manager to judge.
            retry_at = now + cfg.lock_in_retry_backoff
            self._proposal.on(ProposalSignal.TURNED_DOWN, until=retry_at)
            self._actions.append(LockInTurnedDown(outcome, retry_at))
            return
        self._proposal.on(ProposalSignal.TURNED_DOWN, until=now + cfg.retry_backoff)
        self._escalations += 1
        self._escalated = (outcome.proposal.proposal_id, plan, now)
        self._actions.append(Escalate(outcome, error))

    def _apply_escalated(self, now: float, proposal_id: int) -> None:
        """``EscalationApproved``: apply the escalated plan if it is still the newest one."""
        escalated = self._escalated
        if (
            escalated is None
            or escalated[0] != proposal_id
            or self._proposal.phase is ProposalPhase.VOTING
            or now - escalated[2] > self.config.escalation_expiry
        ):
            return
        self._escalated = None
        self._apply(now, escalated[1], proposal_id)

    def _apply(self, now: float, plan: PlannedCorrection, proposal_id: int) -> None:
        self._corr = self.correction(now) + plan.shift
        self._corr_rate = plan.new_rate
        self._corr_at = now
        self._counts[plan.kind] += 1
        event = CorrectionApplied(now, plan.kind, plan.shift, plan.new_rate, plan.lead, proposal_id)
        self._recent.append(event)
        self._actions.append(event)

    # -- observation ---------------------------------------------------------------------------

    def _mean_rtt(self) -> float:
        total, count = 0.0, 0
        for nb in self._neighbours.values():
            rtt = nb.link.rtt
            if not math.isnan(rtt):  # measured
                total += rtt
                count += 1
        return total / count if count else 0.0

    def snapshot(self, now: float) -> EngineSnapshot:
        neighbours = []
        my_corr = self.correction(now)
        for name, nb in sorted(self._neighbours.items()):
            kf = nb.filter
            their = nb.correction_at(now)
            deviation = kf.at(now) + my_corr - their if kf.initialised else math.nan
            rate = kf.rate + self._corr_rate - nb.corr_rate
            predicted = deviation + rate * self.config.policy.horizon
            neighbours.append(
                NeighbourSnapshot(
                    neighbour=name,
                    deviation=deviation,
                    predicted=predicted,
                    rate=rate,
                    rtt=nb.link.rtt,
                    jitter=nb.link.jitter,
                    loss=nb.link.loss,
                    trusted=self._trusted(nb, now),
                    updates=kf.updates,
                    crossing_in=time_to_boundary(deviation, rate, 0.5 * self._period),
                    locked=nb.locked,
                    confidence=nb.confidence,
                    reported_encode_latency=0.0 if nb.last is None else nb.last.encode_latency,
                    reported_rtt=0.0 if nb.last is None else nb.last.rtt,
                    reported_jitter=0.0 if nb.last is None else nb.last.jitter,
                    silent=nb.link.last_received_at < now - self.config.stale_after,
                )
            )
        return EngineSnapshot(
            node_id=self.node_id,
            strategy=self.config.strategy,
            locked=self._lock.locked,
            timecode=self._last_tc,
            label=self._last.label if self._last else math.nan,
            correction=my_corr,
            correction_rate=self._corr_rate,
            error=self._error,
            predicted_error=self._predicted_error,
            confidence=self._confidence,
            neighbours=tuple(neighbours),
            corrections=dict(self._counts),
            recent_corrections=tuple(self._recent),
            escalations=self._escalations,
            open_proposals=self._proposals.open_count,
            parameters=self._schedule.parameters_for(max(self.current_segment, 0)),
            pending_change=self._schedule.pending(self.current_segment),
            unproven=self._proof is not None,
            vouches=self.vouches(now),
        )
