"""One encoder process: the live loop around the sync engine.

Theory of operation: the encoder ingests one live stream (``LiveIngest``: demux and decode in a
thread of their own). Every picture comes with its *measured* arrival on the host clock, read
as its data left the demuxer, and its source timestamp. The arrival is read through the
encoder's own clock (the host clock seen through an injected ``VirtualOscillator``: drift,
offset, read jitter, a test aid that is the identity in production) and becomes the capture
stamp. The source timestamp names the picture alike on every encoder (``source_identity``) and
gives the cadence the engine's smoother fits the stamps against; a source without timestamps
is named by a window of fingerprints, and an ambiguous window (black, a freeze) by nothing at
all. No stamp is ever derived from a picture's position in the stream.

The engine turns the stamp into a label and timecode(s); the picture is encoded into each slot
by a GOP-deterministic encoder, written into segments named by segment number (with the
source's audio passed through, re-timed onto the same timeline), hashed into the ESP, and the
ESP goes to every neighbour. That path is the ``FramePipeline``'s, which is also the only door
into the engine: every event goes in through ``pipeline.step`` and everything the engine
decides (ESPs, votes, proposals, corrections, escalations) comes back to ``carry_out``.

When the input stops (``InputMonitor``), the encoder keeps its timeline and output running on
its own cadence: it repeats the last picture, then sends black (``--input-loss-*``), marks those
pictures as unmeasured and reports the input lost; when pictures arrive again it counts on
from their arrivals and is identical again as soon as its next GOP starts.

An encoder that stood still (SIGSTOP, a frozen VM: no FIN, no RST, its sockets open) finds out
on resuming from its own monotonic clock: a heartbeat that should beat every frame period saw
more than ``SILENT_FRAMES`` periods pass (as long as its neighbours wait before counting it as
lost), so it publishes no playlist as leader until a fenced act of its leadership has landed
in etcd after the stall (another leader may have taken over meanwhile); past the engine's
``stale_after`` it also logs it and tells the engine (``Stalled``: no segment is vouched for
until it has proved itself identical again).

The loop never waits for the network: sends are queued per neighbour and dropped when a
neighbour is slow (counted by the mesh links). A loop that is late (a segment write, a busy
machine) works through the pictures queued by the ingest thread back to back — their stamps
are their arrivals, so labels do not suffer. Beyond a second's backlog (a machine that cannot
carry the load, CPU stolen for seconds) it gives up every queued picture but the newest, as a
live ingest does, counts them, and sheds the segment in progress (``FramePipeline.shed``): it
is back at the live edge at once, encodes nothing more until the next segment starts, and
writes whole segments from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from meshenc.core.clock import VirtualOscillator
from meshenc.core.election import ElectionConfig, ElectionSnapshot, RankInputs
from meshenc.core.engine import (
    NO_IDENTITY,
    Action,
    CorrectionApplied,
    EngineConfig,
    Escalate,
    EscalationApproved,
    EspReceived,
    InputResumed,
    LeaderChanged,
    LoadMeasured,
    LockInTurnedDown,
    NeighboursChanged,
    ParametersAgreed,
    ParametersRefused,
    ParametersRequested,
    ProposalReceived,
    SegmentGivenUp,
    SegmentWritten,
    SendEsp,
    SendProposal,
    SendVote,
    Stalled,
    SyncEngine,
    VoteReceived,
)
from meshenc.core.identity import FingerprintWindow, SourceCadence, source_identity
from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.core.votes import Verdict
from meshenc.v1 import manager_pb2, mesh_pb2
from meshenc.wire import PROTOCOL_VERSION, convert, hot_path
from meshenc.wire.adjacency import AdjacencyDocument
from services.common.log_limit import LimitedLog
from services.common.shutdown import bounded_step
from services.encoder.control import ControlPlane, record_health
from services.encoder.leadership import SegmentLeadership
from services.encoder.leadership import log as leadership_log
from services.encoder.manager_link import VoteLog
from services.encoder.media.containers import TICKS, AudioPacket
from services.encoder.media.gop import EncodedFrame
from services.encoder.media.ingest import (
    SWITCH_INTERVAL,
    Ingested,
    IngestedAudio,
    IngestedPicture,
    InputMonitor,
    InputState,
    LiveIngest,
)
from services.encoder.media.ladder import (
    MASTER_NAME,
    ChannelRung,
    Holdings,
    LadderManifests,
    Rendition,
    channel_master,
    channel_mpd,
    channel_rungs,
    open_rendition,
    renditions_for,
    top_rung,
)
from services.encoder.media.publish import Publisher
from services.encoder.media.segments import (
    ASIDE_PREFIX,
    MPD_NAME,
    SegmentFormat,
    SegmentWriter,
    segment_number,
    utc_instant,
)
from services.encoder.media.serve import OutputServer
from services.encoder.media.source import Picture, VideoFormat, black_picture
from services.encoder.mesh import MeshLinks, MeshServer
from services.encoder.mesh import log as mesh_log
from services.encoder.pipeline import FramePipeline
from services.encoder.settings import EncoderSettings
from services.encoder.telemetry import EncoderTelemetry
from services.encoder.timeline_log import TimelineLog

__all__ = ["EncoderRuntime", "ProcessParts", "RunStats"]

STOP_STEP_TIMEOUT = 3.0
"""Seconds one step of an encoder's stop may take (the gRPC server's one-second grace, a
thread's two-second join, the output server's last responses) before it is left behind."""

log = logging.getLogger("meshenc.encoder")

#: The latency an encoder ranks with before it has measured any: 0.5 s costs five times the
#: whole confidence range (``meshenc.core.leader``), so an unmeasured encoder never leads.
UNMEASURED_LATENCY = 0.5

SILENT_FRAMES = 8
"""A neighbour that sent no ESP for this many frame periods counts as lost to the election."""

_ASIDE_KEPT = 16
"""Segments whose aside decision is kept for their other rungs (a few seconds' worth)."""
SERVED_SEGMENTS = 3
"""How recent a rung's newest segment under the shared name must be (segments before the one
being written) for the rung to count as served (``EncoderRuntime.served_units``): the word of
the neighbours on a segment comes up to two segments after it was written."""


@dataclass(frozen=True, slots=True)
class ProcessParts:
    """What the channels of one encoder process share (``services.encoder.process``)."""

    #: The process's topology, registrations and manager link.
    control: ControlPlane
    #: The process's mesh server; None for the first channel, which builds it (and whose
    #: health the process reports).
    server: MeshServer | None
    #: Every channel the process encodes (a placement's units of the others are theirs).
    channels: frozenset[str]


@dataclass(slots=True)
class _Held:
    """A rung's segment written and not yet published, waiting for the neighbours' word: a
    vouched copy for a neighbour's agreement (``SyncEngine.agreed``), a copy written aside for
    a vouched neighbour's identical bytes (``SyncEngine.confirmed``)."""

    rendition: Rendition
    path: Path
    #: When to give up waiting (monotonic).
    deadline: float
    #: Whether it was the segment's last rung to be written (the ladder's manifests follow it).
    completed: bool
    aside: bool


@dataclass(slots=True)
class RunStats:
    frames: int = 0
    skipped: int = 0
    segments: int = 0
    escalations: int = 0
    #: Segment files not published under the shared name: all of them, and of those the
    #: ones vouched for that no neighbour confirmed in time (see ``_release``).
    unvouched: int = 0
    unconfirmed: int = 0
    #: Stalls past the engine's ``stale_after`` (see ``_check_stall``).
    stalls: int = 0
    #: Segments written aside that took their shared name after all: a neighbour that
    #: vouched for them wrote the same bytes (see ``_release``).
    restored: int = 0
    #: The longest the loop was held up (seconds between two heartbeats): how late a busy
    #: machine ran this encoder.
    longest_hold: float = 0.0
    #: ESPs the mesh links dropped (a neighbour's queue full, or no live stream to it).
    dropped_esps: int = 0
    #: Messages the mesh links sent, and the gRPC writes that carried them (fewer where
    #: batches carried several: the links had fallen behind).
    mesh_messages: int = 0
    mesh_writes: int = 0


class EncoderRuntime:
    """Owns the engine, the media pipeline and the mesh links of one encoder's channel.

    On its own it is the whole encoder process: it also owns the mesh server, the control
    plane and the output server. Given ``parts`` it is one channel of a process of several
    (``services.encoder.process``), which starts and stops those: it serves its channel
    through ``parts.server`` (or, the first channel, builds the server) and reports to
    ``parts.control``.
    """

    def __init__(self, settings: EncoderSettings, *, parts: ProcessParts | None = None) -> None:
        self.settings = settings
        #: Whether a process of several channels starts and stops the shared parts.
        self._hosted = parts is not None
        #: Whether this channel's health and metrics stand for the process.
        self._primary = parts is None or parts.server is None
        self._channels = frozenset({settings.channel}) if parts is None else parts.channels
        #: Its log: a channel of several logs (and has its election and links log) through
        #: child loggers named after it, ``meshenc.encoder.channel.<name>`` and so on.
        self.log = self._own(log)
        #: Falling behind the input goes on while the machine is overloaded: a line per 10 s.
        self._behind = LimitedLog(self.log)
        #: A vouched copy no neighbour confirmed: a line per 10 s, with each neighbour's word.
        self._unconfirmed = LimitedLog(self.log)
        self.node_id = settings.id
        fr = settings.frame_rate
        self._period = fr.period
        config = EngineConfig(
            frame_rate=fr,
            strategy=settings.strategy,
            gop=settings.gop,
            bitrate_kbps=settings.mesh_bitrate_kbps,
        )
        self.engine = SyncEngine(settings.id, config, settings.peers)
        self._segments = config.segments
        self.pipeline = FramePipeline(
            self.engine, self, self.clock, rung_threads=settings.rung_threads
        )
        self._oscillator = VirtualOscillator(
            offset=settings.offset_ms / 1000.0,
            drift_ppm=settings.drift_ppm,
            origin=time.time(),
        )
        self._jitter = random.Random(settings.seed)
        width, height = settings.picture_size
        self._format = VideoFormat(width, height, fr)
        #: The ladder's master playlist (and MPD) above the rungs; None without a ladder.
        self._ladder: LadderManifests | None = None
        self.stats = RunStats()
        self.ingest: LiveIngest | None = None
        self.publisher: Publisher | None = None
        #: The output folder over HTTP (``--serve-output``); None when off.
        self.output_server: OutputServer | None = None
        #: Per segment still being written: whether this encoder can vouch for it (see
        #: ``_vouch``); segments it cannot vouch for never go out under the shared name.
        self._vouched: dict[int, bool] = {}
        #: Per segment written: whether it went aside (``_sets_aside``), for its other rungs.
        self._aside: dict[int, bool] = {}
        #: The renditions written (``run``; with a placement, the rungs held), and the digests
        #: of a segment's rungs written so far.
        self._holdings: Holdings | None = None
        self._rung_digests: dict[int, dict[str, bytes]] = {}
        #: The rungs the manager's placement gives this encoder (None: no placement, every
        #: rung), as last applied; the placement's units this encoder cannot run, last logged.
        self._placed: frozenset[str] | None = None
        self._unrunnable: tuple[str, ...] = ()
        #: Segments written and waiting for the neighbours' word, by (segment, rung folder).
        #: A neighbour's ESP for a frame follows its own ingest delay, so the last frames'
        #: agreement comes a few hundred ms after writing.
        self._held: dict[tuple[int, str], _Held] = {}
        self._hold_limit = 2.0 * self._segments.duration(self._period)
        #: Per rung folder: the newest segment of it that went out under the shared name (a
        #: neighbour confirmed it); what the health reports' ``units`` are made of.
        self._served: dict[str, int] = {}
        #: A placed ladder's rungs as the channel's manifests name them and their master,
        #: with the agreed bitrate and the source's other codecs they were made for
        #: (``_channel``: remade when either changes, not per segment).
        self._channel_rungs: tuple[tuple[int, tuple[str, ...]], list[ChannelRung], bytes] | None = (
            None
        )
        self._input = InputMonitor(float(self._period), settings.input_loss, time.time())
        self._cadence = SourceCadence(Fraction(fr.den, fr.num))
        self._window = FingerprintWindow()
        self._last_picture: Picture | None = None
        self._black = black_picture(width, height)
        self.telemetry = EncoderTelemetry(settings.id, lambda: self.engine.snapshot(self.clock()))
        self.links = MeshLinks(
            self,
            on_link=self._on_link,
            tracing=self.telemetry,
            tls=settings.tls,
            logger=self._own(mesh_log),
        )
        self.leadership: SegmentLeadership | None = None
        self._has_locked = False
        if (etcd := settings.leadership_etcd) is not None:
            self.leadership = SegmentLeadership(
                settings.id,
                settings.segment,
                etcd,
                ElectionConfig(
                    silence_timeout=SILENT_FRAMES * self._period,
                    fast_failover=settings.fast_failover,
                ),
                on_change=self._on_leader_change,
                region=settings.region,
                logger=self._own(leadership_log),
            )
        if parts is None or parts.server is None:
            self.server = MeshServer(
                self,
                self.links,
                channel=settings.channel,
                tls=settings.tls,
                limits=settings.peer_limits,
            )
        else:
            self.server = parts.server
            self.server.add_channel(settings.channel, self, self.links)
        #: Current neighbours (id → address): --peers, then each adjacency document.
        self._neighbours = dict(settings.peers)
        self._segment = settings.segment
        self._votes = VoteLog()
        self._load_sample = (0.0, 0.0)
        self.control = (
            ControlPlane(settings, self.apply_topology, self.health_report)
            if parts is None
            else parts.control
        )
        self._stop = asyncio.Event()
        self._last_esp: EncodingStatePacket | None = None
        self._timeline_log = TimelineLog(self.log)
        self._load = _LoadMeter()
        #: When the loop, behind its input, gives up on what is queued.
        self._falling_behind = FallingBehind()
        #: The heartbeat (monotonic): when it last beat, and when a stall last ended.
        self._beat = time.monotonic()
        self._stalled_at = -math.inf

    def _own(self, logger: logging.Logger) -> logging.Logger:
        """``logger`` for this runtime: as it is on its own; for one channel of several, its
        child named after the channel (``meshenc.encoder.channel.<name>``), which takes its
        level and handlers, so that every line says which channel it is about."""
        return logger if not self._hosted else logger.getChild(f"channel.{self.settings.channel}")

    # -- clock --------------------------------------------------------------------------------

    def clock(self) -> float:
        """This encoder's clock: the host clock through the injected oscillator (no jitter)."""
        return self._oscillator.read(time.time())

    def _stamp(self, arrival: float) -> float:
        """This encoder's clock reading for a frame that arrived at host time ``arrival``."""
        jitter = self._jitter.gauss(0.0, self.settings.jitter_ms / 1000.0)
        return self._oscillator.read(arrival, jitter)

    @property
    def last_esp(self) -> EncodingStatePacket | None:
        return self._last_esp

    def connected(self, peer: str) -> bool:
        return self.links.connected(peer)

    # -- MeshHandler --------------------------------------------------------------------------

    def is_neighbour(self, node_id: str) -> bool:
        return node_id in self._neighbours

    @property
    def segment(self) -> str:
        """The segment this encoder is in: the manager's latest document's, else --segment."""
        return self._segment

    def apply_topology(self, document: AdjacencyDocument) -> None:
        """Rewire to the manager's document: links, the engine's neighbours and epoch, the
        segment (the election and the registry record follow it), and the leader (when no
        election of our own runs: it knows better, with fencing)."""
        self._neighbours = dict(document.neighbours)
        segment = document.segment or self.settings.segment
        if segment != self._segment:
            self.log.info("moving from segment %s to segment %s", self._segment, segment)
            self._segment = segment
            if self.leadership is not None:
                self.leadership.move_to(segment)
            self.control.publish(segment=segment)
        self.links.set_peers(document.neighbours)
        now = self.clock()
        self.pipeline.step(now, NeighboursChanged(tuple(document.neighbours), document.epoch))
        if self.leadership is None:
            self.pipeline.step(now, LeaderChanged(document.leader or None))
        self._report_rank()
        self._apply_placement(document)

    def _apply_placement(self, document: AdjacencyDocument) -> None:
        """Hold the rungs the document's ``work`` places on this encoder's channel (units
        ``<channel>/<rung>``), from the next segment on; without ``work``, every rung. Only a
        ladder that follows the manager takes a placement
        (``EncoderSettings.follows_placement``); units of a rung not in the ladder, and (told
        by the process's first channel) of a channel the process does not encode, are logged
        and left alone."""
        if not self.settings.follows_placement:
            return
        channel = self.settings.channel
        rungs = {r.name for r in self.settings.ladder}
        wanted: frozenset[str] | None = None
        if document.work is not None:
            units = [unit.partition("/")[::2] for unit in document.work]
            mine = {rung for held, rung in units if held == channel}
            unrunnable = tuple(
                f"{held}/{rung}"
                for held, rung in units
                if (held == channel and rung not in rungs)
                or (self._primary and held not in self._channels)
            )
            if unrunnable and unrunnable != self._unrunnable:
                self.log.warning(
                    "placement %d gives this encoder units it cannot run (it runs channel%s "
                    "%s, ladder %s): %s",
                    document.work_version,
                    "s" if len(self._channels) > 1 else "",
                    ", ".join(sorted(self._channels)),
                    ",".join(sorted(rungs)),
                    ", ".join(unrunnable),
                )
            self._unrunnable = unrunnable
            wanted = frozenset(mine & rungs)
        if wanted == self._placed:
            return
        self._placed = wanted
        self.log.info(
            "placement %s (epoch %d): holding %s of channel %s from the next segment",
            document.work_version or "none",
            document.epoch,
            "every rung" if wanted is None else (", ".join(sorted(wanted)) or "no rung"),
            channel,
        )
        if self._holdings is not None:
            self._holdings.want(wanted)

    def health_report(
        self, *, encode_latency: float | None = None, units: Sequence[str] | None = None
    ) -> manager_pb2.HealthReport:
        """This encoder's health as the manager wants it, now: this channel's encode time per
        frame and units served, unless a process of several channels gives its own."""
        return convert.health_to_proto(
            self.node_id,
            self.engine.snapshot(self.clock()),
            topology_epoch=self.engine.topology_epoch,
            cpu_load=self._load_sample[0],
            encode_latency=self.encode_latency if encode_latency is None else encode_latency,
            segment=self._segment,
            connected=self.links.connected,
            sent_unix_ns=time.time_ns(),
            units=self.served_units() if units is None else units,
        )

    @property
    def encode_latency(self) -> float:
        """This channel's mean time to encode one frame slot (every rung it writes), as last
        sampled, seconds (the CPU load sampled beside it is the whole process's)."""
        return self._load_sample[1]

    def served_units(self) -> tuple[str, ...]:
        """The placed units (``<channel>/<rung>``) this encoder serves: it writes the rung
        and a segment of it went out under the shared name within the last
        ``SERVED_SEGMENTS`` segments. A unit moving here is handed over on that word, so it
        is never said of a rung only written aside (lock-in, not vouched for). Empty unless
        the encoder follows a placement."""
        last = self.pipeline.last_timecode
        if not self.settings.follows_placement or self._holdings is None or last is None:
            return ()
        now = self._segments.segment_of(last)
        served = []
        for rendition in self._holdings.active:
            newest = self._served.get(rendition.folder or "")
            if newest is not None and now - newest <= SERVED_SEGMENTS:
                served.append(f"{self.settings.channel}/{rendition.folder}")
        return tuple(served)

    def on_esp(self, esp: EncodingStatePacket) -> None:
        self.pipeline.step(self.clock(), EspReceived(esp))
        if self.leadership is not None:
            self.leadership.peer_heard(esp.sender)

    def _on_link(self, peer: str, up: bool) -> None:
        """A broken stream is the fastest sign of a dead neighbour: tell the election."""
        self.telemetry.link_changed(peer, up)
        if self.leadership is not None:
            (self.leadership.peer_recovered if up else self.leadership.peer_lost)(peer)

    def _on_leader_change(self, election: ElectionSnapshot) -> None:
        """The engine follows the leader of the newest tenure seen (kept while etcd is away)."""
        self.telemetry.leader_changed(election)
        self.pipeline.step(self.clock(), LeaderChanged(election.leader))

    def _report_rank(self) -> None:
        """Our ranking inputs for the segment election: confidence and mean neighbour RTT."""
        if self.leadership is None:
            return
        snap = self.engine.snapshot(self.clock())
        rtts = [n.rtt for n in snap.neighbours if math.isfinite(n.rtt)]
        # A newcomer has measured nothing yet and holds no lock: it must rank last, or it
        # would take the lead the moment it joins and pull its segment towards a timeline it
        # has not locked to. Once locked, a brief relock does not cost its rank.
        self._has_locked = self._has_locked or snap.locked
        # Back from a stall and not yet identical again: no leader material either.
        ranked = self._has_locked and not snap.unproven
        self.leadership.report(
            RankInputs(
                confidence=min(1.0, max(0.0, snap.confidence)) if ranked else 0.0,
                latency=sum(rtts) / len(rtts) if rtts else UNMEASURED_LATENCY,
                neighbours=frozenset(self._neighbours),
            )
        )

    def _report_health(self) -> None:
        """The registry record's health from the lock, the confidence and the input (once a
        second): an encoder whose input is not live is degraded, whatever its lock."""
        snap = self.engine.snapshot(self.clock())
        live = self._input.state is InputState.LIVE
        self.control.publish(
            health=record_health(snap.locked and live, snap.confidence, self.control.health)
        )

    def on_proposal(self, proposal: ResyncProposal) -> None:
        """A neighbour's proposal: the engine's vote goes back through ``carry_out`` (at once, or
        after a control step while the engine is still measuring the proposer)."""
        self.pipeline.step(self.clock(), ProposalReceived(proposal))

    def on_vote(self, vote: ResyncVote) -> None:
        self._votes.record(vote)
        self.telemetry.vote_received(vote)
        self.pipeline.step(self.clock(), VoteReceived(vote))

    def hello(self) -> mesh_pb2.Hello:
        return mesh_pb2.Hello(
            sender_id=self.node_id,
            protocol_version=PROTOCOL_VERSION,
            frame_rate=convert.frame_rate_to_proto(self.settings.frame_rate),
            gop_length=self._segments.gop,
            topology_epoch=self.engine.topology_epoch,
            channel=self.settings.channel,
        )

    def set_parameters(self, bitrate_kbps: int, size: tuple[int, int] | None) -> tuple[int, int]:
        if size is not None and self.settings.ladder:
            raise ValueError(
                "this encoder writes an ABR ladder, whose rungs' sizes are the ladder's:"
                " only the bitrate can change"
            )
        request = ParametersRequested(bitrate_kbps, size)
        for action in self.pipeline.step(self.clock(), request):
            if isinstance(action, ParametersRefused):
                raise ValueError(action.reason)
            if isinstance(action, SendProposal):
                proposal = action.proposal
                if proposal.kind is CorrectionKind.PARAMETER:
                    return proposal.proposal_id, proposal.effective_segment
        raise ValueError("the engine neither proposed nor refused the change")

    def state(self) -> mesh_pb2.EncoderState:
        """GetState's answer: the engine's snapshot, the links and the settings, taken now."""
        settings = self.settings
        election = None if self.leadership is None else self.leadership.snapshot()
        state = convert.encoder_state_to_proto(
            self.engine.snapshot(self.clock()),
            election,
            frame_rate=settings.frame_rate,
            segment_layout=self._segments,
            segment=self._segment,
            topology_epoch=self.engine.topology_epoch,
            input_status=self.input_status,
            last_esp=self.last_esp,
            connected=self.connected,
            injected_drift_ppm=settings.drift_ppm,
            injected_offset_ms=settings.offset_ms,
            injected_jitter_ms=settings.jitter_ms,
            taken_unix_ns=time.time_ns(),
            stalls=self.stats.stalls,
            unvouched_segments=self.stats.unvouched,
            unconfirmed_segments=self.stats.unconfirmed,
            restored_segments=self.stats.restored,
            started_size=settings.picture_size,
        )
        state.channel = settings.channel
        return state

    # -- the loop -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def input_state(self) -> InputState:
        return self._input.state

    @property
    def input_status(self) -> mesh_pb2.InputStatus:
        """The input as GetState reports it."""
        watch = self._input
        status = mesh_pb2.InputStatus(
            state=watch.state.value,
            source=self.settings.source or "",
            losses=watch.lost_count,
            arrival_jitter_us=round(watch.jitter * 1e6),
            arrival_offset_ns=0 if watch.offset is None else round(watch.offset * 1e9),
        )
        if self.ingest is not None:
            counters = self.ingest.counters
            status.pictures = counters.pictures
            status.audio_packets = counters.audio_packets
            status.corrupt_packets = counters.corrupt_packets
            status.decode_errors = counters.decode_errors
            status.reopens = counters.reopens
            status.last_error = counters.last_error
            if self.ingest.datagrams is not None:
                status.datagrams_dropped = self.ingest.datagrams.dropped
        return status

    async def run(self) -> RunStats:
        """Encode until the duration is over or a stop is requested; then finish cleanly.
        On its own (no ``ProcessParts``) it also runs the process's shared parts."""
        loop = asyncio.get_running_loop()
        if not self._hosted:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.request_stop)
            if self.settings.serve_output is not None:
                # First: an address that cannot be served stops the encoder before anything.
                self.output_server = OutputServer(self.settings.out, self.settings.serve_output)
                await self.output_server.start()
            port = await self.server.start(
                self.settings.listen, health_listen=self.settings.health_listen
            )
            self.log.info(
                "encoder %s serving on port %d, peers %s; mesh hot path %s",
                self.node_id,
                port,
                self.settings.peers,
                hot_path.describe(),
            )
        # Peers without an address wait for the registry to resolve them (ControlPlane).
        self.links.set_peers({p: a for p, a in self.settings.peers.items() if a})
        leadership: asyncio.Task[None] | None = None
        if self.leadership is not None:
            self._report_rank()
            leadership = asyncio.create_task(self.leadership.run(), name="leadership")
        if not self._hosted:
            await self.control.start()
        self._beat = time.monotonic()
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        queue: asyncio.Queue[Ingested] = asyncio.Queue()
        ingest = None
        sys.setswitchinterval(SWITCH_INTERVAL)  # the ingest thread's wait for the GIL
        if self.settings.source:
            ingest = LiveIngest(
                self.settings.source,
                self._format,
                HandOver(loop, queue),
            )
            self.ingest = ingest
            ingest.start()
        else:
            self.log.warning("no --source: the output is black and the encoder reports degraded")
        settings = self.settings
        if settings.ladder:
            # Rungs open as they are first held (every rung without a placement), at the
            # first slot of a segment.
            holdings = Holdings(
                settings.ladder,
                functools.partial(
                    open_rendition,
                    settings.out,
                    settings.frame_rate,
                    settings.gop,
                    top_kbps=top_rung(settings.ladder).bitrate_kbps,
                    fmt=settings.output_format,
                    aside=self._sets_aside,
                ),
                self._segments,
            )
            if self._placed is not None:  # a placement came before the first picture
                holdings.want(self._placed)
            self._ladder = LadderManifests(settings.out, [], settings.output_format)
        else:
            holdings = Holdings.fixed(
                renditions_for(
                    settings.out,
                    settings.frame_rate,
                    settings.gop,
                    None,
                    size=settings.size,
                    bitrate_kbps=settings.bitrate_kbps,
                    fmt=settings.output_format,
                    aside=self._sets_aside,
                ),
                self._segments,
            )
        self._holdings = holdings
        self.pipeline.start(holdings, hash_inputs=settings.follows_placement)
        if self.settings.publish:
            self.publisher = Publisher(self.settings.publish)
        deadline = None if self.settings.duration is None else time.time() + self.settings.duration
        # Once asked to stop, finish the segment in progress (at most one more GOP).
        finishing_by: float | None = None
        try:
            while True:
                self._check_stall()
                now = time.time()
                if finishing_by is None and (
                    self._stop.is_set() or (deadline is not None and now >= deadline)
                ):
                    finishing_by = now + self._segments.duration(self._period) + 2 * self._period
                    self.control.drain()
                if finishing_by is not None and (self._segment_done() or now >= finishing_by):
                    break
                item: Ingested | None = None
                if not queue.empty():
                    item = queue.get_nowait()
                elif (wait := min(self._input.next_fill(), finishing_by or math.inf) - now) > 0:
                    # asyncio.timeout, not wait_for: see services.common.waiting.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            item = await queue.get()
                if item is None:
                    if (fill := self._input.fill(time.time())) is not None:
                        self._fill(*fill)
                    continue
                if isinstance(item, IngestedAudio):
                    self._audio(holdings, item)
                    continue
                if self._falling_behind.gives_up(time.time() - item.arrived, time.monotonic()):
                    item = self._catch_up(holdings, item, queue)
                self._ingest(item)
                await asyncio.sleep(0)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            # Every step that waits on something else (etcd, a thread, a peer) is bounded
            # (``_stopping``), so the stop ends within its launcher's grace whatever they do.
            if self.leadership is not None and leadership is not None:
                # Resign first: the segment fails over at once instead of waiting for a lease.
                await self._stopping("resigning the segment leadership", self.leadership.close())
                await self._stopping("ending the leadership task", leadership)
            if ingest is not None:
                await self._stopping("stopping the ingest", asyncio.to_thread(ingest.stop))
            for rendition in holdings.opened:
                started = time.time_ns()
                self.segments_written(rendition, rendition.writer.finish(), started)
            if self._held:
                # The neighbours' last ESPs may still be on their way.
                await asyncio.sleep(0.5)
                self._release(final=True)
            if self.publisher is not None:
                await self._stopping("closing the publisher", self.publisher.close(grace=2.0))
            if self.output_server is not None:
                await self._stopping("closing the output server", self.output_server.close())
            self.telemetry.close()
            self.pipeline.close()
            for rendition in holdings.opened:
                rendition.close()
            if not self._hosted:
                await self.control.close()
            await self._stopping("closing the mesh links", self.links.close())
            if not self._hosted:
                await self._stopping("stopping the gRPC server", self.server.stop(grace=1.0))
            self.stats.dropped_esps = sum(self.links.dropped_esps.values())
            self.stats.mesh_messages = sum(self.links.sent.values())
            self.stats.mesh_writes = sum(self.links.writes.values())
            if not self._hosted:
                self.log.info("encoder %s stopped: %s", self.node_id, self.stats)
            else:
                self.log.info("stopped: %s", self.stats)
        return self.stats

    async def _stopping(self, what: str, step: Awaitable[Any]) -> None:
        """One step of the stop, bounded by ``STOP_STEP_TIMEOUT`` (``bounded_step``)."""
        await bounded_step(what, step, STOP_STEP_TIMEOUT, self.log)

    def _audio(self, holdings: Holdings, item: IngestedAudio) -> None:
        """One audio packet of the input, passed through into the segments."""
        started = time.time_ns()
        for rendition, written in holdings.add_audio(_audio_packet(item)):
            self.segments_written(rendition, written, started)

    def _catch_up(
        self, holdings: Holdings, item: IngestedPicture, queue: asyncio.Queue[Ingested]
    ) -> IngestedPicture:
        """The loop fell behind its input for good (``FallingBehind``: a machine that cannot
        carry the load, CPU stolen for seconds): give up every picture queued but the newest,
        as a live ingest does, and shed the segment in progress (``FramePipeline.shed``): it
        cannot be whole, and encoding its rest would only keep the encoder behind. The queued
        audio still goes into the segments. Returns the newest picture, at the live edge
        again. (The lag is timed: a count of queued items includes the audio, AAC at 48 kHz
        being 47 packets a second, and 30 items were 0.4 s behind a 30 fps input with its
        audio.)"""
        newest, audio, given_up = newest_picture(item, queue)
        for packet in audio:
            self._audio(holdings, packet)
        if not given_up:
            return newest  # nothing newer came: late, but nothing is lost
        self.stats.skipped += given_up
        if (last := self.pipeline.last_timecode) is not None:
            segment = self._segments.segment_of(last)
            self._vouched[segment] = False
            if not self.pipeline.shedding:  # else a shed under way gave it up already
                self._gave_up(holdings, segment)
        self.pipeline.shed()
        self._behind.warning(
            "behind",
            "more than a second behind the input: gave up %d pictures and the segment in "
            "progress; encoding again from the next segment's first picture",
            given_up,
        )
        return newest

    async def _heartbeat(self) -> None:
        """Beat every frame period, so that a stall shows however idle the loop is."""
        while True:
            await asyncio.sleep(float(self._period))
            self._check_stall()

    def _check_stall(self) -> None:
        """Whether this process stood still since the last beat. Longer than its neighbours
        wait before counting it as lost (``SILENT_FRAMES`` periods), it may have been deposed
        as leader meanwhile: no playlist until the leadership is confirmed. Longer than the
        engine keeps a silent neighbour's word (``stale_after``), every neighbour's ESPs are
        stale and it missed pictures it cannot make up: the engine is told (``Stalled``) and
        vouches for nothing until identical again. (A busy machine holds a loop up for a
        few hundred milliseconds now and then; that costs a playlist, not segments.)"""
        now = time.monotonic()
        gap, self._beat = now - self._beat, now
        self.stats.longest_hold = max(self.stats.longest_hold, gap)
        if gap <= SILENT_FRAMES * float(self._period):
            return
        self._stalled_at = now
        if gap <= self.engine.config.stale_after:
            self.log.info("held up for %.2f s: no playlist until the leadership is confirmed", gap)
            return
        self.stats.stalls += 1
        self.log.warning(
            "stalled for %.2f s (this process did not run): vouching for no segment until "
            "identical again, no playlist until the leadership is confirmed",
            gap,
        )
        self.pipeline.step(self.clock(), Stalled(gap))
        self._report_rank()

    def _ingest(self, item: IngestedPicture) -> None:
        """One picture of the input: identity and cadence from its source timestamp (or, without
        one, from a window of fingerprints), stamp from its measured arrival."""
        source_time = None if item.pts is None else item.pts * item.time_base
        back = self._input.arrived(
            item.arrived, None if source_time is None else float(source_time), time.time()
        )
        if back:
            self.log.info("input is back after a loss")
            self._cadence.reset()
            self._window.reset()
            self.pipeline.step(self.clock(), InputResumed())
        ticks = None if source_time is None else round(source_time * TICKS)
        if item.pts is None or ticks is None:
            identity = self._window.identify(item.picture.fingerprint)
            periods = None
        else:
            identity = source_identity(ticks)
            periods = None if back else self._cadence.periods(item.pts, item.time_base)
        self._last_picture = item.picture
        self.pipeline.capture(self._stamp(item.arrived), item.picture, identity, periods, ticks)

    def _fill(self, due: float, repeat: bool) -> None:
        """The input is lost: a filler picture on the encoder's own cadence, never measured."""
        picture = self._last_picture if repeat and self._last_picture is not None else self._black
        self.pipeline.capture(self._stamp(due), picture, NO_IDENTITY, 1, None, measured=False)

    def segments_written(self, rendition: Rendition, paths: list[Path], started_ns: int) -> None:
        """Segments a rendition's writer just wrote (the call began at ``started_ns``): count
        them, time them, and hold them for the neighbours' word (``_release``): those this
        encoder vouched for until a neighbour's bytes say they are not its own alone, those
        written aside in case a neighbour that vouched for them wrote the same bytes.

        Every rung writes the same segments (one timeline), so the vouching of a segment holds
        for all of them: it is forgotten once a later segment is written.
        """
        finished_ns = time.time_ns()
        self._check_stall()
        newest = None
        for path in paths:
            self.stats.segments += 1
            self.telemetry.segment_written(path, started_ns, finished_ns)
            aside = path.name.startswith(ASIDE_PREFIX)
            segment = segment_number(path.name.removeprefix(ASIDE_PREFIX))
            if segment is None:
                continue
            self._digest_written(rendition, segment, aside)
            newest = segment
            vouched = not aside and self._vouched.get(segment, False)
            # The last rung to write the segment brings the ladder's manifests up to date.
            completed = (
                not aside and self._ladder is not None and self._ladder.segment_written(segment)
            )
            if not aside and not (vouched and self.engine.vouches(self.clock())):
                self.stats.unvouched += 1
                continue
            deadline = time.monotonic() + self._hold_limit
            self._held[segment, rendition.folder or ""] = _Held(
                rendition, path, deadline, completed, aside
            )
        for stale in [s for s in self._vouched if newest is not None and s < newest]:
            del self._vouched[stale]  # segments the writer dropped (partial): never written
        self._release()

    def _digest_written(self, rendition: Rendition, segment: int, aside: bool) -> None:
        """Once every rung has written ``segment`` (aside or not), tell the engine its digest
        (``SegmentWritten``): the ESPs carry it, and a neighbour's equal digest is what lets
        a segment out (``_release``). Where rungs are placed, the rungs held differ between
        encoders: each rung's digest is its own, compared with the neighbours that write
        that rung."""
        digest = rendition.writer.digest(segment)
        if digest is None:
            return
        if self.settings.follows_placement:
            unit = rendition.folder or ""
            self.pipeline.step(self.clock(), SegmentWritten(segment, digest, not aside, unit))
            return
        if self._holdings is None:
            return
        active = self._holdings.active
        rungs = self._rung_digests.setdefault(segment, {})
        rungs[rendition.folder or ""] = digest
        if len(rungs) < len(active):
            return
        del self._rung_digests[segment]
        for stale in [s for s in self._rung_digests if s < segment]:
            del self._rung_digests[stale]  # a rung that never wrote it (a partial segment)
        ordered = [rungs[r.folder or ""] for r in active]
        combined = ordered[0] if len(ordered) == 1 else hashlib.sha256(b"".join(ordered)).digest()
        self.pipeline.step(self.clock(), SegmentWritten(segment, combined, vouched=not aside))

    def _gave_up(self, holdings: Holdings, segment: int) -> None:
        """Tell the engine that ``segment`` is given up as the encoder sheds it
        (``SegmentGivenUp``), per unit as ``_digest_written`` announces segments: its
        neighbours' copies need not wait for this encoder's. Told before the shed: a segment
        the writer still writes whole (it had reached its last slot) announces its digest
        after, in its place. (A rung handed on is given up by the pipeline.)"""
        placed = self.settings.follows_placement
        units = sorted({r.folder or "" for r in holdings.active}) if placed else [""]
        for unit in units:
            self.pipeline.step(self.clock(), SegmentGivenUp(segment, unit))

    def _release(self, *, final: bool = False) -> None:
        """Publish the held segments the neighbours' word lets out, in order, each followed
        by its rung's playlist (and, after a segment's last rung, the ladder's manifests) when
        this encoder publishes playlists: a vouched copy a neighbour agreed with
        (``SyncEngine.agreed``), or a copy written aside that a vouched neighbour's identical
        bytes confirm (``SyncEngine.confirmed``), which first takes its shared name
        (``SegmentWriter.restore``). Give up after ``_hold_limit``: a vouched copy still
        unconfirmed moves aside (``aside_name``): no neighbour had those bytes, so the shared
        name is not theirs; an aside copy stays where it is. At the end (``final``) the last
        ones are given up without moving: their neighbours' word may simply not have come
        yet."""
        if not self._held:
            return
        now, clock = time.monotonic(), self.clock()
        for key in sorted(self._held):
            held = self._held[key]
            writer = held.rendition.writer
            unit = key[1] if self.settings.follows_placement else ""  # the rung placed, or all
            if held.aside and self.engine.confirmed(key[0], unit):
                del self._held[key]
                if (path := writer.restore(key[0])) is not None:
                    self.stats.restored += 1
                    self._went_out(key, held, path)
            elif not held.aside and self.engine.agreed(key[0], clock, unit):
                del self._held[key]
                self._went_out(key, held, held.path)
            elif final or now > held.deadline:
                del self._held[key]
                self.stats.unvouched += 1
                if held.aside:
                    continue
                self.stats.unconfirmed += 1
                if not final:
                    writer.move_aside(key[0])
                    self._unconfirmed.warning(
                        "unconfirmed",
                        "segment %d%s unconfirmed after %.1f s, moved aside (it needs a "
                        "neighbour's equal digest, or %d frame hashes alike): %s",
                        key[0],
                        f" of {key[1]}" if key[1] else "",
                        self._hold_limit,
                        self.engine.hashes_needed,
                        self.engine.agreement_account(key[0], clock, unit),
                    )

    def _went_out(self, key: tuple[int, str], held: _Held, path: Path) -> None:
        """A held segment took its shared name: its rung is served (``served_units``) and the
        segment is published."""
        segment, rung = key
        self._served[rung] = max(segment, self._served.get(rung, segment))
        self._publish(held.rendition, path, held.completed)

    def _publish(self, rendition: Rendition, path: Path, completed: bool) -> None:
        """A segment under its shared name goes to the origin, with the manifests that follow
        it when this encoder publishes them."""
        publisher = self.publisher
        if publisher is None:
            return
        writer = rendition.writer
        if (init := writer.init_path) is not None:
            # A few hundred bytes with every segment: an origin that lost it, or never got
            # it, has it again before the next segment's manifests.
            publisher.publish(init, rendition.published_name(init))
        publisher.publish(path, rendition.published_name(path))
        placed = self.settings.follows_placement
        if placed or self._publishes_playlist():
            for manifest in writer.manifest_paths:
                publisher.publish(manifest, rendition.published_name(manifest))
            if completed and not placed:
                self._publish_ladder()
        # The channel's master (and for CMAF its MPD), a few hundred bytes with every
        # segment (after its last rung held), like CMAF's init: alike from every holder, so
        # an origin that lost them has them again at once.
        segment = segment_number(path.name) if placed and completed else None
        if segment is not None and (channel := self._channel(writer, segment)) is not None:
            rungs, master = channel
            publisher.publish_bytes(master, MASTER_NAME)
            if self.settings.output_format is SegmentFormat.CMAF:
                mpd = channel_mpd(
                    rungs,
                    window=writer.window,
                    publish_time=utc_instant(writer.segment_end(segment)),
                )
                publisher.publish_bytes(mpd.encode(), MPD_NAME)

    def _channel(
        self, writer: SegmentWriter, segment: int
    ) -> tuple[list[ChannelRung], bytes] | None:
        """Every rung of the ladder as the channel's manifests name them (``channel_rungs``)
        and the channel's master over them, at the bitrate the mesh agreed for ``segment``
        and with the source's other codecs (its audio) as this encoder's segments now show
        them; None before they show any."""
        if not writer.codecs:
            return None
        # The video codec is the rung's own, probed per rung (its level follows the bitrate).
        others = tuple(c for c in writer.codecs if not c.startswith("avc1."))
        made_for = (self.engine.parameters_for(segment).bitrate_kbps, others)
        if self._channel_rungs is None or self._channel_rungs[0] != made_for:
            settings = self.settings
            rungs = channel_rungs(
                settings.ladder, settings.frame_rate, settings.gop, made_for[0], others
            )
            master = channel_master(rungs, settings.output_format).encode()
            self._channel_rungs = (made_for, rungs, master)
        return self._channel_rungs[1], self._channel_rungs[2]

    def _publish_ladder(self) -> None:
        """The ladder's manifests, after the rungs' playlists: the master playlist and the MPD
        (CMAF). A few hundred bytes with every segment, like CMAF's init: an origin that lost
        the master, or skipped it while a rung's playlist was not there yet, has it again with
        the next segment."""
        ladder, publisher = self._ladder, self.publisher
        if ladder is None or publisher is None or ladder.master is None:
            return
        publisher.publish_bytes(ladder.master, ladder.master_path.name)
        if (mpd := ladder.mpd_path) is not None:
            publisher.publish(mpd, mpd.name)

    # -- PipelineShell: the frame path's hooks ----------------------------------------------------

    def slot_starts(self, timecode: int, measured: bool) -> None:
        """Whether a segment can go out under the shared name: every frame of it came from a
        live input (no filler), its first frame was encoded while the engine vouched for the
        timeline (locked for a whole segment, every counted neighbour locked too), and no
        visible correction (a drop or a duplicate) changed this encoder's timeline during it;
        the engine is asked again when the segment is written. A segment this encoder cannot
        vouch for may differ from everyone else's bytes: it is written aside, never under the
        shared name (``_sets_aside``), and stays in its own folder."""
        segment = self._segments.segment_of(timecode)
        if segment not in self._vouched:
            self._vouched[segment] = (
                measured
                and self._input.state is InputState.LIVE
                and self.engine.vouches(self.clock())
            )
        elif not measured:
            self._vouched[segment] = False

    def _sets_aside(self, segment: int) -> bool:
        """Whether a segment about to be written goes aside (``SegmentWriter``): this encoder
        cannot vouch for it (``slot_starts``), or no longer vouches for the timeline. Decided
        once: the rungs of a ladder written after the first follow it."""
        decided = self._aside.get(segment)
        if decided is None:
            vouched = self._vouched.get(segment, False) and self.engine.vouches(self.clock())
            decided = self._aside[segment] = not vouched
            self._vouched[segment] = vouched
            while len(self._aside) > _ASIDE_KEPT:
                del self._aside[next(iter(self._aside))]
        return decided

    def _publishes_playlist(self) -> bool:
        """The media playlist goes out from the segment's elected leader only (every encoder
        when there is no election), so a lagging encoder never makes it go backwards; and
        after a stall only once a fenced act has landed since (a leader that was frozen may
        have been replaced: its act's guard then fails and it learns the new leader).

        A placed ladder (``follows_placement``) is the exception: the leader may hold none of
        a rung, so every holder publishes its rungs' playlists (each extends the origin's, so
        a lagging or new holder does not set it back or cut it short: ``hls.extend``), and no
        encoder publishes the ladder's master or MPD, which name only its own rungs
        (``_release``)."""
        if self.leadership is None:
            return True
        return (
            self.leadership.snapshot().leader == self.node_id
            and self.leadership.fenced_at > self._stalled_at
        )

    def slot_encoded(self, frame: EncodedFrame, encode_seconds: float) -> None:
        self._load.encoded(encode_seconds)

    def renditions_changed(self, active: Sequence[Rendition]) -> None:
        """The rungs written changed at this segment (a placement): the ladder's manifests
        name only those from now on."""
        self.log.info(
            "from this segment on writing %s", ", ".join(str(r.folder) for r in active) or "no rung"
        )
        if self._ladder is not None:
            self._ladder.follow(active)

    def picture_done(self) -> None:
        """Held segments a neighbour has agreed with go out; once a second, the load goes to
        the engine (confidence), the election and the registry, and the metrics are
        observed."""
        self.stats.frames += 1
        self._release()
        report = self._load.sample()
        if report is not None:
            report = (report[0] / self._cores(), report[1])
            self.pipeline.step(self.clock(), LoadMeasured(*report))
            self._load_sample = report
            self._report_rank()
            if not self._primary:
                return  # the process's record and gauges are its first channel's
            self._report_health()
            origins = self.publisher.stats() if self.publisher is not None else ()
            self.telemetry.observe(self.links, self.stats, report, self.input_status, origins)

    def _cores(self) -> int:
        """The cores the encoder may use: one, or with ``--rung-threads`` as many as it has
        rung threads, at most the rungs it holds."""
        held = len(self._holdings.active) if self._holdings is not None else 1
        return max(1, min(self.settings.rung_threads, held))

    def _segment_done(self) -> bool:
        """Whether the newest output slot is the last of its segment (a clean place to stop)."""
        last = self.pipeline.last_timecode
        return last is None or self._segments.is_last(last)

    def carry_out(self, action: Action) -> None:
        """Carry out one of the engine's decisions (the pipeline encodes pictures itself)."""
        if isinstance(action, SendEsp):
            self._last_esp = action.esp
            self._timeline_log.sent(action.esp)
            try:
                self.links.send_all(action.to, action.esp)
            except ValueError:
                # A live encoder keeps encoding whatever its mesh plumbing does.
                self.log.exception("could not send an ESP to %s", ", ".join(action.to))
            return
        self.telemetry.on_action(action)
        if isinstance(action, SendVote):
            self.telemetry.vote_cast(action.proposal, action.vote)
            self.links.send(action.to, action.vote)
        elif isinstance(action, SendProposal):
            self.links.send_all(action.to, action.proposal)
        elif isinstance(action, CorrectionApplied):
            last = self.pipeline.last_timecode
            visible = action.kind in (CorrectionKind.DROP, CorrectionKind.DUPLICATE)
            if visible and last is not None and not self.engine.alone:
                # Alone, its slot is the timeline: a move of its own differs from no one's.
                self._vouched[self._segments.segment_of(last)] = False
            self.log.info(
                "correction %s shift=%+.2f ms rate=%+.1f ppm lead=%s proposal=%d",
                action.kind.value,
                action.shift * 1000.0,
                action.new_rate * 1e6,
                "n/a" if math.isnan(action.lead) else f"{action.lead:.1f} s",
                action.proposal_id,
            )
        elif isinstance(action, ParametersAgreed):
            self.log.info(
                "parameters agreed: %s from segment %d%s (%s)",
                action.change.parameters,
                action.change.effective_segment,
                ""
                if action.applies_from == action.change.effective_segment
                else f", learnt late: here from segment {action.applies_from}",
                f"proposal {action.proposal_id}" if action.proposal_id else "from a neighbour",
            )
        elif isinstance(action, LockInTurnedDown):
            if action.outcome.verdict is Verdict.WITHDRAWN:
                self.log.info(
                    "lock-in move %s: a neighbour it went to left; the next goes to the new ones",
                    self._votes.account(action.outcome),
                )
            else:
                self.log.info(
                    "lock-in move %s; proposing again in %.1f s",
                    self._votes.account(action.outcome),
                    action.retry_at - action.outcome.decided_at,
                )
        elif isinstance(action, Escalate):
            self.stats.escalations += 1
            self.log.warning(
                "proposal %s; escalating to %s",
                self._votes.account(action.outcome),
                self.settings.manager or "no manager",
            )
            request = convert.escalation_to_proto(
                action.outcome.proposal,
                self._votes.take(action),
                len(self.engine.neighbours),
                time.time_ns(),
            )
            self.control.escalate(request, functools.partial(self._on_verdict, action))

    def _on_verdict(self, action: Escalate, ack: manager_pb2.EscalationAck | None) -> None:
        """The manager's verdict on an escalated proposal.

        REJECT and DEFER (and no answer) keep the timeline, which the engine already did when
        the vote failed. APPLY carries out the escalated plan, if it is still the engine's
        newest and recent enough (``EscalationApproved``).
        """
        if ack is None:
            return
        if ack.verdict == manager_pb2.ESCALATION_VERDICT_APPLY:
            proposal_id = action.outcome.proposal.proposal_id
            done = self.pipeline.step(self.clock(), EscalationApproved(proposal_id))
            if not any(isinstance(a, CorrectionApplied) for a in done):
                self.log.info("manager said apply proposal %d, but it is outdated", proposal_id)
        self.log.info(
            "manager's verdict on proposal %d: %s (%s; epoch %d)",
            action.outcome.proposal.proposal_id,
            manager_pb2.EscalationVerdict.Name(ack.verdict),
            ack.reason,
            ack.topology_epoch,
        )


class FallingBehind:
    """When the loop, behind its input, gives up what queued (``EncoderRuntime._catch_up``).

    At once when a picture arrived more than ``2 * max_lag`` ago; otherwise only once pictures
    have stayed more than ``max_lag`` old for ``grace`` seconds of the loop's time, so that a
    stall of about a second is caught up by encoding what queued. Giving up at the first
    picture a second old, every encoder of a mesh run on one machine shed the same segment
    when the machine stood still for a second, and nobody wrote it (a CI run of
    ``tests/system/e2e/test_up_channels.py``); with the kernel's receive times, a picture's
    age counts its wait in the socket too. Time is an argument (seconds).
    """

    def __init__(self, max_lag: float = 1.0, grace: float = 0.5) -> None:
        if not (max_lag > 0 and grace >= 0):
            raise ValueError("need max_lag > 0 and grace >= 0")
        self.max_lag = max_lag
        self.grace = grace
        self._since: float | None = None

    def gives_up(self, lag: float, now: float) -> bool:
        """Whether a picture ``lag`` seconds old, reaching the loop at ``now``, is one too
        many: the loop has fallen behind for good."""
        if lag <= self.max_lag:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        if lag > 2 * self.max_lag or now - self._since >= self.grace:
            self._since = None
            return True
        return False


def newest_picture(
    first: IngestedPicture, queue: asyncio.Queue[Ingested]
) -> tuple[IngestedPicture, list[IngestedAudio], int]:
    """Take everything queued now behind ``first``: the newest picture, the audio packets in
    their order, and how many pictures were passed over for the newest."""
    newest, audio, given_up = first, [], 0
    while not queue.empty():
        item = queue.get_nowait()
        if isinstance(item, IngestedAudio):
            audio.append(item)
        else:
            newest, given_up = item, given_up + 1
    return newest, audio, given_up


#: Audio packets the ingest thread holds back for the next picture at most.
AUDIO_HELD = 4


class HandOver:
    """From the ingest thread to the loop's queue, in order. Audio packets wait for the next
    picture, at most ``AUDIO_HELD`` of them (about 85 ms of AAC at 48 kHz), and go with it in
    one call: each call wakes the event loop, and on a busy machine a wake-up costs about what
    handling the packet does (an encoder at 160x90 with the test pattern's audio: 205 → 176
    wake-ups a second; its CPU 0.96× in the median, within the spread of runs,
    docs/performance.md). Called from the ingest thread alone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Ingested]) -> None:
        self._loop = loop
        self._queue = queue
        self._audio: list[Ingested] = []

    def __call__(self, item: Ingested) -> None:
        if isinstance(item, IngestedAudio):
            self._audio.append(item)
            if len(self._audio) < AUDIO_HELD:
                return
            items = self._audio
        else:
            items = [*self._audio, item]
        self._audio = []
        self._loop.call_soon_threadsafe(_queue_all, self._queue, items)


def _queue_all(queue: asyncio.Queue[Ingested], items: list[Ingested]) -> None:
    for item in items:
        queue.put_nowait(item)


def _audio_packet(item: IngestedAudio) -> AudioPacket:
    """An ingested audio packet as the segment writer takes it (source time in 90 kHz)."""
    return AudioPacket(
        item.codec, item.sample_rate, round(item.pts * item.time_base * TICKS), item.data
    )


class _LoadMeter:
    """The signals behind the confidence score: CPU used by this process and encode latency.

    CPU load is process time over wall time (1.0 is a full core; the runtime divides it by the
    cores it may use, ``_cores``); encode latency is the mean time to encode one frame.
    Sampled once a second.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        self._encode_total = 0.0
        self._encodes = 0

    def encoded(self, seconds: float) -> None:
        self._encode_total += seconds
        self._encodes += 1

    def sample(self) -> tuple[float, float] | None:
        """(cpu load, mean encode latency) once per interval, else None."""
        wall = time.monotonic()
        if wall - self._wall < self._interval:
            return None
        cpu = time.process_time()
        load = (cpu - self._cpu) / (wall - self._wall)
        latency = self._encode_total / self._encodes if self._encodes else 0.0
        self._wall, self._cpu = wall, cpu
        self._encode_total, self._encodes = 0.0, 0
        return load, latency
