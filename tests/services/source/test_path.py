"""The destination URLs and the delay line model, with no sockets and no clock.

Nothing is mocked: the model takes send times as arguments and a seeded ``random.Random``.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.source.path import (
    DelayLine,
    PathError,
    PathParams,
    Scheme,
    parse_destination,
)


def test_a_url_names_host_port_and_every_parameter() -> None:
    dest = parse_destination(
        "udp://127.0.0.1:5001?delay_ms=40&jitter_ms=5&swing_ms=20&swing_period_s=30"
        "&loss=0.001&seed=9"
    )
    assert (dest.scheme, dest.host, dest.port) == (Scheme.UDP, "127.0.0.1", 5001)
    assert dest.params == PathParams(40, 5, 20, 30, 0.001, 9)
    assert not dest.multicast


def test_a_bare_url_is_a_perfect_path_and_destinations_get_different_default_seeds() -> None:
    a = parse_destination("udp://127.0.0.1:5001")
    b = parse_destination("udp://127.0.0.1:5002")
    assert (a.params.delay_ms, a.params.jitter_ms, a.params.loss) == (0, 0, 0)
    assert a.params.seed != b.params.seed
    assert parse_destination("udp://127.0.0.1:5001").params.seed == a.params.seed


def test_rtp_and_multicast_are_recognised() -> None:
    dest = parse_destination("rtp://239.1.2.3:5004?localaddr=127.0.0.1&ttl=4")
    assert dest.scheme is Scheme.RTP
    assert dest.multicast
    assert (dest.localaddr, dest.ttl) == ("127.0.0.1", 4)
    assert not parse_destination("udp://encoder-0.encoder:5000").multicast


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("srt://127.0.0.1:5000", "scheme must be udp:// or rtp://"),
        ("127.0.0.1:5000", "scheme must be udp:// or rtp://"),
        ("udp://:5000", "no host"),
        ("udp://127.0.0.1", "no port"),
        ("udp://127.0.0.1:0", "no port"),
        ("udp://127.0.0.1:99999", "Port out of range"),
        ("udp://127.0.0.1:5000/stream", "nothing else"),
        ("udp://127.0.0.1:5000?delay=40", "unknown parameter 'delay'"),
        ("udp://127.0.0.1:5000?delay_ms=40&delay_ms=50", "given twice"),
        ("udp://127.0.0.1:5000?delay_ms=forty", "delay_ms must be a number"),
        ("udp://127.0.0.1:5000?delay_ms=nan", "finite"),
        ("udp://127.0.0.1:5000?delay_ms=-1", "delay_ms must be a finite number >= 0"),
        ("udp://127.0.0.1:5000?delay_ms=20000", "delay_ms must be at most"),
        ("udp://127.0.0.1:5000?jitter_ms=5", "must be at least jitter_ms + swing_ms"),
        ("udp://127.0.0.1:5000?delay_ms=10&jitter_ms=5&swing_ms=6", "at least jitter_ms"),
        ("udp://127.0.0.1:5000?loss=1", "loss must be a probability in [0, 1)"),
        ("udp://127.0.0.1:5000?loss=-0.1", "loss must be a finite number >= 0"),
        ("udp://127.0.0.1:5000?swing_period_s=0", "swing_period_s must be > 0"),
        ("udp://127.0.0.1:5000?seed=1.5", "seed must be an integer"),
        ("udp://239.1.1.1:5000?ttl=0", "ttl must be in 1..255"),
        ("udp://239.1.1.1:5000?localaddr=lo", "localaddr must be an IPv4 address"),
    ],
)
def test_a_bad_url_is_refused_with_a_message_that_names_the_fault(url: str, message: str) -> None:
    with pytest.raises(PathError) as caught:
        parse_destination(url)
    assert message in str(caught.value)
    assert url in str(caught.value) or "://" not in url


def _line(seed: int = 1, **params: float) -> DelayLine:
    return DelayLine(PathParams(seed=seed, **params), random.Random(seed))


def _due(line: DelayLine, sent: float) -> float:
    """The delivery time of a path that loses nothing."""
    due = line.due(sent)
    assert due is not None
    return due


def test_without_jitter_or_swing_the_delay_is_exact() -> None:
    line = _line(delay_ms=40)
    assert [line.due(t) for t in (0.0, 0.5, 1.25)] == [
        pytest.approx(0.04),
        pytest.approx(0.54),
        pytest.approx(1.29),
    ]


def test_jitter_stays_within_its_bounds_and_spreads_across_them() -> None:
    line = _line(delay_ms=40, jitter_ms=5)
    # Datagrams 20 ms apart: more than twice the jitter, so order never holds one back.
    extra = [_due(line, k * 0.02) - k * 0.02 - 0.040 for k in range(5000)]
    assert min(extra) >= -0.005 - 1e-12
    assert max(extra) <= 0.005 + 1e-12
    assert min(extra) < -0.0045
    assert max(extra) > 0.0045
    assert abs(sum(extra) / len(extra)) < 0.0003


def test_jitter_never_reorders_datagrams() -> None:
    line = _line(delay_ms=50, jitter_ms=20)
    sends = [k * 0.001 for k in range(5000)]  # 1 ms apart: jitter alone would reorder them
    dues = [_due(line, t) for t in sends]
    assert all(b >= a for a, b in itertools.pairwise(dues))
    assert any(b == a for a, b in itertools.pairwise(dues))  # held back, not reordered


def test_the_swing_is_a_slow_sinusoid_of_the_delay() -> None:
    line = _line(delay_ms=60, swing_ms=20, swing_period_s=8)
    delays = {t: _due(line, t) - t for t in (0.0, 2.0, 4.0, 6.0, 8.0)}
    assert delays[0.0] == pytest.approx(0.060)
    assert delays[2.0] == pytest.approx(0.080)  # a quarter period: the most
    assert delays[4.0] == pytest.approx(0.060)
    assert delays[6.0] == pytest.approx(0.040)  # three quarters: the least
    assert delays[8.0] == pytest.approx(0.060)


def test_loss_rate_matches_the_parameter_over_many_datagrams() -> None:
    n, p = 100_000, 0.01
    line = _line(seed=42, delay_ms=10, loss=p)
    lost = sum(line.due(k * 0.001) is None for k in range(n))
    sd = math.sqrt(n * p * (1 - p))
    assert abs(lost - n * p) < 4 * sd


def test_a_seed_repeats_its_path_and_another_seed_does_not() -> None:
    def run(seed: int) -> list[float | None]:
        line = _line(seed=seed, delay_ms=30, jitter_ms=10, loss=0.1)
        return [line.due(k * 0.005) for k in range(500)]

    assert run(3) == run(3)
    assert run(3) != run(4)


@settings(max_examples=200, deadline=None)
@given(
    delay=st.floats(0, 200),
    jitter_share=st.floats(0, 1),
    swing_share=st.floats(0, 1),
    period=st.floats(0.1, 100),
    loss=st.floats(0, 0.5),
    gaps=st.lists(st.floats(0, 0.05), min_size=1, max_size=200),
    seed=st.integers(0, 2**32),
)
def test_deliveries_never_precede_their_sending_nor_each_other(
    delay: float,
    jitter_share: float,
    swing_share: float,
    period: float,
    loss: float,
    gaps: list[float],
    seed: int,
) -> None:
    jitter = delay * jitter_share / 2
    swing = delay * swing_share / 2
    line = DelayLine(PathParams(delay, jitter, swing, period, loss, seed), random.Random(seed))
    sent = 0.0
    last = -math.inf
    for gap in gaps:
        sent += gap
        due = line.due(sent)
        if due is None:
            continue
        assert due >= sent
        assert due >= last
        assert due <= sent + (delay + jitter + swing) / 1000 or due == last
        last = due
