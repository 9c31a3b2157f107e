"""The delay relay that stands in for long-haul links: real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from meshenc.local.relay import DelayRelay


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _receive(conn: socket.socket, size: int, timeout: float) -> bytes:
    """Up to ``size`` bytes, whatever has come within ``timeout`` seconds."""
    conn.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError):
        while len(data) < size:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_bytes_come_back_in_order_and_no_sooner_than_the_delay_each_way(
    echo: tuple[str, int],
) -> None:
    with DelayRelay(echo, 0.05, jitter_s=0.02, seed=3) as relay:
        port = relay.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            message = b"".join(i.to_bytes(4, "big") for i in range(5000))
            sent = time.monotonic()
            for k in range(0, len(message), 1000):  # many chunks, each with its own jitter
                conn.sendall(message[k : k + 1000])
            back = _receive(conn, len(message), 5.0)
            elapsed = time.monotonic() - sent
    assert back == message
    assert elapsed >= 2 * 0.05


def test_a_cut_link_forwards_nothing_and_delivers_what_it_held_when_healed(
    echo: tuple[str, int],
) -> None:
    with DelayRelay(echo, 0.01) as relay:
        port = relay.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"before")
            assert _receive(conn, 6, 5.0) == b"before"
            relay.cut()
            conn.sendall(b"during")
            assert _receive(conn, 6, 0.5) == b""  # nothing came back
            relay.heal()
            assert _receive(conn, 6, 5.0) == b"during"


def test_a_connection_made_during_a_cut_hangs_until_healed(echo: tuple[str, int]) -> None:
    with DelayRelay(echo, 0.0) as relay:
        port = relay.start()
        relay.cut()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"hello")
            assert _receive(conn, 5, 0.5) == b""
            relay.heal()
            assert _receive(conn, 5, 5.0) == b"hello"
