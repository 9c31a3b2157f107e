"""Free ports on the loopback interface for processes started in embedded mode and in tests.

A port the kernel hands out with ``bind(0)`` comes from its ephemeral range — the same range it
takes the local ports of outgoing connections from. Between choosing such a port and a child
binding it, any process's next connection (a gRPC client, an etcd client) may take it, and the
child fails with "address in use". So ports are chosen below the ephemeral range, where the
kernel never allocates on its own, and each is checked free for both TCP and UDP (an encoder
listens on TCP for its mesh and on UDP for its input). Nor does a process get back a port it was
given recently: a run plans its encoders' ports in one call and starts etcd, which takes its
own, before the encoders bind theirs (seen: etcd and an encoder's output server given the same
port, the encoder failing to start).
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

__all__ = ["free_ports"]

#: Chosen ports lie in [LOWEST, the ephemeral range's start).
LOWEST = 20_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_TRIES_PER_PORT = 50
#: How many of the ports this process was given are never given again (the newest).
RECENT = 4096
#: The newest last (a dict as an ordered set).
_recent: dict[int, None] = {}


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral ports begin (Linux's default when it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(_RANGE_FILE.read_text().split()[0])
    return 32_768


def _held(host: str, port: int) -> list[socket.socket] | None:
    """Sockets bound to ``port`` on TCP and UDP, or None when either is taken."""
    held: list[socket.socket] = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            for other in held:
                other.close()
            return None
        held.append(s)
    return held


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that were free for TCP and UDP a moment ago, all distinct, and none of the
    ``RECENT`` this process was given before.

    The sockets stay open until all ports are chosen, so one call never returns the same port
    twice. A port may still be taken by someone else before the caller binds it, though no
    longer by the kernel's own choice of a local port, nor by another call in this process.
    """
    top = _ephemeral_start()
    rng = random.Random()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        if top - LOWEST >= 10 * count:
            for _ in range(_TRIES_PER_PORT * count):
                if len(ports) == count:
                    break
                port = rng.randrange(LOWEST, top)
                if port in ports or port in _recent:
                    continue
                sockets = _held(host, port)
                if sockets is not None:
                    held += sockets
                    ports.append(port)
        while len(ports) < count:  # an unusual ephemeral range: let the kernel choose
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            held.append(s)
            ports.append(int(s.getsockname()[1]))
        for port in ports:
            _recent[port] = None
        while len(_recent) > RECENT:
            del _recent[next(iter(_recent))]
        return ports
    finally:
        for s in held:
            s.close()
