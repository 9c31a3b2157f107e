"""The gRPC I/O a ``meshenc`` process runs (``meshenc.grpc_io``): ``iomgr``'s TCP endpoints
unless the user chose otherwise. Seen from outside, in what gRPC itself logs of its
connections: ``tcp_posix.cc`` is ``iomgr``'s endpoint, the EventEngine's logs from
``endpoint.cc``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshenc.bench.esp import node_environment
from meshenc.grpc_io import EXPERIMENTS_VARIABLE, MESH_IO_EXPERIMENTS, choose_grpc_io

ROOT = Path(__file__).resolve().parents[1]


def test_the_mesh_io_is_chosen_only_where_the_user_chose_nothing() -> None:
    environ: dict[str, str] = {}
    assert choose_grpc_io(environ) and environ == {EXPERIMENTS_VARIABLE: MESH_IO_EXPERIMENTS}
    for users in ("", "event_engine_dns"):
        environ = {EXPERIMENTS_VARIABLE: users}
        assert not choose_grpc_io(environ) and environ == {EXPERIMENTS_VARIABLE: users}


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _endpoint_logs(port: int, experiments: str | None) -> set[str]:
    """The gRPC source files a ``meshenc health-check`` of ``port`` logs its TCP traces from."""
    env = {k: v for k, v in os.environ.items() if k != EXPERIMENTS_VARIABLE}
    if experiments is not None:
        env[EXPERIMENTS_VARIABLE] = experiments
    env.update(GRPC_TRACE="tcp", GRPC_VERBOSITY="debug")
    done = subprocess.run(
        [sys.executable, "-m", "meshenc", "health-check", f"127.0.0.1:{port}", "--timeout", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr[-2000:]  # no answer: the port never speaks
    return set(re.findall(r"\b(\w+\.cc):\d+\]", done.stderr))


def test_a_meshenc_command_connects_over_iomgr(silent_listener: int) -> None:
    files = _endpoint_logs(silent_listener, None)
    assert "tcp_posix.cc" in files and "endpoint.cc" not in files, files


def test_a_users_choice_of_experiments_stands(silent_listener: int) -> None:
    files = _endpoint_logs(silent_listener, "")  # empty: gRPC's own defaults
    assert "endpoint.cc" in files and "tcp_posix.cc" not in files, files


def test_each_tree_of_the_esp_benchmark_runs_its_own_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A baseline from before ``meshenc/grpc_io.py`` runs gRPC's defaults, not this tree's;
    the user's own experiments go to both."""
    older = tmp_path / "older"
    (older / "meshenc").mkdir(parents=True)
    monkeypatch.setenv(EXPERIMENTS_VARIABLE, MESH_IO_EXPERIMENTS)  # as the command set it
    assert node_environment(ROOT)[EXPERIMENTS_VARIABLE] == MESH_IO_EXPERIMENTS
    assert EXPERIMENTS_VARIABLE not in node_environment(older)
    monkeypatch.delenv(EXPERIMENTS_VARIABLE)
    assert node_environment(ROOT)[EXPERIMENTS_VARIABLE] == MESH_IO_EXPERIMENTS
    monkeypatch.setenv(EXPERIMENTS_VARIABLE, "event_engine_dns")
    assert node_environment(ROOT)[EXPERIMENTS_VARIABLE] == "event_engine_dns"
    assert node_environment(older)[EXPERIMENTS_VARIABLE] == "event_engine_dns"
