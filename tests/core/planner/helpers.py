"""Shared builders for the planner tests: synthetic meshes from a seed."""

from __future__ import annotations

import numpy as np

from meshenc.core.planner.manager import MeshView
from meshenc.core.planner.placement import Host
from meshenc.core.planner.vivaldi import Coordinate


def encoder_ids(n: int, prefix: str = "enc") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def coordinates(ids: list[str], seed: int, clusters: int = 3) -> dict[str, Coordinate]:
    """Encoders in a few latency clusters (regions), 0-150 ms apart, with 0-5 ms access links."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.0, 0.15, size=(clusters, 2))
    home = rng.integers(0, clusters, size=len(ids))
    spots = centres[home] + rng.normal(0.0, 0.01, size=(len(ids), 2))
    heights = rng.uniform(0.0, 0.005, size=len(ids))
    return {
        node: Coordinate((float(x), float(y)), float(h))
        for node, (x, y), h in zip(ids, spots, heights, strict=True)
    }


def view(
    ids: list[str],
    seed: int,
    *,
    units: int = 0,
    zones: int = 3,
    capacity: int = 4,
    avoid: frozenset[tuple[str, str]] = frozenset(),
) -> MeshView:
    """A mesh view with ``units`` work units and encoders spread over ``zones`` zones."""
    return MeshView(
        hosts=tuple(
            Host(node, capacity, f"zone-{k % zones}" if zones else "") for k, node in enumerate(ids)
        ),
        coordinates=coordinates(ids, seed),
        confidence={node: 0.5 + 0.5 * ((k * 7919) % 11) / 10 for k, node in enumerate(ids)},
        units=tuple(f"ch{c}/r{r}" for c in range(max(units // 2, 0)) for r in range(2))
        if units
        else (),
        avoid=avoid,
    )
