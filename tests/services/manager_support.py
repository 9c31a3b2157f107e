"""A Mesh Manager under test: the real etcd actuator behind a real gRPC server.

Nothing is mocked: the manager runs in the test's event loop behind a real ``grpc.aio`` server
on a free loopback port, publishes through :class:`EtcdActuator` to the real etcd binary, and
learns its members from registration keys written to that etcd under real leases, exactly as
encoders write them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from meshenc.local.etcd import EtcdProcess
from meshenc.v1 import manager_pb2_grpc
from meshenc.wire.adjacency import EtcdLayout, RegistrationRecord
from services.common.grpc_server import open_channel
from services.common.peer_limits import PeerLimits
from services.common.tls import MANAGER, TlsFiles
from services.manager.etcd_actuator import EtcdActuator
from services.manager.server import FIRST_REPORT_TIMEOUT, ManagerServer
from services.manager.service import ManagerShell
from tests.services.support import etcd_client

_prefixes = itertools.count(1)


@dataclass
class Manager:
    """A manager under test and what a test needs to talk to it."""

    server: ManagerServer
    shell: ManagerShell
    stub: manager_pb2_grpc.MeshManagerStub
    channel: Any
    client: Any
    layout: EtcdLayout
    address: str
    leases: dict[str, Any]

    async def register(self, encoder: str, port: int, ttl: int = 10) -> None:
        """Announce ``encoder`` as an encoder does: its record under a lease of its own."""
        lease = await self.client.lease(ttl)
        self.leases[encoder] = lease
        record = RegistrationRecord(address=f"127.0.0.1:{port}")
        await self.client.put(
            self.layout.registration(encoder), record.to_json().encode(), lease=lease
        )

    async def unregister(self, encoder: str) -> None:
        """The lease ends (the encoder stopped, or its lease expired)."""
        await self.client.revoke_lease(self.leases.pop(encoder).id)

    async def stored_document(self, encoder: str) -> bytes | None:
        found = await self.client.get(self.layout.document(encoder))
        return None if found is None else bytes(found.value)


async def start_manager(
    etcd: EtcdProcess,
    *,
    active: bool = True,
    prefix: str | None = None,
    listen: str = "127.0.0.1:0",
    tls: TlsFiles | None = None,
    client_tls: TlsFiles | None = None,
    first_report_timeout: float = FIRST_REPORT_TIMEOUT,
    limits: PeerLimits | None = None,
    **shell: Any,
) -> Manager:
    """A manager (mutual TLS with ``tls``'s files) and a channel to it (with
    ``client_tls``'s)."""
    layout = EtcdLayout(prefix or f"/test{next(_prefixes)}")
    client = etcd_client(etcd)
    actuator = EtcdActuator(etcd_client(etcd), layout=layout, owns_client=True)
    options = {"tick_interval": 0.1, "reconnect_grace": 0.3, **shell}
    core = ManagerShell(actuator, **options)
    server = ManagerServer(core, tls=tls, limits=limits, first_report_timeout=first_report_timeout)
    port = await server.start(listen)
    if active:
        await server.set_active(True)
    channel = open_channel(f"127.0.0.1:{port}", tls=client_tls, server_name=MANAGER)
    return Manager(
        server,
        core,
        manager_pb2_grpc.MeshManagerStub(channel),
        channel,
        client,
        layout,
        f"127.0.0.1:{port}",
        {},
    )


async def stop_manager(manager: Manager) -> None:
    await manager.channel.close()
    await manager.server.stop(0.5)
    await manager.client.close()
