"""Hand-over of work units: make before break.

Theory of operation
-------------------
The placement (:mod:`.placement`) says where each unit *should* run. Publishing that alone
breaks before it makes: an encoder a unit moves away from stops at its next GOP boundary,
while the encoder it moves to starts at its own next boundary and writes lock-in copies until
its neighbours agree with it, so the unit has a copy fewer for a segment or more (a joiner
still locking in: for many). So the manager publishes the placement plus the holders a unit
is *leaving*, for as long as one of its placement's holders does not yet *serve* it: report
(``HealthReport.units``) that it wrote a segment of it that the mesh confirmed. Once every
holder the placement gives the unit serves it, the leaving holders are dropped. A leaving
holder that is no longer a member (dead, removed) is dropped at once: it holds nothing. A
hand-over that does not complete within ``timeout`` seconds (a new holder that never locks)
drops the leaving holder anyway, and says so.

:func:`hand_over` is a pure function of the placement, what was published last, who is a
member, who serves what, and since when each leaving holder has been kept.

Invariants:

1. Every holder the placement gives a unit is published for it; the published holders of a
   unit are the placement's followed by leaving holders that were published before (a
   holder is never *added* by a hand-over).
2. A leaving holder is kept only while it is a member, some placed holder of the unit does
   not serve it, and for at most ``timeout`` seconds from when it began to leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["HandOver", "hand_over"]

Assignments = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class HandOver:
    """What to publish now, and the hand-overs under way.

    Attributes:
        assignments: unit → holders to publish: the placement's, then the leaving ones kept.
        leaving: (unit, holder) → when the holder began to leave it, for those kept.
        completed: (unit, holder) pairs dropped because every placed holder serves the unit.
        timed_out: (unit, holder) pairs dropped because the hand-over took too long.
    """

    assignments: dict[str, tuple[str, ...]]
    leaving: dict[tuple[str, str], float] = field(default_factory=dict)
    completed: tuple[tuple[str, str], ...] = ()
    timed_out: tuple[tuple[str, str], ...] = ()


def hand_over(
    placement: Assignments,
    published: Assignments,
    *,
    members: frozenset[str],
    serving: Mapping[str, frozenset[str]],
    leaving: Mapping[tuple[str, str], float],
    now: float,
    timeout: float,
) -> HandOver:
    """The assignments to publish for ``placement`` (see the module docstring).

    Args:
        placement: unit → the holders the placement gives it.
        published: unit → the holders published last (leaving ones included).
        members: the encoders in the mesh now.
        serving: encoder → the units it last reported serving.
        leaving: (unit, holder) → since when, for the leaving holders kept so far.
        now: the manager's time, seconds.
        timeout: the longest a leaving holder is kept, seconds.
    """
    assignments: dict[str, tuple[str, ...]] = {}
    kept: dict[tuple[str, str], float] = {}
    completed: list[tuple[str, str]] = []
    timed_out: list[tuple[str, str]] = []
    for unit, holders in placement.items():
        waiting = any(unit not in serving.get(h, frozenset()) for h in holders)
        extra: list[str] = []
        for old in published.get(unit, ()):
            if old in holders or old not in members:
                continue
            since = leaving.get((unit, old), now)
            if not waiting:
                completed.append((unit, old))
            elif now - since >= timeout:
                timed_out.append((unit, old))
            else:
                extra.append(old)
                kept[unit, old] = since
        assignments[unit] = (*holders, *extra)
    return HandOver(assignments, kept, tuple(completed), tuple(timed_out))
