"""Registry nodes with mutual TLS, over real gRPC on 127.0.0.1 with real certificates.

Two in-process replicas present the ``registry`` identity and join each other over TLS; encoders
call them with their own certificates (from ``services.common.certs``). What is checked: an
encoder stores its own record and no one else's; only a registry node's certificate may name a
sender (and so join the routing table or replicate a record); a record must be signed by its
owner, so a node holding the ``registry`` certificate cannot replicate a forged one and a client
drops a forged one a hostile replica answers; a plaintext client is refused.

A hostile replica is a real ``RegistryNode`` whose store the test fills directly
(``store_record``, past the Store RPC's checks), as a compromised node could.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshenc.core.kademlia import id_from_bytes, key_for
from meshenc.v1 import registry_pb2, registry_pb2_grpc
from services.common.certs import CertificateSet, make_certificates
from services.common.grpc_server import open_channel
from services.common.registry_client import RegistryClient, next_version
from services.common.tls import OPERATOR, REGISTRY, record_signer
from services.registry.node import RegistryNode

from .test_node import address, record, replicas, run


@pytest.fixture
def certs(tmp_path: Path) -> CertificateSet:
    return make_certificates(tmp_path / "certs", [REGISTRY, "e1", "e2", OPERATOR])


def signed(
    certs: CertificateSet, signer: str, record: registry_pb2.EncoderRecord
) -> registry_pb2.EncoderRecord:
    """``record``, signed with ``signer``'s key and carrying its certificate."""
    record_signer(certs.files(signer)).sign(record)
    return record


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
                    registry_pb2.StoreRequest(
                        sender=sender, record=signed(certs, "e2", record("e2"))
                    ),
                    timeout=2.0,
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


def test_a_registry_node_cannot_replicate_a_forged_record(certs: CertificateSet) -> None:
    """The ``registry`` certificate may replicate anyone's record, but only as its owner signed
    it: a forged record for e1 (unsigned, signed by e2 or by the registry, or altered after e1
    signed it) is refused with PERMISSION_DENIED saying why, e1's record stays, and an honestly
    signed newer one replicates (the node's own republication) and resolves."""
    version = next_version(0, time.time_ns())
    honest = record("e1", version=version, address="10.1.1.1:7400")

    def forgery() -> registry_pb2.EncoderRecord:
        return record("e1", version=version + 1, address="10.6.6.6:7400")

    tampered = signed(certs, "e1", record("e1", version=version + 1, address="10.1.1.1:7400"))
    tampered.address = "10.6.6.6:7400"
    borrowed = signed(certs, "e2", forgery())
    borrowed.certificate = tampered.certificate  # e1's certificate, e2's signature
    forgeries = {
        "unsigned": (forgery(), "the record is not signed"),
        "signed by e2": (signed(certs, "e2", forgery()), "names 'e2'"),
        "signed by the registry": (signed(certs, REGISTRY, forgery()), "names 'registry'"),
        "altered after signing": (tampered, "does not match"),
        "e1's certificate, e2's signature": (borrowed, "does not match"),
    }

    async def scenario() -> None:
        async with replicas(2, tls=certs.files(REGISTRY)) as (first, second):
            async with RegistryClient([address(first)], tls=certs.files("e1")) as owner:
                assert await owner.publish(honest) == 2
            async with stub_as(certs, REGISTRY, second) as stub:
                for name, (forged, reason) in forgeries.items():
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.Store(
                            registry_pb2.StoreRequest(sender=first.info, record=forged),
                            timeout=2.0,
                        )
                    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
                    assert reason in (caught.value.details() or ""), (name, caught.value.details())
            assert second.forged == len(forgeries)
            # The replication path itself: a compromised first node holds a forgery and
            # republishes it; the second refuses it.
            planted = signed(certs, REGISTRY, forgery())
            first.store_record(None, planted)
            assert await first.republish(planted, 60.0) == 0
            assert second.forged == len(forgeries) + 1
            async with RegistryClient([address(second)], tls=certs.files("e2")) as reader:
                found = await reader.resolve("e1")
                assert found is not None
                assert (found.address, found.version) == (honest.address, honest.version)
                newer = signed(
                    certs, "e1", record("e1", version=version + 2, address="10.1.1.2:7400")
                )
                first.store_record(None, newer)
                assert await first.republish(newer, 60.0) == 1
                found = await reader.resolve("e1")
                assert found is not None
                assert (found.address, found.version) == (newer.address, newer.version)
                assert reader.forged == 0

    run(scenario())


def test_a_client_drops_a_forged_record_from_a_hostile_replica(
    certs: CertificateSet, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile replica (closest to the key, so asked first) answers a forged record of e1;
    the client drops it, asks on, and resolves e1's own record from the honest replica. A
    record only the hostile replica holds resolves to nothing. Both are counted; one log line."""
    key = id_from_bytes(key_for("e1"))
    version = next_version(0, time.time_ns())
    genuine = signed(certs, "e1", record("e1", version=version))
    forged = signed(certs, REGISTRY, record("e1", version=version + 1, address="10.6.6.6:7400"))
    lonely = signed(certs, "e1", record("e1", version=version))
    lonely.encoder_id = "e3"  # e1's signature and certificate on e3's record

    async def scenario() -> None:
        async with replicas(2, node_ids=[key ^ (1 << 159), key ^ 1], tls=certs.files(REGISTRY)) as (
            honest,
            hostile,
        ):
            honest.store_record(None, genuine)
            hostile.store_record(None, forged)
            hostile.store_record(None, lonely)
            async with RegistryClient(
                [address(hostile), address(honest)], alpha=1, tls=certs.files("e2")
            ) as client:
                found = await client.resolve("e1")
                assert found is not None
                assert (found.address, found.version) == (genuine.address, genuine.version)
                assert client.forged == 1
                assert await client.resolve("e3") is None
                assert client.forged == 2

    with caplog.at_level(logging.WARNING, logger="meshenc.registry.client"):
        run(scenario())
    lines = [r.getMessage() for r in caplog.records if "dropped a record" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "forged record of 'e1'" in lines[0] and "names 'registry'" in lines[0], lines
