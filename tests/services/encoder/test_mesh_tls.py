"""The encoder's mesh with mutual TLS, over real gRPC on 127.0.0.1 with real certificates.

The certificates come from ``services.common.certs`` (what ``meshenc certs`` writes); the
encoder runtime is ``FakeHandler`` from ``test_mesh_grpc``. What is checked: plaintext and
certificates of another CA do not get a call through; a certificate for one encoder cannot say
Hello as another; only the operator changes the mesh (SetParameters); two encoders link up over
TLS, and a dialer refuses an acceptor whose certificate is not the neighbour it dialed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from services.common.certs import CertificateSet, make_certificates
from services.common.grpc_server import open_channel
from services.common.tls import OPERATOR, TlsFiles
from services.encoder.mesh import MeshLinks, MeshServer

from .test_mesh import FakeHandler, Node, eventually, hello, run, stop


@pytest.fixture
def certs(tmp_path: Path) -> CertificateSet:
    return make_certificates(tmp_path / "certs", ["e1", "e2", "e3", OPERATOR])


async def start_tls_node(
    node_id: str, neighbours: list[str], certs: CertificateSet, identity: str | None = None
) -> Node:
    """A node serving mutual TLS with ``identity``'s certificate (its own id's by default)."""
    files = certs.files(identity or node_id)
    handler = FakeHandler(node_id, neighbours)
    links = MeshLinks(handler, tls=files)
    handler.links = links
    server = MeshServer(handler, links, tls=files)
    port = await server.start("127.0.0.1:0")
    return Node(handler, links, server, port)


class TlsPeer:
    """A bare Exchange call over ``channel``: the Hello it is told, then the answer."""

    def __init__(self, channel: grpc.aio.Channel, sender: str) -> None:
        self.channel = channel
        self.call = mesh_pb2_grpc.EncoderMeshStub(channel).Exchange(
            iter([mesh_pb2.MeshMessage(hello=hello(sender))])
        )

    async def first(self) -> mesh_pb2.MeshMessage:
        answer: mesh_pb2.MeshMessage = await anext(aiter(self.call))
        return answer

    async def error(self) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in self.call:
                pass
        return info.value

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def test_a_plaintext_client_is_refused(certs: CertificateSet) -> None:
    async def main() -> None:
        node = await start_tls_node("e1", ["e2"], certs)
        peer = TlsPeer(grpc.aio.insecure_channel(node.address), "e2")
        try:
            error = await peer.error()
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert node.server.accepted == {} and node.server.refused == {}
        finally:
            await peer.close()
            await stop(node)

    run(main())


def test_a_certificate_of_another_ca_is_refused(certs: CertificateSet, tmp_path: Path) -> None:
    """Same names, another CA: the handshake fails on both sides of the trust."""
    stranger = make_certificates(tmp_path / "other-ca", ["e2"]).files("e2")

    async def main() -> None:
        node = await start_tls_node("e1", ["e2"], certs)
        # The stranger trusts our CA (so it would accept the server), and presents its own.
        mixed = TlsFiles(ca=certs.ca, cert=stranger.cert, key=stranger.key)
        peer = TlsPeer(open_channel(node.address, tls=mixed, server_name="e1"), "e2")
        try:
            error = await peer.error()
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert node.server.accepted == {}
        finally:
            await peer.close()
            await stop(node)

    run(main())


def test_one_encoders_certificate_cannot_say_hello_as_another(
    certs: CertificateSet, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        node = await start_tls_node("e1", ["e2", "e3"], certs)
        e3 = certs.files("e3")
        impostors = [
            TlsPeer(open_channel(node.address, tls=e3, server_name="e1"), "e2") for _ in range(3)
        ]
        honest = TlsPeer(open_channel(node.address, tls=certs.files("e2"), server_name="e1"), "e2")
        try:
            for impostor in impostors:
                error = await impostor.error()
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "'e3'" in error.details() and "'e2'" in error.details()
            assert node.server.refused["e2"] == 3
            assert not node.links.connected("e3")
            # The certificate's owner is welcome.
            answer = await honest.first()
            assert answer.hello.sender_id == "e1"
            assert node.server.accepted["e2"] == 1
        finally:
            for peer in (*impostors, honest):
                await peer.close()
            await stop(node)

    with caplog.at_level(logging.WARNING, logger="meshenc.encoder.mesh"):
        run(main())
    lines = [r for r in caplog.records if "its certificate" in r.getMessage()]
    assert len(lines) == 1, "refusals of one kind are logged once per interval"


def test_set_parameters_is_the_operators(certs: CertificateSet) -> None:
    async def main() -> None:
        node = await start_tls_node("e1", ["e2"], certs)
        request = mesh_pb2.SetParametersRequest(bitrate_kbps=900)
        try:
            async with open_channel(node.address, tls=certs.files("e2"), server_name="e1") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await mesh_pb2_grpc.EncoderMeshStub(ch).SetParameters(request, timeout=5)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                # Reading is anyone's with a certificate of the CA.
                state = await mesh_pb2_grpc.EncoderMeshStub(ch).GetState(
                    mesh_pb2.GetStateRequest(), timeout=5
                )
                assert state.encoder_id == "e1"
            assert node.handler.parameter_requests == []
            operator = certs.files(OPERATOR)
            async with open_channel(node.address, tls=operator, server_name="e1") as ch:
                answer = await mesh_pb2_grpc.EncoderMeshStub(ch).SetParameters(request, timeout=5)
            assert (answer.proposal_id, answer.effective_segment) == (7, 123)
            assert node.handler.parameter_requests == [(900, None)]
        finally:
            await stop(node)

    run(main())


def test_two_encoders_link_over_tls(certs: CertificateSet) -> None:
    async def main() -> None:
        e1 = await start_tls_node("e1", ["e2"], certs)
        e2 = await start_tls_node("e2", ["e1"], certs)
        try:
            e1.links.set_peers({"e2": e2.address})
            e2.links.set_peers({"e1": e1.address})
            await eventually(lambda: e1.links.connected("e2") and e2.links.connected("e1"))
            assert e2.server.accepted["e1"] == 1  # e1 < e2: e1 dialed
        finally:
            await stop(e1, e2)

    run(main())


def test_a_dialer_refuses_an_acceptor_with_another_certificate(certs: CertificateSet) -> None:
    """e1 dials what it was told is e2; the server there presents e3's certificate."""

    async def main() -> None:
        e1 = await start_tls_node("e1", ["e2"], certs)
        fake = await start_tls_node("e2", ["e1"], certs, identity="e3")
        try:
            e1.links.set_peers({"e2": fake.address})
            with pytest.raises(AssertionError):
                await eventually(lambda: e1.links.connected("e2"), timeout=1.5)
            assert fake.server.accepted == {}
        finally:
            await stop(e1, fake)

    run(main())
