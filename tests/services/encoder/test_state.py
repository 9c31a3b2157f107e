"""GetState's view of an encoder: built from a real engine that has heard from a neighbour, and
asked over real gRPC of a real encoder runtime that stalls."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from pathlib import Path

from meshenc.core.engine import (
    EngineConfig,
    EspReceived,
    FrameCaptured,
    NeighboursChanged,
    SyncEngine,
)
from meshenc.core.messages import EncodingStatePacket
from meshenc.core.timecode import FrameRate
from meshenc.local.ports import free_ports
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from meshenc.wire import convert
from services.common.etcd import EtcdSettings
from services.common.grpc_server import open_channel
from services.encoder.media import EncoderParams, GopEncoder, SyntheticSource, VideoFormat
from services.encoder.media.containers import SegmentFormat
from services.encoder.media.ingest import LiveIngest
from services.encoder.media.ladder import (
    Holdings,
    Rendition,
    open_rendition,
    parse_ladder,
    renditions_for,
)
from services.encoder.media.segments import aside_name, segment_name
from services.encoder.runtime import EncoderRuntime
from services.encoder.settings import EncoderSettings, TopologyMode, parse_size

FPS = FrameRate(30)
START = FPS.slot_middle(FPS.slot(1.8e9))


def test_get_state_reports_the_engine_and_each_neighbour() -> None:
    config = EngineConfig(frame_rate=FPS, gop=30)
    engine = SyncEngine("a", config, ["b"])
    for k in range(60):
        now = START + k * FPS.period
        engine.step(now, FrameCaptured(k))
        esp = EncodingStatePacket(
            sender="b", sequence=k + 1, topology_epoch=0, timecode=FPS.slot(now),
            frame_hash=b"", fingerprint=k, label=now + 0.004, correction=0.0,
            correction_rate=0.0, encode_latency=0.0, rtt=0.0, jitter=0.0, confidence=1.0,
            sent_at=now, locked=True,
        )  # fmt: skip
        engine.step(now + 0.001, EspReceived(esp))
    snap = engine.snapshot(START + 60 * FPS.period)
    state = convert.encoder_state_to_proto(
        snap,
        frame_rate=FPS,
        segment_layout=config.segments,
        segment="default",
        topology_epoch=0,
        input_status=mesh_pb2.InputStatus(state="live", pictures=60, arrival_jitter_us=900),
        last_esp=None,
        connected=lambda peer: peer == "b",
        injected_drift_ppm=0.0,
        injected_offset_ms=0.0,
        injected_jitter_ms=0.0,
        taken_unix_ns=time.time_ns(),
        stalls=0,
        unvouched_segments=0,
        unconfirmed_segments=0,
        restored_segments=0,
        started_size=(320, 180),
    )
    assert state.encoder_id == "a"
    assert state.timecode == snap.timecode and state.segment_number == snap.timecode // 30
    assert state.bitrate_kbps == 1500
    assert (state.width, state.height) == (320, 180)  # the started size: no change agreed
    assert (state.input.state, state.input.pictures) == ("live", 60)
    (neighbour,) = state.neighbours
    assert neighbour.neighbour_id == "b"
    assert neighbour.connected and neighbour.trusted and neighbour.locked
    # b labels every picture 4 ms later than our raw clock; locking in, we moved part of the
    # way towards it, so we are behind it by less than 4 ms, and GetState says so in ns.
    assert neighbour.measured_deviation_ns == round(snap.neighbours[0].deviation * 1e9)
    assert -4_000_000 < neighbour.measured_deviation_ns < 0


def test_get_state_shows_a_stall_and_what_the_encoder_no_longer_vouches_for(
    tmp_path: Path,
) -> None:
    """A real runtime's server, asked over gRPC: its loop stands still for longer than the
    engine keeps a neighbour's word (as under SIGSTOP), its stall check sees it, and GetState
    says so; the segment it writes next is not vouched for. Its neighbour, never heard from,
    shows as silent throughout."""
    settings = EncoderSettings(
        id="e1", listen="127.0.0.1:0", out=tmp_path, peers={"e2": "127.0.0.1:9"}, gop=30
    )

    async def scenario() -> None:
        runtime = EncoderRuntime(settings)
        port = await runtime.server.start("127.0.0.1:0")
        channel = open_channel(f"127.0.0.1:{port}")
        stub = mesh_pb2_grpc.EncoderMeshStub(channel)
        try:
            runtime._check_stall()  # the loop ran a moment ago: no stall
            before = await stub.GetState(mesh_pb2.GetStateRequest(), timeout=5.0)
            assert (before.unproven, before.stalls, before.unvouched_segments) == (False, 0, 0)
            assert not before.vouches  # never locked
            assert [(n.neighbour_id, n.silent) for n in before.neighbours] == [("e2", True)]

            time.sleep(runtime.engine.config.stale_after + 0.3)  # the whole loop stands still
            runtime._check_stall()
            (rendition,) = renditions_for(
                tmp_path, FPS, 30, None, size=(64, 64), bitrate_kbps=200, fmt=SegmentFormat.TS
            )
            segment = tmp_path / segment_name(7, SegmentFormat.TS)
            segment.write_bytes(b"")
            runtime.segments_written(rendition, [segment], time.time_ns())

            after = await stub.GetState(mesh_pb2.GetStateRequest(), timeout=5.0)
            assert (after.unproven, after.stalls, after.vouches) == (True, 1, False)
            assert (after.unvouched_segments, after.unconfirmed_segments) == (1, 0)
        finally:
            await channel.close()
            await runtime.server.stop(0)
            await runtime.links.close()

    asyncio.run(asyncio.wait_for(scenario(), 20.0))


def test_get_state_counts_the_datagrams_the_kernel_dropped(tmp_path: Path) -> None:
    """An encoder's udp:// input whose receive buffer overflowed (a burst that nothing read):
    GetState, asked over gRPC, shows as many dropped datagrams as the kernel counted, and every
    datagram sent was either read or counted as dropped."""
    port = free_ports(1)[0]
    settings = EncoderSettings(
        id="e1", listen="127.0.0.1:0", out=tmp_path, source=f"udp://127.0.0.1:{port}"
    )
    burst, marker, sent = b"\x47" + bytes(187), b"\x47" + b"\x01" * 187, 10_000

    async def scenario() -> tuple[int, int]:
        runtime = EncoderRuntime(settings)
        # The input as ``run`` makes it, bound but not started: nothing reads the socket.
        runtime.ingest = LiveIngest(settings.source or "", runtime._format, lambda _item: None)
        datagrams = runtime.ingest.datagrams
        assert datagrams is not None
        guard = threading.Timer(10.0, datagrams.stop)
        port_of_server = await runtime.server.start("127.0.0.1:0")
        channel = open_channel(f"127.0.0.1:{port_of_server}")
        stub = mesh_pb2_grpc.EncoderMeshStub(channel)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for _ in range(sent):  # more than any receive buffer the kernel allows here
                    sender.sendto(burst * 7, ("127.0.0.1", port))
                read = 0
                # Bounded: should the marker not come, the reads end after 10 s.
                guard.start()
                while (payload := datagrams.receive()) is not None:  # what the buffer held
                    read += 1
                    if read == 10:  # room again: the marker queues behind the rest
                        sender.sendto(marker, ("127.0.0.1", port))
                    if payload == marker:
                        break
            state = await stub.GetState(mesh_pb2.GetStateRequest(), timeout=5.0)
            assert payload == marker
            return read - 1, state.input.datagrams_dropped
        finally:
            guard.cancel()
            await channel.close()
            await runtime.server.stop(0)
            await runtime.links.close()
            runtime.ingest.stop(timeout=1.0)

    read, dropped = asyncio.run(asyncio.wait_for(scenario(), 30.0))
    assert dropped > 0
    assert read + dropped == sent


def _write_first_segment(runtime: EncoderRuntime, rendition: Rendition) -> EncodingStatePacket:
    """Encode one whole segment of real H.264 into ``rendition`` (64x64, as the runtime's
    own aside decision names it), tell the runtime, and return an ESP of neighbour ``e2``
    announcing the same bytes (not vouched for)."""
    runtime._holdings = Holdings.fixed([rendition], runtime._segments)  # as ``run`` does
    params = EncoderParams(64, 64, FPS, 30, 200)
    source, encoder = SyntheticSource(VideoFormat(64, 64, FPS)), GopEncoder(params)
    first = FPS.slot(START) // 30 + 1
    written: list[Path] = []
    try:
        for tc in range(first * 30, first * 30 + 31):
            written += rendition.writer.add(encoder.encode(tc, source.read()))
    finally:
        encoder.close()
    assert [p.name for p in written] == [aside_name(first)]
    runtime.segments_written(rendition, written, time.time_ns())
    digest = rendition.writer.digest(first)
    assert digest is not None
    now = runtime.clock()
    return EncodingStatePacket(
        sender="e2", sequence=1, topology_epoch=0, timecode=FPS.slot(now), frame_hash=b"",
        fingerprint=1, label=now, correction=0.0, correction_rate=0.0, encode_latency=0.0,
        rtt=0.0, jitter=0.0, confidence=1.0, sent_at=now, locked=True,
        written_segment=first, segment_digest=digest,
    )  # fmt: skip


def test_a_segment_written_aside_takes_its_shared_name_when_a_vouched_neighbour_wrote_it(
    tmp_path: Path,
) -> None:
    """An encoder that never locked writes its segment aside (real H.264, the runtime's own
    aside decision); a neighbour's ESP with the same bytes but not vouched for leaves it
    there; the same bytes vouched for give it the shared name."""
    settings = EncoderSettings(
        id="e1", listen="127.0.0.1:0", out=tmp_path, peers={"e2": "127.0.0.1:9"}, gop=30
    )
    runtime = EncoderRuntime(settings)
    (rendition,) = renditions_for(
        tmp_path,
        FPS,
        30,
        None,
        size=(64, 64),
        bitrate_kbps=200,
        fmt=SegmentFormat.TS,
        aside=runtime._sets_aside,
    )
    heard = _write_first_segment(runtime, rendition)
    first = heard.written_segment
    runtime.on_esp(heard)
    runtime._release()
    assert (tmp_path / aside_name(first)).is_file() and runtime.stats.restored == 0
    runtime.on_esp(dataclasses.replace(heard, sequence=2, segment_vouched=True))
    runtime._release()
    assert not (tmp_path / aside_name(first)).exists()
    assert (tmp_path / segment_name(first)).is_file() and runtime.stats.restored == 1


def test_a_placed_rungs_copy_is_confirmed_by_a_neighbours_copy_of_that_rung(
    tmp_path: Path,
) -> None:
    """Rungs placed by the manager: the runtime tells the engine each rung's digest under the
    rung's name, and a copy written aside takes its shared name only from a vouched
    neighbour's equal bytes of the same rung; the same bytes announced as another output
    (the whole output, another rung) leave it aside."""
    rung = parse_ladder("64x64@200")[0]
    settings = EncoderSettings(
        id="e1", listen="127.0.0.1:0", out=tmp_path, gop=30, ladder=(rung,),
        topology=TopologyMode.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:9",)),
    )  # fmt: skip
    assert settings.follows_placement
    runtime = EncoderRuntime(settings)
    runtime.engine.step(runtime.clock(), NeighboursChanged(("e2",)))  # as the placement says
    rendition = open_rendition(
        tmp_path, FPS, 30, rung, top_kbps=200, fmt=SegmentFormat.TS, aside=runtime._sets_aside
    )
    heard = dataclasses.replace(_write_first_segment(runtime, rendition), segment_vouched=True)
    first = heard.written_segment
    folder = tmp_path / rung.name
    for sequence, unit in enumerate(("", "32x32"), start=1):
        runtime.on_esp(dataclasses.replace(heard, sequence=sequence, segment_unit=unit))
        runtime._release()
        assert (folder / aside_name(first)).is_file() and runtime.stats.restored == 0, unit
    runtime.on_esp(dataclasses.replace(heard, sequence=3, segment_unit=rung.name))
    runtime._release()
    assert (folder / segment_name(first)).is_file() and runtime.stats.restored == 1


def test_sizes_parse_as_width_and_height() -> None:
    assert parse_size(" 1280X720 ") == (1280, 720)
    for bad in ("640", "640x", "x360", "640*360"):
        try:
            parse_size(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")
