"""GetState's view of an encoder, built from a real engine that has heard from a neighbour."""

from __future__ import annotations

from pathlib import Path

from meshenc.core.engine import EngineConfig, EspReceived, FrameCaptured, SyncEngine
from meshenc.core.messages import EncodingStatePacket
from meshenc.core.timecode import FrameRate
from meshenc.v1 import mesh_pb2
from services.encoder.settings import EncoderSettings, parse_size
from services.encoder.state import encoder_state

FPS = FrameRate(30)
START = FPS.slot_middle(FPS.slot(1.8e9))


class _Encoder:
    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.last_esp: EncodingStatePacket | None = None
        self.input_status = mesh_pb2.InputStatus(state="live", pictures=60, arrival_jitter_us=900)

    def connected(self, peer: str) -> bool:
        return peer == "b"


def test_get_state_reports_the_engine_and_each_neighbour(tmp_path: Path) -> None:
    settings = EncoderSettings(id="a", peers={"b": "127.0.0.1:7402"}, out=tmp_path, gop=30)
    engine = SyncEngine("a", EngineConfig(frame_rate=FPS, gop=30), ["b"])
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
    state = encoder_state(_Encoder(settings), snap)
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
