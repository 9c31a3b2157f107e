"""A metrics port that is taken stops a service with a one-line error, not a traceback.

Real processes (``python -m meshenc encoder|registry|manager``) started against a port this
test holds with a listening socket; each must exit with status 1 and say which address it
could not serve. The settings side (``--metrics-listen`` validated like ``--listen``) is
checked without a process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.manager.settings import ActuatorKind, ManagerSettings


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something (this test) is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_each_service_says_which_metrics_address_it_cannot_serve(
    taken_port: int, tmp_path: Path
) -> None:
    metrics = ["--metrics-listen", f"127.0.0.1:{taken_port}"]
    commands = {
        "encoder": [
            "encoder",
            "--insecure",
            "--id",
            "e",
            "--out",
            str(tmp_path),
            "--listen",
            "127.0.0.1:0",
        ],
        "registry": ["registry", "--insecure", "--listen", "127.0.0.1:0"],
        "manager": [
            "manager",
            "--insecure",
            "--actuator",
            "kubernetes",
            "--encoder-statefulset",
            "enc",
        ],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "meshenc", *arguments, *metrics],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, arguments in commands.items()
    }
    outcomes = {}
    try:
        for name, process in processes.items():
            _out, err = process.communicate(timeout=60.0)
            outcomes[name] = (process.returncode, err)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, (code, err) in outcomes.items():
        assert code == 1, (name, err)
        assert f"Error: cannot serve metrics on '127.0.0.1:{taken_port}'" in err, (name, err)
        assert "Traceback" not in err, (name, err)


@pytest.mark.parametrize("address", ["9464", "0.0.0.0:", "host:99999", "a b:1"])
def test_the_manager_validates_its_metrics_address_like_its_listen_address(
    address: str,
) -> None:
    with pytest.raises(ValidationError, match="metrics_listen"):
        ManagerSettings(
            actuator=ActuatorKind.KUBERNETES, encoder_statefulset="enc", metrics_listen=address
        )
    with pytest.raises(ValidationError, match="listen"):
        ManagerSettings(actuator=ActuatorKind.KUBERNETES, encoder_statefulset="enc", listen=address)
    accepted = ManagerSettings(
        actuator=ActuatorKind.KUBERNETES, encoder_statefulset="enc", metrics_listen="[::]:9464"
    )
    assert accepted.metrics_listen == "[::]:9464"
