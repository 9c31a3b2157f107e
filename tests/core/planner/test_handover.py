"""The hand-over of work units: an encoder keeps a unit it is leaving until the unit's new
holders serve it (make before break), never longer than the timeout, never when dead."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.planner.handover import HandOver, hand_over

UNIT = "ch0/hd"
PLACEMENT = {UNIT: ("a", "c")}  # b gives the unit to c; a keeps it


def _serving(*encoders: str) -> dict[str, frozenset[str]]:
    return {e: frozenset({UNIT}) for e in encoders}


def _step(
    published: dict[str, tuple[str, ...]],
    serving: dict[str, frozenset[str]],
    leaving: dict[tuple[str, str], float],
    now: float,
    members: str = "abc",
) -> HandOver:
    return hand_over(
        PLACEMENT,
        published,
        members=frozenset(members),
        serving=serving,
        leaving=leaving,
        now=now,
        timeout=30.0,
    )


def test_a_moved_unit_keeps_its_old_holder_until_the_new_one_serves_it() -> None:
    first = _step({UNIT: ("a", "b")}, _serving("a"), {}, 10.0)
    assert first.assignments == {UNIT: ("a", "c", "b")}
    assert first.leaving == {(UNIT, "b"): 10.0}
    # c writes its lock-in segments: not serving yet, b stays.
    waiting = _step(first.assignments, _serving("a", "b"), first.leaving, 15.0)
    assert waiting.assignments == first.assignments and waiting.leaving == first.leaving
    # c's segments are confirmed: b lets go.
    done = _step(waiting.assignments, _serving("a", "c"), waiting.leaving, 16.0)
    assert done.assignments == {UNIT: ("a", "c")}
    assert done.leaving == {} and done.completed == ((UNIT, "b"),) and done.timed_out == ()


def test_a_dead_holder_is_dropped_at_once_and_a_slow_hand_over_ends_at_the_timeout() -> None:
    dead = _step({UNIT: ("a", "b")}, {}, {}, 0.0, members="ac")
    assert dead.assignments == {UNIT: ("a", "c")} and dead.leaving == {}
    slow = _step({UNIT: ("a", "c", "b")}, _serving("a"), {(UNIT, "b"): 0.0}, 30.0)
    assert slow.assignments == {UNIT: ("a", "c")}
    assert slow.timed_out == ((UNIT, "b"),) and slow.completed == ()


ENCODERS = list("abcdef")
holders = st.lists(st.sampled_from(ENCODERS), min_size=1, max_size=3, unique=True).map(tuple)
units = st.sampled_from([f"ch{c}/{r}" for c in range(3) for r in ("hd", "sd")])


@given(
    placement=st.dictionaries(units, holders, max_size=6),
    published=st.dictionaries(units, holders, max_size=6),
    members=st.frozensets(st.sampled_from(ENCODERS)),
    serving=st.dictionaries(st.sampled_from(ENCODERS), st.frozensets(units)),
    started=st.dictionaries(st.tuples(units, st.sampled_from(ENCODERS)), st.floats(0.0, 100.0)),
    now=st.floats(0.0, 100.0),
)
def test_published_holders_are_the_placements_then_leaving_ones_that_may_stay(
    placement: dict[str, tuple[str, ...]],
    published: dict[str, tuple[str, ...]],
    members: frozenset[str],
    serving: dict[str, frozenset[str]],
    started: dict[tuple[str, str], float],
    now: float,
) -> None:
    timeout = 30.0
    leaving = {k: min(v, now) for k, v in started.items()}
    result = hand_over(
        placement,
        published,
        members=members,
        serving=serving,
        leaving=leaving,
        now=now,
        timeout=timeout,
    )
    assert set(result.assignments) == set(placement)
    for unit, placed in placement.items():
        listed = result.assignments[unit]
        assert listed[: len(placed)] == placed
        extra = listed[len(placed) :]
        assert len(set(listed)) == len(listed)
        waiting = any(unit not in serving.get(h, frozenset()) for h in placed)
        for old in extra:
            assert old in published.get(unit, ()) and old in members
            assert waiting
            assert now - result.leaving[unit, old] < timeout
        dropped = [
            h
            for h in published.get(unit, ())
            if h not in placed and h in members and h not in extra
        ]
        for old in dropped:
            assert (unit, old) in result.completed + result.timed_out
    assert set(result.leaving) == {
        (u, h) for u, listed in result.assignments.items() for h in listed[len(placement[u]) :]
    }
