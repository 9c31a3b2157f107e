"""A real player in a real browser through ``meshenc up``'s faults: headless Chromium plays the
origin's stream with hls.js while an operator's change to a smaller picture takes effect, the
segment leader is killed with kill -9 and an encoder joins (the session's faulted run, see
conftest), and the origin's recording of the whole run
decodes as one continuous stream. A second player on the same page plays the master playlist
of redundant encoders (each encoder's own server) from the encoder that is killed, and fails
over to another. Skips, saying why, where chromium or hls.js is missing (``make test``
installs both)."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageStat

from meshenc.local.master import REDUNDANT_NAME
from meshenc.report.playback import (
    MAX_PROGRESS_GAP_S,
    ORIGIN_PLAYER,
    PLAYER_DIR,
    PLAYER_LOG,
    SCREENSHOT_NAME,
    read_log,
)
from meshenc.report.recording import check_recording
from meshenc.report.verify import ORIGIN_DIR

from .support import UpRun

pytestmark = pytest.mark.slow


@pytest.fixture
def played(faulted_run: UpRun) -> UpRun:
    if faulted_run.player_skipped is not None:
        pytest.skip(f"no browser player here: {faulted_run.player_skipped}")
    assert faulted_run.returncode == 0, faulted_run.output
    return faulted_run


def test_the_browser_plays_through_the_kill_and_the_join_without_a_stall(played: UpRun) -> None:
    summary = json.loads((played.out / "summary.json").read_text())
    playback = summary["playback"]
    print(playback["line"])
    assert playback["skipped"] is None
    assert playback["startup_s"] is not None, "the player never started playing"
    assert playback["errors"] == 0, playback["error_list"]
    assert playback["stalls"] == 0, playback["stall_times"]
    assert playback["stalled_events"] == 0
    assert playback["seeks"] == 0 and playback["skipped_fragments"] == 0
    assert playback["discontinuities"] == 0
    # Progress every sample: no gap longer than the bound (sampling 0.25 s; a stall waits for
    # a 2 s segment), and as many seconds played as went by.
    assert playback["longest_gap_s"] <= MAX_PROGRESS_GAP_S
    assert playback["wall_s"] >= 15.0, "too short a playback to judge"
    assert abs(playback["played_s"] - playback["wall_s"]) <= MAX_PROGRESS_GAP_S
    assert playback["smooth"]
    # The kill -9 of the leader and the join happened while the browser played.
    watched = {w["kind"]: w["during_playback"] for w in summary["watched"]}
    assert watched == {"killed": True, "joined": True}, summary["watched"]
    # And it played segments from both sides of the operator's size change (a fragment's
    # sequence number is its segment's).
    (switch,) = summary["size_switches"]
    log = read_log(played.out / PLAYER_DIR / PLAYER_LOG)
    fragments = [
        e["sn"]
        for e in log
        if e.get("kind") == "fragment" and e.get("player", ORIGIN_PLAYER) == ORIGIN_PLAYER
    ]
    assert min(fragments) < switch["segment"] <= max(fragments), (switch, fragments)
    assert playback["line"] in played.output

    shot = played.out / PLAYER_DIR / SCREENSHOT_NAME
    with Image.open(shot) as image:
        assert image.format == "PNG"
        picture = image.convert("RGB")
    # Not blank: the test pattern's colour bars and the page's text.
    assert len(picture.getcolors(maxcolors=1 << 20) or ()) > 20
    spread = ImageStat.Stat(picture).stddev
    assert min(spread) > 20.0, f"the screenshot looks blank (channel spread {spread})"
    page = (played.out / "report.html").read_text()
    assert f'src="{PLAYER_DIR}/{SCREENSHOT_NAME}"' in page


def test_the_origins_recording_decodes_as_one_continuous_stream(played: UpRun) -> None:
    check = check_recording(played.out / ORIGIN_DIR)
    assert check is not None
    print(check.line)
    assert check.continuous, check.to_json()
    assert check.video_frames >= 20 * 60, "the recording is too short"
    assert check.audio_frames > 0
    assert check.worst_audio_ticks <= 2
    summary = json.loads((played.out / "summary.json").read_text())
    assert summary["recording"]["continuous"]
    assert check.line in played.output


def test_the_redundant_player_fails_over_from_the_killed_encoder_without_a_stall(
    played: UpRun,
) -> None:
    summary = json.loads((played.out / "summary.json").read_text())
    redundant = summary["redundant"]
    assert redundant is not None, "no player of the master playlist ran"
    failover = redundant["failover"]
    print(redundant["line"])
    print(failover and failover["line"])
    assert redundant["startup_s"] is not None, "the redundant player never started playing"
    assert redundant["stalls"] == 0, redundant["stall_times"]
    assert redundant["fatal_errors"] == 0, redundant["error_list"]
    assert redundant["seeks"] == 0 and redundant["skipped_fragments"] == 0
    assert redundant["longest_gap_s"] <= MAX_PROGRESS_GAP_S
    assert failover is not None, "no kill while the redundant player played"
    # It played from the encoder that was killed, and went on from another one.
    assert failover["on_killed"], failover
    assert failover["switched_to"] not in (None, failover["killed"]), failover
    assert failover["switch_ms"] is not None
    # Every segment number once, none missing: the encoders number alike.
    assert failover["sequence_gaps"] == [], failover["sequence_gaps"]
    after = [f for f in failover["fragments"] if f["after_kill_s"] > 0]
    assert after, "no fragment loaded after the kill"
    assert all(f["encoder"] not in (None, failover["killed"]) for f in after), after
    assert failover["line"] in played.output

    # The master playlist the origin served: each encoder's own playlist, one set of
    # attributes, the killed encoder no longer listed; the page was told the same servers.
    lines = (played.out / ORIGIN_DIR / REDUNDANT_NAME).read_text().splitlines()
    assert lines[0] == "#EXTM3U"
    infs = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    uris = [line for line in lines if line and not line.startswith("#")]
    # (At the end it lists whoever vouches then: the killed encoder's partner and the joiner
    # when the mesh is locked; at least the one the player went on from.)
    assert len(infs) == len(uris) >= 1 and len(set(infs)) == 1, lines
    assert 'CODECS="avc1.' in infs[0] and "mp4a.40.2" in infs[0] and "RESOLUTION=320x180" in infs[0]
    variants = next(
        e["encoders"]
        for e in read_log(played.out / PLAYER_DIR / PLAYER_LOG)
        if e["kind"] == "variants"
    )
    assert variants[failover["killed"]] + "/index.m3u8" not in uris
    assert set(uris) <= {f"{url}/index.m3u8" for url in variants.values()}
