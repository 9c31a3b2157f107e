"""GOP-deterministic H.264 encoding with libx264.

Theory of operation: a GOP's bytes must be a pure function of its pictures, their timecodes and
the encoding parameters, so that encoders that agree on timecodes emit byte-identical output
and can prove it by comparing hashes. An x264 encoder carries state from frame to frame (rate
control, reference pictures, frame counters), so an encoder that merely started later never
reproduces another's bytes. Hence every GOP is encoded by a *fresh* libx264 context with fixed
options: one thread, no scene-cut, keyint = min-keyint = GOP length, no B-frames, zero-latency
tuning, CBR-like VBV rate control, and timestamps relative to the GOP start so that absolute
time never enters the bitstream.

Invariants: the GOP of a frame is the segment of its timecode (``EncoderParams.segments``);
the first frame a context sees is an IDR picture and it is the only one in its GOP; each
``encode`` call returns exactly one access unit (zero latency), so its SHA-256 can go into the
ESP at once; within a GOP timecodes strictly increase. Byte identity across machines assumes
the same libx264 build (the bitstream carries x264's version and options in an SEI message, and
encoder releases change decisions).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from fractions import Fraction

import av
from av.codec.context import Flags
from av.video.codeccontext import VideoCodecContext

from meshenc.core.timecode import FrameRate, SegmentLayout
from services.encoder.media.source import Picture, VideoFormat, picture_frame

__all__ = ["X264_PRESETS", "EncodedFrame", "EncoderParams", "GopEncoder"]

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)

#: Seconds per GOP (and per segment) when the GOP length is left to the default.
DEFAULT_GOP_SECONDS = 2


@dataclass(frozen=True, slots=True)
class EncoderParams:
    """Everything that determines the bitstream besides the pictures and their timecodes.

    Every encoder of a mesh must use equal params, and a change takes effect only at an agreed
    future GOP boundary; otherwise outputs stop being identical.

    ``gop`` is frames per GOP, which is also frames per segment; 0 (the default) means two
    seconds' worth at ``frame_rate``, rounded to whole frames.
    """

    width: int
    height: int
    frame_rate: FrameRate
    gop: int = 0
    bitrate_kbps: int = 1000
    preset: str = "ultrafast"

    def __post_init__(self) -> None:
        VideoFormat(self.width, self.height, self.frame_rate)  # the same size rules
        if self.gop == 0:
            frames = round(self.frame_rate.fps * DEFAULT_GOP_SECONDS)
            object.__setattr__(self, "gop", max(1, frames))
        if self.gop < 1:
            raise ValueError(f"gop must be at least one frame, got {self.gop}")
        if self.bitrate_kbps <= 0:
            raise ValueError(f"bitrate must be positive, got {self.bitrate_kbps} kbit/s")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"unknown x264 preset {self.preset!r}; one of {X264_PRESETS}")

    @classmethod
    def for_format(
        cls, fmt: VideoFormat, *, gop: int = 0, bitrate_kbps: int = 1000, preset: str = "ultrafast"
    ) -> EncoderParams:
        return cls(fmt.width, fmt.height, fmt.frame_rate, gop, bitrate_kbps, preset)

    @property
    def segments(self) -> SegmentLayout:
        """How timecodes group into GOPs and segments (``gop`` frames each)."""
        return SegmentLayout(self.gop)

    @property
    def time_base(self) -> Fraction:
        """One frame slot, the time base of the encoder (and of timecodes)."""
        return Fraction(self.frame_rate.den, self.frame_rate.num)

    @property
    def x264_params(self) -> str:
        """The libx264 options that make a GOP's bytes reproducible.

        ``x264-params`` are applied after the preset and tune, so these win over both.
        """
        kbps = self.bitrate_kbps
        return ":".join(
            (
                "threads=1",  # slice decisions must not depend on the core count
                "lookahead-threads=1",
                f"keyint={self.gop}",
                f"min-keyint={self.gop}",
                "scenecut=0",  # no extra IDR where the content decides
                "open-gop=0",
                "bframes=0",  # one access unit out per frame in, no reordering
                "rc-lookahead=0",
                "sync-lookahead=0",
                f"bitrate={kbps}",
                f"vbv-maxrate={kbps}",
                f"vbv-bufsize={kbps}",  # a one-second buffer: CBR-like, bounded segments
            )
        )

    @property
    def codec_options(self) -> dict[str, str]:
        return {"preset": self.preset, "tune": "zerolatency", "x264-params": self.x264_params}


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded access unit (Annex B), named by its timecode and hashed for the ESP, and
    the picture size it was encoded at (None: the size its writer was made for)."""

    timecode: int
    data: bytes
    keyframe: bool
    sha256: bytes
    size: tuple[int, int] | None = None


class GopEncoder:
    """Encodes (timecode, picture) pairs, with a fresh libx264 context for every GOP.

    A context starts whenever a frame belongs to a different GOP than the previous one, also
    after a jump, so an encoder that joins mid-GOP produces the mesh's bytes from the next GOP
    boundary on (its first, incomplete GOP differs and is not written as a segment). A GOP is
    encoded at the bitrate and picture size agreed for it: both are taken when it starts.
    """

    def __init__(self, params: EncoderParams) -> None:
        self.params = params
        self._size = (params.width, params.height)
        #: Built once: the per-frame path reads it twice a frame (a bitrate change keeps gop).
        self._segments = params.segments
        self._ctx: VideoCodecContext | None = None
        self._gop_index: int | None = None
        self._last_timecode: int | None = None

    @property
    def gop_index(self) -> int | None:
        """The GOP the current context encodes, or None before the first frame."""
        return self._gop_index

    def _new_context(self) -> VideoCodecContext:
        params = self.params
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width = params.width
        ctx.height = params.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = params.time_base
        ctx.framerate = Fraction(params.frame_rate.num, params.frame_rate.den)
        ctx.gop_size = params.gop
        ctx.max_b_frames = 0
        ctx.thread_count = 1
        ctx.flags |= Flags.bitexact
        ctx.options = params.codec_options
        ctx.open()
        return ctx

    def encode(
        self, timecode: int, picture: Picture, *, bitrate_kbps: int | None = None
    ) -> EncodedFrame:
        """Encode one picture at ``timecode`` and return its access unit at once.

        ``bitrate_kbps`` is the bitrate agreed for this frame's GOP, and the picture's size the
        size agreed for it; both are taken only when a GOP starts, so a change always takes
        effect at a GOP boundary.

        Raises:
            ValueError: the picture's size is not its GOP's, or the timecode does not follow
                the previous one within the same GOP.
        """
        params = self.params
        gop_index = self._segments.segment_of(timecode)
        if self._ctx is None or gop_index != self._gop_index:
            self._ctx = None  # zero latency: nothing is left in the old context to drain
            if bitrate_kbps is not None and bitrate_kbps != params.bitrate_kbps:
                self.params = params = replace(params, bitrate_kbps=bitrate_kbps)
            if (picture.width, picture.height) != self._size:
                self.params = params = replace(params, width=picture.width, height=picture.height)
                self._size = (picture.width, picture.height)
            self._ctx = self._new_context()
            self._gop_index = gop_index
        elif self._last_timecode is not None and timecode <= self._last_timecode:
            raise ValueError(f"timecode {timecode} does not follow {self._last_timecode}")
        elif picture.width != params.width or picture.height != params.height:
            raise ValueError(
                f"picture is {picture.width}x{picture.height}, its GOP is"
                f" {params.width}x{params.height}"
            )
        self._last_timecode = timecode

        frame = picture_frame(picture)
        # Relative to the GOP's first slot: absolute time stays out of the bytes.
        frame.pts = self._segments.offset_in_segment(timecode)
        frame.time_base = params.time_base
        packets = self._ctx.encode(frame)
        if len(packets) != 1:
            raise RuntimeError(
                f"libx264 returned {len(packets)} packets for timecode {timecode}, expected one"
            )
        packet = packets[0]
        data = bytes(packet)
        return EncodedFrame(
            timecode, data, packet.is_keyframe, hashlib.sha256(data).digest(), self._size
        )

    def close(self) -> None:
        """Release the context; nothing needs flushing (zero latency, no B-frames)."""
        self._ctx = None
        self._gop_index = None
        self._last_timecode = None
