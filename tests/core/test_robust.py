"""Consensus of neighbours' estimates: bounds, outliers, split meshes, ties, order independence.

The result is also checked against a deliberately naive reading of the docstring.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshenc.core.robust import Consensus, consensus, median

FRAME = 1.0 / 30.0

estimates = st.lists(st.floats(-0.2, 0.2, allow_subnormal=False), min_size=1, max_size=25)
outliers = st.floats(1e-4, 0.1)
#: Multiples of 2**-10 s: sums and differences are exact, so "within outlier" has one answer
#: however it is computed (the float edge case has a test of its own below).
grid = st.integers(-200, 200).map(lambda k: k / 1024)
grid_estimates = st.lists(grid, min_size=1, max_size=25)
grid_outliers = st.integers(1, 100).map(lambda k: k / 1024)


def _naive(values: Sequence[float], outlier: float) -> tuple[int, list[float]]:
    """Kept values per the docstring: around the value with the most others within
    ``outlier``, ties to the one nearest the middle of the sorted list (then the lower)."""
    ordered = sorted(values)
    middle = (len(ordered) - 1) / 2

    def support(i: int) -> int:
        return sum(1 for v in ordered if abs(v - ordered[i]) <= outlier)

    best = min(range(len(ordered)), key=lambda i: (-support(i), abs(i - middle), i))
    kept = [v for v in ordered if abs(v - ordered[best]) <= outlier]
    return best, kept


@given(values=grid_estimates, outlier=grid_outliers)
def test_matches_the_documented_rule(values: list[float], outlier: float) -> None:
    result = consensus(values, outlier)
    _, kept = _naive(values, outlier)
    assert (result.kept, result.set_aside) == (len(kept), len(values) - len(kept))
    assert result.mean == pytest.approx(math.fsum(kept) / len(kept), abs=1e-12)
    assert result.spread == max(abs(v) for v in kept)


@given(values=grid_estimates, outlier=grid_outliers)
def test_mean_lies_within_the_kept_values(values: list[float], outlier: float) -> None:
    result = consensus(values, outlier)
    _, kept = _naive(values, outlier)
    assert min(kept) <= result.mean <= max(kept)


@given(values=estimates, outlier=outliers)
def test_any_floats_give_a_bounded_result(values: list[float], outlier: float) -> None:
    result = consensus(values, outlier)
    assert result.kept >= 1
    assert result.kept + result.set_aside == len(values)
    assert min(values) <= result.mean <= max(values)
    assert result.spread <= max(abs(v) for v in values)


def test_a_pair_is_not_set_aside_for_a_lone_value() -> None:
    # 0.1 and 0.4 are exactly `outlier` apart in one direction of float arithmetic and just
    # over it in the other; whichever way it is computed, the pair must not be set aside.
    result = consensus([0.1, 0.4, 0.4], 0.3)
    assert result.set_aside == 0 or (result.mean, result.kept) == (0.4, 2)


def test_mean_of_equal_values_is_that_value() -> None:
    assert consensus([0.1, 0.1, 0.1], 1.0).mean <= 0.1


@given(values=estimates, outlier=outliers, data=st.data())
def test_order_of_inputs_does_not_matter(
    values: list[float], outlier: float, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(values))
    assert consensus(shuffled, outlier) == consensus(values, outlier)


def test_a_far_outlier_is_set_aside_and_does_not_move_the_mean() -> None:
    group = [0.0021, -0.0013, 0.0004, 0.0017, -0.0009]
    honest = consensus(group, FRAME / 2)
    with_liar = consensus([*group[:2], 3 * FRAME, *group[2:]], FRAME / 2)
    assert (with_liar.kept, with_liar.set_aside) == (5, 1)
    assert with_liar.mean == pytest.approx(honest.mean, abs=1e-15)
    assert with_liar.spread == honest.spread == 0.0021


def test_two_groups_a_frame_apart_are_both_kept() -> None:
    # A mesh split into two camps one frame apart must still average across the split, or
    # the camps never converge.
    low = [-0.001, 0.0, 0.0008]
    high = [FRAME - 0.0005, FRAME, FRAME + 0.001, FRAME + 0.0002]
    result = consensus(low + high, 1.2 * FRAME)
    assert (result.kept, result.set_aside, result.spread) == (7, 0, FRAME + 0.001)
    assert result.mean == pytest.approx(math.fsum(low + high) / 7)
    assert max(low) < result.mean < min(high)


def test_groups_further_apart_than_outlier_are_not_averaged() -> None:
    low = [0.0, 0.001, 0.002]
    high = [0.5, 0.501]
    result = consensus(low + high, 0.1)
    assert (result.kept, result.set_aside) == (3, 2)
    assert result.mean == pytest.approx(0.001)


def test_equal_support_goes_to_the_group_nearest_the_middle() -> None:
    # Two pairs of equal support; the pair around the sorted middle wins over the edge pair.
    values = [0.0, 0.05, 0.5, 0.55, 2.0]
    result = consensus(values, 0.1)
    assert result.kept == 2
    assert result.mean == pytest.approx(0.525)


def test_exact_ties_are_resolved_the_same_way_every_time() -> None:
    values = [0.0, 0.0, 1.0, 1.0]
    results = {consensus(v, 0.1) for v in ([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0])}
    assert len(results) == 1
    (result,) = results
    assert result.kept == 2
    assert result.mean in {0.0, 1.0}
    assert consensus(values, 0.1) == result


def test_a_single_value_is_its_own_consensus() -> None:
    assert consensus([-0.004], 0.01) == Consensus(-0.004, 0.004, 1, 0, -0.004, -0.004)


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError):
        consensus([], 0.01)


@pytest.mark.parametrize("outlier", [0.0, -0.01])
def test_non_positive_outlier_raises(outlier: float) -> None:
    with pytest.raises(ValueError):
        consensus([0.0, 0.001], outlier)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=9))
def test_median_is_the_standard_librarys(values: list[float]) -> None:
    assert median(values) == statistics.median(values)


def test_median_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="median of nothing"):
        median([])
