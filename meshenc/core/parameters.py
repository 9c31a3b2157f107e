"""Encoding parameters the mesh has agreed on, segment by segment.

Theory of operation: byte-identical segments need identical parameters, so a parameter change
(the bitrate, the picture size or both) must take effect on every encoder at the same GOP
boundary. A change is proposed for a segment a few segments ahead and put to the proposer's
neighbours' vote; once a majority approves, it is *agreed* and rides in every ESP the encoder
sends. An encoder that sees an agreed change newer than its own adopts it — as long as that
segment is still ahead of it, and no further ahead than a proposal could have named
(``parameter_lead`` segments from a proposer at most one segment away: one announced further
ahead was agreed by nobody, and would block every real change until its segment came) — and
passes it on the same way, so the change spreads through the mesh (a few frames per hop) long
before its segment begins.

A change carries every parameter, not only the one asked for: the proposer fills in the others
as agreed for that segment, so an encoder that missed an earlier change still ends up with the
mesh's parameters. A picture size of None is the size the encoders were started with (which
the mesh's encoders share, as they share the frame rate); the core never needs to know it.

One change at a time: a change is refused while another is still pending (its segment not yet
reached), so every encoder ends up with the same sequence of changes. Between two changes for
the same segment, the lower bitrate wins, then the smaller picture, so concurrent requests
still settle on one answer.

An encoder that was not there when a change was agreed (a joiner, a restarted encoder, one cut
off from the mesh) learns it from the first ESP that carries it, after its segment began: it
applies it from its own next segment, and passes it on as agreed. Without that, a joiner after a
change would encode with the parameters it was started with for as long as it ran.

Invariants: ``parameters_for`` is a step function of the segment that only changes at a
segment this encoder had not begun when it adopted the change: the effective segment of a
change adopted in time, the next one of a change learnt late.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_HEIGHT",
    "MAX_WIDTH",
    "MIN_SIDE",
    "ParameterChange",
    "ParameterSchedule",
    "Parameters",
    "check_size",
    "size_name",
]

#: Picture sizes every part of the system accepts: even sides (yuv420p halves both chroma
#: dimensions, so odd sizes cannot be represented exactly), 16 px the smallest libx264 handles
#: comfortably, 4K UHD the largest the mesh is meant for.
MIN_SIDE: Final = 16
MAX_WIDTH: Final = 3840
MAX_HEIGHT: Final = 2160


def check_size(width: int, height: int) -> None:
    """Raise ValueError unless ``width``x``height`` is a picture size the encoders can write."""
    for name, value, upper in (("width", width, MAX_WIDTH), ("height", height, MAX_HEIGHT)):
        if not MIN_SIDE <= value <= upper or value % 2:
            raise ValueError(f"{name} must be even and in {MIN_SIDE}..{upper}, got {value}")


def size_name(size: tuple[int, int]) -> str:
    """``WIDTHxHEIGHT``, as sizes are written everywhere (a rung's folder, ``--size``)."""
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True, slots=True)
class Parameters:
    """What a segment is encoded with: its bitrate and its picture size (None: the size the
    encoders were started with)."""

    bitrate_kbps: int
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.bitrate_kbps <= 0:
            raise ValueError(f"bitrate must be positive, got {self.bitrate_kbps}")
        if self.size is not None:
            check_size(*self.size)

    def __str__(self) -> str:
        size = "the started size" if self.size is None else size_name(self.size)
        return f"{self.bitrate_kbps} kbit/s at {size}"

    @property
    def order(self) -> tuple[int, int, int]:
        """Which of two changes for one segment wins: the lower bitrate, then the smaller
        picture (area, then width)."""
        width, height = self.size or (0, 0)
        return (self.bitrate_kbps, width * height, width)


@dataclass(frozen=True, slots=True)
class ParameterChange:
    """From segment ``effective_segment`` on, encode with ``parameters``."""

    effective_segment: int
    parameters: Parameters

    def __post_init__(self) -> None:
        if self.effective_segment <= 0:
            raise ValueError(f"not a parameter change: {self}")

    @property
    def bitrate_kbps(self) -> int:
        return self.parameters.bitrate_kbps

    @property
    def size(self) -> tuple[int, int] | None:
        return self.parameters.size

    def supersedes(self, other: ParameterChange | None) -> bool:
        """Whether this change is newer than ``other`` (later segment; same: ``order``)."""
        if other is None:
            return True
        if self.effective_segment != other.effective_segment:
            return self.effective_segment > other.effective_segment
        return self.parameters.order < other.parameters.order


class ParameterSchedule:
    """The agreed parameters of every segment: a start value and the changes adopted since,
    each with the segment this encoder applies it from (its own, for a change it learnt late).
    """

    __slots__ = ("_initial", "_steps")

    def __init__(self, initial_bitrate_kbps: int) -> None:
        if initial_bitrate_kbps <= 0:
            raise ValueError("bitrate must be positive")
        self._initial = Parameters(initial_bitrate_kbps)
        #: (the segment it applies from here, the change as the mesh agreed it), in order.
        self._steps: list[tuple[int, ParameterChange]] = []

    @property
    def newest(self) -> ParameterChange | None:
        """The newest change as the mesh agreed it (what this encoder's ESPs pass on)."""
        return self._steps[-1][1] if self._steps else None

    def pending(self, current_segment: int) -> ParameterChange | None:
        """The newest change if its segment has not begun yet."""
        newest = self.newest
        return newest if newest and newest.effective_segment > current_segment else None

    def adopt(self, change: ParameterChange, current_segment: int) -> int | None:
        """Take ``change`` if it is newer than ours; the segment it applies from here, or None
        when it is not taken.

        A change whose segment is still ahead applies from that segment. One whose segment has
        begun was agreed while this encoder was not there to hear it (it joined or restarted
        since, or was cut off): it applies from the next segment here, so that a segment
        already begun keeps its parameters, and is passed on as agreed (``newest``), never
        under the segment this encoder took it at.
        """
        if not change.supersedes(self.newest):
            return None
        applies_from = max(change.effective_segment, current_segment + 1)
        if self._steps and self._steps[-1][0] == applies_from:
            self._steps[-1] = (applies_from, change)  # the same segment, and it wins
        else:
            self._steps.append((applies_from, change))
        return applies_from

    def parameters_for(self, segment: int) -> Parameters:
        # Newest first: the frame path asks for its own segment every frame, which the newest
        # step usually covers, however many changes came before.
        for applies_from, change in reversed(self._steps):
            if applies_from <= segment:
                return change.parameters
        return self._initial
