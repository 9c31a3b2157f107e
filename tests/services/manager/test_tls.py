"""The Mesh Manager with mutual TLS: an encoder speaks for itself only.

A real ManagerServer (real etcd, the real actuator; ``conftest.start_manager``) serves mutual
TLS with a certificate from ``services.common.certs``; clients call it over 127.0.0.1 with
their own. What is checked: a health stream or an escalation whose encoder id is not the
caller's certificate is refused with PERMISSION_DENIED; the owner's gets through; reads are open
to any certificate of the CA; plaintext is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshenc.local.etcd import EtcdProcess
from meshenc.v1 import manager_pb2, manager_pb2_grpc
from services.common.certs import CertificateSet, make_certificates
from services.common.grpc_server import open_channel
from services.common.tls import MANAGER, OPERATOR
from tests.services.manager_support import start_manager, stop_manager

from .test_server import _escalation, report

pytestmark = pytest.mark.asyncio


@pytest.fixture
def certs(tmp_path: Path) -> CertificateSet:
    return make_certificates(tmp_path / "certs", [MANAGER, OPERATOR, "enc-0", "enc-1"])


async def _once(message: manager_pb2.HealthReport) -> AsyncIterator[manager_pb2.HealthReport]:
    yield message


async def test_an_encoder_reports_and_escalates_for_itself_only(
    etcd: EtcdProcess, certs: CertificateSet
) -> None:
    manager = await start_manager(etcd, tls=certs.files(MANAGER), client_tls=certs.files("enc-1"))
    try:
        stub = manager.stub  # enc-1's certificate
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportHealth(_once(report("enc-0")))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'enc-1'" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Escalate(_escalation())  # enc-0's proposal
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        ack = await stub.ReportHealth(_once(report("enc-1")))
        assert ack.reports_accepted == 1
        await stub.GetTopology(manager_pb2.GetTopologyRequest())  # reads are open
        async with open_channel(
            manager.address, tls=certs.files("enc-0"), server_name=MANAGER
        ) as channel:
            verdict = await manager_pb2_grpc.MeshManagerStub(channel).Escalate(_escalation())
            assert verdict.verdict != manager_pb2.ESCALATION_VERDICT_UNSPECIFIED
        async with open_channel(manager.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await manager_pb2_grpc.MeshManagerStub(plaintext).GetTopology(
                    manager_pb2.GetTopologyRequest(), timeout=2.0
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_manager(manager)
