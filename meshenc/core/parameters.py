"""Encoding parameters the mesh has agreed on, segment by segment.

Theory of operation: byte-identical segments need identical parameters, so a parameter change
(today: the bitrate) must take effect on every encoder at the same GOP boundary. A change is
proposed for a segment a few segments ahead and put to the proposer's neighbours' vote; once a
majority approves, it is *agreed* and rides in every ESP the encoder sends. An encoder that sees
an agreed change newer than its own adopts it — as long as that segment is still ahead of it,
and no further ahead than a proposal could have named (``parameter_lead`` segments from a
proposer at most one segment away: one announced further ahead was agreed by nobody, and would
block every real change until its segment came) — and passes it on the same way, so the
change spreads through the mesh (a few frames per hop) long before its segment begins.

One change at a time: a change is refused while another is still pending (its segment not yet
reached), so every encoder ends up with the same sequence of changes. Between two changes for
the same segment, the lower bitrate wins, so concurrent requests still settle on one answer.

Invariants: ``bitrate_for`` is a step function of the segment that only changes at the
effective segment of an adopted change; a change is adopted only while its segment is ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ParameterChange", "ParameterSchedule"]


@dataclass(frozen=True, slots=True)
class ParameterChange:
    """From segment ``effective_segment`` on, encode at ``bitrate_kbps``."""

    effective_segment: int
    bitrate_kbps: int

    def __post_init__(self) -> None:
        if self.effective_segment <= 0 or self.bitrate_kbps <= 0:
            raise ValueError(f"not a parameter change: {self}")

    def supersedes(self, other: ParameterChange | None) -> bool:
        """Whether this change is newer than ``other`` (later segment; same: lower bitrate)."""
        if other is None:
            return True
        if self.effective_segment != other.effective_segment:
            return self.effective_segment > other.effective_segment
        return self.bitrate_kbps < other.bitrate_kbps


class ParameterSchedule:
    """The agreed bitrate for every segment: a start value and the changes adopted since."""

    __slots__ = ("_changes", "_initial")

    def __init__(self, initial_bitrate_kbps: int) -> None:
        if initial_bitrate_kbps <= 0:
            raise ValueError("bitrate must be positive")
        self._initial = initial_bitrate_kbps
        self._changes: list[ParameterChange] = []

    @property
    def newest(self) -> ParameterChange | None:
        return self._changes[-1] if self._changes else None

    def pending(self, current_segment: int) -> ParameterChange | None:
        """The newest change if its segment has not begun yet."""
        newest = self.newest
        return newest if newest and newest.effective_segment > current_segment else None

    def adopt(self, change: ParameterChange, current_segment: int) -> bool:
        """Take ``change`` if it is newer than ours and its segment is still ahead."""
        if change.effective_segment <= current_segment or not change.supersedes(self.newest):
            return False
        newest = self.newest
        if newest is not None and newest.effective_segment == change.effective_segment:
            self._changes[-1] = change  # same segment, lower bitrate: it replaces ours
        else:
            self._changes.append(change)
        return True

    def bitrate_for(self, segment: int) -> int:
        bitrate = self._initial
        for change in self._changes:
            if change.effective_segment > segment:
                break
            bitrate = change.bitrate_kbps
        return bitrate
