"""Every service's etcd connection (``services.common.etcd``), against a real etcd.

The etcd is the real binary (``EtcdProcess``), over TLS with client certificates where the
test says so; a "dead" endpoint is a free port on 127.0.0.1 where nothing listens. The last
test runs a real ``meshenc manager`` process. Each test starts and stops its own processes
and bounds every wait.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aetcd  # type: ignore[import-untyped]
import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from meshenc.cli.main import cli
from meshenc.local.etcd import EtcdProcess
from meshenc.local.ports import free_ports
from meshenc.wire.adjacency import EtcdLayout
from services.common import etcd as etcd_module
from services.common.etcd import EtcdClient, EtcdSettings, connect_client
from services.common.retry import Backoff, retrying
from services.manager.etcd_actuator import is_transient
from services.manager.settings import ActuatorKind, ManagerSettings
from tests.services.encoder.test_leadership import _certificates, run


def dead_endpoint(scheme: str = "http") -> str:
    (port,) = free_ports(1)
    return f"{scheme}://127.0.0.1:{port}"


async def put_with_retries(client: EtcdClient, key: bytes, value: bytes) -> int:
    """What every caller does: retry transient failures with the shared backoff policy."""
    async for attempt in retrying(
        "test put", is_transient, attempts=8, backoff=Backoff(maximum=0.5)
    ):
        with attempt:
            return int((await client.put(key, value)).header.revision)
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True


def test_a_client_moves_on_from_an_unreachable_endpoint_to_the_next(etcd: EtcdProcess) -> None:
    settings = EtcdSettings(endpoints=(dead_endpoint(), etcd.endpoint))

    async def scenario() -> tuple[int, int, str]:
        client = connect_client(settings)
        try:
            revision = await put_with_retries(client, b"/meshenc/probe", b"1")
            found = await client.get(b"/meshenc/probe")
            assert found is not None and bytes(found.value) == b"1"
            return revision, client.failovers, client.target
        finally:
            await client.close()

    revision, failovers, target = run(scenario())
    assert revision > 0
    assert failovers == 1
    assert f"http://{target}" == etcd.endpoint


def test_a_close_whose_watch_never_ends_gives_up_in_time(
    etcd: EtcdProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client connected to a real etcd whose watcher's shutdown never returns (a stand-in
    for a watch stream that never ends after etcd went away and came back: a stopping encoder
    hung there): its close gives up after ``CLOSE_TIMEOUT`` with one warning, and the client
    is left unconnected."""
    monkeypatch.setattr(etcd_module, "CLOSE_TIMEOUT", 0.3)

    async def scenario() -> EtcdClient:
        client = connect_client(EtcdSettings(endpoints=(etcd.endpoint,)))
        await put_with_retries(client, b"/meshenc/probe", b"1")
        assert client._watcher is not None and client.channel is not None

        async def never() -> None:
            await asyncio.Event().wait()

        client._watcher.shutdown = never
        await asyncio.wait_for(client.close(), 10.0)  # without the bound: forever
        return client

    with caplog.at_level("WARNING", logger="meshenc.etcd"):
        client = run(scenario())
    assert client.channel is None and client._watcher is None
    assert [r.getMessage() for r in caplog.records] == [
        "closing the etcd client took over 0.3 s: left behind"
    ]


def test_a_client_pinned_to_one_endpoint_never_moves(etcd: EtcdProcess) -> None:
    """The segment election opens one client per session on the endpoint it chose."""
    dead = dead_endpoint()
    settings = EtcdSettings(endpoints=(dead, etcd.endpoint))

    async def scenario() -> tuple[int, str]:
        client = connect_client(settings, dead, timeout=0.5)
        try:
            with pytest.raises(aetcd.exceptions.ClientError):
                await put_with_retries(client, b"/meshenc/probe", b"1")
            return client.failovers, client.target
        finally:
            await client.close()

    failovers, target = run(scenario())
    assert failovers == 0
    assert f"http://{target}" == dead


def test_a_client_with_only_dead_endpoints_keeps_trying_them_in_turn() -> None:
    settings = EtcdSettings(endpoints=(dead_endpoint(), dead_endpoint()))

    async def scenario() -> int:
        client = connect_client(settings, timeout=0.5)
        try:
            with pytest.raises(aetcd.exceptions.ClientError):
                await put_with_retries(client, b"/meshenc/probe", b"1")
            return int(client.failovers)
        finally:
            await client.close()

    assert run(scenario()) >= 3  # 8 attempts over two endpoints: it went round


def test_the_manager_takes_tls_and_several_endpoints_like_the_encoder(tmp_path: Path) -> None:
    """The flags build the same EtcdSettings for the manager as for the encoder."""
    ca, cert, key = _certificates(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "manager",
            "--insecure",
            "--actuator",
            "embedded",
            "--etcd-user",
            "u",
            "--etcd",
            "https://h:1",
        ],
    )
    assert result.exit_code == 2 and "--etcd-user and --etcd-password go together" in (
        result.output
    )
    settings = ManagerSettings(
        actuator=ActuatorKind.EMBEDDED,
        etcd=EtcdSettings(
            endpoints=("https://a:2379", "https://b:2379"), ca=ca, cert=cert, key=key
        ),
    )
    assert settings.etcd is not None and settings.etcd.tls
    assert settings.layout == EtcdLayout("/meshenc")


@pytest.mark.slow
def test_a_manager_process_elects_itself_over_tls_past_a_dead_first_endpoint(
    tmp_path: Path,
) -> None:
    """``meshenc manager --etcd https://<dead>,https://<etcd> --etcd-ca/--etcd-cert/--etcd-key``:
    it becomes the active manager (health SERVING) and its leader key is in etcd."""
    ca, cert, key = _certificates(tmp_path)
    etcd = EtcdProcess(log_path=tmp_path / "etcd.log", tls=(ca, cert, key))
    (port,) = free_ports(1)
    manager: subprocess.Popen[bytes] | None = None
    try:
        etcd.start()
        command = [
            sys.executable, "-m", "meshenc", "manager", "--insecure",
            "--listen", f"127.0.0.1:{port}",
            "--actuator", "embedded",
            "--etcd", f"{dead_endpoint('https')},{etcd.endpoint}",
            "--etcd-ca", str(ca), "--etcd-cert", str(cert), "--etcd-key", str(key),
        ]  # fmt: skip
        with (tmp_path / "manager.log").open("wb") as log:
            manager = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        async def serving() -> bool:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + 30.0
                while time.monotonic() < deadline:
                    try:
                        answer = await stub.Check(
                            health_pb2.HealthCheckRequest(service="meshenc.v1.MeshManager"),
                            timeout=1.0,
                        )
                        if answer.status == health_pb2.HealthCheckResponse.SERVING:
                            return True
                    except grpc.aio.AioRpcError:
                        pass
                    await asyncio.sleep(0.2)
            return False

        async def leader() -> bytes | None:
            client = connect_client(
                EtcdSettings(endpoints=(etcd.endpoint,), ca=ca, cert=cert, key=key)
            )
            try:
                found = await client.get(EtcdLayout().manager_leader)
                return None if found is None else bytes(found.value)
            finally:
                await client.close()

        def log_text() -> str:
            return (tmp_path / "manager.log").read_text(errors="replace")

        assert run(serving(), timeout=40.0), log_text()
        holder = run(leader())
        assert holder is not None and holder.decode().endswith(f"-{manager.pid}"), holder
        assert "is unreachable; trying" in log_text()
        manager.send_signal(signal.SIGTERM)
        assert manager.wait(timeout=15.0) == 0, log_text()
    finally:
        if manager is not None and manager.poll() is None:
            manager.kill()
            manager.wait()
        etcd.close()
