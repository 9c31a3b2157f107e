"""The link meter: RTT free of clock offsets, RFC 3550 jitter, loss from sequence gaps.

Two encoders are simulated by hand: ``ours`` is our clock, theirs reads ``ours + offset``.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.link import LinkMeter

START = 1.8e9


def _exchange(
    offset: float, forward: list[float], backward: list[float], hold: float = 0.004
) -> LinkMeter:
    """We send at ``t``; they hold our ESP ``hold`` s, then answer with an echo of it.

    ``forward``/``backward`` are the one-way delays of each round (ours → theirs, back); the
    meter sees the transit of their ESP, i.e. the backward delay.
    """
    meter = LinkMeter()
    t = START
    for sequence, (out, back) in enumerate(zip(forward, backward, strict=True), start=1):
        our_send = t
        their_send = our_send + out + hold + offset  # on their clock
        now = our_send + out + hold + back  # on ours
        meter.on_packet(now, sequence, their_send, echo_sent_at=our_send, echo_hold=hold)
        t += 0.1
    return meter


@pytest.mark.parametrize("offset", [0.0, 0.250, -3.7, 1e6, -START / 2])
def test_rtt_is_the_round_trip_whatever_the_clock_offset(offset: float) -> None:
    meter = _exchange(offset, [0.012] * 20, [0.008] * 20)
    assert meter.rtt == pytest.approx(0.020, abs=1e-6)


def test_rtt_follows_changes_smoothly() -> None:
    # One slow round trip after many fast ones moves the estimate only an eighth of the way.
    spike = _exchange(0.3, [0.010] * 30 + [0.040], [0.010] * 31)
    assert spike.rtt == pytest.approx(0.020 + 0.030 / 8, abs=1e-6)
    meter = _exchange(0.3, [0.010] * 30 + [0.040] * 30, [0.010] * 60)
    # A smoothed estimate: moved most of the way from 20 ms toward 50 ms, never past it.
    assert 0.045 < meter.rtt <= 0.050 + 1e-6


def test_rtt_is_nan_until_an_echo_arrives() -> None:
    meter = LinkMeter()
    meter.on_packet(START, 1, START - 0.02)
    assert math.isnan(meter.rtt)


def test_jitter_is_independent_of_the_clock_offset() -> None:
    rng = random.Random(3)
    forward = [0.010] * 100
    backward = [0.010 + rng.uniform(0.0, 0.02) for _ in range(100)]
    near = _exchange(0.0, forward, backward)
    far = _exchange(-123.456, forward, backward)
    assert near.jitter > 0.001
    assert far.jitter == pytest.approx(near.jitter, abs=1e-6)


def test_jitter_stays_zero_for_constant_transit() -> None:
    meter = _exchange(42.0, [0.015] * 200, [0.015] * 200)
    assert meter.jitter < 1e-6


def test_jitter_grows_with_varying_transit() -> None:
    # Transit alternating 10 ms / 30 ms: every difference is 20 ms, which the RFC 3550
    # estimator approaches with gain 1/16.
    backward = [0.010, 0.030] * 100
    meter = _exchange(5.0, [0.010] * 200, backward)
    assert meter.jitter == pytest.approx(0.020, rel=0.01)
    steady = _exchange(5.0, [0.020] * 200, [0.010] * 200)
    assert meter.jitter > 100 * max(steady.jitter, 1e-9)


def test_no_loss_without_gaps() -> None:
    meter = LinkMeter()
    for sequence in range(1, 101):
        meter.on_packet(START + sequence * 0.1, sequence, START + sequence * 0.1 - 0.01)
    assert meter.loss == 0.0


def test_loss_counts_sequence_gaps() -> None:
    meter = LinkMeter()
    lost = {5, 17, 18, 40, 41, 42, 43, 77, 90, 99}
    for sequence in range(1, 101):
        if sequence not in lost:
            meter.on_packet(START + sequence * 0.1, sequence, START + sequence * 0.1 - 0.01)
    assert meter.loss == pytest.approx(len(lost) / 100)


def test_loss_counts_from_the_first_packet_seen() -> None:
    # A meter that starts listening mid-stream must not count what was sent before it.
    meter = LinkMeter()
    for sequence in range(500, 600, 2):  # every other packet lost
        meter.on_packet(START + sequence * 0.1, sequence, START + sequence * 0.1 - 0.01)
    assert meter.loss == pytest.approx(49 / 99)


def test_reordered_packets_are_not_lost() -> None:
    meter = LinkMeter()
    for sequence in [1, 2, 4, 3, 5, 7, 6, 8]:
        meter.on_packet(START + sequence * 0.1, sequence, START + sequence * 0.1 - 0.01)
    assert meter.loss == 0.0


def test_loss_with_sequences_from_zero() -> None:
    meter = LinkMeter()
    for sequence in [0, 1, 2, 3, 5, 6, 7, 8, 9]:  # 4 lost: one in ten
        meter.on_packet(START + sequence * 0.1, sequence, START + sequence * 0.1 - 0.01)
    assert meter.loss == pytest.approx(0.1)


@given(
    packets=st.lists(
        st.tuples(
            st.integers(1, 1000),  # sequence
            st.floats(-1.0, 1.0),  # transit incl. offset
            st.floats(0.0, 2.0),  # time since our echoed send
            st.floats(0.0, 3.0),  # their hold, may exceed it (a lying or confused peer)
        ),
        min_size=1,
        max_size=50,
    )
)
def test_rtt_is_never_negative_and_loss_is_a_fraction(
    packets: list[tuple[int, float, float, float]],
) -> None:
    meter = LinkMeter()
    now = START
    for sequence, transit, since, hold in packets:
        now += 0.05
        meter.on_packet(now, sequence, now - transit, echo_sent_at=now - since, echo_hold=hold)
        assert meter.rtt >= 0.0
        assert 0.0 <= meter.loss <= 1.0
        assert meter.jitter >= 0.0


def test_two_meters_measure_the_rtt_through_their_echoes() -> None:
    # A and B exchange ESPs every 100 ms over 7 ms one way; B's clock is 2.5 s ahead of A's.
    offset, delay = 2.5, 0.007
    a, b = LinkMeter(), LinkMeter()
    assert a.echo(START) == (0, 0.0, 0.0)  # nothing to echo yet
    for n in range(1, 30):
        t = START + n * 0.1  # true time of A's send
        a_echo = a.echo(t)
        b.on_packet(t + delay + offset, n, t, *a_echo[1:])
        # B answers 30 ms after A's packet arrived, echoing it.
        reply = t + delay + 0.030
        sequence, sent_at, hold = b.echo(reply + offset)
        assert (sequence, sent_at) == (n, t)
        assert hold == pytest.approx(0.030)
        a.on_packet(reply + delay, n, reply + offset, sent_at, hold)
    assert a.rtt == pytest.approx(2 * delay, abs=1e-6)
    assert b.rtt == pytest.approx(2 * delay, abs=1e-6)
    assert a.loss == b.loss == 0.0
