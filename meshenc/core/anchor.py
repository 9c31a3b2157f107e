"""The anchor: the one encoder whose timeline every encoder still locking in aims for.

Averaging neighbours' labels (each encoder moving to its neighbourhood's mean) converges on
any connected mesh, but slowly on a sparse one, one neighbourhood at a time; and the value it
converges to may sit on a frame-slot boundary, where neighbours' views of it straddle the
boundary and groups lock into adjacent slots. Measured on 160 seeded worlds at the broadcast
frame rates (``meshenc bench lockin --rates``): averaging missed lock-in within two segments in
14 of them and never locked in 4; aiming at one anchor locked every world, median 1.3 s.

So an encoder locking in aims for the middle of the slot that the anchor's label is in. The
anchor is the encoder with the smallest id that the encoder can reach through neighbours it
counts. Each ESP announces the sender's anchor, how many links away it is and the sender's
label minus the anchor's label; a receiver adds its own deviation from the sender and gets its
own offset from the anchor, without waiting for anyone in between to move. Like a
distance-vector route: the announcement with the fewest links wins (the median of those with
equally few, so one neighbour's bad estimate cannot pull the rest), and one that has travelled
``MAX_HOPS`` links is dropped, so an anchor that died stops being announced within a few
control steps instead of circling the mesh.

The anchor is a lock-in aid only. An encoder that holds a lock keeps it with its neighbourhood
(``meshenc.core.engine``); a neighbour whose timeline everyone aligned to when it was the anchor
changes nothing when it leaves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshenc.core.robust import median

__all__ = ["MAX_HOPS", "Anchor", "choose_anchor"]

#: Announcements that have crossed this many links are not passed on (no mesh the manager
#: plans is this wide: degree 3-7 reaches 1,000 encoders in well under 16 links).
MAX_HOPS = 16


@dataclass(frozen=True, slots=True)
class Anchor:
    """An encoder's view of its anchor.

    ``offset`` is this encoder's label minus the anchor's label (seconds): 0 for an encoder
    that is its own anchor.
    """

    node: str
    hops: int
    offset: float

    # Written out, not generated: compiled by mypyc, see ``meshenc.core.messages``.
    def __init__(self, node: str, hops: int, offset: float) -> None:
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "hops", hops)
        object.__setattr__(self, "offset", offset)

    def via(self, deviation: float) -> Anchor | None:
        """This announcement as seen one link further, by an encoder whose label is
        ``deviation`` seconds after the sender's. None when it has travelled far enough."""
        if self.hops + 1 >= MAX_HOPS:
            return None
        return Anchor(self.node, self.hops + 1, deviation + self.offset)


def choose_anchor(own: str, heard: Iterable[Anchor]) -> Anchor:
    """The anchor of encoder ``own``, from neighbours' announcements already carried one link
    further (``Anchor.via``): the smallest id, then the fewest links; the offset is the median
    of the announcements that tie on both. Announcements of ``own`` itself are ignored."""
    best = Anchor(own, 0, 0.0)
    offsets = [0.0]
    for anchor in heard:
        if anchor.node == own:
            continue
        if (anchor.node, anchor.hops) < (best.node, best.hops):
            best, offsets = anchor, [anchor.offset]
        elif (anchor.node, anchor.hops) == (best.node, best.hops):
            offsets.append(anchor.offset)
    if len(offsets) == 1:
        return best
    return Anchor(best.node, best.hops, median(offsets))
