"""GetState's view of an encoder, built from a real engine that has heard from a neighbour."""

from __future__ import annotations

import time

from meshenc.core.engine import EngineConfig, EspReceived, FrameCaptured, SyncEngine
from meshenc.core.messages import EncodingStatePacket
from meshenc.core.timecode import FrameRate
from meshenc.v1 import mesh_pb2
from meshenc.wire import convert
from services.encoder.settings import parse_size

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
    )
    assert state.encoder_id == "a"
    assert state.timecode == snap.timecode and state.segment_number == snap.timecode // 30
    assert state.bitrate_kbps == 1500
    assert (state.input.state, state.input.pictures) == ("live", 60)
    (neighbour,) = state.neighbours
    assert neighbour.neighbour_id == "b"
    assert neighbour.connected and neighbour.trusted and neighbour.locked
    # b labels every picture 4 ms later than our raw clock; locking in, we moved part of the
    # way towards it, so we are behind it by less than 4 ms, and GetState says so in ns.
    assert neighbour.measured_deviation_ns == round(snap.neighbours[0].deviation * 1e9)
    assert -4_000_000 < neighbour.measured_deviation_ns < 0


def test_sizes_parse_as_width_and_height() -> None:
    assert parse_size(" 1280X720 ") == (1280, 720)
    for bad in ("640", "640x", "x360", "640*360"):
        try:
            parse_size(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")
