"""An encoder's output folder over HTTP (``--serve-output``), over real HTTP on 127.0.0.1, with
the headers checked against the real nginx origin serving the same files."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError

from meshenc.local.origin import OriginProcess
from meshenc.local.ports import free_ports
from services.encoder.media.serve import OutputServeError, OutputServer
from services.encoder.settings import EncoderSettings

FILES = {
    "index.m3u8": b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n",
    "manifest.mpd": b"<MPD/>",
    "init.mp4": b"\x00\x00\x00\x08ftyp",
    "seg-000000000007.ts": os.urandom(200_000),
    "seg-000000000007.m4s": os.urandom(1000),
    "notes.txt": b"other",
}
HEADERS = (
    "Content-Type",
    "Cache-Control",
    "Access-Control-Allow-Origin",
    "Access-Control-Expose-Headers",
)


def request(
    url: str, method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request (errors included)."""
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5.0) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def raw_status(port: int, target: str) -> int:
    """The status of a GET of ``target`` sent as is (no client normalises the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "e0"
    out.mkdir()
    for name, data in FILES.items():
        (out / name).write_bytes(data)
    (out / "sub").mkdir()
    (tmp_path / "secret.ts").write_bytes(b"outside")
    (out / "link.ts").symlink_to(tmp_path / "secret.ts")
    return out


@pytest.mark.asyncio
async def test_serves_the_files_read_only_with_the_origins_headers(folder: Path) -> None:
    server = OutputServer(folder, "127.0.0.1:0")
    port = await server.start()
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        with OriginProcess() as origin:
            for name, data in FILES.items():
                status, _, _ = await asyncio.to_thread(request, f"{origin.url}/{name}", "PUT", data)
                assert status in (201, 204)
            for name, data in FILES.items():
                status, headers, body = await asyncio.to_thread(request, f"{server.url}/{name}")
                assert (status, body) == (200, data), name
                _, expected, _ = await asyncio.to_thread(request, f"{origin.url}/{name}")
                ours = {h: headers.get(h) for h in HEADERS}
                assert ours == {h: expected.get(h) for h in HEADERS}, name
        status, headers, body = await asyncio.to_thread(
            request, f"{server.url}/seg-000000000007.ts", "HEAD"
        )
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == str(len(FILES["seg-000000000007.ts"]))
        for missing in ("nothing.ts", "sub", "link.ts", ""):
            status, headers, _ = await asyncio.to_thread(request, f"{server.url}/{missing}")
            assert status == 404, missing
            assert headers["Access-Control-Allow-Origin"] == "*"
        for target in (
            "/../secret.ts",
            "/sub/../../secret.ts",
            "/%2e%2e/secret.ts",
            "//etc/passwd",
        ):
            assert await asyncio.to_thread(raw_status, port, target) == 404, target
        for method in ("PUT", "DELETE", "POST", "OPTIONS"):
            status, headers, _ = await asyncio.to_thread(
                request,
                f"{server.url}/index.m3u8",
                method,
                b"x" if method in ("PUT", "POST") else None,
            )
            assert status == 405, method
            assert headers["Allow"] == "GET, HEAD"
        assert (folder / "index.m3u8").read_bytes() == FILES["index.m3u8"]
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_a_taken_port_is_a_clear_error(folder: Path) -> None:
    """In the server, and in a real encoder process: one line, status 1, before it runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_ports(1)[0]))
        taken.listen()
        port = taken.getsockname()[1]
        server = OutputServer(folder, f"127.0.0.1:{port}")
        with pytest.raises(OutputServeError, match="cannot serve the output on"):
            await server.start()
        command = [
            sys.executable, "-m", "meshenc", "encoder", "--insecure", "--id", "e",
            "--out", str(folder), "--listen", "127.0.0.1:0",
            "--serve-output", f"127.0.0.1:{port}",
        ]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60.0
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot serve the output on '127.0.0.1:{port}'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("listen", ["nowhere", "127.0.0.1:99999", "bad host:80", ""])
def test_a_bad_address_is_refused_by_the_settings(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ValidationError, match="serve-output listen"):
        EncoderSettings(id="e", out=tmp_path, serve_output=listen)
