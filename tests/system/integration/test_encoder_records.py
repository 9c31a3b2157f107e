"""Encoders publish themselves in the DHT registry: real registry and encoder processes.

Nothing is mocked: a real ``meshenc registry`` replica and real ``meshenc encoder`` processes
with ``--registry`` on 127.0.0.1. The records are read back through
:class:`~services.common.registry_client.RegistryClient`, as any peer would. Each test starts
and stops its own processes (SIGTERM, SIGKILL after a timeout) and bounds every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509

from meshenc.cli.main import cli
from meshenc.local.ports import free_ports
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc, registry_pb2
from meshenc.wire.signature import certificate_identity
from services.common.certs import CertificateSet, make_certificates
from services.common.registry_client import RegistryClient, RegistryUnavailable
from services.common.tls import OPERATOR, REGISTRY, channel_credentials
from services.encoder.control import HEALTHY_CONFIDENCE, record_health
from tests.conftest import LiveSource
from tests.services.registry.test_node import registry_processes

HEALTHY = registry_pb2.ENCODER_HEALTH_HEALTHY
DEGRADED = registry_pb2.ENCODER_HEALTH_DEGRADED
DRAINING = registry_pb2.ENCODER_HEALTH_DRAINING
TTL = 3.0  # --registry-ttl: short, so that a stopped encoder's record is seen to expire


@contextlib.contextmanager
def encoders(
    folder: Path,
    registry: str,
    names: list[str],
    live: LiveSource,
    *extra: str,
    bare_peers: bool = False,
    certs: CertificateSet | None = None,
) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], str]]]:
    """Encoder processes, full mesh, fed by one live source, publishing in ``registry``: name →
    (process, address). With ``bare_peers`` they are told their peers' ids only, and must
    resolve them; with ``certs``, each runs mutual TLS with its own certificate."""
    addresses = {n: f"127.0.0.1:{p}" for n, p in zip(names, free_ports(len(names)), strict=True)}
    inputs = dict(zip(names, live.start([""] * len(names), size="64x36"), strict=True))
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, address in addresses.items():
            peers = ",".join(
                p if bare_peers else f"{p}={a}" for p, a in addresses.items() if p != name
            )
            command = [
                sys.executable, "-m", "meshenc", "encoder",
                *(certs.files(name).flags() if certs else ["--insecure"]),
                "--id", name,
                "--listen", address,
                "--out", str(folder / name),
                "--size", "64x36",
                "--gop", "30",
                "--registry", registry,
                "--registry-ttl", str(TTL),
                "--capacity", "7",
                "--source", inputs[name],
                *(["--peers", peers] if peers else []),
                *extra,
            ]  # fmt: skip
            with (folder / f"{name}.log").open("wb") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            started[name] = (process, address)
        yield started
    finally:
        for process, _address in started.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _address in started.values():
            try:
                process.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_for_record(
    client: RegistryClient,
    encoder: str,
    check: Callable[[registry_pb2.EncoderRecord | None], bool],
    timeout: float,
) -> registry_pb2.EncoderRecord | None:
    """Resolve ``encoder`` until ``check`` holds for what comes back; fail after ``timeout``.
    A registry that does not answer yet (still starting) is waited for too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await client.resolve(encoder)
        except RegistryUnavailable as exc:
            answer: object = exc
        else:
            if check(found):
                return found
            answer = found
        assert time.monotonic() < deadline, f"{encoder}: last answer {answer}"
        await asyncio.sleep(0.2)


def _present(record: registry_pb2.EncoderRecord | None) -> bool:
    return record is not None


def logs(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace")[-2000:] for p in folder.glob("*.log")}


@pytest.mark.slow
def test_locked_encoders_publish_healthy_records_and_drain_then_expire_on_shutdown(
    tmp_path: Path, live_source: LiveSource
) -> None:
    """Two encoders of one mesh: each record resolves with the encoder's address, segment and
    capacity; once locked they say HEALTHY; SIGTERM → DRAINING, and after the ttl the record
    of the stopped encoder is gone while the other's, still refreshed, stays."""
    with (
        registry_processes(tmp_path, 1) as (_registries, (registry,)),
        encoders(tmp_path, registry, ["enc-a", "enc-b"], live_source) as started,
    ):

        async def scenario() -> list[registry_pb2.EncoderRecord | None]:
            seen = []
            async with RegistryClient([registry]) as client:
                for name in started:
                    seen.append(await wait_for_record(client, name, _present, timeout=30.0))
                for name in started:
                    seen.append(
                        await wait_for_record(
                            client, name, lambda r: r is not None and r.health == HEALTHY, 30
                        )
                    )
                process = started["enc-a"][0]
                process.send_signal(signal.SIGTERM)
                seen.append(
                    await wait_for_record(
                        client, "enc-a", lambda r: r is not None and r.health == DRAINING, 10
                    )
                )
                await asyncio.to_thread(process.wait, 15.0)
                seen.append(await wait_for_record(client, "enc-a", lambda r: r is None, 15))
                seen.append(await client.resolve("enc-b"))
            return seen

        try:
            seen = asyncio.run(asyncio.wait_for(scenario(), 90.0))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(tmp_path)}") from None
        stopped = started["enc-a"][0].returncode
    first_a, first_b, healthy_a, healthy_b, draining, gone, still = seen
    for record, name in ((first_a, "enc-a"), (first_b, "enc-b")):
        assert record is not None
        assert record.address == started[name][1]
        assert (record.segment_id, record.capacity) == ("default", 7)
        assert 0 < record.ttl_ms <= TTL * 1000  # what remains of it, as FindValue says
    assert healthy_a is not None and healthy_b is not None
    assert draining is not None and draining.version > healthy_a.version
    assert gone is None
    assert still is not None  # still refreshed (alone now, it may say DEGRADED)
    assert stopped == 0, logs(tmp_path)


@pytest.mark.slow
def test_encoders_given_only_their_peers_ids_find_them_through_the_registry(
    tmp_path: Path, live_source: LiveSource
) -> None:
    """``--peers enc-b`` without an address, under mutual TLS: each encoder signs its record,
    the replica takes it only so signed, each encoder resolves the other's record in the DHT
    (checking its signature) and connects its mesh link, as GetState (read over gRPC) shows;
    a reader resolves both records, signed with the encoders' own certificates."""
    names = ["enc-a", "enc-b"]
    certs = make_certificates(tmp_path / "certs", [*names, REGISTRY, OPERATOR])
    operator = certs.files(OPERATOR)
    with (
        registry_processes(tmp_path, 1, tls=certs.files(REGISTRY)) as (_registries, (registry,)),
        encoders(tmp_path, registry, names, live_source, bare_peers=True, certs=certs) as started,
    ):

        def connected(name: str, address: str) -> list[str]:
            options = [("grpc.ssl_target_name_override", name)]
            credentials = channel_credentials(operator)
            with grpc.secure_channel(address, credentials, options=options) as channel:
                state = mesh_pb2_grpc.EncoderMeshStub(channel).GetState(
                    mesh_pb2.GetStateRequest(), timeout=5.0
                )
            return [n.neighbour_id for n in state.neighbours if n.connected]

        deadline = time.monotonic() + 45.0
        links: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                links = {name: connected(name, address) for name, (_p, address) in started.items()}
            if links == {"enc-a": ["enc-b"], "enc-b": ["enc-a"]}:
                break
            time.sleep(0.5)
        assert links == {"enc-a": ["enc-b"], "enc-b": ["enc-a"]}, (links, logs(tmp_path))

        async def records() -> tuple[dict[str, registry_pb2.EncoderRecord | None], int]:
            async with RegistryClient([registry], tls=operator) as reader:
                found = await reader.resolve_many(names)
                return found, reader.forged

        found, forged = asyncio.run(asyncio.wait_for(records(), 20.0))
    assert forged == 0
    for name in names:
        record = found[name]
        assert record is not None and record.signature, name
        identity = certificate_identity(x509.load_der_x509_certificate(record.certificate))
        assert identity == name


def test_peers_without_addresses_need_a_registry(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "encoder",
            "--insecure",
            "--id",
            "e",
            "--out",
            str(tmp_path),
            "--peers",
            "f,g=127.0.0.1:9",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "peers f have no address" in result.output


def test_an_unreachable_registry_does_not_stop_the_encoder(
    tmp_path: Path, live_source: LiveSource
) -> None:
    """The registry is not in the frame path: with no replica listening, the encoder encodes,
    and stops cleanly within its --duration."""
    (dead,) = free_ports(1)
    with encoders(
        tmp_path, f"127.0.0.1:{dead}", ["alone"], live_source, "--duration", "4"
    ) as started:
        process = started["alone"][0]
        process.wait(timeout=30.0)
    log = (tmp_path / "alone.log").read_text(errors="replace")
    assert process.returncode == 0, log
    assert "could not publish the draining record" in log, log
    assert list((tmp_path / "alone").glob("*seg-*.ts")), log


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--registry", "registry-0"], "registry replica 'registry-0'"),
        (["--registry", "r:7500", "--capacity", "-1"], "capacity"),
        (["--registry", "r:7500", "--registry-ttl", "0.5"], "registry_ttl"),
    ],
)
def test_bad_registry_settings_are_refused_by_name(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli, ["encoder", "--insecure", "--id", "e", "--out", str(tmp_path), *arguments]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_health_is_healthy_only_when_locked_and_confident_and_draining_stays() -> None:
    assert record_health(True, HEALTHY_CONFIDENCE, DEGRADED) == HEALTHY
    assert record_health(True, HEALTHY_CONFIDENCE - 0.01, DEGRADED) == DEGRADED
    assert record_health(False, 1.0, HEALTHY) == DEGRADED
    # Hysteresis: a healthy encoder hovering just under the threshold stays healthy...
    assert record_health(True, HEALTHY_CONFIDENCE - 0.05, HEALTHY) == HEALTHY
    # ...until it falls clearly below it.
    assert record_health(True, HEALTHY_CONFIDENCE - 0.2, HEALTHY) == DEGRADED
    for locked, confidence in ((True, 1.0), (False, 0.0)):
        assert record_health(locked, confidence, DRAINING) == DRAINING
