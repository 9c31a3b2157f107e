"""Fixtures shared across the test folders."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meshenc.local.etcd import EtcdProcess
from meshenc.local.origin import OriginProcess
from meshenc.local.ports import free_ports


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real etcd on free local ports, for one test; its log is in the test's folder."""
    process = EtcdProcess(log_path=tmp_path / "etcd.log")
    try:
        yield process.start()
    finally:
        process.close()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginProcess]:
    """A running origin serving ``tmp_path/origin``; its log is ``tmp_path/nginx.log``."""
    process = OriginProcess(tmp_path / "origin", log_path=tmp_path / "nginx.log")
    try:
        yield process.start()
    finally:
        process.close()


class LiveSource:
    """``meshenc source`` as a real process: the test pattern (or a file) live over UDP.

    ``start`` sends one stream to a fresh 127.0.0.1 port per path (``delay_ms=...&jitter_ms=...``
    or empty), or to the given ``to`` URLs, and returns the URLs, in the same order. Whatever
    was started is stopped (SIGTERM, then SIGKILL) when the test ends.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        paths: Sequence[str],
        *,
        size: str = "160x96",
        fps: str = "30",
        source: str = "testpattern",
        name: str = "source",
        to: Sequence[str] | None = None,
    ) -> list[str]:
        urls = (
            list(to) if to is not None else [f"udp://127.0.0.1:{p}" for p in free_ports(len(paths))]
        )
        command = [sys.executable, "-m", "meshenc", "source", "--input", source]
        command += ["--size", size, "--fps", fps] + (["--loop"] if source != "testpattern" else [])
        for url, path in zip(urls, paths, strict=True):
            command += ["--to", f"{url}?{path}" if path else url]
        with (self.folder / f"{name}.log").open("wb") as log:
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        return urls

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def live_source(tmp_path: Path) -> Iterator[LiveSource]:
    """Start live sources for real encoders (see :class:`LiveSource`)."""
    sources = LiveSource(tmp_path)
    try:
        yield sources
    finally:
        sources.stop()
