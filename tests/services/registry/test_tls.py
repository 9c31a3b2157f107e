"""Registry nodes with mutual TLS, over real gRPC on 127.0.0.1 with real certificates.

Two in-process replicas present the ``registry`` identity and join each other over TLS; encoders
call them with their own certificates (from ``services.common.certs``). What is checked: an
encoder stores its own record and no one else's; only a registry node's certificate may name a
sender (and so join the routing table or replicate a record); a plaintext client is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshenc.core.kademlia import key_for
from meshenc.v1 import registry_pb2, registry_pb2_grpc
from services.common.certs import CertificateSet, make_certificates
from services.common.grpc_server import open_channel
from services.common.registry_client import RegistryClient
from services.common.tls import OPERATOR, REGISTRY
from services.registry.node import RegistryNode

from .test_node import address, record, replicas, run


@pytest.fixture
def certs(tmp_path: Path) -> CertificateSet:
    return make_certificates(tmp_path / "certs", [REGISTRY, "e1", "e2", OPERATOR])


@contextlib.asynccontextmanager
async def stub_as(
    certs: CertificateSet, identity: str, node: RegistryNode
) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    async with open_channel(
        address(node), tls=certs.files(identity), server_name=REGISTRY
    ) as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def test_an_encoder_stores_its_own_record_only(certs: CertificateSet) -> None:
    async def scenario() -> None:
        async with replicas(2, tls=certs.files(REGISTRY)) as (first, second):
            async with RegistryClient([address(first)], tls=certs.files("e1")) as client:
                assert await client.publish(record("e1")) == 2  # replicated over TLS too
            async with stub_as(certs, "e1", second) as stub:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Store(registry_pb2.StoreRequest(record=record("e2")), timeout=2.0)
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "'e1'" in (caught.value.details() or "")
            async with stub_as(certs, OPERATOR, second) as stub:
                found = await stub.FindValue(
                    registry_pb2.FindValueRequest(key=key_for("e1")), timeout=2.0
                )
                assert found.record.encoder_id == "e1"
                missing = await stub.FindValue(
                    registry_pb2.FindValueRequest(key=key_for("e2")), timeout=2.0
                )
                assert missing.WhichOneof("result") == "closest"

    run(scenario())


def test_only_registry_nodes_name_a_sender(certs: CertificateSet) -> None:
    """A request with a sender joins the routing table and may replicate anyone's record."""
    sender = registry_pb2.NodeInfo(node_id=b"\x07" * 20, address="10.9.9.9:7500")

    async def scenario() -> None:
        async with replicas(1, tls=certs.files(REGISTRY)) as (node,):
            async with stub_as(certs, "e1", node) as stub:
                for call, request in (
                    (stub.Ping, registry_pb2.PingRequest(sender=sender)),
                    (stub.FindNode, registry_pb2.FindNodeRequest(sender=sender, target=bytes(20))),
                    (stub.Store, registry_pb2.StoreRequest(sender=sender, record=record("e1"))),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call(request, timeout=2.0)
                    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
                known = await stub.FindNode(
                    registry_pb2.FindNodeRequest(target=bytes(20)), timeout=2.0
                )
                assert list(known.nodes) == []
            async with stub_as(certs, REGISTRY, node) as stub:
                stored = await stub.Store(
                    registry_pb2.StoreRequest(sender=sender, record=record("e2")), timeout=2.0
                )
                assert stored.stored

    run(scenario())


def test_a_plaintext_client_is_refused(certs: CertificateSet) -> None:
    async def scenario() -> None:
        async with replicas(1, tls=certs.files(REGISTRY)) as (node,):
            channel = open_channel(address(node))
            try:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await registry_pb2_grpc.RegistryStub(channel).Ping(
                        registry_pb2.PingRequest(), timeout=2.0
                    )
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                await channel.close()

    run(scenario())
