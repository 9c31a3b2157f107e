"""Datagrams from the muxer's bytes, and their RTP framing: pure functions, no sockets."""

from __future__ import annotations

import random
import struct

import pytest

from services.source.pacing import DATAGRAM_SIZE, Packetizer
from services.source.rtp import RTP_PAYLOAD_MP2T, RtpFramer


def _ts(count: int, start: int = 0) -> bytes:
    """``count`` fake TS packets, each a sync byte and its own number."""
    return b"".join(
        bytes([0x47]) + (start + k).to_bytes(4, "big") + bytes(183) for k in range(count)
    )


def test_datagrams_carry_seven_ts_packets_and_every_byte_in_order() -> None:
    packetizer = Packetizer(spread=0.02)
    data = _ts(40)
    out = packetizer.feed(data[:1000], 0.0) + packetizer.feed(data[1000:], 0.04)
    out += packetizer.flush(0.08)
    assert b"".join(d.payload for d in out) == data
    assert [len(d.payload) for d in out] == [DATAGRAM_SIZE] * 5 + [5 * 188]
    assert all(d.payload[0] == 0x47 for d in out)


def test_a_write_leaves_evenly_over_the_spread_from_its_stamp() -> None:
    packetizer = Packetizer(spread=0.02)
    out = packetizer.feed(_ts(28), 1.0)
    assert [d.due for d in out] == pytest.approx([1.0, 1.005, 1.01, 1.015])


def test_due_times_never_go_back_even_when_a_write_runs_over_the_next_stamp() -> None:
    packetizer = Packetizer(spread=0.04)
    out = packetizer.feed(_ts(70), 0.0) + packetizer.feed(_ts(14), 0.01)
    dues = [d.due for d in out]
    assert dues == sorted(dues)
    assert dues[-2] == dues[-1] == pytest.approx(0.036)  # held behind the train before


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
