"""The encoder's control plane: its topology source, its registrations and its manager link.

Theory of operation
-------------------
None of this is in the frame path. :class:`ControlPlane` runs, next to the live loop:

- the topology source chosen by ``--topology`` (``static``: ``--peers``; ``etcd``: the
  encoder's key written by the manager; ``kubernetes``: its ConfigMap), handing every new
  :class:`~meshenc.wire.adjacency.AdjacencyDocument` to the runtime, which rewires;
- in embedded mode (``etcd``), :class:`EncoderRegistration`, which keeps this encoder's
  address under its lease so the manager sees it come and go;
- with ``--registry``, a :class:`~services.common.registry_client.RecordKeeper` that keeps
  this encoder's record in the DHT registry (address, segment, capacity, health) and
  publishes it again whenever the runtime reports a change of segment or health
  (:meth:`ControlPlane.publish`); and, when ``--peers`` names neighbours by id alone, the
  :func:`~services.encoder.topology_source.registry_topology` source that resolves their
  addresses through the registry;
- the :class:`~services.encoder.manager_link.ManagerLink` (``--manager``): health reports
  about once a second, and escalations.

Health in the registry (:func:`record_health`): HEALTHY while the encoder holds a lock with
confidence, DEGRADED otherwise, DRAINING from the moment it is asked to stop
(:meth:`ControlPlane.drain`); it stays DRAINING. The record is not deleted (the DHT has no
delete): refreshes stop, and it expires ``--registry-ttl`` seconds later everywhere.

Each part retries by itself; none of them stops the encoder. :meth:`ControlPlane.close`
revokes the registration first (the manager rewires at once instead of after the lease),
publishes the DRAINING record one last time (whatever the keeper was doing), then ends the
rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from meshenc.v1 import manager_pb2, registry_pb2
from meshenc.wire.adjacency import AdjacencyDocument, EtcdLayout, RegistrationRecord
from services.common.etcd import connect_client
from services.common.registry_client import (
    RecordKeeper,
    RegistryClient,
    RegistryError,
    next_version,
)
from services.common.shutdown import bounded_step
from services.encoder.manager_link import ManagerLink
from services.encoder.settings import EncoderSettings, TopologyMode
from services.encoder.topology_source import (
    EncoderRegistration,
    EtcdTopologySource,
    registry_topology,
)

__all__ = ["HEALTHY_CONFIDENCE", "ControlPlane", "record_health"]

log = logging.getLogger("meshenc.encoder.control")

HEALTHY_CONFIDENCE = 0.5
"""The confidence at or above which a locked encoder calls itself HEALTHY in the registry."""
HEALTH_HYSTERESIS = 0.1
"""How far below ``HEALTHY_CONFIDENCE`` a HEALTHY encoder may fall before it says DEGRADED,
so that a confidence hovering at the threshold does not republish the record every second."""
FINAL_PUBLISH_TIMEOUT = 2.0
"""Seconds the last (DRAINING) publication may take when the encoder stops."""
CLOSE_STEP_TIMEOUT = 2.0
"""Seconds any other step of :meth:`ControlPlane.close` may take: a step that waits on a peer
or a stream that never answers would hold the stop past the grace its launcher gives after
SIGTERM (a kill -9 then, and a log that does not say which step it was)."""


def record_health(
    locked: bool, confidence: float, previous: registry_pb2.EncoderHealth.ValueType
) -> registry_pb2.EncoderHealth.ValueType:
    """HEALTHY when locked and confident, else DEGRADED (with hysteresis around the
    threshold); DRAINING is final and stays."""
    if previous == registry_pb2.ENCODER_HEALTH_DRAINING:
        return previous
    threshold = HEALTHY_CONFIDENCE
    if previous == registry_pb2.ENCODER_HEALTH_HEALTHY:
        threshold -= HEALTH_HYSTERESIS
    if locked and confidence >= threshold:
        return registry_pb2.ENCODER_HEALTH_HEALTHY
    return registry_pb2.ENCODER_HEALTH_DEGRADED


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
        self.link = (
            None
            if settings.manager is None
            else ManagerLink(settings.manager, report, tls=settings.tls)
        )
        self._etcd: Any = None
        self._api: Any = None
        self.registration: EncoderRegistration | None = None
        self.registry: RegistryClient | None = None
        self.keeper: RecordKeeper | None = None
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
                RegistrationRecord(
                    address=settings.advertise_address,
                    capacity=settings.capacity,
                    zone=settings.region,
                ),
                layout=layout,
                lease_ttl=settings.etcd.lease_ttl,
            )
            self._spawn(self.registration.run(), "registration")
        elif mode is TopologyMode.KUBERNETES:
            # Imported here: the Kubernetes client is slow to import, and only cluster mode
            # needs it (a restarted encoder waited for it before its first picture).
            from services.common.kubernetes import connect_api  # noqa: PLC0415
            from services.encoder.kubernetes_topology import KubernetesTopologySource  # noqa: PLC0415

            self._api = await connect_api()
            source = aiter(KubernetesTopologySource(self._api, settings.namespace, settings.id))
        if settings.registry:
            self.registry = RegistryClient(settings.registry, tls=settings.tls)
            if mode is TopologyMode.STATIC and not all(settings.peers.values()):
                source = aiter(
                    registry_topology(
                        settings.id, settings.peers, self.registry, segment=settings.segment
                    )
                )
        if source is not None:
            self._spawn(self._follow(source), "topology")
        if self.registry is not None:
            self.keeper = RecordKeeper(
                self.registry,
                registry_pb2.EncoderRecord(
                    encoder_id=settings.id,
                    address=settings.advertise_address,
                    segment_id=settings.segment,
                    capacity=settings.capacity,
                    health=registry_pb2.ENCODER_HEALTH_DEGRADED,  # not locked yet
                    version=1,
                    ttl_ms=round(settings.registry_ttl * 1000),
                ),
            )
            self._spawn(self.keeper.run(), "registry-record")
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

    def publish(
        self,
        *,
        segment: str | None = None,
        health: registry_pb2.EncoderHealth.ValueType | None = None,
    ) -> None:
        """This encoder's segment or registry health is now this: republish the record if
        that changes it (nothing without ``--registry``; health stays DRAINING once drained)."""
        keeper = self.keeper
        if keeper is None:
            return
        changes: dict[str, object] = {}
        if segment is not None and segment != keeper.record.segment_id:
            changes["segment_id"] = segment
        draining = keeper.record.health == registry_pb2.ENCODER_HEALTH_DRAINING
        if health is not None and health != keeper.record.health and not draining:
            changes["health"] = health
        if changes:
            keeper.update(**changes)

    def drain(self) -> None:
        """The encoder is stopping: its record says DRAINING from now on."""
        self.publish(health=registry_pb2.ENCODER_HEALTH_DRAINING)

    @property
    def health(self) -> registry_pb2.EncoderHealth.ValueType:
        """The health in this encoder's registry record (UNSPECIFIED without ``--registry``)."""
        if self.keeper is None:
            return registry_pb2.ENCODER_HEALTH_UNSPECIFIED
        return self.keeper.record.health

    async def _last_record(self) -> None:
        """Publish the DRAINING record once more, after the keeper stopped: the keeper may
        have been in the middle of publishing an older health when asked to stop."""
        assert self.keeper is not None and self.registry is not None
        self.drain()
        self.keeper.stop()
        record = registry_pb2.EncoderRecord()
        record.CopyFrom(self.keeper.record)
        record.version = next_version(record.version, time.time_ns())
        try:
            held = await asyncio.wait_for(self.registry.publish(record), FINAL_PUBLISH_TIMEOUT)
            log.info("registry record v%d (draining) held by %d replicas", record.version, held)
        except (RegistryError, TimeoutError) as exc:
            log.warning("could not publish the draining record: %s", exc)

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
        """Revoke the registration, leave the registry record DRAINING, then stop the rest."""
        if self.registration is not None:
            await _step("revoking the registration", self.registration.close())
        if self.keeper is not None:
            await self._last_record()
        tasks = [*self._tasks, *self._escalations]
        for task in tasks:
            task.cancel()
        if tasks:
            await _step("ending its tasks", asyncio.gather(*tasks, return_exceptions=True))
        if self.link is not None:
            await _step("closing the manager link", self.link.close())
        if self._etcd is not None:
            await _step("closing the etcd client", self._etcd.close())
        if self._api is not None:
            await _step("closing the Kubernetes client", self._api.close())
        if self.registry is not None:
            await _step("closing the registry client", self.registry.close())


async def _step(what: str, closing: Awaitable[Any]) -> None:
    """One step of the stop, bounded by ``CLOSE_STEP_TIMEOUT`` (``bounded_step``)."""
    await bounded_step(what, closing, CLOSE_STEP_TIMEOUT, log)
