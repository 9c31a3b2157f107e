"""An encoder process of several channels: one runtime per channel around shared plumbing.

Theory of operation: each channel (``--channel NAME=SOURCE``) is an
:class:`~services.encoder.runtime.EncoderRuntime` of its own: its source decoded once, its
sync engine and timeline, its segment leadership (``EncoderSettings.leadership_etcd``), its
mesh links (one Exchange stream per neighbour, whose Hello names the channel) and its folder
``OUT/<name>/``. Nothing in the frame path is shared, so each channel is exactly what a
one-channel encoder is, and its segments are byte-identical with its other holders'.

What the process has once is shared: the mesh server, which routes each accepted stream,
GetState and SetParameters to the channel it names (``MeshServer.add_channel``); the control
plane (the manager's documents go to every channel, which takes its own units
``<channel>/<rung>`` of a placement; the registry record and health reports are the first
channel's); the output server over ``OUT``; and the signals, which stop every channel at its
next segment boundary. The neighbours are the process's: every channel links to all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from meshenc.v1 import manager_pb2
from meshenc.wire import hot_path
from meshenc.wire.adjacency import AdjacencyDocument
from services.encoder.control import ControlPlane
from services.encoder.media.serve import OutputServer
from services.encoder.mesh import MeshServer
from services.encoder.runtime import EncoderRuntime, ProcessParts, RunStats
from services.encoder.settings import EncoderSettings

__all__ = ["EncoderProcess"]

log = logging.getLogger("meshenc.encoder")


class EncoderProcess:
    """The channels of ``settings.channel_settings()`` in one process (module docstring)."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.control = ControlPlane(settings, self._apply_topology, self._health_report)
        channels = settings.channel_settings()
        names = frozenset(channel.channel for channel in channels)
        self.channels: list[EncoderRuntime] = []
        server: MeshServer | None = None
        for channel in channels:
            runtime = EncoderRuntime(channel, parts=ProcessParts(self.control, server, names))
            server = runtime.server
            self.channels.append(runtime)
        assert server is not None  # the settings hold one channel at least
        self.server = server
        self.output_server: OutputServer | None = None

    def _apply_topology(self, document: AdjacencyDocument) -> None:
        """The process's neighbours and segment are every channel's."""
        for runtime in self.channels:
            runtime.apply_topology(document)

    def _health_report(self) -> manager_pb2.HealthReport:
        """The first channel's report, for the whole process: its CPU load is the process's
        already; the encode time per frame slot is every channel's together (each encodes
        its own frame of the slot), and the units served are every channel's, which the
        manager divides that time by."""
        first, *others = self.channels
        if not others:
            return first.health_report()
        return first.health_report(
            encode_latency=sum(runtime.encode_latency for runtime in self.channels),
            units=[unit for runtime in self.channels for unit in runtime.served_units()],
        )

    def request_stop(self) -> None:
        """Every channel finishes its segment in progress and stops."""
        for runtime in self.channels:
            runtime.request_stop()

    async def run(self) -> dict[str, RunStats]:
        """Serve, then run every channel until they stop; each channel's stats by name."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        if settings.serve_output is not None:
            # First: an address that cannot be served stops the encoder before anything runs.
            self.output_server = OutputServer(settings.out, settings.serve_output)
            await self.output_server.start()
        try:
            port = await self.server.start(settings.listen, health_listen=settings.health_listen)
            log.info(
                "encoder %s serving channels %s on port %d, peers %s; mesh hot path %s",
                settings.id,
                ", ".join(self.server.channels),
                port,
                settings.peers,
                hot_path.describe(),
            )
            await self.control.start()
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(runtime.run(), name=f"channel-{runtime.settings.channel}")
                        for runtime in self.channels
                    ]
            finally:
                await self.control.close()
                await self.server.stop(grace=1.0)
        finally:
            if self.output_server is not None:
                await self.output_server.close()
        stats = {
            runtime.settings.channel: task.result()
            for runtime, task in zip(self.channels, tasks, strict=True)
        }
        log.info("encoder %s stopped: %s", settings.id, stats)
        return stats
