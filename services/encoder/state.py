"""What ``GetState`` returns: an operator's view of one encoder, built from an engine snapshot."""

from __future__ import annotations

import math
import time
from typing import Protocol

from meshenc.core.election import ElectionSnapshot
from meshenc.core.engine import EngineSnapshot
from meshenc.core.messages import EncodingStatePacket
from meshenc.v1 import common_pb2, mesh_pb2
from meshenc.wire import PROTOCOL_VERSION, convert
from services.encoder.settings import EncoderSettings

__all__ = ["encoder_state"]


class _Encoder(Protocol):
    settings: EncoderSettings

    @property
    def input_status(self) -> mesh_pb2.InputStatus: ...

    @property
    def last_esp(self) -> EncodingStatePacket | None: ...

    def connected(self, peer: str) -> bool: ...


def _ns(seconds: float) -> int:
    return 0 if math.isnan(seconds) else convert.seconds_to_ns(seconds)


def _us(seconds: float) -> int:
    return 0 if math.isnan(seconds) else max(0, convert.seconds_to_us(seconds))


def encoder_state(
    encoder: _Encoder,
    snap: EngineSnapshot,
    election: ElectionSnapshot | None = None,
    *,
    topology_epoch: int = 0,
    segment: str | None = None,
) -> mesh_pb2.EncoderState:
    """The GetState answer.

    Args:
        encoder: the encoder (its settings, last ESP and links).
        snap: its engine's snapshot.
        election: the segment election's view (None: no etcd).
        topology_epoch: the manager's epoch the encoder works in (0: none yet).
        segment: the segment it is in now (None: its ``--segment``).
    """
    settings = encoder.settings
    fr = settings.frame_rate
    state = mesh_pb2.EncoderState(
        encoder_id=snap.node_id,
        protocol_version=PROTOCOL_VERSION,
        frame_rate=common_pb2.FrameRate(num=fr.num, den=fr.den),
        gop_length=settings.gop,
        correction_ns=_ns(snap.correction),
        correction_rate_ppb=convert.rate_to_ppb(snap.correction_rate),
        confidence=snap.confidence,
        taken_unix_ns=time.time_ns(),
        timecode=snap.timecode if snap.timecode is not None else 0,
        segment_number=(snap.timecode // settings.gop) if snap.timecode is not None else 0,
        locked=snap.locked,
        strategy=snap.strategy.value,
        error_ns=_ns(snap.error),
        predicted_error_ns=_ns(snap.predicted_error),
        escalations=snap.escalations,
        open_proposals=snap.open_proposals,
        injected_drift_ppm=settings.drift_ppm,
        injected_offset_ms=settings.offset_ms,
        injected_jitter_ms=settings.jitter_ms,
        bitrate_kbps=snap.bitrate_kbps,
        segment_id=settings.segment if segment is None else segment,
        topology_epoch=topology_epoch,
    )
    state.input.CopyFrom(encoder.input_status)
    if election is not None:
        state.leader_id = election.leader or ""
        state.leader_token = election.token
        state.coordination_degraded = election.degraded
    if snap.pending_change is not None:
        state.pending_parameters.effective_segment = snap.pending_change.effective_segment
        state.pending_parameters.bitrate_kbps = snap.pending_change.bitrate_kbps
    for kind, count in snap.corrections.items():
        state.corrections[kind.value] = count
    for event in snap.recent_corrections:
        state.recent_corrections.add(
            at_ns=_ns(event.at),
            kind=convert.kind_to_proto(event.kind),
            shift_ns=_ns(event.shift),
            correction_rate_ppb=convert.rate_to_ppb(event.new_rate),
            lead_ns=_ns(event.lead),
            proposal_id=event.proposal_id,
        )
    if encoder.last_esp is not None:
        state.last_esp.CopyFrom(convert.esp_to_proto(encoder.last_esp))
    for n in snap.neighbours:
        state.neighbours.add(
            neighbour_id=n.neighbour,
            connected=encoder.connected(n.neighbour),
            measured_deviation_ns=_ns(n.deviation),
            predicted_deviation_ns=_ns(n.predicted),
            deviation_rate_ppb=0 if math.isnan(n.rate) else convert.rate_to_ppb(n.rate),
            rtt_us=_us(n.rtt),
            jitter_us=_us(n.jitter),
            trusted=n.trusted,
            locked=n.locked,
            confidence=n.confidence,
            loss=n.loss,
            crossing_in_ms=-1.0 if math.isnan(n.crossing_in) else n.crossing_in * 1000.0,
        )
    return state
