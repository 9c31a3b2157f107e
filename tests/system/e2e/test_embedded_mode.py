"""Embedded mode end to end: real etcd, a real ``meshenc manager`` and real encoder processes.

Six encoders (160x96, 30 fps, one-second segments) register in etcd, report to the manager and
take their neighbours from the documents it writes. Then:

1. ``kill -9`` of one encoder: the manager sees its health stream end, rewires its neighbours
   and re-places its work; the time from the kill to the new topology on the manager's
   WatchTopology stream and in the surviving neighbours' GetState is printed (the bound in
   the test only guards against a hang);
2. a new encoder joins: it is wired in, and its segments become byte-identical to the
   others' (``meshenc.report.verify``).

Every process is started and stopped by the test (the launcher SIGKILLs what is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import pytest

from meshenc.local.etcd import EtcdProcess
from meshenc.local.launcher import Launcher
from meshenc.local.ports import free_ports
from meshenc.report.verify import Copy, Verification, verify
from meshenc.v1 import manager_pb2, manager_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from services.common.grpc_server import insecure_channel

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

PREFIX = "/e2e"
WORK = ["news/720p", "news/360p", "sport/720p", "sport/360p", "kids/720p"]
HANG_GUARD = 20.0
"""Seconds any wait may take before the test gives up (a hang, not a performance verdict)."""
JUDGING_TIME = 40.0
"""Seconds the joiner gets to write three segments past its lock-in window."""


async def eventually(check, timeout: float = HANG_GUARD):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def encoder_args(
    name: str, port: int, out: Path, etcd: str, manager: str, source: str
) -> list[str]:
    return [
        "encoder", "--insecure", "--id", name, "--listen", f"127.0.0.1:{port}",
        "--out", str(out / name),
        "--size", "160x96", "--gop", "30", "--etcd", etcd, "--etcd-prefix", PREFIX,
        "--manager", manager, "--segment", "e2e", "--source", source,
    ]  # fmt: skip


async def state(address: str) -> mesh_pb2.EncoderState | None:
    channel = insecure_channel(address)
    try:
        answer: mesh_pb2.EncoderState = await mesh_pb2_grpc.EncoderMeshStub(channel).GetState(
            mesh_pb2.GetStateRequest(), timeout=1.0
        )
        return answer
    except Exception:
        return None
    finally:
        await channel.close()


def graph(topology: manager_pb2.Topology) -> dict[str, set[str]]:
    return {a.encoder_id: set(a.neighbour_ids) for a in topology.adjacency}


async def wired(address: str, epoch: int, neighbours: set[str]) -> bool:
    """Whether the encoder works in ``epoch`` (or later) with exactly those neighbours up."""
    answer = await state(address)
    if answer is None or answer.topology_epoch < epoch:
        return False
    up = {n.neighbour_id for n in answer.neighbours if n.connected}
    return {n.neighbour_id for n in answer.neighbours} == neighbours and up == neighbours


async def test_kill_rewires_within_a_second_and_a_joiner_locks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = [f"enc-{i}" for i in range(6)]
    manager_port, *ports = free_ports(8)
    address = {n: f"127.0.0.1:{p}" for n, p in zip([*names, "enc-6"], ports, strict=True)}
    manager_address = f"127.0.0.1:{manager_port}"
    inputs = {n: f"udp://127.0.0.1:{p}" for n, p in zip(address, free_ports(7), strict=True)}
    survivors = [n for n in address if n != "enc-2"]

    def judge() -> tuple[Verification, list[Copy]]:
        result = verify([out / n for n in survivors if (out / n).is_dir()])
        copies = [
            c for s in result.segments for c in s.copies if c.encoder == "enc-6" and not c.lock_in
        ]
        return result, copies

    with EtcdProcess(log_path=tmp_path / "etcd.log") as etcd:
        async with Launcher(tmp_path / "run", grace=5.0, ready_timeout=30.0) as launcher:
            live = ["source", "--input", "testpattern", "--size", "160x96"]
            launcher.spawn("source", live + [arg for u in inputs.values() for arg in ("--to", u)])
            await launcher.start(
                "manager",
                [
                    "manager",
                    "--insecure",
                    "--listen",
                    manager_address,
                    "--actuator",
                    "embedded",
                    "--etcd",
                    etcd.endpoint,
                    "--etcd-prefix",
                    PREFIX,
                    "--reconnect-grace",
                    "0.3",
                    "--work-units",
                    ",".join(WORK),
                ],
                address=manager_address,
                service="meshenc.v1.MeshManager",
            )
            await launcher.start_many(
                [
                    (
                        n,
                        encoder_args(
                            n,
                            int(address[n].rpartition(":")[2]),
                            out,
                            etcd.endpoint,
                            manager_address,
                            inputs[n],
                        ),
                        address[n],
                    )
                    for n in names
                ]
            )
            channel = insecure_channel(manager_address)
            stub = manager_pb2_grpc.MeshManagerStub(channel)
            try:
                # Everyone planned in, every encoder wired as planned with its links up.
                async def planned() -> manager_pb2.Topology | None:
                    topology: manager_pb2.Topology = await stub.GetTopology(
                        manager_pb2.GetTopologyRequest()
                    )
                    if set(graph(topology)) != set(names):
                        return None
                    for n, mine in graph(topology).items():
                        if not await wired(address[n], topology.epoch, mine):
                            return None
                    return topology

                before = await eventually(planned, timeout=40.0)

                # 1. kill -9 one encoder; time the rewiring.
                victim = "enc-2"
                former = graph(before)[victim]
                watch = stub.WatchTopology(
                    manager_pb2.WatchTopologyRequest(after_epoch=before.epoch)
                )
                await asyncio.sleep(0.5)  # the watch is registered
                killed_at = time.monotonic()
                launcher.kill(victim)
                update = await asyncio.wait_for(watch.read(), HANG_GUARD)
                at_manager = time.monotonic() - killed_at
                watch.cancel()
                after = graph(update.topology)
                assert victim not in after
                assert victim in update.reason
                for n in former:
                    assert len(after[n]) >= 3 or len(after) <= 3

                pending = set(former)
                reached: dict[str, float] = {}

                async def neighbours_rewired() -> bool:
                    for n in sorted(pending):
                        if await wired(address[n], update.topology.epoch, after[n]):
                            reached[n] = time.monotonic() - killed_at
                            pending.discard(n)
                    return not pending

                await eventually(neighbours_rewired)
                at_neighbours = max(reached.values())
                print(
                    f"\nkill -9 {victim}: new topology (epoch {update.topology.epoch}) on the "
                    f"manager's watch after {at_manager * 1000:.0f} ms; all {len(former)} former "
                    f"neighbours rewired with links up after {at_neighbours * 1000:.0f} ms"
                )

                # Its work was re-placed: the manager's log names the new placement without it.
                log_text = launcher.log_path("manager").read_text()
                placements = re.findall(r"work placed: .*", log_text)
                assert placements and victim not in placements[-1].split(": ", 2)[-1]

                # 2. a new encoder joins, is wired in and locks.
                joiner = "enc-6"
                await launcher.start(
                    joiner,
                    encoder_args(
                        joiner,
                        int(address[joiner].rpartition(":")[2]),
                        out,
                        etcd.endpoint,
                        manager_address,
                        inputs[joiner],
                    ),
                    address=address[joiner],
                )

                async def joined() -> manager_pb2.Topology | None:
                    topology: manager_pb2.Topology = await stub.GetTopology(
                        manager_pb2.GetTopologyRequest()
                    )
                    mine = graph(topology).get(joiner)
                    if not mine or not await wired(address[joiner], topology.epoch, mine):
                        return None
                    return topology

                with_joiner = await eventually(joined)
                assert len(graph(with_joiner)[joiner]) >= 2

                # Let it encode segments past its lock-in window: until the files hold three
                # judged copies of it (a loaded machine takes longer; a run that sheds a
                # segment starts a new lock-in window).
                async def judged() -> bool:
                    try:
                        _, copies = await asyncio.to_thread(judge)
                    except (OSError, ValueError):  # a file renamed while it was read
                        return False
                    return len(copies) >= 3

                wired_at = time.monotonic()
                with contextlib.suppress(AssertionError):
                    await eventually(judged, timeout=JUDGING_TIME)
                print(f"joiner: judged copies after {time.monotonic() - wired_at:.1f} s wired in")
            finally:
                await channel.close()
            await launcher.stop_all()
        result, copies = judge()
        assert len(copies) >= 3, "the joiner wrote too few segments to judge"
        assert all(c.matches for c in copies), [
            (s.segment, [(c.encoder, c.matches) for c in s.copies]) for s in result.segments
        ]
