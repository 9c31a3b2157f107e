"""Vivaldi coordinates: validation, determinism and convergence on a synthetic latency matrix.

Nothing is mocked: the "network" is a matrix of RTTs from points in a plane plus per-node
access delays, so the ideal coordinates exist and the error can be measured.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshenc.core.planner.vivaldi import MIN_ERROR, Coordinate, distance, origin, update


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"position": ()}, "dimension"),
        ({"position": (math.nan, 0.0)}, "finite"),
        ({"position": (0.0, 0.0), "height": -0.1}, "height"),
        ({"position": (0.0, 0.0), "error": 0.0}, "error"),
        ({"position": (0.0, 0.0), "error": 1.5}, "error"),
    ],
)
def test_coordinate_validates_itself(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Coordinate(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("rtt", [0.0, -0.01, math.inf, math.nan])
def test_update_rejects_a_bad_sample(rtt: float) -> None:
    with pytest.raises(ValueError, match="rtt"):
        update(origin(), origin(), rtt, local_id="a", remote_id="b")


def test_distance_adds_heights_to_the_plane() -> None:
    a = Coordinate((0.0, 0.0), height=0.001)
    b = Coordinate((0.003, 0.004), height=0.002)
    assert distance(a, b) == pytest.approx(0.008)


def test_coincident_points_separate_the_same_way_every_time() -> None:
    first = update(origin(), origin(), 0.010, local_id="a", remote_id="b")
    again = update(origin(), origin(), 0.010, local_id="a", remote_id="b")
    other = update(origin(), origin(), 0.010, local_id="b", remote_id="a")
    assert first == again
    assert distance(first, origin()) > 0.0
    assert first.position != other.position


def test_a_sample_moves_the_prediction_towards_the_measurement() -> None:
    local = Coordinate((0.0, 0.0), error=0.5)
    remote = Coordinate((0.010, 0.0), error=0.5)
    pushed = update(local, remote, 0.030, local_id="a", remote_id="b")  # too close
    pulled = update(local, remote, 0.002, local_id="a", remote_id="b")  # too far
    assert 0.010 < distance(pushed, remote) < 0.030
    assert 0.002 < distance(pulled, remote) < 0.010
    assert pulled.height >= 0.0


def _synthetic_network(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.uniform(0.0, 0.100, size=(n, 2))
    access = rng.uniform(0.0, 0.004, size=n)
    rtt: np.ndarray = (
        np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
        + access[:, None]
        + access[None, :]
    )
    return rtt


def _median_relative_error(coords: list[Coordinate], rtt: np.ndarray) -> float:
    n = len(coords)
    errors = [
        abs(distance(coords[i], coords[j]) - rtt[i, j]) / rtt[i, j]
        for i in range(n)
        for j in range(i + 1, n)
    ]
    return float(np.median(errors))


def test_converges_on_a_synthetic_latency_matrix() -> None:
    """Each node samples a few fixed neighbours plus random others, as the mesh would."""
    n, seed = 40, 7
    rtt = _synthetic_network(n, seed)
    rng = np.random.default_rng(seed + 1)
    coords = [origin() for _ in range(n)]
    before = _median_relative_error(coords, rtt)
    for _ in range(60):
        for i in range(n):
            for j in rng.choice(n, size=4, replace=False):
                if j != i:
                    coords[i] = update(
                        coords[i], coords[j], float(rtt[i, j]), local_id=str(i), remote_id=str(j)
                    )
    after = _median_relative_error(coords, rtt)
    assert before > 0.9  # everyone at the origin predicts only the heights: nothing
    assert after < 0.10, f"median relative error {after:.3f}"
    assert min(c.error for c in coords) >= MIN_ERROR
    assert max(c.error for c in coords) < 0.5  # the nodes know they have converged
