"""The Mesh Manager's gRPC server: a thin servicer over :class:`ManagerShell`, health, HA.

Theory of operation: every request is validated (``meshenc.wire.validation``) before the shell
sees it; a broken rule ends the call with INVALID_ARGUMENT naming the field, a write to a
standby with FAILED_PRECONDITION, a query for an unknown encoder or segment with NOT_FOUND; each
refusal is logged with the caller's address and the service keeps running, its state untouched
(validation happens before anything is fed to the core).

``ReportHealth`` streams carry one encoder's reports: the first valid report names the encoder
(the shell counts its open streams, which is how a dead encoder is noticed), later reports must
carry the same id; a stream without a report within ``FIRST_REPORT_TIMEOUT`` seconds ends with
DEADLINE_EXCEEDED. Refusals are logged with the caller's address, at most one line per method
and status every 10 s. ``WatchTopology`` is an async generator, so tracing interceptors see the
stream like any other.

Health: ``meshenc.v1.MeshManager`` is SERVING only while this manager is active. A standby
reports NOT_SERVING, so a Kubernetes readiness probe keeps it out of the Service, while the
server as a whole (``""``, the liveness probe) stays SERVING.

:func:`run_manager` is the process: with etcd configured (TLS and several endpoints as
``services.common.etcd`` allows), the replicas elect the active one
(:class:`~services.manager.ha.EtcdElection`) and the actuator's writes carry its fence;
without etcd (Kubernetes with a single replica) the manager is active from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, NoReturn, TypeVar

import grpc

from meshenc.v1 import manager_pb2, manager_pb2_grpc
from meshenc.wire.validation import (
    InvalidMessage,
    validate_escalation,
    validate_get_segments_request,
    validate_get_topology_request,
    validate_health_report,
    validate_watch_topology_request,
)
from services.common.etcd import connect_client
from services.common.grpc_server import GrpcServer
from services.common.kubernetes import connect_api
from services.common.log_limit import LimitedLog
from services.common.peer_limits import PeerLimits
from services.common.tls import TlsFiles, require_identity
from services.common.waiting import wait_until_set
from services.manager.actuators import Actuator, ActuatorError
from services.manager.etcd_actuator import EtcdActuator
from services.manager.ha import EtcdElection
from services.manager.kubernetes_actuator import KubernetesActuator
from services.manager.service import ManagerShell, NotActiveError, UnknownError
from services.manager.settings import ActuatorKind, ManagerSettings

__all__ = ["FIRST_REPORT_TIMEOUT", "SERVICE_NAME", "ManagerServer", "run_manager"]

log = logging.getLogger("meshenc.manager.server")

SERVICE_NAME: Final[str] = manager_pb2.DESCRIPTOR.services_by_name["MeshManager"].full_name
"""``meshenc.v1.MeshManager``: the name health and reflection report."""

_Message = TypeVar("_Message")


FIRST_REPORT_TIMEOUT: Final = 5.0
"""Seconds a ReportHealth stream may stay silent before its first report (an encoder sends
one as soon as the stream opens): a caller that never says who it is does not hold a stream."""


async def _chain(first: _Message, rest: AsyncIterator[_Message]) -> AsyncIterator[_Message]:
    yield first
    async for item in rest:
        yield item


class _MeshManagerServicer(manager_pb2_grpc.MeshManagerServicer):
    """Validates, converts and hands over to the shell; maps its errors to gRPC statuses."""

    def __init__(self, shell: ManagerShell, first_report_timeout: float) -> None:
        self._shell = shell
        self._first_report_timeout = first_report_timeout
        #: One line per method and status every 10 s, however many calls are refused.
        self._refusals = LimitedLog(log)

    async def _refuse(self, context: Any, code: grpc.StatusCode, rpc: str, why: object) -> NoReturn:
        self._refusals.warning(
            f"{rpc}:{code.name}",
            "%s from %s refused (%s): %s",
            rpc,
            context.peer(),
            code.name,
            why,
        )
        await context.abort(code, str(why))
        raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises

    async def _validate(
        self, context: Any, rpc: str, validate: Callable[[_Message], None], message: _Message
    ) -> None:
        """Refuse ``message`` with INVALID_ARGUMENT unless it passes ``validate``."""
        try:
            validate(message)
        except InvalidMessage as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, rpc, exc)

    async def ReportHealth(  # noqa: N802 -- the gRPC method's name
        self, request_iterator: AsyncIterator[manager_pb2.HealthReport], context: Any
    ) -> manager_pb2.HealthAck:
        shell = self._shell
        if not shell.active:
            await self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "ReportHealth",
                "this manager is a standby; report to the active one",
            )
        encoder: str | None = None
        accepted = 0
        reports = aiter(request_iterator)
        try:
            # asyncio.timeout, not wait_for: no task of its own, whose failure (a guard ending
            # the call as the client goes away) nobody would collect.
            async with asyncio.timeout(self._first_report_timeout):
                first = await anext(reports)
        except StopAsyncIteration:
            return manager_pb2.HealthAck(reports_accepted=0, topology_epoch=shell.epoch)
        except TimeoutError:
            await self._refuse(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "ReportHealth",
                f"no report within {self._first_report_timeout:g} s",
            )
        try:
            async for report in _chain(first, reports):
                await self._validate(context, "ReportHealth", validate_health_report, report)
                if encoder is None:
                    # An encoder reports its own health only (its certificate's identity).
                    await require_identity(context, report.encoder_id, "encoder_id")
                    encoder = report.encoder_id
                    shell.stream_opened(encoder)
                elif report.encoder_id != encoder:
                    await self._refuse(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "ReportHealth",
                        f"encoder_id: must be {encoder!r} for every report on this stream, "
                        f"got {report.encoder_id!r}",
                    )
                try:
                    shell.report(report)
                except NotActiveError as exc:
                    await self._refuse(
                        context, grpc.StatusCode.FAILED_PRECONDITION, "ReportHealth", exc
                    )
                except ValueError as exc:
                    await self._refuse(
                        context, grpc.StatusCode.INVALID_ARGUMENT, "ReportHealth", exc
                    )
                accepted += 1
        finally:
            if encoder is not None:
                shell.stream_closed(encoder)
        return manager_pb2.HealthAck(reports_accepted=accepted, topology_epoch=shell.epoch)

    async def Escalate(  # noqa: N802 -- the gRPC method's name
        self, request: manager_pb2.Escalation, context: Any
    ) -> manager_pb2.EscalationAck:
        await self._validate(context, "Escalate", validate_escalation, request)
        await require_identity(context, request.encoder_id, "encoder_id")
        try:
            return await self._shell.escalate(request)
        except NotActiveError as exc:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "Escalate", exc)
        except ValueError as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "Escalate", exc)

    async def GetTopology(  # noqa: N802 -- the gRPC method's name
        self, request: manager_pb2.GetTopologyRequest, context: Any
    ) -> manager_pb2.Topology:
        await self._validate(context, "GetTopology", validate_get_topology_request, request)
        try:
            return self._shell.topology(request.encoder_id)
        except UnknownError as exc:
            await self._refuse(context, grpc.StatusCode.NOT_FOUND, "GetTopology", exc)

    async def GetSegments(  # noqa: N802 -- the gRPC method's name
        self, request: manager_pb2.GetSegmentsRequest, context: Any
    ) -> manager_pb2.SegmentMap:
        await self._validate(context, "GetSegments", validate_get_segments_request, request)
        try:
            return self._shell.segments(request.segment_id)
        except UnknownError as exc:
            await self._refuse(context, grpc.StatusCode.NOT_FOUND, "GetSegments", exc)

    async def WatchTopology(  # noqa: N802 -- the gRPC method's name
        self, request: manager_pb2.WatchTopologyRequest, context: Any
    ) -> AsyncIterator[manager_pb2.TopologyUpdate]:
        await self._validate(context, "WatchTopology", validate_watch_topology_request, request)
        if not self._shell.active:
            await self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "WatchTopology",
                "this manager is a standby; watch the active one",
            )
        async for update in self._shell.watch(request.after_epoch, request.encoder_id):
            yield update
        # The shell ends watches only when this manager stops being active.
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "this manager is no longer the active one; watch again"
        )


class ManagerServer:
    """Serves MeshManager with health and reflection; health follows the shell's activity.

    Args:
        shell: the running core.
        interceptors: ``grpc.aio.ServerInterceptor`` instances (tracing, logging, metrics).
        tls: serve mutual TLS with these files; plaintext when None.
        limits: what one peer may open and send (``services.common.peer_limits``).
        first_report_timeout: seconds a ReportHealth stream may wait for its first report.
    """

    def __init__(
        self,
        shell: ManagerShell,
        *,
        interceptors: Sequence[Any] = (),
        tls: TlsFiles | None = None,
        limits: PeerLimits | None = None,
        first_report_timeout: float = FIRST_REPORT_TIMEOUT,
    ) -> None:
        self.shell = shell
        servicer = _MeshManagerServicer(shell, first_report_timeout)
        self._grpc = GrpcServer(
            {
                SERVICE_NAME: lambda server: manager_pb2_grpc.add_MeshManagerServicer_to_server(
                    servicer, server
                )
            },
            interceptors=interceptors,
            tls=tls,
            limits=limits,
        )

    @property
    def port(self) -> int | None:
        """The bound port while serving."""
        return self._grpc.port

    async def start(self, listen: str, *, health_listen: str | None = None) -> int:
        """Serve on ``listen`` (``host:port``, port 0 = any free port); returns the bound port.

        The service reports SERVING only if the shell is already active. ``health_listen``:
        the plaintext health-only port (``GrpcServer.start``).
        """
        port = await self._grpc.start(listen, health_listen=health_listen)
        await self._grpc.set_serving(SERVICE_NAME, self.shell.active)
        return port

    async def set_active(self, active: bool) -> None:
        """Take over as the active manager, or step back to standby; health follows."""
        if active:
            await self.shell.activate()
            await self._grpc.set_serving(SERVICE_NAME, True)
        else:
            await self._grpc.set_serving(SERVICE_NAME, False)
            await self.shell.deactivate()

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, end the watches, stop serving, release the actuator."""
        if self._grpc.port is not None:
            await self._grpc.set_serving(SERVICE_NAME, False)
        await self.shell.deactivate()
        await self._grpc.stop(grace)
        await self.shell.close()


ELECTION_RETRY: Final = 1.0
"""Seconds between attempts to take over when the election says active but activation failed
(the published epoch could not be read)."""
STOP_GRACE: Final = 1.0
"""Seconds running calls get to finish when the manager stops."""


async def _open_actuator(settings: ManagerSettings, etcd: Any, election: Any) -> Actuator:
    if settings.actuator is ActuatorKind.EMBEDDED:
        fence = election.fence if election else None
        return EtcdActuator(
            etcd, layout=settings.layout, fence=fence, scale_bounds=settings.scale_bounds
        )
    assert settings.encoder_statefulset is not None  # checked by the settings
    return KubernetesActuator(
        await connect_api(),
        namespace=settings.namespace or "default",
        statefulset=settings.encoder_statefulset,
        scale_bounds=settings.scale_bounds,
        owns_api=True,
    )


async def _follow_election(
    server: ManagerServer, election: EtcdElection, changed: asyncio.Event
) -> None:
    """Make the server active exactly while the election says so (retrying a failed takeover)."""
    while True:
        await wait_until_set(changed, ELECTION_RETRY)
        changed.clear()
        wanted = election.is_leader
        if wanted == server.shell.active:
            continue
        try:
            await server.set_active(wanted)
        except ActuatorError as exc:
            log.error("could not take over as the active manager (retrying): %s", exc)


async def run_manager(settings: ManagerSettings) -> None:
    """Run one manager process until SIGTERM or SIGINT, then stop cleanly.

    The caller sets up telemetry (``services.common.telemetry.running``) around it.
    """
    etcd = None if settings.etcd is None else connect_client(settings.etcd)
    changed = asyncio.Event()
    election = None
    if etcd is not None:
        identity = f"{socket.gethostname()}-{os.getpid()}"
        election = EtcdElection(
            etcd,
            identity,
            layout=settings.layout,
            on_change=lambda _active: changed.set(),
        )
    actuator = await _open_actuator(settings, etcd, election)
    shell = ManagerShell(
        actuator,
        settings.core_config(),
        work_units=settings.work_units,
        tick_interval=settings.tick_interval,
        reconnect_grace=settings.reconnect_grace,
    )
    server = ManagerServer(shell, tls=settings.tls, limits=settings.peer_limits)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        port = await server.start(settings.listen, health_listen=settings.health_listen)
        log.info("manager serving on port %d (%s actuator)", port, settings.actuator.value)
        if election is not None:
            tasks.append(asyncio.create_task(election.run(), name="manager-election"))
            tasks.append(
                asyncio.create_task(
                    _follow_election(server, election, changed), name="manager-role"
                )
            )
        else:
            await server.set_active(True)
        await stop.wait()
        log.info("stopping")
    finally:
        for task in reversed(tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if election is not None:
            await election.close()
        await server.stop(STOP_GRACE)
        if etcd is not None:
            await etcd.close()
