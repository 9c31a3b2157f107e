"""The real grpcurl binary against every service: what an on-call engineer types.

The services run as deployed, with mutual TLS, and grpcurl calls them with the operator's
certificate (``-cacert -cert -key``, made by ``meshenc certs``' own code); plaintext is refused
on the service ports and answered only by the health-only port.

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
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]

from meshenc.local.etcd import EtcdProcess
from meshenc.local.ports import free_ports
from meshenc.v1 import common_pb2, mesh_pb2
from services.common.certs import CertificateSet, make_certificates
from services.common.health_check import check_health
from services.common.tls import MANAGER, OPERATOR, REGISTRY, TlsFiles

ROOT = Path(__file__).resolve().parents[3]
GRPCURL = ROOT / ".tools" / "bin" / "grpcurl"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    """The development CA and a certificate for each process and for the operator."""
    return make_certificates(
        tmp_path_factory.mktemp("certs"), ["probe", REGISTRY, MANAGER, OPERATOR, "e2"]
    )


def _run_grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    assert GRPCURL.exists(), "grpcurl missing: run `make tools` (make test does)"
    return subprocess.run(
        [str(GRPCURL), *args], check=False, capture_output=True, text=True, timeout=20
    )


def _grpcurl(files: TlsFiles, *args: str) -> str:
    """grpcurl with ``files``' certificate (the operator's, in what on-call types)."""
    result = _run_grpcurl(
        "-cacert", str(files.ca), "-cert", str(files.cert), "-key", str(files.key), *args
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def operator(certs: CertificateSet) -> TlsFiles:
    return certs.files(OPERATOR)


@pytest.fixture(scope="module")
def encoder_ports(
    tmp_path_factory: pytest.TempPathFactory, certs: CertificateSet
) -> Iterator[tuple[str, str]]:
    """An encoder with mutual TLS: its address, and its plaintext health-only address."""
    port, health_port = free_ports(2)
    out = tmp_path_factory.mktemp("grpcurl")
    command = [
        sys.executable, "-m", "meshenc", "encoder", "--id", "probe",
        "--listen", f"127.0.0.1:{port}", "--out", str(out),
        "--health-listen", f"127.0.0.1:{health_port}",
        "--size", "160x96", "--gop", "30", "--duration", "60",
        *certs.files("probe").flags(),
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
        yield address, f"127.0.0.1:{health_port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def encoder(encoder_ports: tuple[str, str]) -> str:
    return encoder_ports[0]


def test_list_shows_the_mesh_health_and_reflection(encoder: str, operator: TlsFiles) -> None:
    services = set(_grpcurl(operator, encoder, "list").split())
    assert {"meshenc.v1.EncoderMesh", "grpc.health.v1.Health"} <= services


def test_describe_shows_the_exchange_stream(encoder: str, operator: TlsFiles) -> None:
    text = _grpcurl(operator, encoder, "describe", "meshenc.v1.EncoderMesh")
    assert "rpc Exchange ( stream .meshenc.v1.MeshMessage )" in text
    assert "rpc GetState" in text


def test_health_check_says_serving(encoder: str, operator: TlsFiles) -> None:
    answer = json.loads(
        _grpcurl(
            operator,
            "-d",
            '{"service": "meshenc.v1.EncoderMesh"}',
            encoder,
            "grpc.health.v1.Health/Check",
        )
    )
    assert answer == {"status": "SERVING"}


def _protoset(folder: Path) -> Path:
    """The health and mesh services' descriptors, for a server without reflection."""
    files = descriptor_pb2.FileDescriptorSet()
    for module in (health_pb2, common_pb2, mesh_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    path = folder / "services.protoset"
    path.write_bytes(files.SerializeToString())
    return path


def test_plaintext_is_refused_and_the_health_port_answers_it(
    encoder_ports: tuple[str, str], tmp_path: Path
) -> None:
    """What a Kubernetes grpc probe does: plaintext. Only the health-only port answers it, and
    it carries nothing but health."""
    encoder, health = encoder_ports
    refused = _run_grpcurl("-plaintext", encoder, "grpc.health.v1.Health/Check")
    assert refused.returncode != 0
    protoset = str(_protoset(tmp_path))
    answer = _run_grpcurl(
        "-plaintext", "-protoset", protoset, "-d", '{"service": "meshenc.v1.EncoderMesh"}',
        health, "grpc.health.v1.Health/Check",
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == {"status": "SERVING"}
    state = _run_grpcurl(
        "-plaintext", "-protoset", protoset, health, "meshenc.v1.EncoderMesh/GetState"
    )
    assert state.returncode != 0 and "Unimplemented" in state.stderr, state.stderr


def test_set_parameters_is_for_the_operator_only(
    encoder: str, operator: TlsFiles, certs: CertificateSet
) -> None:
    """Another encoder's certificate is refused with PermissionDenied; the operator's gets
    past the identity check (to the encoder's own answer: it has no neighbours to vote)."""
    request = '{"bitrate_kbps": 900}'
    method = "meshenc.v1.EncoderMesh/SetParameters"
    other = certs.files("e2")
    denied = _run_grpcurl(
        "-cacert", str(other.ca), "-cert", str(other.cert), "-key", str(other.key),
        "-d", request, encoder, method,
    )  # fmt: skip
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr, denied.stderr
    allowed = _run_grpcurl(
        "-cacert", str(operator.ca), "-cert", str(operator.cert), "-key", str(operator.key),
        "-d", request, encoder, method,
    )  # fmt: skip
    assert "PermissionDenied" not in allowed.stderr, allowed.stderr
    assert allowed.returncode == 0 or "FailedPrecondition" in allowed.stderr, allowed.stderr


def test_get_state_reports_the_encoder(encoder: str, operator: TlsFiles) -> None:
    state = json.loads(_grpcurl(operator, encoder, "meshenc.v1.EncoderMesh/GetState"))
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


def _wait_serving(
    address: str, service: str, process: subprocess.Popen[bytes], tls: TlsFiles
) -> None:
    deadline = time.monotonic() + 30
    while check_health(address, service, 1.0, tls)[0] != 0:
        assert process.poll() is None, f"{service} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{service} at {address} never became SERVING"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, certs: CertificateSet
) -> Iterator[dict[str, str]]:
    """A registry node and a Mesh Manager (embedded mode, on a real etcd), both with mutual
    TLS: name → address."""
    out = tmp_path_factory.mktemp("grpcurl-services")
    registry_port, manager_port = free_ports(2)
    processes: list[subprocess.Popen[bytes]] = []
    with EtcdProcess() as etcd:
        commands = {
            "registry": [
                "registry", "--listen", f"127.0.0.1:{registry_port}",
                *certs.files(REGISTRY).flags(),
            ],
            "manager": [
                "manager", "--listen", f"127.0.0.1:{manager_port}",
                "--actuator", "embedded", "--etcd", etcd.endpoint,
                *certs.files(MANAGER).flags(),
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
                _wait_serving(
                    addresses[name], OTHERS[name][0], processes[-1], certs.files(OPERATOR)
                )
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
    name: str, services: dict[str, str], operator: TlsFiles
) -> None:
    service, method = OTHERS[name]
    address = services[name]
    assert {service, "grpc.health.v1.Health"} <= set(_grpcurl(operator, address, "list").split())
    assert f"rpc {method}" in _grpcurl(operator, address, "describe", service)
    health = json.loads(
        _grpcurl(
            operator,
            "-d",
            json.dumps({"service": service}),
            address,
            "grpc.health.v1.Health/Check",
        )
    )
    assert health == {"status": "SERVING"}
    answer = json.loads(_grpcurl(operator, "-d", "{}", address, f"{service}/{method}"))
    if name == "registry":
        assert answer["responder"]["address"] == address
    else:
        assert answer == {}  # no encoder has joined: epoch 0, no adjacency (proto3 JSON omits both)


def test_a_bad_request_gets_invalid_argument_through_grpcurl(
    services: dict[str, str], operator: TlsFiles
) -> None:
    result = _run_grpcurl(
        "-cacert", str(operator.ca), "-cert", str(operator.cert), "-key", str(operator.key),
        "-d", '{"encoder_id": "not an id!"}',
        services["manager"], "meshenc.v1.MeshManager/GetTopology",
    )  # fmt: skip
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr, result.stderr
