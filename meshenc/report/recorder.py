"""The run recorder: what the encoders said over time, and what the launcher did, as JSON lines.

Theory of operation
-------------------
A :class:`Recorder` polls ``GetState`` of every encoder it was given (every ``interval``
seconds, all encoders at once, each call bounded by ``rpc_timeout``) and appends one line per
answer to ``DIR/events.jsonl``. Encoders are added and removed while it runs (the launcher
starts, kills and joins them); an encoder that does not answer is skipped for that round. The
launcher appends its own events through the same recorder, so one writer owns the file and
lines never interleave.

The file is the run's evidence for the report (:mod:`meshenc.report`): each line is one JSON
object with a float ``t`` (Unix seconds, the recorder's clock) and a ``kind``:

``state``
    One ``GetState`` answer: ``encoder`` (the id the launcher gave), ``timecode``,
    ``segment_number``, ``locked``, ``error_ns``, ``predicted_error_ns``, ``leader`` (the
    encoder's segment leader, ``""`` if none), ``segment`` (its encoder group, ``""`` if
    none), ``gop`` and ``fps`` (so segment numbers convert to times), ``neighbours`` (a list of
    ``{"id", "measured_ns", "predicted_ns", "connected"}``) and ``corrections`` (applied
    corrections since start, by kind).
``correction``
    A correction first seen in an answer's ``recent_corrections``: ``encoder``, ``at`` (Unix
    seconds on the encoder's clock), ``correction`` (``slew``, ``drop``, ``duplicate`` or
    ``parameter``), ``shift_ns``, ``rate_ppb``, ``lead_ns``, ``proposal_id``. Each correction
    is recorded once, however many answers repeat it.
``started``, ``killed``, ``joined``, ``stopped``
    Lifecycle events the launcher records: ``encoder``.
``leader``
    A segment leader the launcher saw elected: ``segment`` (the encoder group), ``leader``,
    ``revision`` (the etcd revision of the election, 0 if unknown).
``parameters``
    A parameter change the launcher asked an encoder for (``SetParameters``) and the encoder
    proposed: ``encoder``, ``segment`` (the first segment it is for, if the vote passes),
    ``bitrate_kbps``, ``width`` and ``height`` (0: kept as agreed).

The schema is defined once, below, as TypedDicts; :func:`read_events` validates every line
against it (pydantic), skips and counts lines that do not fit (a truncated last line after a
crash, a newer kind) and never fails on them.

An answer is not trusted blindly: an answer from another encoder than the one at that address
(a reused port) is dropped with a warning, a correction of a kind this version does not know is
skipped with a warning; neither stops the recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

import grpc
import pydantic
from typing_extensions import TypedDict

from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from meshenc.wire import convert
from services.common.grpc_server import open_channel
from services.common.tls import TlsFiles

__all__ = [
    "EVENTS_NAME",
    "CorrectionRecord",
    "Event",
    "EventLog",
    "LeaderEvent",
    "LifecycleEvent",
    "NeighbourRecord",
    "ParametersEvent",
    "Recorder",
    "StateEvent",
    "read_events",
]

log = logging.getLogger("meshenc.recorder")

EVENTS_NAME = "events.jsonl"
DEFAULT_INTERVAL = 0.5
DEFAULT_RPC_TIMEOUT = 0.4
#: Corrections remembered per encoder for de-duplication; GetState repeats at most 16.
_SEEN_PER_ENCODER = 1024


class NeighbourRecord(TypedDict):
    id: str
    measured_ns: int
    predicted_ns: int
    connected: bool


class StateEvent(TypedDict):
    t: float
    kind: Literal["state"]
    encoder: str
    timecode: int
    segment_number: int
    locked: bool
    error_ns: int
    predicted_error_ns: int
    leader: str
    segment: str
    gop: int
    fps: float
    neighbours: list[NeighbourRecord]
    corrections: dict[str, int]
    #: The live input (absent in runs recorded before encoders reported it): its state, the
    #: arrival jitter against the source's timestamps (µs) and the mean arrival offset (ns).
    input_state: NotRequired[str]
    arrival_jitter_us: NotRequired[int]
    arrival_offset_ns: NotRequired[int]


class CorrectionRecord(TypedDict):
    t: float
    kind: Literal["correction"]
    encoder: str
    at: float
    correction: str
    shift_ns: int
    rate_ppb: int
    lead_ns: int
    proposal_id: int


LifecycleKind = Literal["started", "killed", "joined", "stopped"]


class LifecycleEvent(TypedDict):
    t: float
    kind: LifecycleKind
    encoder: str


class LeaderEvent(TypedDict):
    t: float
    kind: Literal["leader"]
    segment: str
    leader: str
    revision: int


class ParametersEvent(TypedDict):
    t: float
    kind: Literal["parameters"]
    encoder: str
    segment: int
    bitrate_kbps: int
    width: int
    height: int


Event = StateEvent | CorrectionRecord | LifecycleEvent | LeaderEvent | ParametersEvent

_EVENT = pydantic.TypeAdapter[Event](Annotated[Event, pydantic.Field(discriminator="kind")])


@dataclass(frozen=True, slots=True)
class EventLog:
    """A run's events in file order, and how many lines did not fit the schema."""

    events: tuple[Event, ...]
    skipped_lines: int = 0

    def states(self) -> list[StateEvent]:
        return [e for e in self.events if e["kind"] == "state"]

    def corrections(self) -> list[CorrectionRecord]:
        return [e for e in self.events if e["kind"] == "correction"]

    def lifecycle(self) -> list[LifecycleEvent]:
        """The launcher's started/killed/joined/stopped events."""
        return [
            e
            for e in self.events
            if e["kind"] == "started"
            or e["kind"] == "killed"
            or e["kind"] == "joined"
            or e["kind"] == "stopped"
        ]

    def leaders(self) -> list[LeaderEvent]:
        return [e for e in self.events if e["kind"] == "leader"]

    def parameter_changes(self) -> list[ParametersEvent]:
        return [e for e in self.events if e["kind"] == "parameters"]


def read_events(path: Path) -> EventLog:
    """Every valid event of ``path`` (none if it does not exist); invalid lines are counted."""
    if not path.exists():
        return EventLog(())
    events: list[Event] = []
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                events.append(_EVENT.validate_json(line))
            except pydantic.ValidationError as exc:
                skipped += 1
                log.warning("%s:%d does not fit the event schema: %s", path, number, exc)
    return EventLog(tuple(events), skipped)


def state_event(t: float, encoder: str, state: mesh_pb2.EncoderState) -> StateEvent:
    """The ``state`` line of one GetState answer."""
    rate = state.frame_rate
    return StateEvent(
        t=t,
        kind="state",
        encoder=encoder,
        timecode=state.timecode,
        segment_number=state.segment_number,
        locked=state.locked,
        error_ns=state.error_ns,
        predicted_error_ns=state.predicted_error_ns,
        leader=state.leader_id,
        segment=state.segment_id,
        gop=state.gop_length,
        fps=rate.num / rate.den if rate.den else 0.0,
        neighbours=[
            NeighbourRecord(
                id=n.neighbour_id,
                measured_ns=n.measured_deviation_ns,
                predicted_ns=n.predicted_deviation_ns,
                connected=n.connected,
            )
            for n in state.neighbours
        ],
        corrections={kind: int(count) for kind, count in sorted(state.corrections.items())},
        input_state=state.input.state,
        arrival_jitter_us=state.input.arrival_jitter_us,
        arrival_offset_ns=state.input.arrival_offset_ns,
    )


_CorrectionKey = tuple[int, int, int, int]


@dataclass(slots=True)
class _Seen:
    """The corrections of one encoder already recorded (the newest ``_SEEN_PER_ENCODER``)."""

    keys: set[_CorrectionKey] = field(default_factory=set)
    order: deque[_CorrectionKey] = field(default_factory=deque)

    def first_sighting(self, key: _CorrectionKey) -> bool:
        if key in self.keys:
            return False
        self.keys.add(key)
        self.order.append(key)
        if len(self.order) > _SEEN_PER_ENCODER:
            self.keys.discard(self.order.popleft())
        return True


@dataclass(slots=True)
class _Source:
    """One polled encoder: where it is and the channel to it."""

    address: str
    channel: Any = None
    warned: bool = False


class Recorder:
    """Polls encoders' GetState and writes the run's ``events.jsonl``.

    Use as ``async with Recorder(out_dir) as recorder:`` (or ``start``/``stop``), inside the
    event loop that polls.

    Args:
        out_dir: the run's output folder; the file is ``out_dir/events.jsonl``, appended to.
        interval: seconds between polling rounds.
        rpc_timeout: deadline of each GetState call, seconds.
        now: the recorder's clock (Unix seconds); injectable for tests.
        tls: the TLS files to call the encoders with (mutual TLS, each encoder's certificate
            naming its id); plaintext when None.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        interval: float = DEFAULT_INTERVAL,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        now: Callable[[], float] = time.time,
        tls: TlsFiles | None = None,
    ) -> None:
        if interval <= 0 or rpc_timeout <= 0:
            raise ValueError("interval and rpc_timeout must be > 0")
        self.path = Path(out_dir) / EVENTS_NAME
        self.interval = interval
        self.rpc_timeout = rpc_timeout
        self._now = now
        self._tls = tls
        self._sources: dict[str, _Source] = {}
        #: Kept when an encoder is removed, so re-adding it records no correction twice.
        self._seen: dict[str, _Seen] = {}
        self._file: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.rounds = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._file is not None:
            raise RuntimeError("recorder already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._task = asyncio.create_task(self._poll_forever(), name="meshenc-recorder")

    async def stop(self) -> None:
        """Stop polling, close every channel and the file. Safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for source in self._sources.values():
            await self._close(source)
        if self._file is not None:
            self._file.close()
            self._file = None

    async def __aenter__(self) -> Recorder:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- who is polled ------------------------------------------------------------------------

    @property
    def encoders(self) -> dict[str, str]:
        """Polled encoders: id to address."""
        return {name: s.address for name, s in self._sources.items()}

    def add(self, encoder: str, address: str) -> None:
        """Poll ``encoder`` at ``address`` (host:port) from the next round on.

        Adding a known encoder at a new address (a restart) moves it there; corrections it
        reported before stay recorded once.
        """
        source = self._sources.get(encoder)
        if source is None:
            self._sources[encoder] = _Source(address)
        elif source.address != address:
            self._retire(source.channel)
            source.address, source.channel = address, None

    def remove(self, encoder: str) -> None:
        """Stop polling ``encoder``; unknown ids are ignored."""
        source = self._sources.pop(encoder, None)
        if source is not None:
            self._retire(source.channel)

    # -- what the launcher records ------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Append one event (validated against the schema) as a line."""
        if self._file is None:
            raise RuntimeError("recorder not started")
        checked = _EVENT.validate_python(event)
        self._file.write(json.dumps(checked, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()

    def lifecycle(self, kind: LifecycleKind, encoder: str, t: float | None = None) -> None:
        """Record that the launcher started, killed, joined or stopped ``encoder``."""
        self.record(LifecycleEvent(t=self._now() if t is None else t, kind=kind, encoder=encoder))

    def leader(self, segment: str, leader: str, revision: int = 0, t: float | None = None) -> None:
        """Record that ``leader`` was elected for encoder group ``segment``."""
        self.record(
            LeaderEvent(
                t=self._now() if t is None else t,
                kind="leader",
                segment=segment,
                leader=leader,
                revision=revision,
            )
        )

    # -- polling ------------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """One round: ask every encoder at once, record the answers. Returns how many answered."""
        sources = list(self._sources.items())
        answers = await asyncio.gather(*(self._ask(name, source) for name, source in sources))
        t = self._now()
        answered = 0
        for (name, source), state in zip(sources, answers, strict=True):
            if state is None or self._sources.get(name) is not source:
                continue  # no answer, or removed while we asked
            answered += 1
            self.record(state_event(t, name, state))
            for correction in self._new_corrections(name, state.recent_corrections, t):
                self.record(correction)
        self.rounds += 1
        return answered

    async def _poll_forever(self) -> None:
        """A round every ``interval`` (the first one interval after start), on a fixed
        schedule; a late round is not made up for."""
        loop = asyncio.get_running_loop()
        next_round = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_round - loop.time()))
            try:
                await self.poll_once()
            except Exception:  # a bad round must not end the recording
                log.exception("recorder round failed")
            next_round = max(next_round + self.interval, loop.time())

    async def _ask(self, name: str, source: _Source) -> mesh_pb2.EncoderState | None:
        if source.channel is None:
            source.channel = open_channel(source.address, tls=self._tls, server_name=name)
        stub = mesh_pb2_grpc.EncoderMeshStub(source.channel)
        try:
            state: mesh_pb2.EncoderState = await stub.GetState(
                mesh_pb2.GetStateRequest(), timeout=self.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("%s at %s did not answer: %s", name, source.address, exc.code())
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the recorder is stopping
            # The channel was closed under the call: the encoder was removed (killed) or moved
            # while this round asked it, and the call's interceptors end with CancelledError
            # rather than an RPC error. Let through, it ended the polling task for the rest of
            # the run (seen: no state recorded after an overload trial's relief).
            log.debug("%s at %s: its channel closed while asked", name, source.address)
            return None
        if state.encoder_id != name:
            if not source.warned:
                log.warning(
                    "%s answers as %r: not recording it", source.address, state.encoder_id[:128]
                )
                source.warned = True
            return None
        return state

    def _new_corrections(
        self,
        name: str,
        events: Iterable[mesh_pb2.CorrectionEvent],
        t: float,
    ) -> list[CorrectionRecord]:
        seen = self._seen.setdefault(name, _Seen())
        fresh = []
        for event in events:
            key = (event.at_ns, event.kind, event.shift_ns, event.proposal_id)
            if not seen.first_sighting(key):
                continue
            try:
                kind = convert.kind_from_proto(event.kind)
            except ValueError:
                log.warning("%s reported a correction of unknown kind %d", name, event.kind)
                continue
            fresh.append(
                CorrectionRecord(
                    t=t,
                    kind="correction",
                    encoder=name,
                    at=convert.ns_to_seconds(event.at_ns),
                    correction=kind.value,
                    shift_ns=event.shift_ns,
                    rate_ppb=event.correction_rate_ppb,
                    lead_ns=event.lead_ns,
                    proposal_id=event.proposal_id,
                )
            )
        return fresh

    def _retire(self, channel: Any) -> None:
        """Close a channel no longer needed, without waiting (``stop`` waits for it)."""
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close(self, source: _Source) -> None:
        channel, source.channel = source.channel, None
        if channel is not None:
            await channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
