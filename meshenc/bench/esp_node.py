"""One mesh node of ``meshenc bench esp``, in a process of its own: ``python -m
meshenc.bench.esp_node NODE_ID FRAMES_PER_SECOND``.

Theory of operation
-------------------
The node serves ``MeshServer`` on 127.0.0.1 (a free port), links to its neighbours with
``MeshLinks`` as an encoder does, sends an ESP every frame period as the engine asks for them,
and notes (host clock) when each neighbour's ESP arrived. It talks to the benchmark in one JSON
object a line: on stdout ``{"port": P}``, then ``{"linked": true}`` once every neighbour's
stream is up, then its results; on stdin the benchmark's ``{"peers": {id: address}}``, then
``{"start_at": T, "warmup": W, "frames": N}``: from host time ``T`` it sends ``W + N`` frames
at the frame rate on an absolute schedule and measures the last ``N``: the delay of every ESP
it receives of those frames, and its process's CPU time (every thread: conversions, checks,
gRPC) from its first measured frame until every ESP it expects arrived. Its links stay up
until the benchmark's ``{"stop": true}``, which comes once every node reported: a node that
has heard all its neighbours may still have its own last ESPs on their way.

The node sends as the encoder runtime carries out the engine's ``SendEsp``: one ESP to every
neighbour, and every ``ECHO_EVERY``-th frame one ESP per neighbour that echoes that neighbour's
last ESP (``EngineConfig.echo_every``). It uses only what every version of the mesh links has
(``MeshLinks.send``) unless the links can send one message to several neighbours at once
(``send_all``), which the runtime then uses too; so the benchmark can run this file against an
older tree as the baseline.

Bounded: linking, the start and the drain each have a timeout; the node stops its links and
server and exits when it is done or the benchmark's stdin closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any, Final

from meshenc.core.messages import EncodingStatePacket, ResyncProposal, ResyncVote
from meshenc.core.timecode import FrameRate
from meshenc.v1 import mesh_pb2
from meshenc.wire import PROTOCOL_VERSION, convert
from services.encoder import mesh
from services.encoder.mesh import MeshLinks, MeshServer

ECHO_EVERY: Final = 8
"""Every n-th frame each neighbour gets an ESP of its own, echoing its last one (as the
engine's default ``EngineConfig.echo_every``)."""
GOP: Final = 60
LINK_TIMEOUT: Final = 20.0
DRAIN_TIMEOUT: Final = 5.0
START_TIMEOUT: Final = 60.0


class _Node:
    """A MeshHandler that notes when each ESP arrived and what it echoes."""

    def __init__(self, node_id: str, rate: FrameRate) -> None:
        self.node_id = node_id
        self.rate = rate
        self.neighbours: set[str] = set()
        #: (sender, sequence, sent_at, received_at) per ESP, host clock seconds.
        self.arrivals: list[tuple[str, int, float, float]] = []
        #: Per neighbour: its newest ESP's (sequence, sent_at, received_at), for the echo.
        self.last: dict[str, tuple[int, float, float]] = {}
        self.counts: defaultdict[str, int] = defaultdict(int)

    def is_neighbour(self, node_id: str) -> bool:
        return node_id in self.neighbours

    def on_esp(self, esp: EncodingStatePacket) -> None:
        now = time.time()
        self.arrivals.append((esp.sender, esp.sequence, esp.sent_at, now))
        self.last[esp.sender] = (esp.sequence, esp.sent_at, now)
        self.counts[esp.sender] += 1

    def on_proposal(self, proposal: ResyncProposal) -> None:
        del proposal

    def on_vote(self, vote: ResyncVote) -> None:
        del vote

    def state(self) -> mesh_pb2.EncoderState:
        return mesh_pb2.EncoderState(
            encoder_id=self.node_id,
            protocol_version=PROTOCOL_VERSION,
            frame_rate=convert.frame_rate_to_proto(self.rate),
            gop_length=GOP,
        )

    def hello(self) -> mesh_pb2.Hello:
        return mesh_pb2.Hello(
            sender_id=self.node_id,
            protocol_version=PROTOCOL_VERSION,
            frame_rate=convert.frame_rate_to_proto(self.rate),
            gop_length=GOP,
            topology_epoch=0,
        )

    def set_parameters(self, bitrate_kbps: int, size: tuple[int, int] | None) -> tuple[int, int]:
        raise ValueError("the ESP benchmark changes no parameters")


def frame_esp(sender: str, anchor: str, sequence: int, rate: FrameRate) -> EncodingStatePacket:
    """The ESP a locked encoder sends for frame ``sequence``, stamped now (host clock): every
    field an encoder in a locked mesh fills, so that the message is as large as a real one."""
    now = time.time()
    digest = hashlib.sha256(sequence.to_bytes(8, "big")).digest()
    segment = sequence // GOP
    return EncodingStatePacket(
        sender=sender,
        sequence=sequence,
        topology_epoch=1,
        timecode=rate.slot(now),
        frame_hash=digest,
        fingerprint=int.from_bytes(digest[:8], "big") >> 1,
        label=now,
        correction=0.0004,
        correction_rate=2e-6,
        encode_latency=0.0011,
        rtt=0.0004,
        jitter=0.0001,
        confidence=0.97,
        sent_at=now,
        locked=True,
        anchor=anchor if anchor != sender else "",
        anchor_hops=1 if anchor != sender else 0,
        anchor_offset=0.0002 if anchor != sender else 0.0,
        timeline=anchor,
        written_segment=segment,
        segment_digest=digest if segment else b"",
    )


def _send(links: MeshLinks, to: tuple[str, ...], esp: EncodingStatePacket) -> int:
    """Hand ``esp`` to the links for ``to``, as the runtime does; how many were queued."""
    send_all = getattr(links, "send_all", None)
    if send_all is not None:
        return int(send_all(to, esp))
    return sum(links.send(peer, esp) for peer in to)


def _send_frame(node: _Node, links: MeshLinks, anchor: str, sequence: int) -> int:
    esp = frame_esp(node.node_id, anchor, sequence, node.rate)
    peers = tuple(sorted(node.neighbours))
    if sequence % ECHO_EVERY:
        return _send(links, peers, esp)
    queued = 0
    for peer in peers:
        last = node.last.get(peer)
        if last is None:
            queued += _send(links, (peer,), esp)
            continue
        echoed_sequence, echoed_sent_at, received_at = last
        hold = max(0.0, esp.sent_at - received_at)
        echoed = replace(
            esp, echo_sequence=echoed_sequence, echo_sent_at=echoed_sent_at, echo_hold=hold
        )
        queued += _send(links, (peer,), echoed)
    return queued


async def _read(lines: asyncio.StreamReader, timeout: float) -> dict[str, Any]:
    line = await asyncio.wait_for(lines.readline(), timeout)
    if not line:
        raise SystemExit("the benchmark closed its pipe")
    return dict(json.loads(line))


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _run(node_id: str, rate: FrameRate) -> None:
    loop = asyncio.get_running_loop()
    lines = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    node = _Node(node_id, rate)
    links = MeshLinks(node)
    server = MeshServer(node, links)
    try:
        _say({"port": await server.start("127.0.0.1:0")})
        peers = dict((await _read(lines, START_TIMEOUT))["peers"])
        node.neighbours = set(peers)
        links.set_peers(peers)
        deadline = time.monotonic() + LINK_TIMEOUT
        while not all(links.connected(p) for p in peers):
            if time.monotonic() > deadline:
                raise SystemExit(f"{node_id}: not linked within {LINK_TIMEOUT:.0f} s")
            await asyncio.sleep(0.01)
        _say({"linked": True})
        plan = await _read(lines, START_TIMEOUT)
        start_at, warmup, frames = float(plan["start_at"]), int(plan["warmup"]), int(plan["frames"])
        anchor = min([node_id, *peers])
        period = rate.period
        queued = 0
        cpu_start = wall_start = 0.0
        for index in range(warmup + frames):
            delay = start_at + index * period - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if index == warmup:
                cpu_start, wall_start = time.process_time(), time.time()
            queued += _send_frame(node, links, anchor, index + 1)
        expected = (warmup + frames) * len(peers)
        drain_until = time.monotonic() + DRAIN_TIMEOUT
        while len(node.arrivals) < expected and time.monotonic() < drain_until:
            await asyncio.sleep(0.002)
        cpu = time.process_time() - cpu_start
        wall = time.time() - wall_start
        measured = [
            (received - sent) * 1e3 for _, seq, sent, received in node.arrivals if seq > warmup
        ]
        _say(
            {
                "node": node_id,
                "mesh_module": mesh.__file__,
                "sent": frames * len(peers),
                "queued": queued,
                "received": len(measured),
                "delays_ms": measured,
                "cpu_seconds": cpu,
                "wall_seconds": wall,
                "dropped_esps": sum(links.dropped_esps.values()),
            }
        )
        # Its own last ESPs may still be on their way (it heard every neighbour before they
        # left): the links stay up until every node is done.
        await _read(lines, START_TIMEOUT)
    finally:
        await links.close()
        await server.stop(grace=0.2)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m meshenc.bench.esp_node NODE_ID FRAMES_PER_SECOND")
    asyncio.run(_run(sys.argv[1], FrameRate(int(sys.argv[2]))))


if __name__ == "__main__":
    main()
