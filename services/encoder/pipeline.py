"""One encoder's frame path: picture in, engine, libx264, segments, and the engine's actions out.

Theory of operation
-------------------
The live runtime and the encoder benchmark run every picture through a :class:`FramePipeline`,
so the benchmark measures the path the live encoder takes and the two can never drift apart.
The pipeline is also the runtime's only door into the sync engine: every event (a picture, a
neighbour's ESP, a vote, a topology change) goes in through :meth:`FramePipeline.step`, and
everything the engine decides comes out of ``ready()`` and is carried out at once, in order.

A picture goes ``FrameCaptured`` → ``EncodeFrame`` (each slot encoded at its segment's agreed
bitrate into every rendition held — one without a ladder, one per rung with one, each scaled
from the picture once — then muxed into the rendition's segment writer) → ``FrameEncoded`` with
one hash per slot covering every rendition's access unit (a placed ladder: the slot's input,
``input_hash``, which does not depend on the rungs held) → the ESPs describing it, sent before
the rest of the batch (proposals, corrections), as the engine decided them. Which rungs are
held is the :class:`~services.encoder.media.ladder.Holdings`' business: the set changes at the
first slot of a segment only, and the shell hears of it (``renditions_changed``). What is
particular to the process around the pipeline — vouching for segments, publishing them,
measuring load, the mesh links — is the :class:`PipelineShell`'s.

An encoder that fell behind its input and gave up pictures cannot make the segment in
progress whole, so it *sheds* it (:meth:`FramePipeline.shed`): the segment's frames so far are
dropped, and no slot is encoded until a picture lands on the first slot of a segment. The
engine still hears of every picture (labels, control, ESPs without a frame hash), so the lock
holds while the libx264 work of the rest of the segment is saved for catching up, and the
segments written after it are whole.

With ``rung_threads`` above 1 the rungs of a slot are encoded at once: the pipeline's own
thread scales and encodes the largest rung while a pool of ``rung_threads - 1`` threads does
the others (libx264 and the scaler run without the GIL), and the slot goes on once all are
done. Every rung's libx264 context stays single-threaded and is only ever used by one thread
at a time, so the bytes are the same as one after another; what changes is the wall time of a
slot (the largest rung's instead of the sum), not its CPU time.

The pipeline keeps the seconds spent in each part (:class:`PartTimes`), which the benchmark
breaks down; the runtime measures its encode latency from ``slot_encoded``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meshenc.core.engine import (
    Action,
    EncodeFrame,
    Event,
    FrameCaptured,
    FrameEncoded,
    SegmentGivenUp,
    SyncEngine,
)
from services.encoder.media.gop import EncodedFrame
from services.encoder.media.ladder import Holdings, Rendition, combined_hash, input_hash
from services.encoder.media.source import Picture

__all__ = ["FramePipeline", "PartTimes", "PipelineShell"]


class PipelineShell(Protocol):
    """What a pipeline needs from the process around it."""

    def slot_starts(self, timecode: int, measured: bool) -> None:
        """``timecode`` is about to be encoded; ``measured``: from a live picture, not a
        filler or a repeat filling a gap."""

    def slot_encoded(self, frame: EncodedFrame, encode_seconds: float) -> None:
        """The slot's access units came out of libx264 in ``encode_seconds`` (every rendition;
        ``frame`` is the first rendition's)."""

    def segments_written(self, rendition: Rendition, paths: list[Path], started_ns: int) -> None:
        """``rendition``'s segment writer finished these files (the call began at
        ``started_ns``)."""

    def renditions_changed(self, active: Sequence[Rendition]) -> None:
        """From this slot on the pipeline writes ``active`` (a placement changed the rungs
        held; the segments that stopping rungs wrote were reported first)."""

    def picture_done(self) -> None:
        """Every slot of the picture is encoded (its ESPs are built next)."""

    def carry_out(self, action: Action) -> None:
        """Carry out one engine action other than ``EncodeFrame`` (send an ESP, a proposal
        or a vote, log a correction, escalate...)."""


@dataclass(slots=True)
class PartTimes:
    """Seconds spent in each part of the path since the pipeline started."""

    #: In the engine (stepping it and reading its decisions).
    engine: float = 0.0
    #: In libx264, hash included (and scaling the picture for each rung of a ladder).
    encode: float = 0.0
    #: Muxing and writing segments.
    segments: float = 0.0
    #: Carrying out the engine's other actions (sending ESPs, proposals, votes).
    actions: float = 0.0


class FramePipeline:
    """Drives one engine and the renditions (GOP encoder and segment writer each) of one output.

    Events reach the engine from the start; pictures only once :meth:`start` has given the
    pipeline its renditions (a service answers its neighbours before its output folder is
    ready).

    Args:
        engine: the encoder's sync engine (the pipeline is its only caller).
        shell: the process around the pipeline (see :class:`PipelineShell`).
        clock: this encoder's clock, read when the ESPs are built (after encoding: their
            send time is what the neighbours' round-trip estimate needs).
        rung_threads: how many renditions of a slot may be encoded at once (1: one after
            another). Call :meth:`close` when done with more than 1.
    """

    def __init__(
        self,
        engine: SyncEngine,
        shell: PipelineShell,
        clock: Callable[[], float],
        *,
        rung_threads: int = 1,
    ) -> None:
        if rung_threads < 1:
            raise ValueError(f"rung_threads must be at least 1, got {rung_threads}")
        self.engine = engine
        self._rungs_pool = (
            ThreadPoolExecutor(rung_threads - 1, thread_name_prefix="rung")
            if rung_threads > 1
            else None
        )
        self._clock = clock
        self._shell = shell
        self._holdings: Holdings | None = None
        self._hash_inputs = False
        self.times = PartTimes()
        #: The newest output slot written (None before the first).
        self.last_timecode: int | None = None
        self._picture: Picture | None = None
        self._source_time: int | None = None
        self._measured = True
        #: Shedding (:meth:`shed`): nothing is encoded until a picture opens a segment.
        self.shedding = False
        #: Slots not encoded while shedding, since the pipeline started.
        self.shed_slots = 0

    def start(self, renditions: list[Rendition] | Holdings, *, hash_inputs: bool = False) -> None:
        """Encode into ``renditions`` (GOP-deterministic libx264 and a segment writer each, at
        its share of the agreed bitrate), in this order; or into the rungs ``Holdings`` holds.

        ``hash_inputs``: the ESPs' hash per slot is the slot's input (``input_hash``), for a
        mesh whose encoders hold different rungs; else the access units' (``combined_hash``).
        """
        if isinstance(renditions, Holdings):
            self._holdings = renditions
        elif not renditions:
            raise ValueError("a pipeline needs at least one rendition")
        else:
            self._holdings = Holdings.fixed(renditions, renditions[0].params.segments)
        self._hash_inputs = hash_inputs

    @property
    def holdings(self) -> Holdings | None:
        """The renditions the pipeline writes (None before :meth:`start`)."""
        return self._holdings

    def shed(self) -> None:
        """Give up the segment in progress: its frames so far are dropped, and no slot is
        encoded until a captured picture's own slot opens a segment (a duplicate filling a
        gap there would not be the picture every other encoder put in that slot). For an
        encoder that fell behind its input: the segment cannot be whole, and the libx264 work
        of its rest is better spent catching up. A segment that already reached its last slot
        is written as usual."""
        holdings = self._holdings
        if holdings is None or self.last_timecode is None or self.shedding:
            return
        self.shedding = True
        segment = self.engine.config.segments.segment_of(self.last_timecode)
        for rendition in holdings.active:
            # The video "stops" at the segment in progress: not followed, so not whole.
            if paths := rendition.writer.stop(segment):
                self._shell.segments_written(rendition, paths, time.time_ns())

    def capture(
        self,
        now: float,
        picture: Picture,
        identity: int,
        periods: int | None,
        source_time: int | None,
        *,
        measured: bool = True,
    ) -> None:
        """A picture was captured at ``now`` (its stamp on this encoder's clock).

        Args:
            identity: the picture's identity for the mesh (``NO_IDENTITY``: none).
            periods: frame periods since the previous picture, by the source's timestamps.
            source_time: the source's timestamp in 90 kHz ticks (kept in the segments).
            measured: False for a filler picture (the input is lost).
        """
        if self._holdings is None:
            raise RuntimeError("a picture was captured before the pipeline was started")
        self._picture = picture
        self._source_time = source_time
        self._measured = measured
        self.step(now, FrameCaptured(identity, periods))

    def step(self, now: float, event: Event) -> list[Action]:
        """Apply one event to the engine and carry out everything it decides; returns what
        it carried out (for a caller that answers with the outcome, e.g. a refusal)."""
        clock = time.perf_counter
        started = clock()
        engine = self.engine
        engine.step(now, event)
        actions = engine.ready()
        self.times.engine += clock() - started
        self._carry_out(actions)
        return actions

    def _carry_out(self, actions: list[Action]) -> None:
        clock = time.perf_counter
        shell = self._shell
        for action in actions:
            if isinstance(action, EncodeFrame):
                self._encode(action)
            else:
                started = clock()
                shell.carry_out(action)
                self.times.actions += clock() - started

    def _encode(self, decision: EncodeFrame) -> None:
        """Encode the captured picture into each slot of every rendition, then tell the engine
        one hash per slot."""
        picture, holdings = self._picture, self._holdings
        if picture is None or holdings is None:  # the engine decides only on a picture
            raise RuntimeError("an EncodeFrame without a captured picture")
        clock = time.perf_counter
        shell = self._shell
        times = self.times
        timecodes = decision.timecodes
        measured = self._measured and len(timecodes) == 1
        hashes = []
        # Once per picture, rung and size, however many slots.
        scaled: dict[tuple[str | None, tuple[int, int] | None], Picture] = {}
        for timecode, parameters in zip(timecodes, decision.parameters, strict=True):
            if self.shedding:
                if timecode != timecodes[-1] or not self.engine.config.segments.is_first(timecode):
                    self.shed_slots += 1
                    self.last_timecode = timecode
                    continue
                # The picture's own slot opens a segment: whole segments from here on.
                self.shedding = False
                measured = self._measured
            started_now, stopped = holdings.slot(timecode)
            if started_now or stopped:
                first_unwritten = self.engine.config.segments.segment_of(timecode)
                for rendition, paths in stopped:
                    if paths:
                        shell.segments_written(rendition, paths, time.time_ns())
                    # Handed on: this encoder writes none of the rung from this segment, and
                    # says so, or a holder that stays would wait for its digest of it.
                    unit = rendition.folder or ""
                    self.step(self._clock(), SegmentGivenUp(first_unwritten, unit))
                shell.renditions_changed(holdings.active)
            renditions = holdings.active
            shell.slot_starts(timecode, measured)
            started = clock()
            bitrate, size = parameters.bitrate_kbps, parameters.size
            frames = self._encode_slot(renditions, picture, timecode, bitrate, size, scaled)
            if self._hash_inputs:
                frame_hash = input_hash(timecode, bitrate, picture)
            else:
                frame_hash = combined_hash(frames)
            encoded = clock()
            times.encode += encoded - started
            if frames:
                shell.slot_encoded(frames[0], encoded - started)
            for rendition, frame in zip(renditions, frames, strict=True):
                started_ns = time.time_ns()
                started = clock()
                paths = rendition.writer.add(frame, self._source_time)
                times.segments += clock() - started
                if paths:
                    shell.segments_written(rendition, paths, started_ns)
            hashes.append((timecode, frame_hash))
            self.last_timecode = timecode
        shell.picture_done()
        self.step(self._clock(), FrameEncoded(tuple(hashes)))

    def _encode_slot(
        self,
        renditions: Sequence[Rendition],
        picture: Picture,
        timecode: int,
        bitrate: int,
        size: tuple[int, int] | None,
        scaled: dict[tuple[str | None, tuple[int, int] | None], Picture],
    ) -> list[EncodedFrame]:
        """One slot's access unit from every rendition, in their order: one after another,
        or at once, the largest rung here and the others, largest first, in the pool (so the
        slot takes about the largest rung's time whatever order the ladder was given in)."""
        pool = self._rungs_pool
        if pool is None or len(renditions) == 1:
            return [
                _rendition_frame(r, picture, timecode, bitrate, size, scaled) for r in renditions
            ]
        largest_first = sorted(
            range(len(renditions)),
            key=lambda i: renditions[i].params.width * renditions[i].params.height,
            reverse=True,
        )
        here, *elsewhere = largest_first
        others = {
            i: pool.submit(
                _rendition_frame, renditions[i], picture, timecode, bitrate, size, scaled
            )
            for i in elsewhere
        }
        try:
            first = _rendition_frame(renditions[here], picture, timecode, bitrate, size, scaled)
        finally:
            wait(others.values())  # no rung's encoder is still in use when this returns or raises
        return [first if i == here else others[i].result() for i in range(len(renditions))]

    def close(self) -> None:
        """Stop the rung threads (the renditions are the caller's to close)."""
        if self._rungs_pool is not None:
            self._rungs_pool.shutdown()


def _rendition_frame(
    rendition: Rendition,
    picture: Picture,
    timecode: int,
    bitrate: int,
    size: tuple[int, int] | None,
    scaled: dict[tuple[str | None, tuple[int, int] | None], Picture],
) -> EncodedFrame:
    """``rendition``'s access unit of the slot: the picture scaled to it (once per picture,
    rendition and size, however many slots: ``scaled``, whose keys no two renditions share)
    and encoded at its share of the agreed ``bitrate``."""
    key = (rendition.folder, size)
    rung_picture = scaled.get(key)
    if rung_picture is None:
        rung_picture = scaled[key] = rendition.scaled(picture, size)
    return rendition.encoder.encode(
        timecode, rung_picture, bitrate_kbps=rendition.bitrate_for(bitrate)
    )
