"""Merge routes: which timeline a losing group moves to, and when."""

from __future__ import annotations

from meshenc.core.anchor import MAX_HOPS
from meshenc.core.timeline import (
    MAX_WITNESSES,
    MIN_WITNESSES,
    MergeRoute,
    choose_beacon,
    choose_route,
)


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


def test_a_beacon_is_the_best_named_timeline_then_the_fewest_links_with_one_witness() -> None:
    heard = [
        MergeRoute("enc-7", 0, 0.0, ("enc-7",)),  # its own timeline
        MergeRoute("enc-0", 3, 0.034, ("enc-2",)),
        MergeRoute("enc-0", 2, 0.031, ("enc-6",)),
        MergeRoute("enc-0", 2, 0.035, ("enc-4",)),
        MergeRoute("enc-0", 2, 0.033, ("enc-9",)),
    ]
    assert choose_beacon(heard) == MergeRoute("enc-0", 2, 0.033, ("enc-4",))
    assert choose_beacon(heard[:1]) == heard[0]
    assert choose_beacon([]) is None


def test_beacons_through_one_encoder_name_one_witness_however_far_they_travel() -> None:
    # A single bridge: its encoder's beacon reaches the other group along every path, and
    # every copy names it alone. The group's route to the timeline has one witness.
    bridge = MergeRoute("enc-0", 0, 0.0, ("enc-5",))
    passed_on = choose_beacon([bridge])
    assert passed_on is not None
    further = [passed_on.via(0.033), passed_on.via(0.034)]
    heard = [b for b in further if b is not None]
    beacon = choose_beacon(heard)
    assert beacon is not None and beacon.witnesses == ("enc-5",)
    route = choose_route("enc-7", heard, 0)
    assert route is not None and len(route.witnesses) == 1 < MIN_WITNESSES
    # Two bridges are two witnesses.
    other = MergeRoute("enc-0", 1, 0.034, ("enc-3",))
    route = choose_route("enc-7", [*heard, other], 0)
    assert route is not None and route.witnesses == ("enc-3", "enc-5")
