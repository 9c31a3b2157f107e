"""What the end-to-end tests share: the services fixture's layout, and ``meshenc up`` run as a
user runs it (a subprocess in a session of its own) with the check that it left nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshenc.local.launcher import pid_alive, read_pids
from services.common.tls import TlsFiles

#: Encoder id to injected clock offset (ms): different, so the mesh has something to correct.
ENCODERS = {"a": 25.0, "b": -25.0}
GOP = 30
MESHENC = [sys.executable, "-m", "meshenc"]


@dataclass(frozen=True, slots=True)
class Services:
    """Where the running services answer."""

    encoders: dict[str, str]
    manager: str
    etcd: str
    folder: Path
    #: The operator's certificate: the services speak mutual TLS only.
    tls: TlsFiles

    @property
    def env(self) -> dict[str, str]:
        """The variables that give a command the operator's certificate."""
        return {
            "MESHENC_TLS_CA": str(self.tls.ca),
            "MESHENC_TLS_CERT": str(self.tls.cert),
            "MESHENC_TLS_KEY": str(self.tls.key),
        }


@dataclass(frozen=True, slots=True)
class UpRun:
    """A finished ``meshenc up`` run: its folder, what it printed, its exit status, and why no
    browser played in it (None: one did)."""

    out: Path
    output: str
    returncode: int
    player_skipped: str | None


@contextmanager
def meshenc_up(out: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``meshenc up`` in a session of its own (as a terminal's foreground job is); on the way
    out, whatever is left of it and of the processes it recorded is killed."""
    process = subprocess.Popen(
        [*MESHENC, "up", "--out", str(out), "--no-live", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if (out / "pids.json").exists():
            for _name, pid in read_pids(out):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def left_behind(out: Path, timeout: float = 10.0) -> list[tuple[str, int]]:
    """The processes a run recorded that are still alive ``timeout`` seconds from now."""
    deadline = time.monotonic() + timeout
    alive = [(name, pid) for name, pid in read_pids(out) if pid_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [(name, pid) for name, pid in alive if pid_alive(pid)]
    return alive
