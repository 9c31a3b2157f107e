"""Live ingest: a network stream (or a file) demuxed and decoded off the event loop.

Theory of operation: a thread of its own opens the input with PyAV (any URL its FFmpeg reads:
``udp://``, ``rtp://``, ``rtmp://``, ``http(s)://``, ``tcp://``, or a file), demuxes it and
decodes the video, so a slow decode never stalls the mesh. Each picture's *measured arrival* is
on the host clock: for ``udp://`` and ``rtp://`` (MPEG-TS) the kernel's receive time of the
picture's first datagram, which this thread reads from a socket of the encoder's own as the
demuxer asks for bytes (``DatagramInput``); for other inputs the moment its packet left the
demuxer. Each decoded
picture is scaled to the mesh's format (``decoded_picture``), fingerprinted if it has no
source timestamp (one that has is named by it), and handed over (``IngestedPicture``) with its
arrival and its source timestamp; audio packets are handed over untouched
(``IngestedAudio``) with theirs, to be passed through into the segments. Nothing here derives
a time from a picture's position.

A file is not live: it is read at its own pace (as ``ffmpeg -re`` does), starting over at its
end with its timestamps continued, so it plays as an endless live feed to one encoder. Several
encoders locked to one timeline need one live stream (``meshenc source``), not one file each.

Bad input never ends ingest: corrupt packets and undecodable pictures are counted and skipped;
an input that cannot be opened, stops sending or ends is reopened after a pause. Everything is
counted in ``IngestCounters``; the runtime reports it in health, ``GetState`` and metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from pathlib import Path

import av
from av.container import InputContainer
from av.video.frame import VideoFrame

from services.encoder.media.datagrams import DatagramInput
from services.encoder.media.source import Picture, SourceError, VideoFormat, frame_yuv

__all__ = [
    "IngestCounters",
    "Ingested",
    "IngestedAudio",
    "IngestedPicture",
    "InputLossPolicy",
    "InputMonitor",
    "InputState",
    "LiveIngest",
    "decoded_picture",
    "is_network_url",
]

log = logging.getLogger("meshenc.encoder.ingest")

#: Protocols read as live streams (anything else is a file, read at its own pace).
NETWORK_SCHEMES = ("udp", "rtp", "rtmp", "http", "https", "tcp")
#: Seconds a blocked read of an input FFmpeg opens itself (http, rtmp, tcp, a file) may wait
#: before the input counts as broken and is reopened. udp and rtp are read by the encoder's
#: own receiver and never time out: a stalled stream just continues.
READ_TIMEOUT = 5.0
#: Seconds to open an input before giving up on this attempt.
OPEN_TIMEOUT = 5.0
#: Pause before reopening an input that failed or ended.
REOPEN_PAUSE = 0.5
#: The GIL switch interval the encoder runtime sets (Python's default is 5 ms): an ingest
#: thread that reads the clock when a picture leaves the demuxer (inputs other than udp:// and
#: rtp://, whose datagrams carry the kernel's receive time) waits about this long at most for
#: the GIL before it can.
SWITCH_INTERVAL = 0.001
#: Pictures whose arrival is remembered while they are inside the decoder.
_PENDING_ARRIVALS = 64
#: Options that keep a live input's start-up short (the probed packets are kept: the first
#: picture with its parameter sets is among them).
_LIVE_OPTIONS = {"analyzeduration": "500000", "probesize": "100000"}


def decoded_picture(
    index: int, frame: VideoFrame, fmt: VideoFormat, *, fingerprinted: bool = False
) -> Picture:
    """A decoded frame as the mesh's picture ``index``: scaled and converted to ``fmt``'s size in
    yuv420p by libswscale where the frame differs (a no-op where it does not), its pixels
    copied once into the picture's own array. ``fingerprinted``: its fingerprint is computed
    now (the picture has no source timestamp and will be named by it), else when first read
    (a picture with a timestamp is named by that and never needs it)."""
    picture = Picture(index, frame_yuv(frame.reformat(fmt.width, fmt.height, "yuv420p")))
    if fingerprinted:
        _ = picture.fingerprint  # in the ingest thread, not in the frame path
    return picture


def is_network_url(spec: str) -> bool:
    """Whether ``spec`` names a live network stream rather than a file."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.lower() in NETWORK_SCHEMES


@dataclass(frozen=True, slots=True)
class IngestedPicture:
    """One decoded picture: its measured arrival (host seconds) and its source timestamp."""

    arrived: float
    picture: Picture
    pts: int | None
    time_base: Fraction


@dataclass(frozen=True, slots=True)
class IngestedAudio:
    """One compressed audio packet, passed through untouched; ``pts`` in ``time_base``."""

    codec: str
    sample_rate: int
    pts: int
    time_base: Fraction
    data: bytes


Ingested = IngestedPicture | IngestedAudio


@dataclass(slots=True)
class IngestCounters:
    """What went wrong with the input so far (written by the ingest thread, read anywhere)."""

    pictures: int = 0
    audio_packets: int = 0
    corrupt_packets: int = 0
    decode_errors: int = 0
    reopens: int = 0
    last_error: str = ""
    opened: bool = False


@dataclass(slots=True)
class _Loop:
    """Timestamp bookkeeping of one pass over a file, continued across passes."""

    offset: Fraction = Fraction(0)
    #: The first video timestamp of this pass and how far the video reached from it.
    first_video: Fraction | None = None
    span: Fraction = Fraction(0)
    started: float | None = None
    first: Fraction | None = None
    arrivals: dict[int, float] = field(default_factory=dict)


class LiveIngest:
    """Reads one input in a thread and hands every picture and audio packet to ``deliver``.

    Args:
        spec: a URL PyAV opens, or a file path.
        fmt: the mesh's picture format (pictures are scaled to it).
        deliver: called from the ingest thread for every item, in order; it must be quick and
            thread-safe (the runtime passes ``loop.call_soon_threadsafe`` onto a queue).
        clock: the host clock the arrivals are read from.
        paced: play a file in real time (off only to measure the ingest path's cost).
    """

    def __init__(
        self,
        spec: str,
        fmt: VideoFormat,
        deliver: Callable[[Ingested], None],
        *,
        clock: Callable[[], float] = time.time,
        paced: bool = True,
    ) -> None:
        if not spec.strip():
            raise SourceError("the source is empty")
        if not is_network_url(spec) and "://" not in spec and not Path(spec).is_file():
            raise SourceError(f"source {spec!r} is neither a readable file nor a stream URL")
        self.spec = spec
        self.fmt = fmt
        self.live = is_network_url(spec)
        self._paced = paced
        self.counters = IngestCounters()
        self._deliver = deliver
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._log_at = 0.0
        self._index = 0
        scheme = spec.partition("://")[0].lower()
        self.datagrams = DatagramInput(spec, clock) if scheme in ("udp", "rtp") else None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to end and wait for it."""
        self._stop.set()
        if self.datagrams is not None:
            self.datagrams.stop()  # the demuxer reads the end of its stream
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.datagrams is not None:
            self.datagrams.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        loop = _Loop()
        while not self._stop.is_set():
            try:
                with self._open() as container:
                    self.counters.opened = True
                    self._read(container, loop)
            except (av.FFmpegError, OSError, SourceError) as exc:
                self._trouble(f"input {self.spec!r}: {exc}")
            except Exception as exc:  # a live encoder keeps running whatever its input does
                self._trouble(f"input {self.spec!r} failed unexpectedly: {exc!r}")
            self.counters.opened = False
            if self._stop.wait(0 if not self.live and loop.span > 0 else REOPEN_PAUSE):
                break
            self.counters.reopens += 1
            if not self.live:
                # A file starts over where the last pass ended: its timestamps keep counting.
                loop.offset += loop.span
            loop.first_video, loop.span = None, Fraction(0)

    def _open(self) -> InputContainer:
        options = dict(_LIVE_OPTIONS) if self.live else {}
        if self.datagrams is not None:
            container = av.open(self.datagrams.pipe, "r", format="mpegts", options=options)
        else:
            container = av.open(
                self.spec, "r", options=options, timeout=(OPEN_TIMEOUT, READ_TIMEOUT)
            )
        if not container.streams.video:
            container.close()
            raise SourceError("no video stream")
        return container

    def _read(self, container: InputContainer, loop: _Loop) -> None:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        streams = [video] if audio is None else [video, audio]
        for packet in container.demux(streams):
            if self._stop.is_set():
                return
            arrived = self._clock()
            if packet.size == 0:
                continue  # the demuxer's flush marker
            if packet.is_corrupt:
                self.counters.corrupt_packets += 1
                self._trouble("corrupt packet skipped")
                continue
            time_base = packet.time_base
            if packet.pts is not None and time_base is not None:
                stamp = packet.pts * time_base
                if packet.stream is video:  # a loop continues the video without a gap
                    if loop.first_video is None:
                        loop.first_video = stamp
                    end = stamp + (packet.duration or 0) * time_base - loop.first_video
                    loop.span = max(loop.span, end)
                arrived = self._pace(loop, loop.offset + stamp, arrived)
            if packet.stream is audio:
                if packet.pts is None or time_base is None:
                    continue
                self.counters.audio_packets += 1
                self._deliver(
                    IngestedAudio(
                        codec=audio.codec_context.name,
                        sample_rate=audio.codec_context.sample_rate,
                        pts=packet.pts + _ticks(loop.offset, time_base),
                        time_base=time_base,
                        data=bytes(packet),
                    )
                )
                continue
            if packet.pts is not None:
                arrivals = loop.arrivals
                arrivals[packet.pts] = arrived
                if len(arrivals) > _PENDING_ARRIVALS:
                    del arrivals[next(iter(arrivals))]
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                self.counters.decode_errors += 1
                self._trouble(f"undecodable picture skipped: {exc}")
                continue
            for frame in frames:
                if not isinstance(frame, VideoFrame):
                    continue
                pts = frame.pts
                at = arrived if pts is None else loop.arrivals.pop(pts, arrived)
                if pts is not None and self.datagrams is not None:
                    at = self.datagrams.arrivals.take(pts) or at
                self._index += 1
                picture = decoded_picture(self._index, frame, self.fmt, fingerprinted=pts is None)
                base = frame.time_base or video.time_base or Fraction(1, 90_000)
                self.counters.pictures += 1
                self._deliver(
                    IngestedPicture(
                        arrived=at,
                        picture=picture,
                        pts=None if pts is None else pts + _ticks(loop.offset, base),
                        time_base=base,
                    )
                )

    def _pace(self, loop: _Loop, at: Fraction, arrived: float) -> float:
        """A file plays in real time: wait until its (continued) timestamp is due, measured from
        the first packet of the first pass. Live input: as is."""
        if self.live or not self._paced:
            return arrived
        if loop.first is None or loop.started is None:
            loop.first, loop.started = at, arrived
            return arrived
        due = loop.started + float(at - loop.first)
        wait = due - self._clock()
        if wait > 0 and self._stop.wait(wait):
            return arrived
        return self._clock()

    def _trouble(self, message: str) -> None:
        """Count and log input trouble, at most one line per second."""
        self.counters.last_error = message
        now = time.monotonic()
        if now - self._log_at >= 1.0:
            self._log_at = now
            log.warning("%s", message)


def _ticks(seconds: Fraction, time_base: Fraction) -> int:
    return round(seconds / time_base)


class InputState(StrEnum):
    """How the input is doing, as health, ``GetState`` and metrics report it."""

    WAITING = "waiting"  # no picture yet since the start
    LIVE = "live"  # pictures arriving
    LOST = "lost"  # none for ``loss_after``: the encoder fills in (repeat, then black)


@dataclass(frozen=True, slots=True)
class InputLossPolicy:
    """What an encoder does while its input is gone (``--input-loss-*``).

    After ``loss_frames`` frame periods without a picture (a second at 30 fps: a live source that
    hiccups is not lost) the input counts as lost; the encoder
    then keeps its timeline and output running on its own cadence (from the last picture it
    took, whole frame periods on), repeating the last picture
    for ``repeat_seconds`` and sending black after that, until a picture arrives again.
    """

    loss_frames: int = 30
    repeat_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.loss_frames <= 600:
            raise ValueError(f"input loss needs 1..600 frames, got {self.loss_frames}")
        if not 0.0 <= self.repeat_seconds <= 3600.0:
            raise ValueError(f"repeat seconds must be in 0..3600, got {self.repeat_seconds}")


class InputMonitor:
    """Watches arrivals: input state, arrival jitter and offset, and when to fill in.

    Time is an argument (host seconds). Jitter is RFC 3550's interarrival jitter against the
    source's own timestamps: how much the spacing of arrivals differs from the spacing the
    source gave its pictures, smoothed over 16 pictures. The arrival offset is the mean of
    arrival minus source time: meaningless alone (the source's clock has its own origin), but
    the difference between two encoders' offsets on one host clock is the difference of their
    ingest delays, which the run report shows.
    """

    def __init__(self, period: float, policy: InputLossPolicy, started: float) -> None:
        self.period = period
        self.policy = policy
        self.state = InputState.WAITING
        self.jitter = 0.0
        self.offset: float | None = None
        self.lost_count = 0
        self._last_arrival = started
        self._last_seen = started
        self._last_source: float | None = None
        self._lost_at: float | None = None
        self._fills = 0

    def arrived(self, at: float, source_time: float | None, now: float | None = None) -> bool:
        """A picture that arrived at ``at`` reached the loop at ``now`` (default: ``at``);
        returns True when it ends a loss (the input is back).

        Loss is judged on ``now``: pictures that were queued for a while (the demuxer probing a
        stream joined mid-way hands its first second over at once) are late, not lost.
        """
        back = self.state is InputState.LOST
        if source_time is not None and self._last_source is not None and not back:
            transit = (at - self._last_arrival) - (source_time - self._last_source)
            if abs(transit) < 1.0:  # a source discontinuity is no jitter
                self.jitter += (abs(transit) - self.jitter) / 16.0
        if source_time is not None:
            sample = at - source_time
            if self.offset is None or back or abs(sample - self.offset) > 1.0:
                self.offset = sample
            else:
                self.offset += (sample - self.offset) / 64.0
        self._last_arrival = at
        self._last_seen = at if now is None else max(at, now)
        self._last_source = source_time
        self.state = InputState.LIVE
        self._lost_at = None
        self._fills = 0
        return back

    def next_fill(self) -> float:
        """When the next filler picture is due if nothing arrives before (host seconds)."""
        return self._last_seen + (self.policy.loss_frames + self._fills) * self.period

    def fill(self, now: float) -> tuple[float, bool] | None:
        """At ``now``: the time of a filler picture due by now, and whether it repeats the last
        picture (else black); None when none is due."""
        due = self.next_fill()
        if now < due:
            return None
        if self.state is not InputState.LOST:
            self.state = InputState.LOST
            self.lost_count += 1
            self._lost_at = due
        self._fills += 1
        repeat = self._lost_at is not None and due - self._lost_at < self.policy.repeat_seconds
        return due, repeat
