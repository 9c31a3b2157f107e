"""Free TCP ports on the loopback interface for processes started in embedded mode."""

from __future__ import annotations

import socket

__all__ = ["free_ports"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that were free a moment ago, all distinct.

    The sockets stay open until all ports are chosen, so one call never returns the same port
    twice. A port may still be taken by someone else before the caller binds it; callers that
    start many servers at once should tolerate that by retrying.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()
