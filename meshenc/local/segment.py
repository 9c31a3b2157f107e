"""One segment of real encoder processes on etcd, and a watch on its leadership.

:class:`LocalSegment` starts ``meshenc encoder`` processes of one segment (a full static
mesh on 127.0.0.1, small pictures so the CPU stays free) against an etcd endpoint, and can
kill -9 and restart any of them. :class:`SegmentWatch` follows the segment's leader key and
acts as a watch in this process sees them. The tests, the demo and ``meshenc bench failover``
(:mod:`meshenc.bench.failover`) share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from meshenc.local.launcher import meshenc_command
from meshenc.local.ports import free_ports
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from services.common.etcd import DEFAULT_LEASE_TTL
from services.common.grpc_server import MESSAGE_SIZE_OPTIONS
from services.encoder.leadership import SegmentKeys, decode_act, decode_leader

__all__ = ["LocalSegment", "SegmentWatch"]


class LocalSegment:
    """Encoder processes ``m0``, ``m1``, ... of one segment, each a neighbour of all others.

    Args:
        etcd_endpoint: the etcd they elect their leader on.
        members: how many encoders.
        folder: their outputs and logs (``<id>/`` and ``<id>.log``).
        segment: the segment id.
        extra: more ``meshenc encoder`` arguments for every member.
    """

    def __init__(
        self,
        etcd_endpoint: str,
        members: int,
        folder: Path,
        *,
        segment: str = "bench",
        lease_ttl: int = DEFAULT_LEASE_TTL,
        fast_failover: bool = True,
        size: str = "160x96",
        extra: Sequence[str] = (),
    ) -> None:
        if members < 2:
            raise ValueError("a segment needs at least 2 members to fail over")
        self.etcd_endpoint = etcd_endpoint
        self.segment = segment
        self.folder = folder
        self.names = [f"m{i}" for i in range(members)]
        self.ports = dict(zip(self.names, free_ports(members), strict=True))
        self._lease_ttl = lease_ttl
        self._fast = fast_failover
        self._size = size
        self._extra = list(extra)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def command(self, name: str) -> list[str]:
        peers = ",".join(f"{p}={self.address(p)}" for p in self.names if p != name)
        command = [
            *meshenc_command("encoder", "--insecure"),
            "--id", name,
            "--listen", self.address(name),
            "--peers", peers,
            "--out", str(self.folder / name),
            "--size", self._size,
            "--gop", "30",
            "--segment", self.segment,
            "--etcd", self.etcd_endpoint,
            "--lease-ttl", str(self._lease_ttl),
        ]  # fmt: skip
        if not self._fast:
            command.append("--no-fast-failover")
        return command + self._extra

    def start(self, name: str) -> None:
        """Start (or restart) member ``name``; its output is appended to ``<name>.log``."""
        old = self.processes.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is still running")
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                self.command(name), stdout=log, stderr=subprocess.STDOUT
            )

    def start_all(self) -> Self:
        for name in self.names:
            self.start(name)
        return self

    def kill(self, name: str) -> None:
        """kill -9, as a crash: no resignation, no goodbye on the mesh."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def stop_all(self, timeout: float = 15.0) -> dict[str, int]:
        """SIGTERM everyone, wait, SIGKILL whoever is left; exit codes by member."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    async def states(self, timeout: float = 2.0) -> dict[str, mesh_pb2.EncoderState]:
        """GetState of every running member that answers in time."""

        async def ask(name: str) -> mesh_pb2.EncoderState | None:
            async with grpc.aio.insecure_channel(
                self.address(name), options=list(MESSAGE_SIZE_OPTIONS)
            ) as channel:
                try:
                    state: mesh_pb2.EncoderState = await mesh_pb2_grpc.EncoderMeshStub(
                        channel
                    ).GetState(mesh_pb2.GetStateRequest(), timeout=timeout)
                except grpc.aio.AioRpcError:
                    return None
                return state

        names = [n for n in self.names if self.running(n)]
        answers = await asyncio.gather(*(ask(n) for n in names))
        return {n: a for n, a in zip(names, answers, strict=True) if a is not None}

    async def settled(self) -> bool:
        """Every member runs, has all its links up and names the same leader, which runs."""
        states = await self.states()
        if len(states) != len(self.names):
            return False
        leaders = {s.leader_id for s in states.values()}
        links = all(n.connected for s in states.values() for n in s.neighbours)
        degraded = any(s.coordination_degraded for s in states.values())
        return links and not degraded and len(leaders) == 1 and leaders <= set(self.names)


@dataclass(slots=True)
class SegmentWatch:
    """The segment's leader key and acts as a watch in this process sees them."""

    keys: SegmentKeys
    leader: str | None = None
    token: int = 0
    #: (holder, token, monotonic receive time) of every act, in order.
    acts: list[tuple[str, int, float]] = field(default_factory=list)
    #: The newest etcd revision applied: a watch that broke resumes after it.
    revision: int = 0
    _new_act: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, event: Any) -> None:
        kv = event.kv
        self.revision = max(self.revision, int(kv.mod_revision))
        if kv.key == self.keys.leader:
            deleted = event.kind == "DELETE"
            self.leader = None if deleted else decode_leader(kv.value)
            self.token = 0 if deleted else int(kv.mod_revision)
        elif kv.key == self.keys.acts and event.kind == "PUT":
            act = decode_act(kv.value)
            if act is not None:
                self.acts.append((act[0], act[1], time.monotonic()))
                self._new_act.set()

    async def first_act_after(self, since: float, *, not_by: str, timeout: float) -> float | None:
        """Monotonic time of the first act after ``since`` by anyone but ``not_by``."""
        deadline = time.monotonic() + timeout
        while True:
            for holder, _token, at in self.acts:
                if at >= since and holder != not_by:
                    return at
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._new_act.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_act.wait(), remaining)

    async def follow(self, client: Any, start_revision: int) -> None:
        watch = await client.watch_prefix(self.keys.root, start_revision=start_revision)
        try:
            async for event in watch:
                self.apply(event)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    async def follow_resuming(self, client: Any, pause: float = 0.5) -> None:
        """:meth:`follow` from the start of etcd's history, and whenever the watch breaks
        (etcd stopped and started again) from after the newest revision applied, until
        cancelled: a run's record of its leaders has no hole where etcd was away (measured:
        a chaos run's feed recorded no leader after its first etcd restart)."""
        while True:
            with contextlib.suppress(Exception):
                await self.follow(client, self.revision + 1)
            await asyncio.sleep(pause)
