"""Leader ranking and hysteresis. Pure functions; nothing is mocked."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.leader import Candidate, choose_leader, rank, score

# --- candidates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "confidence", "latency", "message"),
    [
        ("a", -0.01, 0.0, "confidence"),
        ("a", 1.01, 0.0, "confidence"),
        ("a", math.nan, 0.0, "confidence"),
        ("a", 0.5, -0.001, "latency"),
        ("a", 0.5, math.inf, "latency"),
        ("a", 0.5, math.nan, "latency"),
        ("", 0.5, 0.0, "node_id"),
    ],
)
def test_candidate_validates_itself(
    node_id: str, confidence: float, latency: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Candidate(node_id, confidence, latency)


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_candidate_confidence_bounds_are_inclusive(confidence: float) -> None:
    Candidate("a", confidence, 0.0)


# --- score and rank -------------------------------------------------------------------------


def test_score_trades_latency_against_confidence() -> None:
    # 10 ms at the default 100 ms scale costs 0.1 of confidence.
    assert score(Candidate("a", 0.9, 0.010)) == pytest.approx(0.8)
    assert score(Candidate("a", 0.9, 0.010), latency_scale=0.050) == pytest.approx(0.7)


@pytest.mark.parametrize("scale", [0.0, -0.1, math.inf, math.nan])
def test_bad_latency_scale_is_an_error(scale: float) -> None:
    with pytest.raises(ValueError, match="latency_scale"):
        score(Candidate("a", 0.5, 0.0), scale)
    with pytest.raises(ValueError, match="latency_scale"):
        rank([Candidate("a", 0.5, 0.0)], latency_scale=scale)


def test_rank_orders_best_first() -> None:
    far_but_sure = Candidate("a", 1.0, 0.030)  # 0.70
    near_and_fair = Candidate("b", 0.8, 0.001)  # 0.79
    near_but_sick = Candidate("c", 0.3, 0.0)  # 0.30
    ranked = rank([near_but_sick, far_but_sure, near_and_fair])
    assert [c.node_id for c in ranked] == ["b", "a", "c"]


def test_rank_breaks_ties_by_node_id() -> None:
    ranked = rank([Candidate("enc-2", 0.5, 0.0), Candidate("enc-10", 0.5, 0.0)])
    assert [c.node_id for c in ranked] == ["enc-10", "enc-2"]


def test_rank_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        rank([Candidate("a", 0.5, 0.0), Candidate("a", 0.6, 0.0)])


def test_rank_of_nothing_is_empty() -> None:
    assert rank([]) == []


def test_rank_accepts_any_iterable() -> None:
    ranked = rank(Candidate(n, 0.5, 0.0) for n in "cab")
    assert [c.node_id for c in ranked] == ["a", "b", "c"]


# --- choose_leader --------------------------------------------------------------------------


def test_no_candidates_no_leader() -> None:
    assert choose_leader([], "a") is None
    assert choose_leader([], None) is None


def test_without_incumbent_the_best_leads() -> None:
    assert choose_leader([Candidate("a", 0.6, 0.0), Candidate("b", 0.9, 0.0)], None) == "b"


def test_incumbent_keeps_leadership_within_the_margin() -> None:
    candidates = [Candidate("a", 0.80, 0.0), Candidate("b", 0.84, 0.0)]
    assert choose_leader(candidates, "a", hysteresis=0.05) == "a"


def test_incumbent_keeps_leadership_at_exactly_the_margin() -> None:
    # Binary-exact scores: 0.75 - 0.5 == 0.25, which does not *exceed* the margin.
    candidates = [Candidate("a", 0.5, 0.0), Candidate("b", 0.75, 0.0)]
    assert choose_leader(candidates, "a", hysteresis=0.25) == "a"
    assert choose_leader(candidates, "a", hysteresis=0.125) == "b"


def test_clearly_better_challenger_takes_over() -> None:
    candidates = [Candidate("a", 0.80, 0.0), Candidate("b", 0.90, 0.0)]
    assert choose_leader(candidates, "a", hysteresis=0.05) == "b"


def test_incumbent_that_is_no_longer_a_candidate_has_no_claim() -> None:
    candidates = [Candidate("a", 0.6, 0.0), Candidate("b", 0.7, 0.0)]
    assert choose_leader(candidates, "gone", hysteresis=0.5) == "b"


def test_latency_scale_is_applied_in_choose_leader() -> None:
    # At 100 ms scale "a" is ahead by 0.2; at 10 ms scale "b" is ahead by 1.7.
    candidates = [Candidate("a", 0.9, 0.020), Candidate("b", 0.5, 0.0)]
    assert choose_leader(candidates, None) == "a"
    assert choose_leader(candidates, "a", latency_scale=0.010) == "b"


@pytest.mark.parametrize("hysteresis", [-0.01, math.nan, math.inf])
def test_bad_hysteresis_is_an_error(hysteresis: float) -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        choose_leader([Candidate("a", 0.5, 0.0)], None, hysteresis=hysteresis)


# --- properties -----------------------------------------------------------------------------

NODE_IDS = [f"enc-{i}" for i in range(12)]
CONFIDENCE = st.floats(min_value=0.0, max_value=1.0)
LATENCY = st.floats(min_value=0.0, max_value=0.2)
# A coarse grid makes exact score ties, and so the tie-break, common.
GRID_CONFIDENCE = st.integers(min_value=0, max_value=4).map(lambda i: i / 4)
GRID_LATENCY = st.integers(min_value=0, max_value=2).map(lambda i: i * 0.025)


def _candidates(
    confidence: st.SearchStrategy[float] = CONFIDENCE,
    latency: st.SearchStrategy[float] = LATENCY,
) -> st.SearchStrategy[list[Candidate]]:
    return st.lists(st.sampled_from(NODE_IDS), unique=True, max_size=10).flatmap(
        lambda ids: st.tuples(
            *(st.builds(Candidate, st.just(i), confidence, latency) for i in ids)
        ).map(list)
    )


ANY_CANDIDATES = st.one_of(_candidates(), _candidates(GRID_CONFIDENCE, GRID_LATENCY))


@given(ANY_CANDIDATES.flatmap(lambda cs: st.tuples(st.just(cs), st.permutations(cs))))
def test_rank_does_not_depend_on_input_order(
    case: tuple[list[Candidate], list[Candidate]],
) -> None:
    candidates, shuffled = case
    assert rank(candidates) == rank(shuffled)
    assert rank(candidates) == rank(candidates)


@given(ANY_CANDIDATES)
def test_rank_is_best_first_with_id_tie_break(candidates: list[Candidate]) -> None:
    ranked = rank(candidates)
    assert sorted(c.node_id for c in ranked) == sorted(c.node_id for c in candidates)
    for better, worse in itertools.pairwise(ranked):
        assert score(better) >= score(worse)
        if score(better) == score(worse):
            assert better.node_id < worse.node_id


@given(
    ANY_CANDIDATES,
    st.one_of(st.none(), st.sampled_from([*NODE_IDS, "gone"])),
    st.floats(min_value=0.0, max_value=0.5),
)
def test_choose_leader_is_stable_under_repetition(
    candidates: list[Candidate], incumbent: str | None, hysteresis: float
) -> None:
    """Fed its own answer back with the same inputs, the choice never changes: no flapping."""
    leader = choose_leader(candidates, incumbent, hysteresis=hysteresis)
    if not candidates:
        assert leader is None
        return
    assert leader in {c.node_id for c in candidates}
    assert choose_leader(candidates, leader, hysteresis=hysteresis) == leader
    if incumbent not in {c.node_id for c in candidates}:
        assert leader == rank(candidates)[0].node_id


@given(
    ids=st.lists(st.sampled_from(NODE_IDS), unique=True, min_size=2, max_size=8),
    base=st.floats(min_value=0.2, max_value=0.7),
    hysteresis=st.floats(min_value=0.01, max_value=0.2),
    rounds=st.lists(
        st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=8, max_size=8),
        min_size=1,
        max_size=20,
    ),
    first=st.integers(min_value=0, max_value=7),
)
def test_leadership_never_moves_while_scores_stay_within_the_margin(
    ids: list[str], base: float, hysteresis: float, rounds: list[list[float]], first: int
) -> None:
    """Scores wander round after round inside a band as wide as the margin: no change."""
    leader: str | None = ids[first % len(ids)]
    initial = leader
    for jitters in rounds:
        candidates = [
            Candidate(node_id, base + hysteresis * jitter, 0.0)
            for node_id, jitter in zip(ids, jitters, strict=False)
        ]
        scores = [score(c) for c in candidates]
        if max(scores) - min(scores) > hysteresis:
            continue  # float rounding pushed the band a hair wide; not this property's case
        leader = choose_leader(candidates, leader, hysteresis=hysteresis)
    assert leader == initial


@given(
    ids=st.lists(st.sampled_from(NODE_IDS), unique=True, min_size=2, max_size=6),
    rounds=st.lists(
        st.lists(CONFIDENCE, min_size=6, max_size=6),
        min_size=2,
        max_size=30,
    ),
    hysteresis=st.floats(min_value=0.0, max_value=0.3),
)
def test_every_change_of_leader_is_earned(
    ids: list[str], rounds: list[list[float]], hysteresis: float
) -> None:
    """Whenever leadership moves from a live incumbent, the new leader beat it by the margin."""
    leader: str | None = None
    for confidences in rounds:
        candidates = [Candidate(i, c, 0.0) for i, c in zip(ids, confidences, strict=False)]
        by_id = {c.node_id: c for c in candidates}
        new = choose_leader(candidates, leader, hysteresis=hysteresis)
        assert new is not None
        if leader is not None and new != leader:
            assert score(by_id[new]) - score(by_id[leader]) > hysteresis
        leader = new
