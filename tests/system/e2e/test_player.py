"""A real player in a real browser through ``meshenc up``'s faults: headless Chromium plays the
origin's stream with hls.js while the segment leader is killed with kill -9 and an encoder
joins (the session's faulted run, see conftest), and the origin's recording of the whole run
decodes as one continuous stream. Skips, saying why, where chromium or hls.js is missing
(``make test`` installs both)."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageStat

from meshenc.report.playback import MAX_PROGRESS_GAP_S, PLAYER_DIR, SCREENSHOT_NAME
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
