"""What ``GetState`` returns: an operator's view of one encoder, built from an engine snapshot."""

from __future__ import annotations

import time
from typing import Protocol

from meshenc.core.election import ElectionSnapshot
from meshenc.core.engine import EngineSnapshot
from meshenc.core.messages import EncodingStatePacket
from meshenc.v1 import mesh_pb2
from meshenc.wire import convert
from services.encoder.settings import EncoderSettings

__all__ = ["encoder_state"]


class _Encoder(Protocol):
    settings: EncoderSettings

    @property
    def input_status(self) -> mesh_pb2.InputStatus: ...

    @property
    def last_esp(self) -> EncodingStatePacket | None: ...

    def connected(self, peer: str) -> bool: ...


def encoder_state(
    encoder: _Encoder,
    snap: EngineSnapshot,
    election: ElectionSnapshot | None = None,
    *,
    topology_epoch: int = 0,
    segment: str | None = None,
) -> mesh_pb2.EncoderState:
    """The GetState answer (:func:`meshenc.wire.convert.encoder_state_to_proto`), taken now.

    Args:
        encoder: the encoder (its settings, last ESP and links).
        snap: its engine's snapshot.
        election: the segment election's view (None: no etcd).
        topology_epoch: the manager's epoch the encoder works in (0: none yet).
        segment: the segment it is in now (None: its ``--segment``).
    """
    settings = encoder.settings
    return convert.encoder_state_to_proto(
        snap,
        election,
        frame_rate=settings.frame_rate,
        gop_length=settings.gop,
        segment=settings.segment if segment is None else segment,
        topology_epoch=topology_epoch,
        input_status=encoder.input_status,
        last_esp=encoder.last_esp,
        connected=encoder.connected,
        injected_drift_ppm=settings.drift_ppm,
        injected_offset_ms=settings.offset_ms,
        injected_jitter_ms=settings.jitter_ms,
        taken_unix_ns=time.time_ns(),
    )
