"""The player's figures from scripted playback logs: smooth playback, a stall, an hls.js error,
a frozen position, a skipped fragment, a discontinuity, a skipped player, a cut log line; and
the redundant player beside the origin's, through the kill of the encoder it played from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshenc.report.playback import (
    MAX_PROGRESS_GAP_S,
    ORIGIN_PLAYER,
    PLAYER_DIR,
    PLAYER_LOG,
    REDUNDANT_PLAYER,
    evaluate,
    evaluate_failover,
    load_playback,
    read_log,
)

T0 = 1_800_000_000.0
"""Wall time the page loads (Unix seconds)."""


def scripted(
    seconds: float = 20.0,
    *,
    frozen: tuple[float, float] | None = None,
    extra: list[dict[str, Any]] | None = None,
    sns: list[int] | None = None,
) -> list[dict[str, Any]]:
    """A log: load at T0, waiting, seek to the live edge, playing at T0+1, a sample every
    0.25 s advancing with the wall clock (not during ``frozen``, wall seconds after playing),
    a fragment every 2 s, plus ``extra`` entries."""
    start = T0 + 1.0
    entries: list[dict[str, Any]] = [
        {"kind": "started", "t": T0 - 0.5, "url": "http://o/index.m3u8", "browser": "156"},
        {"kind": "load", "t": T0, "url": "http://o/index.m3u8", "hls": "1.7.4"},
        {"kind": "media", "t": T0 + 0.1, "event": "waiting", "current": 0},
        {"kind": "media", "t": T0 + 0.5, "event": "seeking", "current": 14.0},
        {"kind": "playlist", "t": T0 + 0.2, "first": 1, "last": 10, "discontinuities": [0]},
        {"kind": "media", "t": start, "event": "playing", "current": 14.0},
    ]
    position, previous = 14.0, 0.0
    for i in range(int(seconds / 0.25) + 1):
        elapsed = i * 0.25
        if frozen is None or not frozen[0] < elapsed <= frozen[1]:
            position += elapsed - previous
        previous = elapsed
        entries.append({"kind": "sample", "t": start + elapsed, "current": position})
    for i, sn in enumerate(sns if sns is not None else range(7, 7 + int(seconds / 2))):
        entries.append({"kind": "fragment", "t": start + 2 * i, "sn": sn, "cc": 0})
    entries.append({"kind": "stopped", "t": start + seconds + 0.1, "reason": "the run ended"})
    return entries + (extra or [])


def test_smooth_playback() -> None:
    result = evaluate(scripted())
    assert result.smooth and result.verdict == "smooth", result
    assert result.startup_s == pytest.approx(1.0)
    assert not result.stalls and not result.errors and result.seeks == 0
    assert result.longest_gap_s == pytest.approx(0.25)
    assert result.played_s == pytest.approx(20.0) and result.wall_s == pytest.approx(20.0)
    assert (result.fragments, result.skipped_fragments, result.discontinuities) == (10, 0, 0)
    assert result.playing_at(T0 + 10) and not result.playing_at(T0 + 0.5)
    assert (result.browser, result.engine_version, result.stop_reason) == (
        "156",
        "1.7.4",
        "the run ended",
    )
    assert result.line.startswith("player: start-up 1.0 s, 0 stalls, 0 errors")
    assert json.loads(json.dumps(result.to_json()))["smooth"] is True


def test_rung_switches_of_a_channel_master_are_counted_by_the_rungs_fragments_came_from() -> None:
    """The channel player's log: video fragments from two rung folders (audio and a master
    that is no rung's folder left out) and the level switches hls.js completed."""
    base = "http://o/0/{}/seg-{:012d}.m4s"
    loaded = [
        {"kind": "loaded", "t": T0 + 1 + i, "sn": 7 + i, "media": "video",
         "url": base.format("192x108" if i < 2 or i > 3 else "96x54", 7 + i)}
        for i in range(6)
    ]  # fmt: skip
    loaded.append({"kind": "loaded", "t": T0 + 2, "sn": 7, "media": "audio",
                   "url": base.format("320x180", 7)})  # fmt: skip
    # The level it starts on, a switch, the same level named again, a switch back; one before
    # playing counts for nothing.
    levels = [(0.5, 1), (1.5, 0), (4.0, 1), (5.0, 1), (8.0, 0)]
    switched = [{"kind": "switched", "t": T0 + t, "level": level} for t, level in levels]
    result = evaluate(scripted(extra=[*loaded, *switched]))
    assert result.smooth
    assert result.rungs == ("192x108", "96x54") and result.switches == 2
    assert "2 rung switches over 2 rungs" in result.line
    assert json.loads(json.dumps(result.to_json()))["rungs"] == ["192x108", "96x54"]
    # Every video fragment's rung, in the order loaded: what a player choosing by itself chose.
    assert result.rung_loads == ("192x108", "192x108", "96x54", "96x54", "192x108", "192x108")
    plain = evaluate(scripted(extra=switched[:2]))
    assert plain.rungs == () and "rung switches" not in plain.line
    # The segment under the playhead replaced by the other rung's copy of it: not a skip.
    assert evaluate(scripted(sns=[7, 8, 9, 9, 10, 11, 12, 13, 14, 15])).skipped_fragments == 0
    assert evaluate(scripted(sns=[7, 8, 10, 11])).skipped_fragments == 1
    assert evaluate(scripted(sns=[7, 8, 9, 8, 9])).skipped_fragments == 1  # back is a skip


def test_a_fragment_loaded_but_never_named_under_the_playhead_is_not_a_skip() -> None:
    """hls.js names the fragment under the playhead from a timer: on a busy machine it can
    miss one the playhead played through. Loaded, with the playhead moving evenly, it was
    played; one never loaded was skipped."""
    loaded = [
        {"kind": "loaded", "t": T0 + i * 0.5, "sn": sn, "media": "video", "url": f"s{sn}.m4s"}
        for i, sn in enumerate(range(7, 12))
    ]
    result = evaluate(scripted(sns=[7, 8, 10, 11], extra=loaded))
    assert result.skipped_fragments == 0 and result.smooth
    audio_only = [{**e, "media": "audio"} if e["sn"] == 9 else e for e in loaded]
    assert evaluate(scripted(sns=[7, 8, 10, 11], extra=audio_only)).skipped_fragments == 1


def test_a_waiting_event_after_start_up_is_a_stall() -> None:
    stall = {"kind": "media", "t": T0 + 9.0, "event": "waiting", "current": 22.0}
    result = evaluate(scripted(extra=[stall]))
    assert result.stalls == (T0 + 9.0,) and not result.smooth
    assert "1 stalls" in result.line
    # The waiting before the first `playing` (start-up) is not one.
    assert not evaluate(scripted()).stalls


def test_a_playing_taken_back_before_the_position_moved_is_still_start_up() -> None:
    """The element said ``playing`` and 5 ms later ``waiting`` (on a buffer of one segment),
    then ``playing`` again, all before its position first moved: the viewer saw start-up
    take a little longer, not a stall. Once the position has moved, a ``waiting`` is one."""
    start = T0 + 1.0
    early = [
        {"kind": "media", "t": start - 0.3, "event": "playing", "current": 14.0},
        {"kind": "media", "t": start - 0.295, "event": "waiting", "current": 14.0},
    ]
    result = evaluate(sorted(scripted(extra=early), key=lambda e: e["t"]))
    assert not result.stalls and result.smooth, result
    assert result.startup_s == pytest.approx(1.0)  # to the playing the position moved after
    late = {"kind": "media", "t": start + 0.3, "event": "waiting", "current": 14.3}
    in_order = sorted(scripted(extra=[*early, late]), key=lambda e: e["t"])
    assert evaluate(in_order).stalls == (start + 0.3,)


def test_any_hlsjs_error_counts_fatal_or_not() -> None:
    error = {
        "kind": "error",
        "t": T0 + 5,
        "fatal": False,
        "type": "mediaError",
        "details": "bufferStalledError",
        "reason": "low buffer",
    }
    result = evaluate(scripted(extra=[error]))
    (seen,) = result.errors
    assert (seen.fatal, seen.details) == (False, "bufferStalledError") and not result.smooth
    video = {"kind": "media", "t": T0 + 6, "event": "error", "current": 3.0, "detail": "3 x"}
    assert evaluate(scripted(extra=[video])).errors[0].fatal


def test_a_frozen_position_is_a_gap_in_progress() -> None:
    result = evaluate(scripted(frozen=(5.0, 6.5)))
    assert result.longest_gap_s == pytest.approx(1.75)  # last progress at 5.0, next at 6.75
    assert result.longest_gap_s is not None and result.longest_gap_s > MAX_PROGRESS_GAP_S
    assert not result.smooth
    assert result.played_s == pytest.approx(18.5)
    # Frozen until the end: the trailing time counts too.
    assert evaluate(scripted(frozen=(18.0, 30.0))).longest_gap_s == pytest.approx(2.0)


def test_seeks_skipped_fragments_and_discontinuities_are_not_smooth() -> None:
    seek = {"kind": "media", "t": T0 + 8, "event": "seeking", "current": 30.0}
    assert evaluate(scripted(extra=[seek])).seeks == 1
    skipped = evaluate(scripted(sns=[7, 8, 10, 11]))
    assert skipped.skipped_fragments == 1 and not skipped.smooth
    cc = {"kind": "playlist", "t": T0 + 9, "first": 5, "last": 14, "discontinuities": [0, 1]}
    result = evaluate(scripted(extra=[cc]))
    assert result.discontinuities == 1 and not result.smooth


def test_a_browser_lost_before_the_end_is_not_smooth() -> None:
    log = scripted(seconds=8.0)
    log[-1] = {
        "kind": "stopped",
        "t": T0 + 9.5,
        "reason": "the page stopped answering",
        "lost": True,
    }
    log.append({"kind": "stopped", "t": T0 + 30, "reason": "the run ended"})
    result = evaluate(log)
    assert result.lost and not result.smooth
    assert result.stop_reason == "the page stopped answering"
    assert "the browser was lost" in result.line


def test_never_playing_and_skipped() -> None:
    fatal = {
        "kind": "error",
        "t": T0 + 1,
        "fatal": True,
        "type": "networkError",
        "details": "manifestLoadError",
    }
    log = [e for e in scripted(extra=[fatal]) if e.get("event") != "playing"]
    result = evaluate(log)
    assert not result.started and not result.smooth
    assert result.line == "player: never started playing, 1 errors"
    skipped = evaluate([{"kind": "skipped", "t": T0, "reason": "--no-player"}])
    assert skipped.skipped == "--no-player" and skipped.line == "player: skipped (--no-player)"
    assert (skipped.verdict, result.verdict) == ("skipped", "not smooth")


def test_the_log_file(tmp_path: Path) -> None:
    folder = tmp_path / PLAYER_DIR
    folder.mkdir()
    lines = [json.dumps(e) for e in scripted()]
    (folder / PLAYER_LOG).write_text("\n".join([*lines, '{"kind": "sample", "t": 18', ""]))
    assert len(read_log(folder / PLAYER_LOG)) == len(lines)
    result = load_playback(tmp_path)
    assert result is not None and result.smooth
    assert load_playback(tmp_path / "elsewhere") is None


VARIANTS = {"e0": "http://127.0.0.1:1000", "e1": "http://127.0.0.1:1001"}
KILL = T0 + 11.0


def redundant(
    loads: list[tuple[float, int, str]], extra: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The origin's smooth log plus a redundant player's: its own smooth playback, the driver's
    ``variants`` entry, and a fragment loaded at each (seconds after T0, sn, encoder)."""
    own = [
        {**e, "player": REDUNDANT_PLAYER}
        for e in scripted()
        if e["kind"] not in ("stopped", "started")
    ]
    loaded = [
        {
            "kind": "loaded",
            "player": REDUNDANT_PLAYER,
            "t": T0 + at,
            "sn": sn,
            "url": f"{VARIANTS[encoder]}/seg-{sn:012d}.ts",
        }
        for at, sn, encoder in loads
    ]
    driver = {"kind": "variants", "player": REDUNDANT_PLAYER, "t": T0 - 1, "encoders": VARIANTS}
    return [*scripted(), driver, *own, *loaded, *(extra or [])]


SWITCH = [(5.0, 7, "e0"), (7.0, 8, "e0"), (9.0, 9, "e0"), (11.4, 10, "e1"), (13.0, 11, "e1")]


def test_the_redundant_player_switches_encoder_after_the_kill() -> None:
    error = {
        "kind": "error",
        "player": REDUNDANT_PLAYER,
        "t": KILL + 0.2,
        "fatal": False,
        "type": "networkError",
        "details": "levelLoadError",
        "url": "http://127.0.0.1:1000/index.m3u8",
    }
    stall = {"kind": "media", "player": REDUNDANT_PLAYER, "t": KILL + 1, "event": "waiting"}
    log = redundant(SWITCH, [error, stall])
    failover = evaluate_failover(log, [(KILL, "e0")], holds_reference=lambda sn, e: sn != 10)
    assert failover is not None
    assert failover.on_killed and failover.playing_from == "e0"
    assert failover.switched_to == "e1"
    assert failover.switch_ms == pytest.approx(400.0)
    assert failover.sequence_gaps == ()
    assert [e.details for e in failover.errors] == ["levelLoadError"]
    assert [(f.sn, f.encoder) for f in failover.differing] == [(10, "e1")]
    assert "switched to e1 in 400 ms" in failover.line
    assert [f.sn for f in failover.fragments] == [7, 8, 9, 10, 11]
    # Each player's figures are its own: the redundant player's stall and error are not the
    # origin's.
    assert evaluate(log, ORIGIN_PLAYER).smooth
    other = evaluate(log, REDUNDANT_PLAYER)
    assert len(other.stalls) == 1 and len(other.errors) == 1 and not other.smooth


def test_a_skipped_segment_a_player_on_another_encoder_and_no_switch() -> None:
    gap = evaluate_failover(redundant([*SWITCH[:3], (11.4, 11, "e1")]), [(KILL, "e0")])
    assert gap is not None and gap.sequence_gaps == (11,)
    elsewhere = evaluate_failover(redundant(SWITCH), [(KILL, "e1")])
    assert elsewhere is not None and not elsewhere.on_killed
    assert "no failover to measure" in elsewhere.line
    stuck = evaluate_failover(redundant(SWITCH[:3]), [(KILL, "e0")])
    assert stuck is not None and stuck.switch_ms is None and stuck.switched_to is None
    assert evaluate_failover(redundant(SWITCH), []) is None
    assert evaluate_failover(scripted(), [(KILL, "e0")]) is None


def test_the_log_file_of_two_players(tmp_path: Path) -> None:
    folder = tmp_path / PLAYER_DIR
    folder.mkdir()
    log = redundant(SWITCH)
    (folder / PLAYER_LOG).write_text("".join(json.dumps(e) + "\n" for e in log))
    assert load_playback(tmp_path) == evaluate(log)
    assert load_playback(tmp_path, REDUNDANT_PLAYER) == evaluate(log, REDUNDANT_PLAYER)
    (folder / PLAYER_LOG).write_text("".join(json.dumps(e) + "\n" for e in scripted()))
    assert load_playback(tmp_path, REDUNDANT_PLAYER) is None
