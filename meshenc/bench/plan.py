"""``meshenc bench plan``: how long the Mesh Manager takes to plan meshes of growing size.

Each size gets a synthetic mesh built from the seed: encoders spread over eight regions of a
latency plane (regions 0–150 ms apart, ±10 ms inside a region, 0–5 ms access links), three
failure zones, capacity 4 copies each, and as many work units as encoders (channels × two
renditions) at redundancy 2. Timed, each as the median of ``--repeats`` runs on one core:

- **plan**: a cold :func:`~meshenc.core.planner.manager.plan_mesh` (ring, links, segments,
  likely leaders, placement) from nothing;
- **replan**: the plan after one encoder fails, from the cold plan;
- **check**: the independent survivability check (connected, no articulation point).

The other columns describe the plans themselves; nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table

from meshenc.bench.results import Progress, quiet, results_table, timed
from meshenc.core.planner.manager import MeshPlan, MeshView, PlannerConfig, plan_mesh
from meshenc.core.planner.placement import Host, replica_moves
from meshenc.core.planner.topology import edge_changes, survives_any_single_failure
from meshenc.core.planner.vivaldi import Coordinate, distance

__all__ = ["PlanBench", "measure", "run_sizes", "synthetic_view"]

REGIONS = 8
ZONES = 3
CAPACITY = 4
RENDITIONS = ("hd", "sd")


def synthetic_view(n: int, seed: int) -> MeshView:
    """A mesh of ``n`` encoders in latency regions, with work for about half its capacity."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.0, 0.150, size=(REGIONS, 2))
    spots = centres[rng.integers(0, REGIONS, size=n)] + rng.normal(0.0, 0.010, size=(n, 2))
    heights = rng.uniform(0.0, 0.005, size=n)
    ids = [f"enc-{i:05d}" for i in range(n)]
    channels = max(1, n // len(RENDITIONS))
    return MeshView(
        hosts=tuple(Host(node, CAPACITY, f"zone-{k % ZONES}") for k, node in enumerate(ids)),
        coordinates={
            node: Coordinate((float(x), float(y)), float(h))
            for node, (x, y), h in zip(ids, spots, heights, strict=True)
        },
        confidence={node: float(c) for node, c in zip(ids, rng.uniform(0.6, 1.0, n), strict=True)},
        units=tuple(f"ch{c:05d}/{r}" for c in range(channels) for r in RENDITIONS),
    )


def _without(view: MeshView, gone: str) -> MeshView:
    return MeshView(
        hosts=tuple(h for h in view.hosts if h.encoder_id != gone),
        coordinates={k: v for k, v in view.coordinates.items() if k != gone},
        confidence=view.confidence,
        units=view.units,
    )


def _mean_link_ms(plan: MeshPlan, view: MeshView) -> float:
    coords = view.coordinates
    rtts = [distance(coords[a], coords[b]) for a, b in plan.topology.edges]
    return 1e3 * statistics.fmean(rtts) if rtts else 0.0


def _mean_pair_ms(view: MeshView, seed: int, samples: int = 2000) -> float:
    """Mean RTT of random pairs: what latency-blind linking would cost."""
    ids = sorted(view.coordinates)
    if len(ids) < 2:
        return 0.0
    rng = np.random.default_rng(seed + 1)
    a = rng.integers(0, len(ids), samples)
    b = (a + rng.integers(1, len(ids), samples)) % len(ids)
    coords = view.coordinates
    return 1e3 * statistics.fmean(
        distance(coords[ids[i]], coords[ids[j]])
        for i, j in zip(a.tolist(), b.tolist(), strict=True)
    )


def measure(n: int, seed: int, repeats: int) -> dict[str, Any]:
    """Plan, replan after one failure, and check a synthetic mesh of ``n`` encoders."""
    config = PlannerConfig()
    view = synthetic_view(n, seed)
    plan_s, plan = timed(repeats, lambda: plan_mesh(view, None, config, epoch=1))
    adjacency = plan.topology.adjacency()
    check_s, survives = timed(repeats, lambda: survives_any_single_failure(adjacency))
    degrees = [len(v) for v in adjacency.values()]
    gone = sorted(view.coordinates)[int(np.random.default_rng(seed).integers(0, n))]
    smaller = _without(view, gone)
    replan_s, replan = timed(repeats, lambda: plan_mesh(smaller, plan, config, epoch=2))
    re_adjacency = replan.topology.adjacency()
    re_degrees = [len(v) for v in re_adjacency.values()]
    sizes = [len(s.members) for s in plan.segments]
    return {
        "encoders": n,
        "work_units": len(view.units),
        "repeats": repeats,
        "plan_s": plan_s,
        "replan_s": replan_s,
        "check_s": check_s,
        "links": len(plan.topology.edges),
        "min_degree": min(degrees),
        "max_degree": max(degrees),
        "mean_degree": statistics.fmean(degrees),
        "survives_any_single_failure": survives,
        "replan_min_degree": min(re_degrees),
        "replan_max_degree": max(re_degrees),
        "replan_survives_any_single_failure": survives_any_single_failure(re_adjacency),
        "edges_changed_on_replan": edge_changes(plan.topology, replan.topology).total,
        "failed_encoder_degree": len(adjacency[gone]),
        "segments": len(plan.segments),
        "segment_size_min": min(sizes),
        "segment_size_max": max(sizes),
        "placement_moves_on_leave": replica_moves(plan.placement, replan.placement),
        "copies_on_failed_encoder": sum(
            1 for hosts in plan.placement.assignments.values() if gone in hosts
        ),
        "under_replicated": len(plan.placement.under_replicated),
        "mean_link_rtt_ms": _mean_link_ms(plan, view),
        "mean_random_pair_rtt_ms": _mean_pair_ms(view, seed),
    }


@dataclass(frozen=True, slots=True)
class PlanBench:
    """One :func:`measure` per mesh size, in the order asked."""

    seed: int
    repeats: int
    results: tuple[dict[str, Any], ...]

    def payload(self) -> dict[str, object]:
        return {"benchmark": "plan", "seed": self.seed, "results": list(self.results)}

    def table(self) -> Table:
        """One row per mesh size."""
        table = results_table(
            f"Planner benchmark: synthetic meshes (seed {self.seed}), median of {self.repeats}"
            " runs, one core",
            (
                "encoders",
                "plan s",
                "replan after 1 failure s",
                "check s",
                "degree min–max",
                "survives any single failure",
                "links changed on replan",
                "segments (sizes)",
                "placement moves on leave",
                "mean link / random pair RTT",
            ),
        )
        for r in self.results:
            table.add_row(
                f"{r['encoders']:,}",
                f"{r['plan_s']:.3f}",
                f"{r['replan_s']:.3f}",
                f"{r['check_s']:.3f}",
                f"{r['min_degree']}–{r['max_degree']}",
                "yes" if r["survives_any_single_failure"] else "NO",
                f"{r['edges_changed_on_replan']} (failed degree {r['failed_encoder_degree']})",
                f"{r['segments']:,} ({r['segment_size_min']}–{r['segment_size_max']})",
                f"{r['placement_moves_on_leave']} (held {r['copies_on_failed_encoder']})",
                f"{r['mean_link_rtt_ms']:.1f} / {r['mean_random_pair_rtt_ms']:.1f} ms",
            )
        table.caption = (
            "plan: ring + links + segments + likely leaders + placement of one work unit per"
            " encoder at redundancy 2, from nothing. replan: the same after one encoder fails."
            " check: articulation-point search over the plan. Links changed: between surviving"
            " encoders. Moves: copies re-placed (the failed encoder held the number in brackets)."
        )
        return table


def run_sizes(
    encoders: Sequence[int], seed: int, repeats: int, *, progress: Progress = quiet
) -> PlanBench:
    """:func:`measure` a synthetic mesh of each size."""
    results = []
    for n in encoders:
        progress(f"{n:,} encoders ...")
        results.append(measure(n, seed, repeats))
    return PlanBench(seed, repeats, tuple(results))
