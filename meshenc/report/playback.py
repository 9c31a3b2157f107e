"""How a real player fared: the figures of a browser's playback log (``OUT/player/log.jsonl``).

Theory of operation
-------------------
During ``meshenc up`` a headless browser plays the origin's stream with hls.js
(:mod:`meshenc.local.player`); its page logs, with wall-clock times (Unix seconds), every media
event of the ``<video>`` (``waiting``, ``stalled``, ``playing``, ``seeking`` ...), every hls.js
``ERROR`` event (fatal or not), each playlist and fragment hls.js loads and plays, and a sample
of ``currentTime`` every 250 ms. The driver adds ``started``, ``screenshot`` and ``stopped``
entries, or one ``skipped`` entry that says why no browser ran. :func:`evaluate` turns that log
into figures, as a pure function; nothing else enters them.

Definitions:

start-up
    From the ``load`` entry (hls.js handed the playlist) to the first ``playing`` event.
stall
    A ``waiting`` event after start-up: the element ran out of data and stopped. ``stalled``
    events (the media fetch made no progress for a while) are counted apart.
error
    Every hls.js ``ERROR`` event and every ``error`` event of the element, fatal or not.
longest gap
    The longest wall time, after start-up, between two samples at which ``currentTime`` had
    advanced (the end of the log counts as a sample). Sampling every 250 ms, smooth playback
    shows about 0.25 s; a stall waits for data (a segment is 2 s by default), and a late
    timer on a busy machine adds tenths. :data:`MAX_PROGRESS_GAP_S` is the verdict's bound.
played / wall
    ``currentTime`` at the last sample minus at the first one after start-up, against the
    wall time between them: 1.0 is real time; a seek forward (hls.js jumping to the live edge)
    shows as more, a stall as less.
lost
    The page stopped answering before the run ended (the driver's ``stopped`` entry says so):
    nothing after that moment was watched.
seeks, skipped fragments, discontinuities
    ``seeking`` events after start-up; fragments played whose sequence number is not the
    previous one's plus one; discontinuity sequence numbers other than 0 in any playlist
    hls.js loaded.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "MAX_PROGRESS_GAP_S",
    "PLAYER_DIR",
    "PLAYER_LOG",
    "SCREENSHOT_NAME",
    "PlaybackResult",
    "PlayerError",
    "evaluate",
    "load_playback",
    "read_log",
]

PLAYER_DIR = "player"
"""The player's folder inside the run folder."""
PLAYER_LOG = "log.jsonl"
SCREENSHOT_NAME = "screenshot.png"
MAX_PROGRESS_GAP_S = 1.0
"""Longest gap in playback progress that still counts as continuous (see *longest gap*)."""
_ADVANCED = 1e-3
"""currentTime moved: more than a millisecond (a float's noise is far less)."""


@dataclass(frozen=True, slots=True)
class PlayerError:
    """One error the player reported."""

    t: float
    fatal: bool
    type: str
    details: str
    reason: str = ""
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "fatal": self.fatal,
            "type": self.type,
            "details": self.details,
            "reason": self.reason,
            "url": self.url,
        }


@dataclass(frozen=True, slots=True)
class PlaybackResult:
    """The figures of one playback log (see the module docstring)."""

    skipped: str | None = None
    url: str | None = None
    browser: str | None = None
    hls_version: str | None = None
    loaded_at: float | None = None
    startup_s: float | None = None
    #: Wall time of the first ``playing`` event and of the last sample after it.
    playing_from: float | None = None
    playing_until: float | None = None
    stalls: tuple[float, ...] = ()
    stalled_events: int = 0
    errors: tuple[PlayerError, ...] = ()
    longest_gap_s: float | None = None
    played_s: float = 0.0
    wall_s: float = 0.0
    seeks: int = 0
    fragments: int = 0
    skipped_fragments: int = 0
    discontinuities: int = 0
    samples: int = 0
    screenshot: str | None = None
    stop_reason: str | None = None
    #: The page stopped answering before the run ended (the browser died): the log ends there.
    lost: bool = False

    @property
    def started(self) -> bool:
        return self.startup_s is not None

    def playing_at(self, t: float) -> bool:
        """Whether the player was playing (past start-up, not yet stopped) at wall time ``t``."""
        start, end = self.playing_from, self.playing_until
        return start is not None and end is not None and start <= t <= end

    @property
    def smooth(self) -> bool:
        """Started, and then played to the end of the run without a stall, error, seek, skip or
        long gap."""
        return (
            self.started
            and not self.lost
            and not self.stalls
            and not self.stalled_events
            and not self.errors
            and not self.seeks
            and not self.skipped_fragments
            and not self.discontinuities
            and self.longest_gap_s is not None
            and self.longest_gap_s <= MAX_PROGRESS_GAP_S
        )

    @property
    def verdict(self) -> Literal["smooth", "skipped", "not smooth"]:
        """The one word the terminal and the report both colour by: a skipped player is
        neither smooth nor a failure."""
        if self.skipped is not None:
            return "skipped"
        return "smooth" if self.smooth else "not smooth"

    @property
    def line(self) -> str:
        """One line, e.g. ``player: start-up 1.2 s, 0 stalls, 0 errors, longest gap 0.3 s,
        played 40.1 s in 40.2 s``."""
        if self.skipped is not None:
            return f"player: skipped ({self.skipped})"
        if not self.started:
            return f"player: never started playing, {len(self.errors)} errors"
        gap = "—" if self.longest_gap_s is None else f"{self.longest_gap_s:.2f} s"
        parts = [
            f"start-up {self.startup_s:.1f} s",
            f"{len(self.stalls)} stalls",
            f"{len(self.errors)} errors",
            f"longest gap {gap}",
            f"played {self.played_s:.1f} s in {self.wall_s:.1f} s",
            f"{self.fragments} fragments",
        ]
        if self.lost:
            parts.append("the browser was lost")
        for count, what in (
            (self.stalled_events, "stalled events"),
            (self.seeks, "seeks"),
            (self.skipped_fragments, "skipped fragments"),
            (self.discontinuities, "discontinuities"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return "player: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "smooth": self.smooth,
            "verdict": self.verdict,
            "skipped": self.skipped,
            "url": self.url,
            "browser": self.browser,
            "hls_version": self.hls_version,
            "startup_s": self.startup_s,
            "playing_from": self.playing_from,
            "playing_until": self.playing_until,
            "stalls": len(self.stalls),
            "stall_times": list(self.stalls),
            "stalled_events": self.stalled_events,
            "errors": len(self.errors),
            "fatal_errors": sum(e.fatal for e in self.errors),
            "error_list": [e.to_json() for e in self.errors],
            "longest_gap_s": self.longest_gap_s,
            "max_gap_s": MAX_PROGRESS_GAP_S,
            "played_s": self.played_s,
            "wall_s": self.wall_s,
            "seeks": self.seeks,
            "fragments": self.fragments,
            "skipped_fragments": self.skipped_fragments,
            "discontinuities": self.discontinuities,
            "samples": self.samples,
            "screenshot": self.screenshot,
            "stop_reason": self.stop_reason,
            "lost": self.lost,
        }


def _error(entry: Mapping[str, Any]) -> PlayerError:
    if entry["kind"] == "media":  # the <video> element's own error event
        return PlayerError(
            entry["t"], True, "media", "video element error", entry.get("detail", "")
        )
    return PlayerError(
        t=entry["t"],
        fatal=bool(entry.get("fatal")),
        type=str(entry.get("type", "")),
        details=str(entry.get("details", "")),
        reason=str(entry.get("reason", "")),
        url=entry.get("url"),
    )


def evaluate(log: Iterable[Mapping[str, Any]]) -> PlaybackResult:
    """The figures of a playback log, entries in the order they were written."""
    entries = sorted(
        (e for e in log if isinstance(e.get("t"), int | float)), key=lambda e: float(e["t"])
    )
    values: dict[str, Any] = {}
    for entry in entries:
        kind = entry.get("kind")
        if kind == "skipped":
            return PlaybackResult(skipped=str(entry.get("reason", "no reason given")))
        if kind == "started":
            values.update(url=entry.get("url"), browser=entry.get("browser"))
        elif kind == "screenshot":
            values["screenshot"] = entry.get("path")
        elif kind == "stopped":  # the first reason: a browser that died before the run ended
            values.setdefault("stop_reason", entry.get("reason"))
            values["lost"] = values.get("lost", False) or bool(entry.get("lost"))
        elif kind == "load" and "loaded_at" not in values:
            values.update(loaded_at=entry["t"], hls_version=entry.get("hls"))
    errors = tuple(
        _error(e)
        for e in entries
        if e.get("kind") == "error" or (e.get("kind") == "media" and e.get("event") == "error")
    )
    playing = next(
        (e["t"] for e in entries if e.get("kind") == "media" and e.get("event") == "playing"), None
    )
    loaded = values.get("loaded_at")
    if playing is None or loaded is None:
        return PlaybackResult(errors=errors, **values)
    after = [e for e in entries if e["t"] >= playing]
    media = [e for e in after if e.get("kind") == "media"]
    samples = [(e["t"], float(e["current"])) for e in after if e.get("kind") == "sample"]
    fragments = [int(e["sn"]) for e in entries if e.get("kind") == "fragment"]
    discontinuities = {
        int(cc)
        for e in entries
        if e.get("kind") == "playlist"
        for cc in e.get("discontinuities", ())
    }
    return PlaybackResult(
        startup_s=playing - loaded,
        playing_from=playing,
        playing_until=samples[-1][0] if samples else playing,
        stalls=tuple(e["t"] for e in media if e.get("event") == "waiting"),
        stalled_events=sum(e.get("event") == "stalled" for e in media),
        errors=errors,
        longest_gap_s=_longest_gap(playing, samples),
        played_s=samples[-1][1] - samples[0][1] if samples else 0.0,
        wall_s=samples[-1][0] - samples[0][0] if samples else 0.0,
        seeks=sum(e.get("event") == "seeking" for e in media),
        fragments=len(fragments),
        skipped_fragments=sum(b != a + 1 for a, b in itertools.pairwise(fragments)),
        discontinuities=len(discontinuities - {0}),
        samples=len(samples),
        **values,
    )


def _longest_gap(since: float, samples: list[tuple[float, float]]) -> float | None:
    """The longest wall time between samples at which ``currentTime`` had advanced."""
    if not samples:
        return None
    longest = 0.0
    last_progress, last_position = since, samples[0][1]
    for t, position in samples:
        if position > last_position + _ADVANCED:
            longest = max(longest, t - last_progress)
            last_progress, last_position = t, position
    return max(longest, samples[-1][0] - last_progress)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a playback log; unreadable lines (a line cut by a crash) are skipped."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "kind" in entry:
            entries.append(entry)
    return entries


def load_playback(out_dir: Path) -> PlaybackResult | None:
    """The figures of a run folder's playback log; None when the run kept none."""
    path = Path(out_dir) / PLAYER_DIR / PLAYER_LOG
    return evaluate(read_log(path)) if path.is_file() else None
