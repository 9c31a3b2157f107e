"""Datagrams from the muxer's bytes, and their RTP framing: pure functions, no sockets."""

from __future__ import annotations

import random
import struct

import pytest

from services.source.pacing import (
    DATAGRAM_SIZE,
    NULL_PACKET,
    TS_PACKET_SIZE,
    Packetizer,
    pes_timestamp,
)
from services.source.rtp import RTP_PAYLOAD_MP2T, RtpFramer


def _ts(count: int, start: int = 0) -> bytes:
    """``count`` TS packets that start no PES (continuations), each carrying its number."""
    return b"".join(
        bytes([0x47, 0x01, 0x00, 0x10]) + (start + k).to_bytes(4, "big") + bytes(180)
        for k in range(count)
    )


def _field(prefix: int, ticks: int) -> bytes:
    """A 5-byte PTS/DTS field with its marker bits."""
    return bytes(
        [
            prefix << 4 | ((ticks >> 30) & 0x7) << 1 | 1,
            (ticks >> 22) & 0xFF,
            ((ticks >> 15) & 0x7F) << 1 | 1,
            (ticks >> 7) & 0xFF,
            (ticks & 0x7F) << 1 | 1,
        ]
    )


def _pes(pts: int, dts: int | None = None, *, adaptation: bool = False) -> bytes:
    """A TS packet that starts a video PES with a PTS (and a DTS)."""
    header = bytes([0x47, 0x41, 0x00, 0x30 if adaptation else 0x10])
    if adaptation:
        header += bytes([7, 0x10]) + bytes(6)  # adaptation field: 7 bytes (a PCR's room)
    if dts is None:
        pes = b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05" + _field(0x2, pts)
    else:
        pes = b"\x00\x00\x01\xe0\x00\x00\x80\xc0\x0a" + _field(0x3, pts) + _field(0x1, dts)
    packet = header + pes
    return packet + b"\xff" * (TS_PACKET_SIZE - len(packet))


def test_pes_timestamps_are_read_dts_first() -> None:
    assert pes_timestamp(_pes(123_456)) == 123_456
    assert pes_timestamp(_pes(90_000, dts=87_000)) == 87_000
    assert pes_timestamp(_pes(2**33 - 1, adaptation=True)) == 2**33 - 1
    assert pes_timestamp(_ts(1)) is None
    with pytest.raises(ValueError, match="TS packet"):
        pes_timestamp(b"\x00" * TS_PACKET_SIZE)


def test_datagrams_carry_seven_ts_packets_and_every_byte_in_order() -> None:
    packetizer = Packetizer(spread=0.02)
    data = _pes(0) + _ts(20) + _pes(3600) + _ts(18)
    out = packetizer.feed(data[:1000]) + packetizer.feed(data[1000:]) + packetizer.flush()
    assert b"".join(d.payload for d in out) == data
    assert [len(d.payload) for d in out] == [DATAGRAM_SIZE] * 5 + [5 * TS_PACKET_SIZE]
    assert all(d.payload[0] == 0x47 for d in out)


def _without_nulls(payload: bytes) -> bytes:
    packets = [payload[k : k + TS_PACKET_SIZE] for k in range(0, len(payload), TS_PACKET_SIZE)]
    return b"".join(p for p in packets if p != NULL_PACKET)


def test_every_picture_starts_a_datagram_and_the_one_before_is_padded() -> None:
    packetizer = Packetizer(spread=0.0)
    data = _pes(0) + _ts(2) + _pes(3000) + _ts(6) + _pes(6000) + _ts(9)
    out = packetizer.feed(data) + packetizer.flush()
    assert [len(d.payload) for d in out] == [DATAGRAM_SIZE] * 3 + [3 * TS_PACKET_SIZE]
    assert out[0].payload[3 * TS_PACKET_SIZE :] == NULL_PACKET * 4
    assert [pes_timestamp(d.payload[:TS_PACKET_SIZE]) for d in out[:3]] == [0, 3000, 6000]
    assert b"".join(_without_nulls(d.payload) for d in out) == data
    assert packetizer.null_packets == 4


def test_a_datagram_is_due_at_its_pes_and_the_rest_of_a_write_steps_over_the_spread() -> None:
    packetizer = Packetizer(spread=0.02)
    first = packetizer.feed(_pes(900_000) + _ts(6))  # the origin of the timeline
    assert [d.due for d in first] == [0.0]
    # One write: a picture 40 ms later in three datagrams (the last padded), and the start of
    # another 80 ms later; its last five packets wait for more.
    later = _pes(900_000 + 3600) + _ts(15) + _pes(900_000 + 7200) + _ts(11)
    out = packetizer.feed(later)
    assert [d.due for d in out] == pytest.approx([0.04, 0.045, 0.05, 0.08])


def test_due_times_never_go_back_and_follow_the_timestamps_across_the_wrap() -> None:
    packetizer = Packetizer(spread=0.0)
    near_wrap = 2**33 - 1800
    out = packetizer.feed(_pes(near_wrap) + _ts(6))
    out += packetizer.feed(_pes(1800) + _ts(6))  # 20 ms later, after the counter wrapped
    out += packetizer.feed(_pes(0) + _ts(6))  # back in time: held at the time before
    assert [d.due for d in out] == pytest.approx([0.0, 0.04, 0.04])


def test_rtp_headers_count_datagrams_and_stamp_send_time_at_90_khz() -> None:
    framer = RtpFramer(random.Random(5))
    frames = [framer.frame(_ts(7, k), k * 0.01) for k in range(3)]
    headers = [struct.unpack("!BBHII", f[:12]) for f in frames]
    assert all(h[0] == 0x80 and h[1] == RTP_PAYLOAD_MP2T for h in headers)
    assert [(h[2] - headers[0][2]) % 65536 for h in headers] == [0, 1, 2]
    assert [(h[3] - headers[0][3]) % 2**32 for h in headers] == [0, 900, 1800]
    assert len({h[4] for h in headers}) == 1
    assert frames[1][12:] == _ts(7, 1)


def test_rtp_sequence_numbers_wrap() -> None:
    framer = RtpFramer(random.Random(0))
    first = struct.unpack("!H", framer.frame(b"", 0.0)[2:4])[0]
    for _ in range(65535 - first):
        framer.frame(b"", 0.0)
    assert struct.unpack("!H", framer.frame(b"", 0.0)[2:4])[0] == 0
