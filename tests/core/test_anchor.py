"""Choosing the anchor an encoder locks in to, from its neighbours' announcements."""

from __future__ import annotations

import statistics

from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.anchor import MAX_HOPS, Anchor, choose_anchor

_ids = st.sampled_from(["enc-0", "enc-1", "enc-2", "enc-3", "enc-4"])
_announcements = st.lists(
    st.builds(
        Anchor,
        node=_ids,
        hops=st.integers(min_value=1, max_value=MAX_HOPS - 1),
        offset=st.floats(min_value=-10.0, max_value=10.0),
    ),
    max_size=8,
)


@given(own=_ids, heard=_announcements)
def test_the_smallest_id_then_the_fewest_links_wins(own: str, heard: list[Anchor]) -> None:
    chosen = choose_anchor(own, heard)
    others = [a for a in heard if a.node != own]
    assert chosen.node == min([own, *(a.node for a in others)])
    if chosen.node == own:
        assert (chosen.hops, chosen.offset) == (0, 0.0)
        return
    routes = [a for a in others if a.node == chosen.node]
    assert chosen.hops == min(a.hops for a in routes)
    shortest = [a.offset for a in routes if a.hops == chosen.hops]
    assert chosen.offset == statistics.median(shortest)


def test_one_bad_estimate_among_equally_short_routes_does_not_move_the_offset() -> None:
    heard = [Anchor("enc-0", 2, 0.010), Anchor("enc-0", 2, 0.011), Anchor("enc-0", 2, 0.900)]
    assert choose_anchor("enc-5", heard) == Anchor("enc-0", 2, 0.011)


def test_a_longer_route_is_ignored_while_a_shorter_one_is_heard() -> None:
    heard = [Anchor("enc-0", 3, 0.5), Anchor("enc-0", 1, 0.02)]
    assert choose_anchor("enc-5", heard) == Anchor("enc-0", 1, 0.02)


def test_announcements_of_the_encoder_itself_are_ignored() -> None:
    # A neighbour that names this encoder as its anchor learnt it from this encoder.
    assert choose_anchor("enc-0", [Anchor("enc-0", 1, 0.3)]) == Anchor("enc-0", 0, 0.0)


def test_an_announcement_is_carried_one_link_further_until_it_has_gone_far_enough() -> None:
    announced = Anchor("enc-0", 2, 0.004)
    assert announced.via(0.010) == Anchor("enc-0", 3, 0.014)
    assert Anchor("enc-0", MAX_HOPS - 2, 0.0).via(0.0) == Anchor("enc-0", MAX_HOPS - 1, 0.0)
    assert Anchor("enc-0", MAX_HOPS - 1, 0.0).via(0.0) is None
