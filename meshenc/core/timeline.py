"""Timelines: which of two meshes that locked apart keeps its timeline when they meet.

A mesh that locks in aims for its anchor's slot (``meshenc.core.anchor``), so two meshes that
lock while apart — a region cut off from the start, two meshes started separately and then
linked — hold two timelines, typically many frames apart. Where they meet, each side sees the
other's few encoders as outliers and sets them aside, so without more both carry on for ever.

So every locked encoder names its timeline: the name its locked neighbours in the same slot
already hold, or else the id of its anchor. A timeline named after an encoder's anchor is
the anchor's slot: an encoder whose anchor is whole frames away is not on it, and names its
timeline after itself instead, whatever its neighbours in its slot call theirs (a group that
locked off the anchor's slot would otherwise carry the anchor's name, and neither side would
see the other as another timeline). Names only improve while the encoder stays locked: a
neighbour in the same slot that holds a smaller name is on the same timeline, and its name is
taken. The smaller name wins a meeting; the side holding it never moves.

An encoder of the losing side that sees a locked neighbour on a smaller-named timeline, a
frame or more away, announces a **merge route** to it: the winner's name, how many links away it was
seen, its own label minus the winner's, the encoders of the winning side seen directly
(``witnesses``) and, once scheduled, the segment at whose start it will move. Encoders of the
losing side carry the route on through neighbours in their own slot (``MergeRoute.via``, like
the anchor's distance vector), so the whole losing group learns how far the winner is without
any of it moving first. The move is one visible jump of whole frames, at a segment boundary,
the same for every encoder of the losing group:

- the route must be seen directly on at least ``MIN_WITNESSES`` different encoders of the
  winning side (one neighbour that lies about its timeline cannot move a locked mesh; the
  manager plans two independent bridges between any two zones), and held, the same whole
  number of frames away, for a confirmation period;
- the first encoder that confirms schedules the jump ``lead`` segments ahead; the schedule
  rides on the route, and every encoder of the group takes the earliest schedule still ahead
  (as parameter changes spread), so all of them jump at the start of the same segment.

Groups need not meet directly: encoders that cannot lock (each with neighbours in both slots)
can hold a group apart from the rest. So every encoder, locked or not, passes on a **beacon**:
the best-named timeline it knows of (its own, when it is locked: 0 links), carried one link
further the way a route is, with the one encoder locked on it that the beacon started from
(``choose_beacon``). A locked encoder that hears of a better-named timeline whole frames away
takes it as a route, its witnesses those origins: a group that hears of a timeline through a
single encoder knows one witness, however far the beacon travelled.

A route that has travelled ``MAX_HOPS`` links is dropped (as an anchor announcement is), so a
route whose witnesses went away fades instead of circling the losing group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshenc.core.anchor import MAX_HOPS
from meshenc.core.robust import median

__all__ = ["MAX_WITNESSES", "MIN_WITNESSES", "MergeRoute", "choose_beacon", "choose_route"]

#: A merge needs the winning timeline seen directly on this many different encoders...
MIN_WITNESSES = 2
#: ...and a route names at most this many (the smallest ids: enough to count to the minimum).
MAX_WITNESSES = 2


@dataclass(frozen=True, slots=True)
class MergeRoute:
    """A better-named timeline, as an encoder of the losing side sees it.

    ``offset`` is this encoder's label minus the winning timeline's label (seconds);
    ``segment`` the segment at whose start this encoder moves to it (0: not scheduled).
    """

    timeline: str
    hops: int
    offset: float
    witnesses: tuple[str, ...]
    segment: int = 0

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(
        self, timeline: str, hops: int, offset: float, witnesses: tuple[str, ...], segment: int = 0
    ) -> None:
        object.__setattr__(self, "timeline", timeline)
        object.__setattr__(self, "hops", hops)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "witnesses", witnesses)
        object.__setattr__(self, "segment", segment)

    def via(self, deviation: float) -> MergeRoute | None:
        """This route as seen one link further, by an encoder of the same timeline whose label
        is ``deviation`` seconds after the sender's. None when it has travelled far enough."""
        if self.hops + 1 >= MAX_HOPS:
            return None
        return MergeRoute(
            self.timeline, self.hops + 1, deviation + self.offset, self.witnesses, self.segment
        )


def choose_route(own: str, heard: Iterable[MergeRoute], current_segment: int) -> MergeRoute | None:
    """The best route to a timeline named before ``own`` (the smallest name, then the fewest
    links), or None. Its offset is the median of the routes that tie on both; its witnesses
    are the smallest of all its routes' witnesses; its segment the earliest still ahead of
    ``current_segment`` (0 when none is)."""
    best = _nearest([r for r in heard if r.timeline < own])
    if best is None:
        return None
    same, nearest = best
    witnesses = tuple(sorted({w for r in same for w in r.witnesses})[:MAX_WITNESSES])
    ahead = [r.segment for r in same if r.segment > current_segment]
    return MergeRoute(
        nearest[0].timeline,
        nearest[0].hops,
        median([r.offset for r in nearest]),
        witnesses,
        min(ahead, default=0),
    )


def choose_beacon(heard: Iterable[MergeRoute]) -> MergeRoute | None:
    """The beacon an encoder passes on, from the beacons ``heard`` (its own when it is locked,
    its neighbours' carried one link further): the best-named timeline, then the fewest links,
    with the median offset of those that tie on both, as a route is chosen; its one witness is
    the smallest of theirs. One witness, not all it heard of: a group that hears of a timeline
    through one encoder only (a single bridge, or one liar) knows of one witness however many
    links the beacon travels, and does not move."""
    best = _nearest(list(heard))
    if best is None:
        return None
    _, nearest = best
    witness = min(w for r in nearest for w in r.witnesses)
    return MergeRoute(
        nearest[0].timeline, nearest[0].hops, median([r.offset for r in nearest]), (witness,)
    )


def _nearest(
    candidates: list[MergeRoute],
) -> tuple[list[MergeRoute], list[MergeRoute]] | None:
    """Of ``candidates``, those of the smallest name, and of those the ones with the fewest
    links; None when there are none."""
    if not candidates:
        return None
    name = min(r.timeline for r in candidates)
    same = [r for r in candidates if r.timeline == name]
    hops = min(r.hops for r in same)
    return same, [r for r in same if r.hops == hops]
