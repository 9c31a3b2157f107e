"""The real grpcurl binary against every service: what an on-call engineer types.

`make test` fetches grpcurl into .tools/bin (scripts/fetch-grpcurl.sh) before running this.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshenc.local.etcd import EtcdProcess
from meshenc.local.ports import free_ports
from services.common.health_check import check_health

GRPCURL = Path(__file__).resolve().parents[3] / ".tools" / "bin" / "grpcurl"


def _grpcurl(*args: str) -> str:
    assert GRPCURL.exists(), "grpcurl missing: run `make tools` (make test does)"
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *args], check=False, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    (port,) = free_ports(1)
    out = tmp_path_factory.mktemp("grpcurl")
    command = [
        sys.executable, "-m", "meshenc", "encoder", "--id", "probe",
        "--listen", f"127.0.0.1:{port}", "--out", str(out),
        "--size", "160x96", "--gop", "30", "--duration", "60",
    ]  # fmt: skip
    with (out / "encoder.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        time.sleep(1.0)  # let a few frames through, so GetState has something to show
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_list_shows_the_mesh_health_and_reflection(encoder: str) -> None:
    services = set(_grpcurl(encoder, "list").split())
    assert {"meshenc.v1.EncoderMesh", "grpc.health.v1.Health"} <= services


def test_describe_shows_the_exchange_stream(encoder: str) -> None:
    text = _grpcurl(encoder, "describe", "meshenc.v1.EncoderMesh")
    assert "rpc Exchange ( stream .meshenc.v1.MeshMessage )" in text
    assert "rpc GetState" in text


def test_health_check_says_serving(encoder: str) -> None:
    answer = json.loads(
        _grpcurl(
            "-d", '{"service": "meshenc.v1.EncoderMesh"}', encoder, "grpc.health.v1.Health/Check"
        )
    )
    assert answer == {"status": "SERVING"}


def test_get_state_reports_the_encoder(encoder: str) -> None:
    state = json.loads(_grpcurl(encoder, "meshenc.v1.EncoderMesh/GetState"))
    assert state["encoder_id"] == "probe"
    assert int(state["timecode"]) > 0
    assert int(state["segment_number"]) == int(state["timecode"]) // 30
    assert set(state["corrections"]) == {"slew", "drop", "duplicate", "parameter"}


# -- the registry and the manager ------------------------------------------------------------

#: Per service: the gRPC service name, and a method to call.
OTHERS = {
    "registry": ("meshenc.v1.Registry", "Ping"),
    "manager": ("meshenc.v1.MeshManager", "GetTopology"),
}


def _wait_serving(address: str, service: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while check_health(address, service, 1.0)[0] != 0:
        assert process.poll() is None, f"{service} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{service} at {address} never became SERVING"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A registry node and a Mesh Manager (embedded mode, on a real etcd): name → address."""
    out = tmp_path_factory.mktemp("grpcurl-services")
    registry_port, manager_port = free_ports(2)
    processes: list[subprocess.Popen[bytes]] = []
    with EtcdProcess() as etcd:
        commands = {
            "registry": ["registry", "--listen", f"127.0.0.1:{registry_port}"],
            "manager": [
                "manager", "--listen", f"127.0.0.1:{manager_port}",
                "--actuator", "embedded", "--etcd", etcd.endpoint,
            ],
        }  # fmt: skip
        addresses = {
            "registry": f"127.0.0.1:{registry_port}",
            "manager": f"127.0.0.1:{manager_port}",
        }
        try:
            for name, args in commands.items():
                with (out / f"{name}.log").open("wb") as log:
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "meshenc", *args],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
                _wait_serving(addresses[name], OTHERS[name][0], processes[-1])
            yield addresses
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OTHERS))
def test_list_describe_health_and_a_call_on_every_other_service(
    name: str, services: dict[str, str]
) -> None:
    service, method = OTHERS[name]
    address = services[name]
    assert {service, "grpc.health.v1.Health"} <= set(_grpcurl(address, "list").split())
    assert f"rpc {method}" in _grpcurl(address, "describe", service)
    health = json.loads(
        _grpcurl("-d", json.dumps({"service": service}), address, "grpc.health.v1.Health/Check")
    )
    assert health == {"status": "SERVING"}
    answer = json.loads(_grpcurl("-d", "{}", address, f"{service}/{method}"))
    if name == "registry":
        assert answer["responder"]["address"] == address
    else:
        assert answer == {}  # no encoder has joined: epoch 0, no adjacency (proto3 JSON omits both)


def test_a_bad_request_gets_invalid_argument_through_grpcurl(services: dict[str, str]) -> None:
    result = subprocess.run(
        [
            str(GRPCURL), "-plaintext", "-d", '{"encoder_id": "not an id!"}',
            services["manager"], "meshenc.v1.MeshManager/GetTopology",
        ],
        check=False, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr, result.stderr
