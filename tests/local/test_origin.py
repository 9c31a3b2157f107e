"""The local origin: the real nginx from Debian's package, with PUT over its WebDAV module.

Nothing is mocked: requests go over HTTP on 127.0.0.1 to the nginx process and the files are
checked on disk.
"""

from __future__ import annotations

import os
import signal
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshenc.local.origin import OriginNotInstalledError, OriginProcess


def put(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=5.0) as answer:
        return int(answer.status)


def get(url: str) -> tuple[bytes, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=5.0) as answer:
        return answer.read(), dict(answer.headers)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_put_then_get_gives_back_the_same_bytes(origin: OriginProcess) -> None:
    """A PUT creates the object (201), a second one replaces it (204); GET serves the bytes."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert put(f"{origin.url}/seg-000000000001.ts", data) == 201
    body, headers = get(f"{origin.url}/seg-000000000001.ts")
    assert body == data
    assert headers["Content-Type"] == "video/mp2t"
    assert put(f"{origin.url}/seg-000000000001.ts", data[::-1]) == 204
    assert get(f"{origin.url}/seg-000000000001.ts")[0] == data[::-1]


def test_nested_names_create_their_folders(origin: OriginProcess) -> None:
    """Folders of a nested name are created; files land readable by everyone, owned by us."""
    assert put(f"{origin.url}/live/ch1/720p/seg-000000000007.ts", b"segment") == 201
    path = origin.root / "live" / "ch1" / "720p" / "seg-000000000007.ts"
    assert path.read_bytes() == b"segment"
    info = path.stat()
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o644
    assert get(f"{origin.url}/live/ch1/720p/seg-000000000007.ts")[0] == b"segment"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("index.m3u8", "application/vnd.apple.mpegurl"),
        ("seg.ts", "video/mp2t"),
        ("manifest.mpd", "application/dash+xml"),
        ("init.mp4", "video/mp4"),
        ("chunk.m4s", "video/iso.segment"),
        ("other.bin", "application/octet-stream"),
    ],
)
def test_content_types(origin: OriginProcess, name: str, content_type: str) -> None:
    put(f"{origin.url}/{name}", b"x")
    _, headers = get(f"{origin.url}/{name}")
    assert headers["Content-Type"] == content_type
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Expose-Headers"] == "Date"
    if name.endswith((".m3u8", ".mpd")):
        assert headers["Cache-Control"] == "no-cache"


def test_missing_objects_and_other_methods(origin: OriginProcess) -> None:
    """GET of a name never put is 404; POST is refused; DELETE removes."""
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(f"{origin.url}/nothing.ts")
    assert missing.value.code == 404
    missing.value.close()
    put(f"{origin.url}/a.ts", b"a")
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(
            urllib.request.Request(f"{origin.url}/a.ts", data=b"b", method="POST"), timeout=5.0
        )
    assert post.value.code == 405
    post.value.close()
    urllib.request.urlopen(
        urllib.request.Request(f"{origin.url}/a.ts", method="DELETE"), timeout=5.0
    ).close()
    assert not (origin.root / "a.ts").exists()


def test_restart_keeps_port_and_objects_and_close_leaves_nothing(tmp_path: Path) -> None:
    """stop/start keep the URL and the root; kill is a crash; close removes its
    own folder but never the caller's root."""
    process = OriginProcess(tmp_path / "root", log_path=tmp_path / "nginx.log")
    try:
        process.start()
        url, first = process.url, process.pid
        assert first is not None
        put(f"{url}/kept.ts", b"kept")
        process.stop()
        assert not group_alive(first)
        with pytest.raises(urllib.error.URLError):
            get(f"{url}/kept.ts")
        process.start()
        assert process.url == url
        assert get(f"{url}/kept.ts")[0] == b"kept"
        second = process.pid
        assert second is not None and second != first
        process.kill()
        assert not group_alive(second)
        process.start()
        third = process.pid
        assert third is not None
    finally:
        process.close()
    assert not group_alive(third)
    assert (tmp_path / "root" / "kept.ts").read_bytes() == b"kept"
    assert not process.config_path.exists()


def test_sigterm_from_outside_is_an_outage(origin: OriginProcess) -> None:
    """An origin stopped behind our back reports itself not running and starts again."""
    pid = origin.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    while origin.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not origin.running
    origin.start()
    assert put(f"{origin.url}/back.ts", b"back") == 201


def test_a_constrained_link_serves_the_same_objects_read_only(tmp_path: Path) -> None:
    """The second port (``limited_rate``) serves what the origin holds, at most that many bytes
    a second per response (nginx's ``limit_rate`` in its configuration), and takes no PUT."""
    with OriginProcess(tmp_path / "root", limited_rate=1_000_000) as origin:
        assert origin.limited_url is not None and origin.limited_url != origin.url
        assert "limit_rate 1000000;" in origin.config_path.read_text()
        put(f"{origin.url}/a.ts", b"stream")
        assert get(f"{origin.limited_url}/a.ts")[0] == b"stream"
        with pytest.raises(urllib.error.HTTPError) as refused:
            put(f"{origin.limited_url}/b.ts", b"nope")
        refused.value.close()
        assert refused.value.code == 405 and not (origin.root / "b.ts").exists()
    plain = OriginProcess(tmp_path / "plain")
    try:
        assert plain.limited_url is None
    finally:
        plain.close()


def test_a_missing_binary_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(OriginNotInstalledError, match="nginx package"):
        OriginProcess(tmp_path, binary="no-such-nginx-binary")


def test_unsafe_folder_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        OriginProcess(tmp_path / "a;b")
