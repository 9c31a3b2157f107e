"""Merge routes: which timeline a losing group moves to, and when."""

from __future__ import annotations

from meshenc.core.anchor import MAX_HOPS
from meshenc.core.timeline import MAX_WITNESSES, MergeRoute, choose_route


def test_a_route_one_link_further_adds_the_deviation_and_a_link() -> None:
    route = MergeRoute("enc-0", 1, -0.733, ("enc-3",), 17)
    assert route.via(0.002) == MergeRoute("enc-0", 2, -0.731, ("enc-3",), 17)


def test_a_route_that_travelled_far_enough_is_dropped() -> None:
    assert MergeRoute("enc-0", MAX_HOPS - 1, 0.5, ("enc-3",)).via(0.0) is None
    assert MergeRoute("enc-0", MAX_HOPS - 2, 0.5, ("enc-3",)).via(0.0) is not None


def test_only_timelines_named_before_the_own_one_are_routes() -> None:
    heard = [MergeRoute("enc-20", 1, 0.7, ("enc-21",)), MergeRoute("enc-5", 1, 0.7, ("enc-6",))]
    assert choose_route("enc-1", heard, 0) is None
    assert choose_route("enc-20", heard, 0) is None  # names compare as text: enc-20 < enc-5
    assert choose_route("enc-50", heard, 0) == MergeRoute("enc-20", 1, 0.7, ("enc-21",))


def test_the_smallest_name_then_the_fewest_links_wins_with_the_median_offset() -> None:
    heard = [
        MergeRoute("enc-1", 1, 0.40, ("enc-1",)),
        MergeRoute("enc-0", 3, 0.90, ("enc-9",)),
        MergeRoute("enc-0", 2, 0.70, ("enc-4",)),
        MergeRoute("enc-0", 2, 0.74, ("enc-3",)),
        MergeRoute("enc-0", 2, 0.71, ("enc-3",)),
    ]
    route = choose_route("enc-20", heard, 0)
    assert route is not None
    assert (route.timeline, route.hops, route.offset) == ("enc-0", 2, 0.71)


def test_witnesses_gather_from_every_route_to_the_timeline_up_to_the_limit() -> None:
    heard = [
        MergeRoute("enc-0", 3, 0.7, ("enc-9",)),
        MergeRoute("enc-0", 2, 0.7, ("enc-4",)),
        MergeRoute("enc-0", 2, 0.7, ("enc-3", "enc-4")),
        MergeRoute("enc-1", 1, 0.7, ("enc-1",)),  # another timeline: not a witness of enc-0
    ]
    route = choose_route("enc-20", heard, 0)
    assert route is not None
    assert route.witnesses == ("enc-3", "enc-4")
    assert len(route.witnesses) == MAX_WITNESSES


def test_the_earliest_schedule_still_ahead_is_taken() -> None:
    heard = [
        MergeRoute("enc-0", 2, 0.7, ("enc-3",), 12),
        MergeRoute("enc-0", 2, 0.7, ("enc-4",), 14),
        MergeRoute("enc-0", 3, 0.7, ("enc-4",), 13),
        MergeRoute("enc-0", 3, 0.7, ("enc-4",), 0),
    ]
    later = choose_route("enc-20", heard, 12)
    sooner = choose_route("enc-20", heard, 11)
    assert later is not None and later.segment == 13  # 12 has begun: too late to take
    assert sooner is not None and sooner.segment == 12
    assert choose_route("enc-20", heard, 14) == MergeRoute("enc-0", 2, 0.7, ("enc-3", "enc-4"))
