"""A real player in a real browser: headless Chromium playing the origin's stream with hls.js
(and, beside it, other players on the same page).

Theory of operation
-------------------
:class:`BrowserPlayer` runs Debian's ``chromium`` through Playwright (its wheel carries its
driver; the browser is the system's, never a downloaded one), headless, muted, with autoplay
allowed, without a GPU (``--disable-gpu``: software compositing, a little cheaper than the
emulated GPU on a machine that has none) and with ``--no-sandbox`` when the caller is root
(Chromium's sandbox refuses root). It takes about a tenth of one core playing a 320x180 or
640x360 stream, and runs at nice :data:`BROWSER_NICE` (through a two-line wrapper script): a
viewer watches from a machine of its own, so on the mesh's machine the browser should take
only the CPU the encoders leave (where the kernel schedules sessions as groups, it does not:
Playwright starts it in a session of its own, within which alone its nice value counts; see
``docs/demo.md``). Run as root, Chromium would raise its own media and compositor threads
to nice -8, ahead of the encoders; the wrapper drops ``CAP_SYS_NICE`` from its bounding set
(``setpriv``, util-linux) so that it cannot. The
page (``player.html`` beside this module) and the hls.js and dash.js bundles (``hls.min.js``
and ``dash.mediaplayer.min.js`` from npm, pinned by ``player/package-lock.json`` and installed
by ``make player-deps``) are served by a small HTTP server of the player's own on 127.0.0.1 (a
page on the loopback may read from the loopback; Chromium keeps pages from elsewhere off local
addresses); the streams come from the origin itself and the encoders' own servers (both answer
with ``Access-Control-Allow-Origin: *``).

The browser is launched on a blank page first (:meth:`BrowserPlayer.launch`: its start-up,
a burst of a third of a core, is then over before the encoders start). A viewer opens a stream
once it is announced: :meth:`BrowserPlayer.wait_for_stream` waits until the origin serves a
media playlist that lists :data:`MIN_SEGMENTS` segments (hls.js starts three segments behind
the live edge), then :meth:`BrowserPlayer.play` opens the page: one ``<video>`` for the origin's
playlist and one for each further stream it is given by player name
(:data:`~meshenc.report.playback.REDUNDANT_PLAYER`: hls.js on the master playlist of redundant
encoders; :data:`~meshenc.report.playback.DASH_PLAYER`: dash.js on a DASH manifest), started
a second apart (each player's start is a burst of CPU; four at once took a core from the
encoders for a second, and every encoder fell more than a second behind its input). Every
entry of the page's log names its player; :meth:`BrowserPlayer.current` asks which URL a
player loaded its last fragment from (which encoder it is on). The page keeps its own log (see
``player.html``); a task drains it every :data:`DRAIN_EVERY` seconds into ``log.jsonl`` in the
player's folder, so what happened until a crash of the browser is kept. The driver's own
entries (``started``, ``screenshot``, ``stopped``, or ``skipped`` with its reason) go to the
same file; :mod:`meshenc.report.playback` turns it into figures.

:func:`unavailable` says why no player can run here (None: it can), for ``meshenc up`` to say
so rather than skip silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import aiohttp

from meshenc.report.playback import (
    ORIGIN_PLAYER,
    PLAYER_LOG,
    SCREENSHOT_NAME,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Playwright, ViewportSize

__all__ = [
    "MIN_SEGMENTS",
    "BrowserPlayer",
    "find_chromium",
    "find_dashjs",
    "find_hlsjs",
    "unavailable",
    "write_skipped",
]

log = logging.getLogger("meshenc.player")

BROWSER_NICE: Final = 10
"""How much nicer than the run the browser is: it yields the CPU to the mesh it watches."""
MIN_SEGMENTS: Final = 3
"""Segments the origin's playlist lists before the page opens it."""
DRAIN_EVERY: Final = 1.0
PAGE_HTML: Final = Path(__file__).with_name("player.html")
#: Where ``make player-deps`` (``npm ci`` in ``player/``) puts hls.js, from the source tree.
HLSJS_BUNDLE: Final = (
    Path(__file__).resolve().parents[2] / "player/node_modules/hls.js/dist/hls.min.js"
)
#: The same for dash.js (its media player alone: no DRM, no offline), for DASH manifests.
DASHJS_BUNDLE: Final = (
    Path(__file__).resolve().parents[2]
    / "player/node_modules/dashjs/dist/modern/umd/dash.mediaplayer.min.js"
)
#: Debian's chromium: the binary itself (``/usr/bin/chromium`` is a wrapper script around it).
CHROMIUM_CANDIDATES: Final = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
_POLL: Final = 0.5
_VIEWPORT: Final[ViewportSize] = {"width": 672, "height": 720}


def find_chromium() -> Path | None:
    """Debian's chromium binary, or None."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return Path(found)
    return None


def find_hlsjs() -> Path | None:
    """The hls.js bundle ``make player-deps`` installed, or None."""
    return HLSJS_BUNDLE if HLSJS_BUNDLE.is_file() else None


def find_dashjs() -> Path | None:
    """The dash.js bundle ``make player-deps`` installed, or None."""
    return DASHJS_BUNDLE if DASHJS_BUNDLE.is_file() else None


def unavailable() -> str | None:
    """Why no browser player can run here; None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (the 'player' extra; make installs it)"
    if find_chromium() is None:
        return "chromium is not installed (scripts/ensure-system-deps.sh installs it)"
    if find_hlsjs() is None:
        return "hls.js is not installed in player/node_modules (make player-deps)"
    return None


def write_skipped(folder: Path, reason: str) -> None:
    """Record in the player's folder that no player ran, and why."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"kind": "skipped", "t": time.time(), "reason": reason}
    (folder / PLAYER_LOG).write_text(json.dumps(entry) + "\n", encoding="utf-8")


async def _playlist_ready(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the origin serves a media playlist listing at least MIN_SEGMENTS segments."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(url) as response:
            if response.status == 200:
                text = await response.text()
                listed = [line for line in text.splitlines() if line.startswith("#EXTINF")]
                return len(listed) >= MIN_SEGMENTS
    return False


class BrowserPlayer:
    """Headless Chromium playing ``playlist_url`` with hls.js; logs into ``folder``.

    ``await launch()``, ``await wait_for_stream()`` and ``await play()`` once each,
    ``await screenshot()`` whenever, ``await stop(reason)`` at the end (also after a failure).
    Nothing of the browser outlives ``stop``.
    """

    def __init__(
        self,
        folder: Path,
        playlist_url: str,
        *,
        chromium: Path | None = None,
        hlsjs: Path | None = None,
    ) -> None:
        chromium = chromium or find_chromium()
        hlsjs = hlsjs or find_hlsjs()
        if chromium is None or hlsjs is None:
            raise FileNotFoundError(unavailable() or "chromium or hls.js is missing")
        self.folder = Path(folder)
        self.playlist_url = playlist_url
        self.chromium = chromium
        self.hlsjs = hlsjs
        self.log_path = self.folder / PLAYER_LOG
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._page: Page | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._server: _PageServer | None = None
        self._stopped = False
        self._scratch: Path | None = None

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(e) + "\n" for e in entries)

    def note(self, kind: str, **fields: Any) -> None:
        """Add one driver entry to the log."""
        self._write([{"kind": kind, "t": time.time(), **fields}])

    async def wait_for_stream(self, timeout: float | None = None) -> bool:
        """Wait until the origin's playlist lists MIN_SEGMENTS segments (False: timed out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        client_timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while not await _playlist_ready(session, self.playlist_url):
                if deadline is not None and time.monotonic() > deadline:
                    return False
                await asyncio.sleep(_POLL)
        return True

    async def launch(self) -> None:
        """Start the browser on a blank page, so that its start-up is over before the mesh's."""
        from playwright.async_api import async_playwright  # noqa: PLC0415

        args = ["--autoplay-policy=no-user-gesture-required", "--disable-gpu"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=str(self._niced_chromium()),
            headless=True,
            args=args,
            # Ctrl-C goes to meshenc up, which stops the player in order and keeps its log.
            handle_sigint=False,
        )
        self._page = await self._browser.new_page(viewport=_VIEWPORT)

    async def play(self, more: Mapping[str, str] | None = None) -> None:
        """Open the page on the stream (after launch and wait_for_stream); ``more`` adds
        players to the page, by name (see the module docstring)."""
        if self._browser is None or self._page is None:
            raise RuntimeError("launch the browser first")
        self._server = _PageServer(self.hlsjs, find_dashjs())
        streams = {ORIGIN_PLAYER: self.playlist_url, **(more or {})}
        query = "&".join(f"{name}={quote(url, safe='')}" for name, url in streams.items())
        for name, url in streams.items():
            self.note("started", player=name, url=url, browser=self._browser.version)
        await self._page.goto(f"{self._server.url}/?{query}")
        self._drainer = asyncio.create_task(self._drain_forever(), name="player-log")

    def _niced_chromium(self) -> Path:
        """A script that runs chromium at BROWSER_NICE, unable to raise any of its threads."""
        self._scratch = Path(tempfile.mkdtemp(prefix="meshenc-player-"))
        script = self._scratch / "chromium"
        command = ["nice", "-n", str(BROWSER_NICE), str(self.chromium)]
        setpriv = shutil.which("setpriv")
        if os.geteuid() == 0 and setpriv:
            command = [setpriv, "--bounding-set=-sys_nice", *command]
        script.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@"\n')
        script.chmod(0o700)
        return script

    async def _drain(self) -> None:
        async with self._lock:
            if self._page is None:
                return
            entries = await self._page.evaluate("window.meshencPlayer.drain()")
            self._write(list(entries))

    async def _drain_forever(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_EVERY)
            try:
                await self._drain()
            except Exception as exc:  # the browser is gone: say so once, keep what we have
                self.note("stopped", reason=f"the page stopped answering: {exc}", lost=True)
                log.warning("player: the page stopped answering: %s", exc)
                return

    async def current(self, player: str) -> str | None:
        """The URL of the fragment ``player`` loaded last (None: none yet, or no page)."""
        if self._page is None:
            return None
        try:
            url = await self._page.evaluate("(name) => window.meshencPlayer.current(name)", player)
        except Exception as exc:
            log.warning("player: cannot ask the page: %s", exc)
            return None
        return url if isinstance(url, str) else None

    async def screenshot(self) -> Path | None:
        """A PNG of the playing page, ``screenshot.png`` in the player's folder."""
        if self._page is None:
            return None
        path = self.folder / SCREENSHOT_NAME
        try:
            await self._page.screenshot(path=str(path))
        except Exception as exc:
            log.warning("player: no screenshot: %s", exc)
            return None
        self.note("screenshot", path=SCREENSHOT_NAME)
        return path

    async def stop(self, reason: str) -> None:
        """Drain the page's log one last time, note why it stopped, close the browser.

        Only the first call does anything.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drainer
            self._drainer = None
            with contextlib.suppress(Exception):
                await self._drain()
        self._page = None
        self.note("stopped", reason=reason)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
            self._playwright = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


class _PageServer:
    """The player page and hls.js over HTTP on 127.0.0.1, from a thread; 404 for the rest."""

    def __init__(self, hlsjs: Path, dashjs: Path | None) -> None:
        files = {
            "/": (PAGE_HTML.read_bytes(), "text/html; charset=utf-8"),
            "/hls.min.js": (hlsjs.read_bytes(), "text/javascript"),
        }
        if dashjs is not None:
            files["/dash.mediaplayer.min.js"] = (dashjs.read_bytes(), "text/javascript")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, kind = files.get(self.path.split("?", 1)[0], (b"", ""))
                self.send_response(200 if kind else 404)
                self.send_header("Content-Type", kind or "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the page's own log says what matters."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="player-page", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
