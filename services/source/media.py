"""The live stream: pictures and sound in, MPEG-TS datagrams with their send times out.

Theory of operation: the producer counts frames on one timeline for the whole run. Frame ``g``
has presentation time ``g / fps`` and the audio samples ``[A(g), A(g+1))`` with
``A(g) = floor(g × 48000 / fps)``, whatever input pass the frame came from. A pass is one play
of the input: the test pattern is one endless pass; a file is one pass per loop (``--loop``
opens it again at its end). Because both timelines are counted, never read from the input,
PTS and DTS continue across loops, offset by exactly the loop's duration, and sound stays
locked to pictures: a pass's audio is cut or padded with silence to its pictures' span.

Pictures go to libx264 (fixed GOP of one second unless told otherwise, no scene-cut, no
B-frames, zero-latency tuning, one thread, VBV-capped bitrate), sound to AAC-LC at 48 kHz
stereo (the codec HLS and DASH players take, so a receiver can pass it through untouched).
The MPEG-TS muxer writes each packet as soon as its interleaver lets it go (one audio frame
per PES), and :class:`~services.source.pacing.Packetizer` cuts the bytes into datagrams due at
their own PES timestamps. This module never sleeps: the caller's ``pace`` holds it back to a
bounded lead over real time, and the sender owns the clock and the sockets.

Invariants: video PTS is ``g`` in units of ``1/fps``; audio PTS is the global sample count;
a frame is produced only after ``pace(g / fps)`` allowed it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.packet import Packet
from av.video.stream import VideoStream

from meshenc.core.timecode import FrameRate
from services.common.testpattern import TestPattern
from services.source.pacing import Datagram, Packetizer

__all__ = [
    "AUDIO_RATE",
    "FileInput",
    "InputFormat",
    "LiveStream",
    "MediaError",
    "PatternInput",
    "StreamFormat",
    "StreamStats",
    "samples_before",
]

log = logging.getLogger(__name__)

AUDIO_RATE = 48_000
AUDIO_CHANNELS = 2
AUDIO_BITRATE = 128_000
#: The tone under the test pattern: 1 kHz at −20 dBFS, the usual line-up tone.
TONE_HZ = 1000.0
TONE_AMPLITUDE = 0.1

Samples = npt.NDArray[np.float32]


class MediaError(Exception):
    """The input cannot be opened or has no pictures (missing file, no video, bad data)."""


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """What the stream carries: picture size, frame rate, GOP and video bitrate."""

    width: int
    height: int
    frame_rate: FrameRate
    gop: int = 0
    bitrate_kbps: int = 2000

    def __post_init__(self) -> None:
        for name, value in (("width", self.width), ("height", self.height)):
            if not 16 <= value <= 4096 or value % 2:
                raise ValueError(f"{name} must be even and in 16..4096, got {value}")
        if self.gop == 0:  # one second, so a receiver that joins late decodes within a second
            object.__setattr__(self, "gop", max(1, round(self.frame_rate.fps)))
        if self.gop < 1:
            raise ValueError(f"gop must be at least one frame, got {self.gop}")
        if not 50 <= self.bitrate_kbps <= 100_000:
            raise ValueError(f"bitrate must be in 50..100000 kbit/s, got {self.bitrate_kbps}")

    @property
    def period(self) -> float:
        return self.frame_rate.period


@dataclass(frozen=True, slots=True)
class InputFormat:
    """What a file holds, as far as the stream's defaults go."""

    width: int
    height: int
    frame_rate: FrameRate | None
    has_audio: bool


def samples_before(frame: int, rate: FrameRate) -> int:
    """``A(g)``: how many audio samples precede frame ``frame`` on the timeline."""
    return frame * AUDIO_RATE * rate.den // rate.num


class _Pass(Protocol):
    """One play of the input: pictures in order, and the sound that goes with them."""

    def next_picture(self) -> av.VideoFrame | None:
        """The next picture at the stream's size in yuv420p, or None at the end of the pass."""

    def audio(self, count: int) -> Samples:
        """The next ``count`` samples, shape (2, count), float32; silence where there are none."""

    def close(self) -> None: ...


class _Input(Protocol):
    def open_pass(self, fmt: StreamFormat) -> _Pass: ...


class PatternInput:
    """The built-in test pattern with a 1 kHz tone: one endless pass."""

    def open_pass(self, fmt: StreamFormat) -> _Pass:
        return _PatternPass(fmt)


class _PatternPass:
    def __init__(self, fmt: StreamFormat) -> None:
        self._pattern = TestPattern(fmt.width, fmt.height)
        self._next = 0
        self._sample = 0

    def next_picture(self) -> av.VideoFrame:
        yuv = self._pattern.render(self._next)
        self._next += 1
        return av.VideoFrame.from_ndarray(yuv, format="yuv420p")

    def audio(self, count: int) -> Samples:
        n = np.arange(self._sample, self._sample + count, dtype=np.float64)
        self._sample += count
        # The phase is taken modulo one period in integers, so the tone stays exact for days.
        phase = (n * TONE_HZ) % AUDIO_RATE / AUDIO_RATE
        tone = (TONE_AMPLITUDE * np.sin(2 * np.pi * phase)).astype(np.float32)
        return np.stack([tone, tone])

    def close(self) -> None:
        """Nothing to release."""


class FileInput:
    """A file PyAV can read: each pass opens it again and decodes it to its end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def probe(self) -> InputFormat:
        """The file's size, frame rate and whether it has sound.

        Raises:
            MediaError: the file cannot be opened or has no video stream.
        """
        container = _open(self.path)
        try:
            video = container.streams.video[0]
            rate = video.average_rate or video.guessed_rate
            frame_rate = FrameRate(rate.numerator, rate.denominator) if rate else None
            return InputFormat(
                video.codec_context.width,
                video.codec_context.height,
                frame_rate,
                bool(container.streams.audio),
            )
        finally:
            container.close()

    def open_pass(self, fmt: StreamFormat) -> _Pass:
        return _FilePass(_open(self.path), fmt)


def _open(path: Path) -> InputContainer:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path} has no video stream")
    return container


class _FilePass:
    """Decodes one play of a file; sound that runs ahead of the pictures waits in a FIFO."""

    def __init__(self, container: InputContainer, fmt: StreamFormat) -> None:
        self._container = container
        self._fmt = fmt
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        streams: list[VideoStream | AudioStream] = [video] if audio is None else [video, audio]
        self._frames = container.decode(*streams)
        self._pictures: deque[av.VideoFrame] = deque()
        self._sound: deque[Samples] = deque()
        self._buffered = 0
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self._ended = False

    def _pull(self) -> bool:
        """Decode one more frame into the queues; False at the end (or on corrupt data)."""
        if self._ended:
            return False
        try:
            frame = next(self._frames)
        except StopIteration:
            self._ended = True
            return False
        except av.FFmpegError as exc:
            log.warning("input ends early: %s", exc)
            self._ended = True
            return False
        if isinstance(frame, av.VideoFrame):
            self._pictures.append(
                frame.reformat(width=self._fmt.width, height=self._fmt.height, format="yuv420p")
            )
        elif isinstance(frame, av.AudioFrame):
            frame.pts = None  # the stream's own timeline counts samples; the file's is not used
            for out in self._resampler.resample(frame):
                samples = out.to_ndarray().astype(np.float32, copy=False)
                samples = samples.reshape(AUDIO_CHANNELS, -1)
                self._sound.append(samples)
                self._buffered += samples.shape[1]
        return True

    def next_picture(self) -> av.VideoFrame | None:
        while not self._pictures:
            if not self._pull():
                return None
        return self._pictures.popleft()

    def audio(self, count: int) -> Samples:
        while self._buffered < count and self._pull():
            pass
        out = np.zeros((AUDIO_CHANNELS, count), dtype=np.float32)
        filled = 0
        while filled < count and self._sound:
            head = self._sound[0]
            take = min(count - filled, head.shape[1])
            out[:, filled : filled + take] = head[:, :take]
            filled += take
            if take == head.shape[1]:
                self._sound.popleft()
            else:
                self._sound[0] = head[:, take:]
        self._buffered -= filled
        return out

    def close(self) -> None:
        self._container.close()


@dataclass(frozen=True, slots=True)
class StreamStats:
    """What the producer made: frames, completed loops of the input, datagrams."""

    frames: int
    loops: int
    datagrams: int


class _Sink:
    """The muxer's output file: every write becomes datagrams, timed by the stream's DTS."""

    def __init__(self, packetizer: Packetizer, emit: Callable[[Datagram], None]) -> None:
        self._packetizer = packetizer
        self._emit = emit
        self.datagrams = 0

    def write(self, data: bytes) -> int:
        for datagram in self._packetizer.feed(bytes(data)):
            self._emit(datagram)
            self.datagrams += 1
        return len(data)

    def flush_tail(self) -> None:
        for datagram in self._packetizer.flush():
            self._emit(datagram)
            self.datagrams += 1


class LiveStream:
    """Encodes and muxes the input on one timeline and hands out datagrams as they form.

    ``emit`` receives every datagram in order. :meth:`run` returns when the input ends (no
    ``loop``), when ``duration`` seconds of stream are made, or when ``pace`` returns False
    (the caller is stopping).
    """

    def __init__(
        self,
        source: PatternInput | FileInput,
        fmt: StreamFormat,
        emit: Callable[[Datagram], None],
        *,
        loop: bool = False,
        duration: float | None = None,
    ) -> None:
        self.source = source
        self.fmt = fmt
        self.loop = loop
        rate = fmt.frame_rate
        self.max_frames = None if duration is None else _frames_in(duration, rate)
        # A frame's datagrams leave over the first half of its period (see pacing.py).
        self._sink = _Sink(Packetizer(spread=fmt.period / 2), emit)

    def run(self, pace: Callable[[float], bool]) -> StreamStats:
        """Produce the stream; ``pace(t)`` blocks until stream time ``t`` may be made."""
        fmt = self.fmt
        rate = fmt.frame_rate
        container = av.open(
            self._sink,
            "w",
            format="mpegts",
            # Each packet written out as it is muxed, one audio frame per PES, and a length in
            # every video PES header so a receiver's demuxer hands out a picture as soon as its
            # last byte arrives, not when the next picture starts.
            options={
                "flush_packets": "1",
                "pes_payload_size": "0",
                "omit_video_pes_length": "0",
            },
        )
        frames = loops = 0
        try:
            container.metadata["service_name"] = "meshenc source"
            video = _video_stream(container, fmt)
            audio = container.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "stereo"
            audio.format = "fltp"
            audio.bit_rate = AUDIO_BITRATE
            fifo = np.zeros((AUDIO_CHANNELS, 0), dtype=np.float32)
            audio_pts = 0
            stopped = False  # by the caller (pace said no): leave at once, drain nothing
            ended = False  # the input's end without --loop, or the duration made
            while not (stopped or ended):
                current = self.source.open_pass(fmt)
                made = 0
                try:
                    for picture in _pictures(current):
                        if self.max_frames is not None and frames >= self.max_frames:
                            ended = True
                            break
                        if not pace(frames * rate.period):
                            stopped = True
                            break
                        picture.pts = frames
                        picture.time_base = Fraction(rate.den, rate.num)
                        packets = list(video.encode(picture))
                        span = samples_before(frames + 1, rate) - samples_before(frames, rate)
                        fifo = np.concatenate([fifo, current.audio(span)], axis=1)
                        while fifo.shape[1] >= 1024:
                            chunk = np.ascontiguousarray(fifo[:, :1024])
                            fifo = fifo[:, 1024:]
                            sound = av.AudioFrame.from_ndarray(
                                chunk, format="fltp", layout="stereo"
                            )
                            sound.sample_rate = AUDIO_RATE
                            sound.pts = audio_pts
                            sound.time_base = Fraction(1, AUDIO_RATE)
                            audio_pts += 1024
                            packets.extend(audio.encode(sound))
                        self._mux(container, packets)
                        frames += 1
                        made += 1
                finally:
                    current.close()
                if stopped or ended:
                    break
                loops += 1
                if made == 0:
                    raise MediaError("the input has no pictures")
                log.info("loop %d ends at frame %d (%.3f s)", loops, frames, frames * rate.period)
                ended = not self.loop or (self.max_frames is not None and frames >= self.max_frames)
            if ended:
                # Drain the encoders so the last pictures and sound leave too.
                self._mux(container, [*video.encode(None), *audio.encode(None)])
        finally:
            container.close()
            self._sink.flush_tail()
        return StreamStats(frames, loops, self._sink.datagrams)

    def _mux(self, container: av.container.OutputContainer, packets: list[Packet[Any]]) -> None:
        """Mux one frame's packets, audio and video, in stream-time order."""
        packets.sort(key=_time)
        for packet in packets:
            container.mux(packet)


def _frames_in(seconds: float, rate: FrameRate) -> int:
    """Frames that start within ``seconds``; a float a hair over a whole frame is that frame."""
    return math.ceil(Fraction(seconds) * rate.num / rate.den - Fraction(1, 10**6))


def _time(packet: Packet[Any]) -> float:
    ts = packet.dts if packet.dts is not None else packet.pts
    return float(ts * packet.time_base) if ts is not None and packet.time_base else 0.0


def _pictures(current: _Pass) -> Iterator[av.VideoFrame]:
    while (picture := current.next_picture()) is not None:
        yield picture


def _video_stream(container: av.container.OutputContainer, fmt: StreamFormat) -> VideoStream:
    rate = fmt.frame_rate
    video = container.add_stream("libx264", rate=Fraction(rate.num, rate.den))
    video.width = fmt.width
    video.height = fmt.height
    video.pix_fmt = "yuv420p"
    video.time_base = Fraction(rate.den, rate.num)
    bitrate = fmt.bitrate_kbps * 1000
    video.bit_rate = bitrate
    video.codec_context.options = {
        "preset": "superfast",
        "tune": "zerolatency",
        "g": str(fmt.gop),
        "keyint_min": str(fmt.gop),
        "sc_threshold": "0",
        "bf": "0",
        "threads": "1",
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),  # one second of VBV: frames stay near the mean size
    }
    return video
