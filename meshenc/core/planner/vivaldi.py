"""Vivaldi network coordinates: a latency estimate for every pair from a few measured ones.

Theory of operation
-------------------
Each encoder gets a point in a low-dimensional Euclidean space plus a non-negative *height*
(Dabek et al., "Vivaldi: a decentralized network coordinate system", SIGCOMM 2004, with the
height vectors of its section 5.4). The estimated round-trip time between two encoders is::

    distance(a, b) = |a.position - b.position| + a.height + b.height

The Euclidean part models the core of the network, the heights the access links each encoder
pays on every path. Each measured RTT sample pulls or pushes the reporting encoder's
coordinate along the line to its neighbour like a spring, by a step that shrinks as the
encoder grows confident in its own coordinate (its ``error``, a moving average of the relative
prediction error) and grows when the neighbour is the more confident of the two.

The manager runs the algorithm centrally over the RTT samples encoders report for their mesh
links, so the planner can compare links that do not exist yet: that is the only thing it needs
coordinates for, and two dimensions plus height predict Internet latencies about as well as
more dimensions do (the paper's finding).

Invariants:

1. Pure: :func:`update` returns a new coordinate; nothing is mutated and nothing is random. Two
   coincident points separate along a direction derived from the two encoders' ids (a hash),
   so the same samples always give the same coordinates.
2. Heights stay >= 0, errors stay within [``MIN_ERROR``, ``MAX_ERROR``], and every component
   stays finite whatever the samples; a sample that is not a positive finite RTT is rejected
   with ``ValueError`` rather than folded in.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CC",
    "DEFAULT_CE",
    "DEFAULT_DIMENSIONS",
    "MAX_ERROR",
    "MIN_ERROR",
    "Coordinate",
    "distance",
    "origin",
    "update",
]

DEFAULT_DIMENSIONS = 2
"""Euclidean dimensions (the height comes on top)."""

DEFAULT_CE = 0.25
"""Weight of a new sample in the moving average of the relative error (the paper's c_e)."""

DEFAULT_CC = 0.25
"""Fraction of the spring force applied per sample, before error weighting (the paper's c_c)."""

MIN_ERROR = 0.01
"""Floor of the error estimate, so a very confident encoder still moves a little."""

MAX_ERROR = 1.0
"""Error of a coordinate that has seen no samples: no confidence at all."""

_MIN_SEPARATION = 1e-9
"""Seconds below which two positions count as coincident (the force has no direction)."""


@dataclass(frozen=True, slots=True)
class Coordinate:
    """One encoder's network coordinate. Lengths are seconds of round-trip time.

    Attributes:
        position: the Euclidean part, one float per dimension.
        height: the access-link part, >= 0.
        error: the encoder's relative prediction error, in [MIN_ERROR, MAX_ERROR]; 1.0 means
            "no idea yet" and makes the coordinate move freely.

    Raises:
        ValueError: on an empty position, a non-finite component, a negative height or an
            error outside its range.
    """

    position: tuple[float, ...]
    height: float = 0.0
    error: float = MAX_ERROR

    def __post_init__(self) -> None:
        if not self.position:
            raise ValueError("coordinate needs at least one dimension")
        if not all(math.isfinite(x) for x in self.position):
            raise ValueError(f"coordinate position must be finite, got {self.position!r}")
        if not (math.isfinite(self.height) and self.height >= 0.0):
            raise ValueError(f"coordinate height must be finite and >= 0, got {self.height!r}")
        if not MIN_ERROR <= self.error <= MAX_ERROR:
            raise ValueError(
                f"coordinate error must be in [{MIN_ERROR}, {MAX_ERROR}], got {self.error!r}"
            )


def origin(dimensions: int = DEFAULT_DIMENSIONS) -> Coordinate:
    """Where every encoder starts: the origin, no height, no confidence."""
    if dimensions < 1:
        raise ValueError(f"dimensions must be >= 1, got {dimensions}")
    return Coordinate(position=(0.0,) * dimensions)


def distance(a: Coordinate, b: Coordinate) -> float:
    """The estimated round-trip time between two coordinates, seconds.

    Raises:
        ValueError: if the coordinates have different dimensions.
    """
    _check_same_space(a, b)
    return math.dist(a.position, b.position) + a.height + b.height


def _check_same_space(a: Coordinate, b: Coordinate) -> None:
    if len(a.position) != len(b.position):
        raise ValueError(
            f"coordinates of different dimensions: {len(a.position)} and {len(b.position)}"
        )


def _tie_direction(local_id: str, remote_id: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector derived from the two ids, for pushing coincident points apart.

    The paper picks a random direction; a hash of the ids is as good at breaking symmetry and
    keeps the update a function of its inputs.
    """
    digest = hashlib.blake2b(f"{local_id}\x00{remote_id}".encode(), digest_size=64).digest()
    raw = [
        struct.unpack_from("<I", digest, (4 * i) % 60)[0] / 2**32 - 0.5 for i in range(dimensions)
    ]
    norm = math.hypot(*raw)
    if norm < 1e-12:  # practically impossible; any axis will do
        return (1.0,) + (0.0,) * (dimensions - 1)
    return tuple(x / norm for x in raw)


def update(
    local: Coordinate,
    remote: Coordinate,
    rtt: float,
    *,
    local_id: str,
    remote_id: str,
    ce: float = DEFAULT_CE,
    cc: float = DEFAULT_CC,
) -> Coordinate:
    """Fold one RTT sample from ``local`` to ``remote`` into ``local``'s coordinate.

    Args:
        local: the coordinate of the encoder that measured the sample.
        remote: its neighbour's current coordinate (only read).
        rtt: the measured round-trip time, seconds, > 0 and finite.
        local_id, remote_id: the two encoders' ids, for the tie-breaking direction.
        ce: weight of this sample in the error average, in (0, 1].
        cc: spring step fraction, in (0, 1].

    Returns:
        ``local``'s new coordinate.

    Raises:
        ValueError: on a bad RTT, gain or mismatched dimensions.
    """
    _check_same_space(local, remote)
    if not (math.isfinite(rtt) and rtt > 0.0):
        raise ValueError(f"rtt must be positive and finite, got {rtt!r}")
    for name, gain in (("ce", ce), ("cc", cc)):
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {gain!r}")

    separation = math.dist(local.position, remote.position)
    predicted = separation + local.height + remote.height
    weight = local.error / (local.error + remote.error)
    sample_error = abs(predicted - rtt) / rtt
    error = sample_error * ce * weight + local.error * (1.0 - ce * weight)
    force = cc * weight * (rtt - predicted)  # > 0: too close, push apart

    if separation < _MIN_SEPARATION:
        direction = _tie_direction(local_id, remote_id, len(local.position))
        # Coincident points: the height part of the unit vector is zero for a pure tie.
        position = tuple(x + force * u for x, u in zip(local.position, direction, strict=True))
        height = local.height
    else:
        # The unit vector of [x_l - x_r, h_l + h_r] under the height norm |x| + h.
        norm = separation + local.height + remote.height
        position = tuple(
            x + force * (x - y) / norm for x, y in zip(local.position, remote.position, strict=True)
        )
        height = local.height + force * (local.height + remote.height) / norm
    return Coordinate(
        position=position,
        height=max(0.0, height),
        error=min(MAX_ERROR, max(MIN_ERROR, error)),
    )
