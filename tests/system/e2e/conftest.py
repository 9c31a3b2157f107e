"""Real services for the command-line tests: etcd, the Mesh Manager and two encoders; and one
``meshenc up`` run with faults that several test modules judge.

Everything runs as real processes on 127.0.0.1 (the encoders and the manager through
:class:`meshenc.local.launcher.Launcher`, etcd through :class:`meshenc.local.etcd.EtcdProcess`)
and is stopped, and checked to be gone, when the module's tests are done. As deployed, the
services speak mutual TLS, with certificates from ``meshenc certs``' own code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshenc.local.etcd import EtcdProcess
from meshenc.local.launcher import Launcher, pid_alive, read_pids
from meshenc.local.player import unavailable
from meshenc.local.ports import free_ports
from services.common.certs import CertificateSet, make_certificates
from services.common.tls import MANAGER, OPERATOR

from .support import ENCODERS, GOP, Services, UpRun, meshenc_up

#: The faulted run: 3 encoders on a small picture (two busy cores carry it), an operator's
#: change to a smaller picture and a lower bitrate, the kill -9 of the leader and the join
#: late enough that the browser plays through all three: the origin's playlist first appears
#: about 25 s in (the writer's 10-segment window must hold only published segments, and the
#: lock-in segments are not published), and the change asked at 22 s takes effect three
#: segments on. The joiner starts after the change and must take it from its neighbours.
CHANGED_SIZE = (192, 108)
UP_ARGS = (
    "--encoders", "3", "--size", "320x180", "--registries", "1",
    "--duration", "60", "--kill-at", "38", "--join-at", "48",
    "--change-at", "22", "--change", "{}x{}@400".format(*CHANGED_SIZE),
)  # fmt: skip


@pytest.fixture(scope="session")
def faulted_run(tmp_path_factory: pytest.TempPathFactory) -> UpRun:
    """``meshenc up`` with a kill -9 of the leader and a join, the browser player on when this
    machine has it (``make test`` installs chromium and hls.js), run once for the session."""
    out = tmp_path_factory.mktemp("up") / "out"
    skipped = unavailable()
    player = "--no-player" if skipped else "--player"
    with meshenc_up(out, *UP_ARGS, player) as up:
        output = up.communicate(timeout=240.0)[0]
    return UpRun(out, output, up.returncode, skipped)


def _encoder_args(
    name: str, ports: dict[str, int], folder: Path, etcd: str, source: str, certs: CertificateSet
) -> list[str]:
    peers = ",".join(f"{p}=127.0.0.1:{port}" for p, port in ports.items() if p != name)
    return [
        "encoder",
        "--id", name,
        "--listen", f"127.0.0.1:{ports[name]}",
        "--peers", peers,
        "--out", str(folder / name),
        "--size", "160x96",
        "--gop", str(GOP),
        "--offset-ms", str(ENCODERS[name]),
        "--segment", "cli",
        "--etcd", etcd,
        "--source", source,
        *certs.files(name).flags(),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """etcd, the manager (when this installation has one) and two encoders, for a module."""
    folder = tmp_path_factory.mktemp("services")
    certs = make_certificates(folder / "certs", [*ENCODERS, MANAGER, OPERATOR])
    launcher = Launcher(folder, grace=10.0, tls=certs.files(OPERATOR))
    etcd = EtcdProcess(log_path=folder / "etcd.log")
    try:
        etcd.start()
        *encoder_ports, manager_port = free_ports(len(ENCODERS) + 1)
        ports = dict(zip(ENCODERS, encoder_ports, strict=True))
        inputs = {
            n: f"udp://127.0.0.1:{p}"
            for n, p in zip(ENCODERS, free_ports(len(ENCODERS)), strict=True)
        }
        source = ["source", "--input", "testpattern", "--size", "160x96"]
        for url in inputs.values():
            source += ["--to", url]
        launcher.spawn("source", source)
        manager = f"127.0.0.1:{manager_port}"
        launcher.spawn(
            "manager",
            [
                "manager",
                "--listen",
                manager,
                "--actuator",
                "embedded",
                "--etcd",
                etcd.endpoint,
                *certs.files(MANAGER).flags(),
            ],
            address=manager,
        )
        for name in ENCODERS:
            launcher.spawn(
                name,
                _encoder_args(name, ports, folder, etcd.endpoint, inputs[name], certs),
                address=f"127.0.0.1:{ports[name]}",
            )

        async def ready() -> None:
            await asyncio.gather(*(launcher.wait_ready(n) for n in ("manager", *ENCODERS)))

        asyncio.run(ready())
        yield Services(
            encoders={n: f"127.0.0.1:{ports[n]}" for n in ENCODERS},
            manager=manager,
            etcd=etcd.endpoint,
            folder=folder,
            tls=certs.files(OPERATOR),
        )
    finally:
        asyncio.run(launcher.stop_all())
        launcher.kill_all()
        etcd.close()
    deadline = time.monotonic() + 10.0
    leftovers = [pid for _name, pid in read_pids(folder) if pid_alive(pid)]
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = [pid for pid in leftovers if pid_alive(pid)]
    assert not leftovers, f"processes left behind: {leftovers}"
