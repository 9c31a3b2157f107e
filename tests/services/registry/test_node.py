"""Registry nodes over real gRPC on 127.0.0.1 with free ports; nothing is mocked.

Most tests run registry nodes in-process (``RegistryNode.serve`` on the test's own event
loop, each test on a fresh loop under a timeout) and talk to them through raw stubs and the
``RegistryClient``. The kill -9 test starts real ``python -m meshenc registry`` processes.
Every test stops the nodes, channels and processes it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # type: ignore[import-untyped]
    ProtoReflectionDescriptorDatabase,
)

from meshenc.cli.main import cli
from meshenc.core.kademlia import id_to_bytes, key_for
from meshenc.local.ports import free_ports
from meshenc.v1 import registry_pb2, registry_pb2_grpc
from services.common.grpc_server import insecure_channel
from services.common.registry_client import (
    SERVICE_NAME,
    RecordKeeper,
    RegistryClient,
    RegistryUnavailable,
)
from services.common.tls import TlsFiles
from services.registry.node import RegistryNode
from services.registry.settings import RegistrySettings

T = TypeVar("T")

HEALTHY = registry_pb2.ENCODER_HEALTH_HEALTHY
DEGRADED = registry_pb2.ENCODER_HEALTH_DEGRADED


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` on a fresh event loop, failing the test after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def record(encoder_id: str, version: int = 1, **fields: Any) -> registry_pb2.EncoderRecord:
    values: dict[str, Any] = {
        "address": "10.1.2.3:7400",
        "segment_id": "seg-1",
        "capacity": 4,
        "health": HEALTHY,
        "ttl_ms": 60_000,
    }
    values.update(fields)
    return registry_pb2.EncoderRecord(encoder_id=encoder_id, version=version, **values)


def address(node: RegistryNode) -> str:
    return f"127.0.0.1:{node.port}"


@contextlib.asynccontextmanager
async def replicas(
    count: int, *, node_ids: Sequence[int] | None = None, **settings: Any
) -> AsyncIterator[list[RegistryNode]]:
    """``count`` in-process registry nodes (with ``node_ids``, those ids; random otherwise);
    every one after the first joins through it."""
    nodes: list[RegistryNode] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for index in range(count):
            seeds = [address(nodes[0])] if nodes else []
            node = RegistryNode(
                RegistrySettings(
                    listen="127.0.0.1:0",
                    node_id=id_to_bytes(node_ids[index]).hex() if node_ids else None,
                    seeds=seeds,
                    tick_interval=0.05,
                    join_timeout=5.0,
                    rpc_timeout=1.0,
                    **settings,
                )
            )
            await node.start()
            nodes.append(node)
            tasks.append(asyncio.create_task(node.serve(), name=f"registry-{index}"))
            if seeds:
                await asyncio.wait_for(node.joined.wait(), 10.0)
        yield nodes
    finally:
        for node in nodes:
            node.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def known_nodes(stub: registry_pb2_grpc.RegistryStub) -> int:
    """How many nodes a registry node lists for an arbitrary target (its table, up to k)."""
    answer = await stub.FindNode(registry_pb2.FindNodeRequest(target=b"\x00" * 20), timeout=2.0)
    return len(answer.nodes)


# --- bad input --------------------------------------------------------------------------------

GOOD_SENDER = registry_pb2.NodeInfo(node_id=b"\x01" * 20, address="10.0.0.9:7500")

BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("FindNode", registry_pb2.FindNodeRequest(target=b"\x00" * 5), "target"),
    ("FindNode", registry_pb2.FindNodeRequest(target=b"\x00" * 21), "target"),
    ("FindValue", registry_pb2.FindValueRequest(), "key"),
    (
        "FindNode",
        registry_pb2.FindNodeRequest(
            sender=registry_pb2.NodeInfo(node_id=b"\x07" * 3, address="10.0.0.7:7500"),
            target=b"\x00" * 20,
        ),
        "sender.node_id",
    ),
    (
        "Ping",
        registry_pb2.PingRequest(
            sender=registry_pb2.NodeInfo(node_id=b"\x07" * 20, address="no port here")
        ),
        "sender.address",
    ),
    ("Store", registry_pb2.StoreRequest(sender=GOOD_SENDER), "record"),
    ("Store", registry_pb2.StoreRequest(record=record("enc-bad", version=0)), "record.version"),
    (
        "Store",
        registry_pb2.StoreRequest(record=record("enc-bad", health=0)),
        "record.health",
    ),
    ("Store", registry_pb2.StoreRequest(record=record("enc bad/../x")), "record.encoder_id"),
    (
        "Store",
        registry_pb2.StoreRequest(record=record("enc-bad", ttl_ms=86_400_001)),
        "record.ttl_ms",
    ),
    (
        "Store",
        registry_pb2.StoreRequest(record=record("enc-bad", address="10.0.0.1:99999")),
        "record.address",
    ),
]


def test_bad_requests_get_invalid_argument_and_the_node_keeps_serving() -> None:
    async def scenario() -> None:
        async with replicas(1) as (node,):
            channel = insecure_channel(address(node))
            stub = registry_pb2_grpc.RegistryStub(channel)
            try:
                for method, request, field in BAD_REQUESTS:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await getattr(stub, method)(request, timeout=2.0)
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                    assert field in (caught.value.details() or ""), (method, field)

                # Still serving, and nothing of the rejected requests got in: no record, and
                # no sender of a rejected request in the routing table.
                pong = await stub.Ping(registry_pb2.PingRequest(), timeout=2.0)
                assert pong.responder.node_id == id_to_bytes(node.node_id)
                assert await known_nodes(stub) == 0
                missing = await stub.FindValue(
                    registry_pb2.FindValueRequest(key=key_for("enc-bad")), timeout=2.0
                )
                assert missing.WhichOneof("result") == "closest"
                stored = await stub.Store(
                    registry_pb2.StoreRequest(record=record("enc-good")), timeout=2.0
                )
                assert stored.stored and stored.current_version == 1
            finally:
                await channel.close()

    run(scenario())


def test_health_and_reflection_are_served() -> None:
    async def scenario() -> None:
        async with replicas(1) as (node,):
            channel = insecure_channel(address(node))
            try:
                health = health_pb2_grpc.HealthStub(channel)
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2.0
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            finally:
                await channel.close()

            def services() -> list[str]:
                with grpc.insecure_channel(address(node)) as sync_channel:
                    return list(ProtoReflectionDescriptorDatabase(sync_channel).get_services())

            assert SERVICE_NAME in await asyncio.to_thread(services)

    run(scenario())


# --- records across replicas ------------------------------------------------------------------


def test_a_record_stored_on_one_replica_resolves_through_another() -> None:
    async def scenario() -> None:
        async with replicas(3) as (first, _second, third):
            channel = insecure_channel(address(first))
            try:
                # A plain Store on the first replica only: no other replica holds it.
                stored = await registry_pb2_grpc.RegistryStub(channel).Store(
                    registry_pb2.StoreRequest(record=record("enc-7", address="10.0.0.7:7400")),
                    timeout=2.0,
                )
                assert stored.stored
            finally:
                await channel.close()
            # A client that only knows the third replica finds it through the DHT.
            async with RegistryClient([address(third)]) as client:
                found = await client.resolve("enc-7")
                assert found is not None
                assert (found.encoder_id, found.address, found.version) == (
                    "enc-7",
                    "10.0.0.7:7400",
                    1,
                )
                assert 0 < found.ttl_ms <= 60_000
                assert await client.resolve("enc-unknown") is None

    run(scenario())


def test_a_newer_version_wins_and_an_older_one_never_comes_back() -> None:
    async def scenario() -> None:
        async with replicas(3) as nodes:
            async with RegistryClient([address(nodes[1])]) as client:
                assert await client.publish(record("enc-1", version=1, segment_id="old")) == 3
                assert await client.publish(record("enc-1", version=3, segment_id="new")) == 3
                # An older version is refused everywhere; the replicas report what they hold.
                assert await client.publish(record("enc-1", version=2, segment_id="stale")) == 3
                for node in nodes:
                    async with RegistryClient([address(node)]) as one:
                        found = await one.resolve("enc-1")
                        assert found is not None
                        assert (found.version, found.segment_id) == (3, "new")
            channel = insecure_channel(address(nodes[0]))
            try:
                answer = await registry_pb2_grpc.RegistryStub(channel).Store(
                    registry_pb2.StoreRequest(record=record("enc-1", version=2)), timeout=2.0
                )
                assert (answer.stored, answer.current_version) == (False, 3)
            finally:
                await channel.close()

    run(scenario())


def test_a_version_far_ahead_of_the_clock_is_refused_so_the_owner_keeps_its_record() -> None:
    async def scenario() -> None:
        async with replicas(1) as (node,):
            channel = insecure_channel(address(node))
            stub = registry_pb2_grpc.RegistryStub(channel)
            now_us = time.time_ns() // 1000
            try:
                # A hijacker's record with a version an hour ahead: it would beat every refresh.
                hijack = record("enc-1", version=now_us + 3_600_000_000, address="10.6.6.6:1")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Store(registry_pb2.StoreRequest(record=hijack), timeout=2.0)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "record.version" in (caught.value.details() or "")
                # The owner's own versions (its clock's microseconds) are taken.
                owned = await stub.Store(
                    registry_pb2.StoreRequest(record=record("enc-1", version=now_us)), timeout=2.0
                )
                assert owned.stored and owned.current_version == now_us
            finally:
                await channel.close()

    run(scenario())


def test_records_expire_when_their_owner_stops_refreshing() -> None:
    async def scenario() -> None:
        async with replicas(2) as nodes, RegistryClient([address(nodes[0])]) as client:
            await client.publish(record("enc-short", ttl_ms=300))
            assert await client.resolve("enc-short") is not None
            await asyncio.sleep(0.5)
            assert await client.resolve("enc-short") is None

    run(scenario())


def test_a_record_keeper_refreshes_with_rising_versions_and_publishes_changes() -> None:
    async def scenario() -> None:
        async with replicas(2) as nodes, RegistryClient([address(n) for n in nodes]) as client:
            keeper = RecordKeeper(client, record("enc-k", ttl_ms=600))
            task = asyncio.create_task(keeper.run())
            try:
                versions: list[int] = []
                deadline = time.monotonic() + 5.0
                while len(set(versions)) < 3 and time.monotonic() < deadline:
                    found = await client.resolve("enc-k")
                    if found is not None:
                        versions.append(found.version)
                    await asyncio.sleep(0.05)
                assert len(set(versions)) >= 3, versions
                assert versions == sorted(versions)
                # The record outlives its 600 ms ttl because it is refreshed.
                await asyncio.sleep(0.8)
                assert await client.resolve("enc-k") is not None

                keeper.update(health=DEGRADED, segment_id="seg-9")
                deadline = time.monotonic() + 5.0
                found = None
                while time.monotonic() < deadline:
                    found = await client.resolve("enc-k")
                    if found is not None and found.health == DEGRADED:
                        break
                    await asyncio.sleep(0.05)
                assert found is not None
                assert (found.health, found.segment_id) == (DEGRADED, "seg-9")
                assert found.version > versions[-1]
            finally:
                keeper.stop()
                await task

    run(scenario())


def test_the_client_needs_one_reachable_replica() -> None:
    async def scenario() -> None:
        (dead,) = free_ports(1)
        async with (
            replicas(2) as nodes,
            RegistryClient([f"127.0.0.1:{dead}", address(nodes[1])]) as client,
        ):
            assert await client.publish(record("enc-f")) == 2
            assert await client.resolve("enc-f") is not None
        async with RegistryClient([f"127.0.0.1:{dead}"], rpc_timeout=0.5) as lonely:
            with pytest.raises(RegistryUnavailable, match="no registry replica answered"):
                await lonely.resolve("enc-f")

    run(scenario())


def test_replicas_find_each_other_whatever_order_they_start_in() -> None:
    async def scenario() -> None:
        (late_port,) = free_ports(1)
        late_address = f"127.0.0.1:{late_port}"
        async with replicas(1) as (first,):
            early = RegistryNode(
                RegistrySettings(
                    listen="127.0.0.1:0",
                    seeds=[address(first), late_address],
                    tick_interval=0.05,
                    rpc_timeout=1.0,
                )
            )
            # The late replica has no seeds: only the early one's retries can introduce them.
            late = RegistryNode(RegistrySettings(listen=late_address, tick_interval=0.05))
            tasks = [asyncio.create_task(early.serve())]
            try:
                await asyncio.wait_for(early.joined.wait(), 10.0)
                tasks.append(asyncio.create_task(late.serve()))
                channel = insecure_channel(late_address)
                try:
                    stub = registry_pb2_grpc.RegistryStub(channel)
                    deadline = time.monotonic() + 10.0
                    while True:
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            if await known_nodes(stub) >= 1:
                                break
                        assert time.monotonic() < deadline, "the late replica stayed alone"
                        await asyncio.sleep(0.1)
                finally:
                    await channel.close()
            finally:
                early.request_stop()
                late.request_stop()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario())


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--node-id", "xyz"], "40 hex digits"),
        (["--seeds", "10.0.0.1"], "HOST:PORT"),
        (["--k", "3", "--alpha", "4"], "must not exceed k"),
        (["--advertise", "0.0.0.0:7500"], "reachable host"),
    ],
)
def test_the_command_refuses_bad_settings(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["registry", "--insecure", *arguments])
    assert result.exit_code == 2
    assert message in result.output


# --- real processes ---------------------------------------------------------------------------


@contextlib.contextmanager
def registry_processes(
    tmp_path: Path, count: int, *, tls: TlsFiles | None = None
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[str]]]:
    """``count`` registry processes on free ports, each seeded with all of them (mutual TLS
    with ``tls``, plaintext without); yields the processes and their addresses."""
    addresses = [f"127.0.0.1:{p}" for p in free_ports(count)]
    seeds = ",".join(addresses)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index, listen in enumerate(addresses):
            command = [
                sys.executable, "-m", "meshenc", "registry",
                *(tls.flags() if tls else ["--insecure"]),
                "--listen", listen,
                "--seeds", seeds,
                "--log-level", "DEBUG",
            ]  # fmt: skip
            with (tmp_path / f"registry-{index}.log").open("wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        yield processes, addresses
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.slow
def test_three_replicas_fifty_records_and_a_kill_9(tmp_path: Path) -> None:
    """Records published through one replica all resolve after that replica is killed."""
    with registry_processes(tmp_path, 3) as (processes, addresses):

        async def scenario() -> tuple[list[int], dict[str, registry_pb2.EncoderRecord | None]]:
            channels = [insecure_channel(a) for a in addresses]
            try:
                stubs = [registry_pb2_grpc.RegistryStub(c) for c in channels]
                # Ready when every replica knows the other two (joins went through).
                deadline = time.monotonic() + 30.0
                while True:
                    counts = await asyncio.gather(
                        *(known_nodes(s) for s in stubs), return_exceptions=True
                    )
                    if counts == [2, 2, 2]:
                        break
                    assert time.monotonic() < deadline, (
                        f"replicas did not find each other: {counts}"
                    )
                    await asyncio.sleep(0.1)
            finally:
                for channel in channels:
                    await channel.close()
            async with RegistryClient([addresses[0]]) as client:
                held = [
                    await client.publish(record(f"enc-{i}", address=f"10.0.{i}.1:7400"))
                    for i in range(50)
                ]
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(timeout=10.0)
            async with RegistryClient(addresses[:2]) as client:
                found = await client.resolve_many(f"enc-{i}" for i in range(50))
            return held, found

        held, found = run(scenario(), timeout=60.0)
        assert processes[0].returncode == -signal.SIGKILL
        survivors = processes[1:]
    codes = [p.returncode for p in survivors]
    logs = {p.name: p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log")}
    assert held == [3] * 50, logs
    missing = [encoder_id for encoder_id, r in found.items() if r is None]
    assert not missing, (missing, logs)
    assert all(
        r is not None and r.address == f"10.0.{i}.1:7400"
        for i, r in enumerate(found[f"enc-{i}"] for i in range(50))
    )
    assert codes == [0, 0], logs  # SIGTERM stops the survivors gracefully
