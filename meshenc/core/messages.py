"""Messages the mesh exchanges, as the core sees them.

These are the protocol's meaning without its encoding: the wire layer (``meshenc.wire``)
converts them to and from the protobuf messages of ``proto/meshenc/v1``. Times are float
seconds here (labels on the Unix epoch, durations as plain seconds); the wire carries
integer nanoseconds.

Written-out ``__init__``s: the frozen dataclasses the simulator builds on every event (the
ESP here, the engine's events and actions, a few values of the core) spell out the
``__init__`` that ``dataclasses`` would generate. mypyc keeps a generated one as interpreted
Python that stores each field through ``object.__setattr__``, and compiles a written-out one to
direct stores (a frozen dataclass of 28 fields, compiled: 3.6 µs to build, 45 ns written out);
pure Python runs both at the same speed, and the dataclass stays frozen either way.
``tests/core/test_written_inits.py`` holds every written-out ``__init__`` to its class's
fields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CorrectionKind",
    "EncodingStatePacket",
    "ResyncProposal",
    "ResyncVote",
]


class CorrectionKind(enum.Enum):
    """How a correction reaches the output.

    SLEW moves the label within its frame slot (invisible); DROP and DUPLICATE move it across
    a slot boundary, so one source frame is skipped or one output slot repeats; PARAMETER
    changes encoding parameters at an agreed future GOP boundary.
    """

    SLEW = "slew"
    DROP = "drop"
    DUPLICATE = "duplicate"
    PARAMETER = "parameter"


@dataclass(frozen=True, slots=True)
class EncodingStatePacket:
    """One encoder's state for one frame, sent to every neighbour (an ESP).

    ``label`` is the corrected capture time of the picture named by ``fingerprint``; comparing
    two encoders' labels for the same fingerprint gives their deviation directly, including the
    part due to different ingest delays. ``label - correction`` is the sender's uncorrected
    capture time, which evolves smoothly and is what a receiver's Kalman filter tracks.
    """

    sender: str
    sequence: int
    topology_epoch: int
    timecode: int
    frame_hash: bytes
    fingerprint: int
    label: float
    correction: float
    correction_rate: float
    encode_latency: float
    rtt: float
    jitter: float
    confidence: float
    sent_at: float
    echo_sequence: int = 0
    echo_sent_at: float = 0.0
    echo_hold: float = 0.0
    #: The sender holds a lock: its neighbourhood agrees on the timeline.
    locked: bool = False
    #: The newest encoding-parameter change the sender has agreed on (0, 0: none): from segment
    #: ``params_segment`` on, bitrate ``params_bitrate_kbps`` and picture size ``params_size``
    #: (None: the size the encoders were started with). Gossip spreads it mesh-wide.
    params_segment: int = 0
    params_bitrate_kbps: int = 0
    #: The sender's anchor (``meshenc.core.anchor``): the encoder whose timeline it aims for
    #: while locking in ("": none announced), how many links away it is, and the sender's label
    #: minus the anchor's label (s).
    anchor: str = ""
    anchor_hops: int = 0
    anchor_offset: float = 0.0
    #: The timeline the sender is locked on ("": not locked; ``meshenc.core.timeline``).
    timeline: str = ""
    #: A better-named timeline the sender's group will move to ("": none), as a merge route:
    #: links away, the sender's label minus that timeline's (s), the encoders of it seen
    #: directly, and the segment at whose start the sender moves (0: not scheduled).
    merge_timeline: str = ""
    merge_hops: int = 0
    merge_offset: float = 0.0
    merge_witnesses: tuple[str, ...] = ()
    merge_segment: int = 0
    #: The timeline beacon (``meshenc.core.timeline``): the best-named timeline the sender
    #: knows of ("": none), links away (0: the sender is locked on it), the sender's label
    #: minus that timeline's (s), and the encoder locked on it that the beacon started from.
    beacon_timeline: str = ""
    beacon_hops: int = 0
    beacon_offset: float = 0.0
    beacon_origin: str = ""
    #: The newest segment the sender wrote (0: none yet) and the SHA-256 of its bytes (for a
    #: ladder, over every rung's): a receiver that wrote the same segment compares its bytes.
    written_segment: int = 0
    segment_digest: bytes = b""
    #: Whether the sender vouched for that segment (wrote it under its shared name).
    segment_vouched: bool = False
    #: Which output the digest is of: "" the whole output, else a placed rung's name.
    segment_unit: str = ""
    params_size: tuple[int, int] | None = None

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(
        self,
        sender: str,
        sequence: int,
        topology_epoch: int,
        timecode: int,
        frame_hash: bytes,
        fingerprint: int,
        label: float,
        correction: float,
        correction_rate: float,
        encode_latency: float,
        rtt: float,
        jitter: float,
        confidence: float,
        sent_at: float,
        echo_sequence: int = 0,
        echo_sent_at: float = 0.0,
        echo_hold: float = 0.0,
        locked: bool = False,
        params_segment: int = 0,
        params_bitrate_kbps: int = 0,
        anchor: str = "",
        anchor_hops: int = 0,
        anchor_offset: float = 0.0,
        timeline: str = "",
        merge_timeline: str = "",
        merge_hops: int = 0,
        merge_offset: float = 0.0,
        merge_witnesses: tuple[str, ...] = (),
        merge_segment: int = 0,
        beacon_timeline: str = "",
        beacon_hops: int = 0,
        beacon_offset: float = 0.0,
        beacon_origin: str = "",
        written_segment: int = 0,
        segment_digest: bytes = b"",
        segment_vouched: bool = False,
        segment_unit: str = "",
        params_size: tuple[int, int] | None = None,
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "sequence", sequence)
        object.__setattr__(self, "topology_epoch", topology_epoch)
        object.__setattr__(self, "timecode", timecode)
        object.__setattr__(self, "frame_hash", frame_hash)
        object.__setattr__(self, "fingerprint", fingerprint)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "correction", correction)
        object.__setattr__(self, "correction_rate", correction_rate)
        object.__setattr__(self, "encode_latency", encode_latency)
        object.__setattr__(self, "rtt", rtt)
        object.__setattr__(self, "jitter", jitter)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "sent_at", sent_at)
        object.__setattr__(self, "echo_sequence", echo_sequence)
        object.__setattr__(self, "echo_sent_at", echo_sent_at)
        object.__setattr__(self, "echo_hold", echo_hold)
        object.__setattr__(self, "locked", locked)
        object.__setattr__(self, "params_segment", params_segment)
        object.__setattr__(self, "params_bitrate_kbps", params_bitrate_kbps)
        object.__setattr__(self, "anchor", anchor)
        object.__setattr__(self, "anchor_hops", anchor_hops)
        object.__setattr__(self, "anchor_offset", anchor_offset)
        object.__setattr__(self, "timeline", timeline)
        object.__setattr__(self, "merge_timeline", merge_timeline)
        object.__setattr__(self, "merge_hops", merge_hops)
        object.__setattr__(self, "merge_offset", merge_offset)
        object.__setattr__(self, "merge_witnesses", merge_witnesses)
        object.__setattr__(self, "merge_segment", merge_segment)
        object.__setattr__(self, "beacon_timeline", beacon_timeline)
        object.__setattr__(self, "beacon_hops", beacon_hops)
        object.__setattr__(self, "beacon_offset", beacon_offset)
        object.__setattr__(self, "beacon_origin", beacon_origin)
        object.__setattr__(self, "written_segment", written_segment)
        object.__setattr__(self, "segment_digest", segment_digest)
        object.__setattr__(self, "segment_vouched", segment_vouched)
        object.__setattr__(self, "segment_unit", segment_unit)
        object.__setattr__(self, "params_size", params_size)

    def echoing(self, sequence: int, sent_at: float, hold: float) -> EncodingStatePacket:
        """This packet answering a neighbour's ``sequence`` (sent at ``sent_at`` on its clock,
        held here for ``hold`` s): one construction, where ``dataclasses.replace`` costs
        several, and the engine echoes to every neighbour every few frames."""
        return EncodingStatePacket(
            sender=self.sender,
            sequence=self.sequence,
            topology_epoch=self.topology_epoch,
            timecode=self.timecode,
            frame_hash=self.frame_hash,
            fingerprint=self.fingerprint,
            label=self.label,
            correction=self.correction,
            correction_rate=self.correction_rate,
            encode_latency=self.encode_latency,
            rtt=self.rtt,
            jitter=self.jitter,
            confidence=self.confidence,
            sent_at=self.sent_at,
            echo_sequence=sequence,
            echo_sent_at=sent_at,
            echo_hold=hold,
            locked=self.locked,
            params_segment=self.params_segment,
            params_bitrate_kbps=self.params_bitrate_kbps,
            anchor=self.anchor,
            anchor_hops=self.anchor_hops,
            anchor_offset=self.anchor_offset,
            timeline=self.timeline,
            merge_timeline=self.merge_timeline,
            merge_hops=self.merge_hops,
            merge_offset=self.merge_offset,
            merge_witnesses=self.merge_witnesses,
            merge_segment=self.merge_segment,
            beacon_timeline=self.beacon_timeline,
            beacon_hops=self.beacon_hops,
            beacon_offset=self.beacon_offset,
            beacon_origin=self.beacon_origin,
            written_segment=self.written_segment,
            segment_digest=self.segment_digest,
            segment_vouched=self.segment_vouched,
            segment_unit=self.segment_unit,
            params_size=self.params_size,
        )


@dataclass(frozen=True, slots=True)
class ResyncProposal:
    """A proposer's announcement of a significant correction, put to its neighbours' vote.

    ``shift`` is the signed change (seconds) the proposer will add to its label. For
    PARAMETER proposals ``effective_segment`` is the first segment encoded with
    ``bitrate_kbps`` and picture size ``size`` (None: the size the encoders were started
    with). ``trace_context`` holds the W3C trace headers a received proposal arrived with
    (``meshenc.wire.convert`` fills it; the core neither reads nor sets it), so that the
    receiving shell's spans join the proposer's trace.
    """

    proposer: str
    proposal_id: int
    kind: CorrectionKind
    shift: float
    topology_epoch: int
    effective_segment: int = 0
    bitrate_kbps: int = 0
    trace_context: tuple[tuple[str, str], ...] = ()
    size: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ResyncVote:
    """A neighbour's verdict on a proposal, decided from its own estimate of the proposer.

    ``estimated_deviation`` is the voter's estimate (seconds) of the proposer's label minus
    its own label for the same picture, at the time it voted. ``trace_context``: as for
    :class:`ResyncProposal`, the headers a received vote arrived with.
    """

    proposer: str
    proposal_id: int
    voter: str
    approve: bool
    estimated_deviation: float
    reason: str = ""
    trace_context: tuple[tuple[str, str], ...] = ()
