"""Serving an encoder's own output folder over HTTP, read-only (``--serve-output``).

Theory of operation: an aiohttp server on the encoder's event loop answers ``GET`` and
``HEAD`` of the files in the output folder (segments, ``init.mp4``, ``index.m3u8``,
``manifest.mpd``) with the same headers as the origin: the publisher's content types
(:data:`~services.encoder.media.publish.CONTENT_TYPES`), ``Cache-Control: no-cache`` on
playlists and manifests, and ``Access-Control-Allow-Origin: *`` with
``Access-Control-Expose-Headers: Date`` on every answer, so a player or
a CDN can read each encoder directly and fail over between them (the master playlist of
redundant variants that ``meshenc up`` writes points at these servers). Anything but a plain
file inside the folder is ``404`` (names with ``..``, backslashes or NUL, absolute names and
symlinks out of the folder included); other methods are ``405``.

A file is read whole, in the loop, when asked for: the segment writer's files appear atomically
(written beside, then renamed), so a reader gets the old file or the new one, never half of
one; a segment is a few hundred kilobytes at most, read from the page cache in well under a
millisecond.
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Final

from aiohttp import web

from meshenc.wire.address import parse_address
from services.encoder.media.publish import CONTENT_TYPES, MANIFEST_SUFFIXES

__all__ = ["OutputServeError", "OutputServer"]

log = logging.getLogger("meshenc.encoder.serve")

ALLOWED_METHODS: Final = ("GET", "HEAD")
_OCTET_STREAM: Final = "application/octet-stream"
#: Any page may read the output, and its Date header (a DASH player without a UTCTiming element
#: sets its clock by the manifest's Date), as from the origin.
_CORS: Final = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Date"}


class OutputServeError(RuntimeError):
    """The output cannot be served at the address given (a taken port, an unknown host)."""


class OutputServer:
    """``folder`` over HTTP at ``listen`` (HOST:PORT; port 0: a free one). ``await start()``
    once, ``await close()`` at the end; :attr:`url` once started."""

    def __init__(self, folder: Path, listen: str) -> None:
        self.folder = Path(folder)
        self.listen = listen
        self.port: int | None = None
        app = web.Application()
        app.router.add_route("*", "/{name:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        if self.port is None:
            raise RuntimeError("the output server is not started")
        host = parse_address(self.listen, lowest_port=0)[0]
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Listen; returns the port (the kernel's choice when the listen port is 0).

        Raises:
            OutputServeError: the address cannot be served (a taken port).
        """
        host, port = parse_address(self.listen, lowest_port=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OutputServeError(f"cannot serve the output on {self.listen!r}: {exc}") from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("serving %s at %s", self.folder, self.url)
        return self.port

    async def close(self) -> None:
        await self._runner.cleanup()

    def _file(self, name: str) -> Path | None:
        """The plain file ``name`` inside the folder, or None."""
        parts = name.split("/")
        if (
            not name
            or name.startswith("/")
            or any(part in ("", ".", "..") for part in parts)
            or any(ch in "\\\x00" for ch in name)
        ):
            return None
        root = self.folder.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method not in ALLOWED_METHODS:
            return web.Response(
                status=405, text="405 method not allowed\n", headers={**_CORS, "Allow": "GET, HEAD"}
            )
        path = self._file(request.match_info["name"])
        try:
            body = None if path is None else path.read_bytes()
        except OSError:  # removed between the check and the read (the writer's window moved)
            body = None
        if path is None or body is None:
            return web.Response(status=404, text="404 not found\n", headers=_CORS)
        suffix = posixpath.splitext(path.name)[1]
        headers = {**_CORS, "Content-Type": CONTENT_TYPES.get(suffix, _OCTET_STREAM)}
        if suffix in MANIFEST_SUFFIXES:
            headers["Cache-Control"] = "no-cache"
        return web.Response(body=body, headers=headers)
