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
    From the ``load`` entry (hls.js handed the playlist) to the ``playing`` event after which
    the position first advanced: a ``playing`` that the element takes back with a
    ``waiting`` before its position has moved (measured: 5 ms after the first one, on a
    buffer of one segment) is still start-up.
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
    ``seeking`` events after start-up; fragments played whose sequence number is neither the
    previous one's plus one nor the same again (hls.js switching rungs replaces the segment
    under the playhead with the other rung's copy); discontinuity sequence numbers other than
    0 in any playlist hls.js loaded.
rungs, switches, rung loads
    Of a master over rungs: the rung folders (``<W>x<H>``) its video fragments came from, in
    the order first loaded, the changes of level hls.js completed after start-up, and the
    rung of every video fragment loaded, in order (what a player choosing by itself chose).
sequence gaps
    Video fragments loaded (in the order the player loaded them) whose sequence number is more
    than one past every number loaded before: a segment the viewer never got. (dash.js has no
    event for the fragment playing: for it, the loaded ones are the measure.)
dropped frames
    ``getVideoPlaybackQuality().droppedVideoFrames`` at the last sample: frames the browser
    decoded but did not show in time (a busy machine drops some without any stream fault).

One page may run several players, each entry naming its own (``player``; an entry without one
is the origin's): :data:`ORIGIN_PLAYER` plays the origin's media playlist,
:data:`REDUNDANT_PLAYER` the master playlist of redundant encoders, :data:`CHANNEL_PLAYER` a
placed ladder's channel master, asking for the next rung every 4 s (all with hls.js),
:data:`DASH_PLAYER` a DASH manifest with dash.js, whose ``ERROR`` events count as errors and as
fatal (dash.js raises them for what it gave up on). ``evaluate(log, player)``
takes that player's entries and the driver's ``screenshot``/``stopped``/``skipped``, which
concern the whole page. :func:`evaluate_failover` measures the redundant player through the
kill -9 of the encoder it played from:

playing from
    The encoder whose server served the last fragment the player loaded before the kill (the
    page logs every ``FRAG_LOADED`` with its URL; the driver's ``variants`` entry maps each
    encoder to its server's URL).
switch
    From the kill to the first playlist or fragment the player loaded from another encoder.
sequence gaps
    As above, over the whole playback.
differing fragments
    Fragments loaded from an encoder whose copy of that segment is not the majority's bytes
    (the caller's ``holds_reference``, from the segment files): pictures the viewer got that
    another encoder would have placed differently.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from meshenc.report.verify import rung_pixels

__all__ = [
    "CHANNEL_PLAYER",
    "DASH_PLAYER",
    "MAX_PROGRESS_GAP_S",
    "ORIGIN_PLAYER",
    "PLAYER_DIR",
    "PLAYER_LOG",
    "REDUNDANT_PLAYER",
    "SCREENSHOT_NAME",
    "PlaybackResult",
    "PlayerError",
    "PlayerFailover",
    "evaluate",
    "evaluate_failover",
    "load_playback",
    "read_log",
]

PLAYER_DIR = "player"
"""The player's folder inside the run folder."""
PLAYER_LOG = "log.jsonl"
SCREENSHOT_NAME = "screenshot.png"
#: The page's name of each player (its log entries carry it): the origin's media playlist, and
#: the master playlist of redundant encoders.
ORIGIN_PLAYER = "origin"
REDUNDANT_PLAYER = "redundant"
#: dash.js on a DASH manifest (``--format cmaf``).
DASH_PLAYER = "dash"
#: hls.js on a placed ladder's channel master (every rung of channel ``0``).
CHANNEL_PLAYER = "channel"
#: hls.js on the same master over a constrained link, choosing rungs by its own rate
#: adaptation (``meshenc up --abr-link-kbps``).
ABR_PLAYER = "abr"
#: Driver entries about the whole page, whichever player.
_PAGE_KINDS = frozenset({"skipped", "screenshot", "stopped"})
#: Fragments listed around a kill: from this many seconds before it to this many after.
AROUND_KILL_S = (6.0, 12.0)
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
    #: Which player of the page (its log entries' ``player``).
    player: str = ORIGIN_PLAYER
    url: str | None = None
    browser: str | None = None
    #: The player library and its version: ``hls.js`` or ``dash.js``.
    engine: str = "hls.js"
    engine_version: str | None = None
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
    #: Video fragments loaded, and those of them more than one past every number loaded before.
    loaded_fragments: int = 0
    sequence_gaps: int = 0
    discontinuities: int = 0
    samples: int = 0
    dropped_frames: int | None = None
    shown_frames: int | None = None
    screenshot: str | None = None
    stop_reason: str | None = None
    #: The page stopped answering before the run ended (the browser died): the log ends there.
    lost: bool = False
    #: Of a master over rungs: the rung folders its video fragments came from, in the order
    #: first loaded, and the level changes completed after start-up (hls.js
    #: ``LEVEL_SWITCHED``).
    rungs: tuple[str, ...] = ()
    switches: int = 0
    #: The rung of every video fragment loaded, in order (where a player chose, what it chose).
    rung_loads: tuple[str, ...] = ()

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
            and not self.sequence_gaps
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
            return f"{self._label}: skipped ({self.skipped})"
        if not self.started:
            return f"{self._label}: never started playing, {len(self.errors)} errors"
        gap = "—" if self.longest_gap_s is None else f"{self.longest_gap_s:.2f} s"
        parts = [
            f"start-up {self.startup_s:.1f} s",
            f"{len(self.stalls)} stalls",
            f"{len(self.errors)} errors",
            f"longest gap {gap}",
            f"played {self.played_s:.1f} s in {self.wall_s:.1f} s",
            f"{self.fragments} fragments"
            if self.fragments or not self.loaded_fragments
            else f"{self.loaded_fragments} fragments loaded",
        ]
        if len(self.rungs) > 1:
            parts.append(f"{self.switches} rung switches over {len(self.rungs)} rungs")
        if self.lost:
            parts.append("the browser was lost")
        for count, what in (
            (self.stalled_events, "stalled events"),
            (self.seeks, "seeks"),
            (self.skipped_fragments, "skipped fragments"),
            (self.sequence_gaps, "sequence gaps"),
            (self.discontinuities, "discontinuities"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return f"{self._label}: " + ", ".join(parts)

    @property
    def _label(self) -> str:
        return "player" if self.player == ORIGIN_PLAYER else f"player ({self.player})"

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "smooth": self.smooth,
            "verdict": self.verdict,
            "skipped": self.skipped,
            "player": self.player,
            "url": self.url,
            "browser": self.browser,
            "engine": self.engine,
            "engine_version": self.engine_version,
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
            "loaded_fragments": self.loaded_fragments,
            "sequence_gaps": self.sequence_gaps,
            "discontinuities": self.discontinuities,
            "samples": self.samples,
            "dropped_frames": self.dropped_frames,
            "shown_frames": self.shown_frames,
            "screenshot": self.screenshot,
            "stop_reason": self.stop_reason,
            "lost": self.lost,
            "rungs": list(self.rungs),
            "switches": self.switches,
            "rung_loads": list(self.rung_loads),
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


def _entries(log: Iterable[Mapping[str, Any]], player: str) -> list[Mapping[str, Any]]:
    """One player's entries and the page's, in time order."""
    return sorted(
        (
            e
            for e in log
            if isinstance(e.get("t"), int | float)
            and (e.get("kind") in _PAGE_KINDS or e.get("player", ORIGIN_PLAYER) == player)
        ),
        key=lambda e: float(e["t"]),
    )


def _skips(under_playhead: list[int], loaded: list[int]) -> int:
    """How often the fragment under the playhead (hls.js ``FRAG_CHANGED``) went back, or
    forward past a fragment that was never loaded.

    The same number again is the segment under the playhead replaced by another rung's copy
    of it (hls.js on a rung switch), not a skip. Nor is a step past fragments that were all
    loaded: hls.js names the fragment under the playhead from a timer, and on a busy machine
    its check can miss one while the playhead plays through it (seen in a run whose playhead
    advanced evenly, with no seek, through a fragment loaded a few seconds before and never
    named). Whether the playhead itself jumped, the seeks, stalls and the longest gap say.
    """
    seen = set(loaded)
    return sum(
        b < a or any(sn not in seen for sn in range(a + 1, b))
        for a, b in itertools.pairwise(under_playhead)
    )


def evaluate(log: Iterable[Mapping[str, Any]], player: str = ORIGIN_PLAYER) -> PlaybackResult:
    """The figures of one player of a playback log, entries in the order they were written."""
    entries = _entries(log, player)
    values: dict[str, Any] = {"player": player}
    for entry in entries:
        kind = entry.get("kind")
        if kind == "skipped":
            return PlaybackResult(
                skipped=str(entry.get("reason", "no reason given")), player=player
            )
        if kind == "started":
            values.update(url=entry.get("url"), browser=entry.get("browser"))
        elif kind == "screenshot":
            values["screenshot"] = entry.get("path")
        elif kind == "stopped":  # the first reason: a browser that died before the run ended
            values.setdefault("stop_reason", entry.get("reason"))
            values["lost"] = values.get("lost", False) or bool(entry.get("lost"))
        elif kind == "load" and "loaded_at" not in values:
            values.update(
                loaded_at=entry["t"],
                engine=str(entry.get("engine", "hls.js")),
                engine_version=entry.get("version", entry.get("hls")),
            )
    errors = tuple(
        _error(e)
        for e in entries
        if e.get("kind") == "error" or (e.get("kind") == "media" and e.get("event") == "error")
    )
    playing = _started(entries)
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
    quality = [e for e in after if e.get("kind") == "sample" and e.get("frames") is not None]
    loaded_sns = [
        int(e["sn"])
        for e in entries
        if e.get("kind") == "loaded"
        and isinstance(e.get("sn"), int)
        and e.get("media", "video") == "video"
    ]
    loads = _rung_loads(entries)
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
        skipped_fragments=_skips(fragments, loaded_sns),
        loaded_fragments=len(loaded_sns),
        sequence_gaps=len(_sequence_gaps(loaded_sns)),
        discontinuities=len(discontinuities - {0}),
        samples=len(samples),
        dropped_frames=int(quality[-1]["dropped"]) if quality else None,
        shown_frames=int(quality[-1]["frames"]) if quality else None,
        rungs=tuple(dict.fromkeys(loads)),
        rung_loads=loads,
        switches=_switches(after),
        **values,
    )


def _switches(entries: Sequence[Mapping[str, Any]]) -> int:
    """Level switches completed: changes of level between consecutive ``switched`` entries
    (hls.js names the level it starts on, and may name one again)."""
    levels = [e.get("level") for e in entries if e.get("kind") == "switched"]
    return sum(a != b for a, b in itertools.pairwise(levels))


def _rung_loads(entries: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The rung folder (``<W>x<H>``) of every video fragment loaded from one, in order."""
    found = []
    for entry in entries:
        url = entry.get("url")
        if entry.get("kind") == "loaded" and entry.get("media", "video") == "video" and url:
            folder = PurePosixPath(urlsplit(str(url)).path).parent.name
            if rung_pixels(folder):
                found.append(folder)
    return tuple(found)


def _sequence_gaps(numbers: Iterable[int]) -> tuple[int, ...]:
    """The numbers, in loading order, more than one past every number before them."""
    highest: int | None = None
    gaps = []
    for sn in numbers:
        if highest is not None and sn > highest + 1:
            gaps.append(sn)
        highest = sn if highest is None else max(highest, sn)
    return tuple(gaps)


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


def load_playback(out_dir: Path, player: str = ORIGIN_PLAYER) -> PlaybackResult | None:
    """The figures of one player of a run folder's playback log; None when the run kept no
    log, or (but for the origin's player, which says why it was skipped) that player never
    ran."""
    path = Path(out_dir) / PLAYER_DIR / PLAYER_LOG
    if not path.is_file():
        return None
    log = read_log(path)
    if player != ORIGIN_PLAYER and not any(
        e.get("kind") == "load" and e.get("player") == player for e in log
    ):
        return None
    return evaluate(log, player)


@dataclass(frozen=True, slots=True)
class LoadedFragment:
    """A fragment the player loaded: when (seconds from the kill), its number, from whom, and
    whether that encoder's copy holds the segment's reference bytes (None: unknown)."""

    after_kill_s: float
    sn: int
    encoder: str | None
    holds_reference: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "after_kill_s": self.after_kill_s,
            "sn": self.sn,
            "encoder": self.encoder,
            "holds_reference": self.holds_reference,
        }


@dataclass(frozen=True, slots=True)
class PlayerFailover:
    """The redundant player through the kill -9 of an encoder (see the module docstring)."""

    killed: str
    killed_at: float
    playing_from: str | None
    switched_to: str | None
    switch_ms: float | None
    fragments: tuple[LoadedFragment, ...]
    sequence_gaps: tuple[int, ...]
    errors: tuple[PlayerError, ...]
    #: Every fragment of the playback whose copy is not the reference (see the module doc).
    differing: tuple[LoadedFragment, ...] = ()

    @property
    def on_killed(self) -> bool:
        """Whether the player was playing from the encoder that was killed."""
        return self.playing_from == self.killed

    @property
    def line(self) -> str:
        if not self.on_killed:
            return (
                f"redundant player: on {self.playing_from or 'no encoder'} when {self.killed} "
                "was killed: no failover to measure"
            )
        if self.switch_ms is None:
            return f"redundant player: never left {self.killed} after its kill"
        gaps = f"{len(self.sequence_gaps)} sequence gaps" if self.sequence_gaps else "no gap"
        return (
            f"redundant player: {self.killed} killed, switched to {self.switched_to} in "
            f"{self.switch_ms:.0f} ms, {len(self.errors)} errors meanwhile "
            f"({sum(e.fatal for e in self.errors)} fatal), {gaps}, "
            f"{len(self.differing)} fragments not the majority's bytes"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "killed": self.killed,
            "killed_at": self.killed_at,
            "playing_from": self.playing_from,
            "on_killed": self.on_killed,
            "switched_to": self.switched_to,
            "switch_ms": self.switch_ms,
            "fragments": [f.to_json() for f in self.fragments],
            "sequence_gaps": list(self.sequence_gaps),
            "errors": [e.to_json() for e in self.errors],
            "differing_fragments": [f.to_json() for f in self.differing],
        }


def _variants(entries: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Encoder → its server's base URL, from the driver's ``variants`` entries."""
    found: dict[str, str] = {}
    for entry in entries:
        if entry.get("kind") == "variants" and isinstance(entry.get("encoders"), dict):
            found.update({str(k): str(v).rstrip("/") for k, v in entry["encoders"].items()})
    return found


def _encoder_of(url: object, variants: Mapping[str, str]) -> str | None:
    if not isinstance(url, str):
        return None
    return next((name for name, base in variants.items() if url.startswith(base + "/")), None)


def evaluate_failover(
    log: Iterable[Mapping[str, Any]],
    kills: Iterable[tuple[float, str]],
    player: str = REDUNDANT_PLAYER,
    holds_reference: Callable[[int, str], bool | None] | None = None,
) -> PlayerFailover | None:
    """The player through the kill of the encoder it played from: the first kill of that
    encoder's, else the first kill (then ``on_killed`` is False). ``holds_reference(sn,
    encoder)``: whether that encoder's copy of segment ``sn`` is the majority's bytes. None: no
    kill, or the player never loaded a fragment."""
    entries = _entries(log, player)
    variants = _variants(entries)
    loaded = [
        (float(e["t"]), int(e["sn"]), _encoder_of(e.get("url"), variants))
        for e in entries
        if e.get("kind") == "loaded" and isinstance(e.get("sn"), int)
    ]
    kills = sorted(kills)
    if not kills or not loaded:
        return None

    def source_at(t: float) -> str | None:
        before = [encoder for at, _, encoder in loaded if at <= t]
        return before[-1] if before else None

    killed_at, killed = next(((t, e) for t, e in kills if source_at(t) == e), kills[0])
    after = [
        (float(e["t"]), _encoder_of(e.get("url"), variants))
        for e in entries
        if e.get("kind") in ("loaded", "playlist") and float(e["t"]) > killed_at
    ]
    switch = next(((t, enc) for t, enc in after if enc is not None and enc != killed), None)
    until = switch[0] if switch is not None else math.inf
    earliest, latest = AROUND_KILL_S
    fragments = [
        LoadedFragment(
            round(t - killed_at, 3),
            sn,
            encoder,
            None if holds_reference is None or encoder is None else holds_reference(sn, encoder),
        )
        for t, sn, encoder in loaded
    ]
    return PlayerFailover(
        killed=killed,
        killed_at=killed_at,
        playing_from=source_at(killed_at),
        switched_to=None if switch is None else switch[1],
        switch_ms=None if switch is None else (switch[0] - killed_at) * 1000.0,
        fragments=tuple(f for f in fragments if -earliest <= f.after_kill_s <= latest),
        differing=tuple(f for f in fragments if f.holds_reference is False),
        sequence_gaps=_sequence_gaps([sn for _, sn, _ in loaded]),
        errors=tuple(
            _error(e)
            for e in entries
            if e.get("kind") == "error" and killed_at <= float(e["t"]) <= until
        ),
    )


def _started(entries: Sequence[Mapping[str, Any]]) -> float | None:
    """When playback started: the last ``playing`` event before the first sample whose
    position is past the first ``playing``'s (the first ``playing`` when no sample shows
    progress); None without any."""
    playing = [e for e in entries if e.get("kind") == "media" and e.get("event") == "playing"]
    if not playing:
        return None
    first = min(playing, key=lambda e: float(e["t"]))
    origin = float(first.get("current", 0.0))
    moved = next(
        (
            e["t"]
            for e in entries
            if e.get("kind") == "sample"
            and e["t"] >= first["t"]
            and float(e.get("current", 0.0)) > origin
        ),
        None,
    )
    if moved is None:
        return float(first["t"])
    return float(max(e["t"] for e in playing if e["t"] <= moved))
