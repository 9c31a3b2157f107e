"""The encoder's control plane: its topology source, its registration and its manager link.

Theory of operation
-------------------
None of this is in the frame path. :class:`ControlPlane` runs, next to the live loop:

- the topology source chosen by ``--topology`` (``static``: ``--peers``; ``etcd``: the
  encoder's key written by the manager; ``kubernetes``: its ConfigMap), handing every new
  :class:`~meshenc.wire.adjacency.AdjacencyDocument` to the runtime, which rewires;
- in embedded mode (``etcd``), :class:`EncoderRegistration`, which keeps this encoder's
  address under its lease so the manager sees it come and go;
- the :class:`~services.encoder.manager_link.ManagerLink` (``--manager``): health reports
  about once a second, and escalations.

Each part retries by itself; none of them stops the encoder. :meth:`ControlPlane.close`
revokes the registration first (the manager rewires at once instead of after the lease), then
ends the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from meshenc.v1 import manager_pb2
from meshenc.wire.adjacency import AdjacencyDocument, EtcdLayout, RegistrationRecord
from services.encoder.leadership import connect_client
from services.encoder.manager_link import ManagerLink
from services.encoder.settings import EncoderSettings, TopologyMode
from services.encoder.topology_source import (
    EncoderRegistration,
    EtcdTopologySource,
    KubernetesTopologySource,
)

__all__ = ["ControlPlane"]

log = logging.getLogger("meshenc.encoder.control")


def _in_cluster_api() -> k8s.ApiClient:
    """An API client with the pod's service account (the encoder reads its own ConfigMap)."""
    k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


class ControlPlane:
    """Topology, registration and manager link of one encoder (see the module docstring).

    Args:
        settings: the encoder's settings.
        apply: called on the event loop with each new document of this encoder.
        report: builds the next health report.
    """

    def __init__(
        self,
        settings: EncoderSettings,
        apply: Callable[[AdjacencyDocument], None],
        report: Callable[[], manager_pb2.HealthReport],
    ) -> None:
        self.settings = settings
        self._apply = apply
        self.link = None if settings.manager is None else ManagerLink(settings.manager, report)
        self._etcd: Any = None
        self._api: Any = None
        self.registration: EncoderRegistration | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._escalations: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start following the topology, registering and reporting (as configured)."""
        settings = self.settings
        mode = settings.topology_mode
        source: AsyncIterator[AdjacencyDocument] | None = None
        if mode is TopologyMode.ETCD:
            assert settings.etcd is not None  # the settings check it
            self._etcd = connect_client(settings.etcd)
            layout = EtcdLayout(settings.etcd.prefix)
            source = aiter(EtcdTopologySource(self._etcd, settings.id, layout=layout))
            self.registration = EncoderRegistration(
                self._etcd,
                settings.id,
                RegistrationRecord(address=settings.advertise_address),
                layout=layout,
                lease_ttl=settings.etcd.lease_ttl,
            )
            self._spawn(self.registration.run(), "registration")
        elif mode is TopologyMode.KUBERNETES:
            self._api = _in_cluster_api()
            source = aiter(KubernetesTopologySource(self._api, settings.namespace, settings.id))
        if source is not None:
            self._spawn(self._follow(source), "topology")
        if self.link is not None:
            self._spawn(self.link.run(), "manager-link")

    def _spawn(self, work: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def _follow(self, source: AsyncIterator[AdjacencyDocument]) -> None:
        async for document in source:
            log.info(
                "topology epoch %d: neighbours %s, segment %r, leader %r",
                document.epoch,
                sorted(document.neighbours),
                document.segment,
                document.leader,
            )
            try:
                self._apply(document)
            except Exception:
                log.exception("could not apply topology epoch %d", document.epoch)

    def escalate(
        self,
        request: manager_pb2.Escalation,
        on_verdict: Callable[[manager_pb2.EscalationAck | None], None],
    ) -> None:
        """Send an escalation without waiting; ``on_verdict`` gets the answer (None: none)."""
        if self.link is None:
            on_verdict(None)
            return
        link = self.link

        async def ask() -> None:
            on_verdict(await link.escalate(request))

        task = asyncio.create_task(ask(), name="escalation")
        self._escalations.add(task)
        task.add_done_callback(self._escalations.discard)

    async def close(self) -> None:
        """Revoke the registration, then stop everything else."""
        if self.registration is not None:
            await self.registration.close()
        for task in [*self._tasks, *self._escalations]:
            task.cancel()
        for task in [*self._tasks, *self._escalations]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link is not None:
            await self.link.close()
        if self._etcd is not None:
            with contextlib.suppress(Exception):
                await self._etcd.close()
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._api.close()
