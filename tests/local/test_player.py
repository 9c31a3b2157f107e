"""The browser player on CMAF: headless Chromium plays one real encoder's live CMAF output,
straight from the encoder's own HTTP server (``meshenc encoder --format cmaf --serve-output``),
with hls.js (the HLS v7 playlist) and dash.js (the DASH manifest) side by side on one page.

Real parts throughout: the live test pattern with its AAC tone over UDP, a real encoder
process (alone: no mesh, so no lock to wait for), Debian's chromium, hls.js and dash.js as npm
pinned them. Skips, saying why, where chromium, hls.js or dash.js is missing (``make test``
installs them).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshenc.local.player import BrowserPlayer, find_dashjs, unavailable
from meshenc.local.ports import free_ports
from meshenc.report.playback import DASH_PLAYER, MAX_PROGRESS_GAP_S, evaluate, read_log
from services.encoder.media.segments import MPD_NAME, PLAYLIST_NAME
from tests.conftest import LiveSource

pytestmark = pytest.mark.slow

#: Seconds both players play once the encoder's playlist lists three segments.
PLAY_S = 6.0
GOP = 30
"""One-second segments: three are listed soon after the encoder starts."""


@pytest.fixture
def cmaf_encoder(tmp_path: Path, live_source: LiveSource) -> Iterator[tuple[str, Path]]:
    """One encoder writing CMAF and serving its folder; its base URL and folder."""
    grpc, served = free_ports(2)
    (source,) = live_source.start([""])
    folder = tmp_path / "e0"
    command = [
        sys.executable, "-m", "meshenc", "encoder", "--id", "e0",
        "--listen", f"127.0.0.1:{grpc}", "--out", str(folder), "--source", source,
        "--size", "160x96", "--gop", str(GOP), "--format", "cmaf",
        "--serve-output", f"127.0.0.1:{served}", "--insecure",
    ]  # fmt: skip
    with (tmp_path / "e0.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{served}", folder
    finally:
        process.kill()  # what it wrote is not judged here: no need to finish its segment
        process.wait()


def test_hlsjs_and_dashjs_play_an_encoders_live_cmaf_without_a_stall(
    tmp_path: Path, cmaf_encoder: tuple[str, Path]
) -> None:
    reason = unavailable() or (None if find_dashjs() else "dash.js is not installed")
    if reason is not None:
        pytest.skip(f"no browser player here: {reason}")
    url, folder = cmaf_encoder
    player = BrowserPlayer(tmp_path / "player", f"{url}/{PLAYLIST_NAME}")

    async def watch() -> float:
        try:
            await player.launch()
            assert await player.wait_for_stream(timeout=60.0), "the encoder served no playlist"
            await player.play({DASH_PLAYER: f"{url}/{MPD_NAME}"})
            started = time.time()
            await asyncio.sleep(PLAY_S)
            return started
        finally:
            await player.stop("the test ended")

    started = asyncio.run(watch())
    log = read_log(player.log_path)
    for name, engine in (("origin", "hls.js"), (DASH_PLAYER, "dash.js")):
        result = evaluate(log, name)
        print(result.line, result.engine, result.engine_version)
        assert result.engine == engine and result.engine_version
        assert result.startup_s is not None, f"{engine} never started playing"
        assert result.errors == (), result.errors
        assert result.stalls == () and result.stalled_events == 0, result.stalls
        assert result.seeks == 0 and result.sequence_gaps == 0
        assert result.loaded_fragments >= 3, f"{engine} loaded too few fragments"
        assert result.longest_gap_s is not None and result.longest_gap_s <= MAX_PROGRESS_GAP_S
        assert result.wall_s >= PLAY_S - 3.0, "too short a playback to judge"
        assert abs(result.played_s - result.wall_s) <= MAX_PROGRESS_GAP_S
        assert result.smooth
        # The fragments came from the encoder's own server, and are the files it wrote.
        urls = [
            e["url"] for e in log if e.get("player", "origin") == name and e["kind"] == "loaded"
        ]
        assert urls and all(u.startswith(url + "/seg-") for u in urls)
        assert all((folder / u.rsplit("/", 1)[1]).is_file() for u in urls)
    assert started > 0
