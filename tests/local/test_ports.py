"""free_ports: distinct ports below the kernel's ephemeral range, free for TCP and UDP."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from meshenc.local import ports
from meshenc.local.ports import LOWEST, free_ports


def test_ports_are_distinct_below_the_ephemeral_range_and_bindable_for_tcp_and_udp() -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert all(LOWEST <= p < start for p in ports)
    for port in ports[:5]:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))


def _offering_first(port: int) -> type[random.Random]:
    class FirstThisPort(random.Random):
        """Offers ``port`` first, then random ones."""

        offered = False

        def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
            if not self.offered:
                self.offered = True
                return port
            return super().randrange(start, stop, step)

    return FirstThisPort


def test_a_taken_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", free_ports(1)[0]))
        port = int(taken.getsockname()[1])
        monkeypatch.setattr(ports, "_recent", {})  # only the bind can tell it is taken
        monkeypatch.setattr(random, "Random", _offering_first(port))
        chosen = free_ports(3)
        assert port not in chosen and len(set(chosen)) == 3


def test_a_port_given_before_is_not_given_again_though_nobody_bound_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run plans its encoders' ports, then starts etcd, which asks for ports of its own
    before any encoder has bound one: the two must not meet."""
    (planned,) = free_ports(1)
    monkeypatch.setattr(random, "Random", _offering_first(planned))
    later = free_ports(2)
    assert planned not in later and len(set(later)) == 2
