"""The encoder's log line about timelines: locking, unlocking, anchors, routes and merges.

What an encoder says of timelines (``meshenc.core.timeline``) changes when reachability or
trust does, which its neighbours decide: one flapping in and out of reach could change it at
every ESP. So a line goes out when it changes, at most one per ``interval``; a line after
changes that went unlogged says how many there were, and the state the log shows last is
always the current one once ``interval`` has passed (a state changed and changed back is
logged too, as such).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from meshenc.core.messages import EncodingStatePacket

__all__ = ["TimelineLog"]


class TimelineLog:
    """Feed it every ESP the encoder sends (``sent``); it writes the timeline line."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._previous: EncodingStatePacket | None = None
        self._logged_at = -float("inf")
        #: Changes since the last line (the ESP the last line described counts none).
        self._changes = 0

    def sent(self, esp: EncodingStatePacket) -> None:
        previous, self._previous = self._previous, esp
        if previous is None or _timeline_changed(previous, esp):
            self._changes += 1
        elif not self._changes:
            return
        now = self._clock()
        if now - self._logged_at < self._interval:
            return
        self._write(esp, self._changes, now - self._logged_at)
        self._logged_at, self._changes = now, 0

    def _write(self, esp: EncodingStatePacket, changes: int, since: float) -> None:
        held = f"; {changes} changes in the last {since:.1f} s" if changes > 1 else ""
        if not esp.timeline:
            self._logger.info(
                "timeline: not locked (anchor %s, %d links away)%s",
                esp.anchor,
                esp.anchor_hops,
                held,
            )
            return
        route = ""
        if esp.merge_timeline:
            route = (
                f"; route to {esp.merge_timeline} {esp.merge_offset * 1000.0:+.1f} ms, "
                f"{esp.merge_hops} links, witnesses {', '.join(esp.merge_witnesses)}"
                + (f", moving at segment {esp.merge_segment}" if esp.merge_segment else "")
            )
        self._logger.info(
            "timeline: locked on %s (anchor %s %+.1f ms, %d links away)%s%s",
            esp.timeline,
            esp.anchor,
            esp.anchor_offset * 1000.0,
            esp.anchor_hops,
            route,
            held,
        )


def _timeline_changed(before: EncodingStatePacket, now: EncodingStatePacket) -> bool:
    """Whether what the timeline line is about changed between two ESPs: the timeline, or
    the anchor while not locked, the route's timeline, how many witnesses the route has, its
    schedule. Field by field: this runs for every ESP sent."""
    return (
        before.timeline != now.timeline
        or (not now.timeline and before.anchor != now.anchor)
        or before.merge_timeline != now.merge_timeline
        or len(before.merge_witnesses) != len(now.merge_witnesses)
        or before.merge_segment != now.merge_segment
    )
