"""Fixtures shared across the test folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import settings

from meshenc.local.etcd import EtcdProcess
from meshenc.local.origin import OriginProcess
from meshenc.local.ports import free_ports

SYSTEM_TESTS: Final = "tests/system/"
"""Where the whole-system tests are (node ids start with it): real processes across packages,
in real time, sharing a session's ``meshenc up`` run and module-wide services."""

REAL_TIME_TESTS: Final = (
    SYSTEM_TESTS,
    "tests/local/test_player.py",
    "tests/report/test_recorder.py",
    "tests/services/source/test_service.py",
)
"""The tests whose verdict turns on real processes keeping real time: real encoders keeping
up with a live source (they lock, vouch for segments, play without a stall) — the
whole-system tests and the two outside them — and the live source's own pacing (the delay
between two paths, what a reader gets in its first seconds). Two of them at once overload two
cores: an encoder a second behind its input skips pictures and rightly sets those segments
aside, which such a test then reports (seen: a segment gap in the player test, no vouched
segment in the input-loss test, each with another beside it); a source test run at the lower
priority beside one of them measured a 16 ms median for a 50 ms delay between its paths."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (``make test``): the real-time tests (``REAL_TIME_TESTS``) are one
    group that one worker runs in order, never two at a time, with each session and module
    fixture made once; every other test goes to whichever worker is free.

    The group is chosen here, by path, rather than by ``xdist_group`` marks: pytest-xdist 3.8
    carries a mark's group in the test's node id, which pytest 9.2 no longer lets it change
    (pytest-dev/pytest-xdist#1386), so marked tests would be spread like any other.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling  # noqa: PLC0415 -- only under xdist

    # xdist has no type information: its class is Any to mypy.
    class SystemTestsTogether(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            real_time = nodeid.startswith(REAL_TIME_TESTS)
            return "real-time" if real_time else super()._split_scope(nodeid)

    return SystemTestsTogether(config, log)


YIELD_NICENESS: Final = 5
"""How far an xdist worker lowers its priority once it runs tests other than the whole-system
ones, so that the real-time processes of those come first on a busy machine."""

# Hypothesis' deadline times each example and fails a slow one: a timed pass/fail, which this
# suite leaves to the benchmarks. On a machine as busy as parallel workers make it, it would only
# fail tests at random.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


_YIELDED = pytest.StashKey[bool]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``--dist loadgroup``, a worker that runs a test outside ``REAL_TIME_TESTS`` yields
    the CPU to the real-time tests from then on (it runs none of them later: they are one
    group, the largest, handed out first)."""
    config = item.config
    if (
        hasattr(config, "workerinput")  # an xdist worker, which xdist tells about loadgroup
        and getattr(config.option, "loadgroup", False)
        and not item.nodeid.startswith(REAL_TIME_TESTS)
        and not config.stash.get(_YIELDED, False)
    ):
        os.nice(YIELD_NICENESS)
        config.stash[_YIELDED] = True


def wait_or_kill(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for each process to end by itself (up to ``timeout`` seconds each); SIGKILL and
    reap one that does not, so that no test leaves a process behind."""
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()


#: What an encoder's log says of its timeline: enough to tell, after a failed run, who locked
#: on what, which moves were turned down and by whom, and when its input came and went.
SYNC_LOG_MARKERS: Final = (
    "timeline:", "lock-in move", "correction ", "input is", "stalled", "escalating",
    "' up (", "' down",
)  # fmt: skip


def sync_story(logs: Sequence[Path], limit: int = 40) -> str:
    """The first ``limit`` lines about the timeline from each encoder log in ``logs``, for a
    failed assertion's message: a run on a loaded CI machine is seldom reproduced at will."""
    story = []
    for log in logs:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        told = [line for line in lines if any(marker in line for marker in SYNC_LOG_MARKERS)]
        story.append(f"--- {log.name}\n" + "\n".join(told[:limit]))
    return "\n".join(story)


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
