"""``meshenc bench plan``: how long the Mesh Manager takes to plan meshes of growing size.

Each size gets a synthetic mesh built from the seed: encoders spread over eight regions of a
latency plane (regions 0–150 ms apart, ±10 ms inside a region, 0–5 ms access links), three
failure zones, capacity 4 copies each, and ``--channels`` channels of ``--rungs`` renditions
each (a work unit per rendition) at redundancy 2 — fewer channels where the copies would take
more than half the fleet's capacity (at 10,000 encoders the default 1,000 × 3 fit). Timed,
each as the median of ``--repeats`` runs on one core:

- **plan**: a cold :func:`~meshenc.core.planner.manager.plan_mesh` (ring, links, segments,
  likely leaders, placement) from nothing;
- **place**: the cold placement alone (:func:`~meshenc.core.planner.placement.place`);
- **replan**: the plan after one encoder that holds work fails, from the cold plan; likewise
  after one encoder **joins**, and after a **scale-out** by a tenth of the fleet;
- **check**: the independent survivability check (connected, no articulation point).

The other columns describe the plans themselves — links changed, units per encoder (max − min)
after each event, copies moved by each — and nothing here is a pass/fail threshold.
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
from meshenc.core.planner.placement import Host, Placement, PlacementConfig, place, replica_moves
from meshenc.core.planner.topology import edge_changes, survives_any_single_failure
from meshenc.core.planner.vivaldi import Coordinate, distance

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_RUNGS",
    "PlanBench",
    "measure",
    "run_sizes",
    "synthetic_view",
]

REGIONS = 8
ZONES = 3
CAPACITY = 4
REDUNDANCY = PlacementConfig().redundancy
DEFAULT_CHANNELS = 1000
DEFAULT_RUNGS = 3


def channels_that_fit(n: int, channels: int, rungs: int) -> int:
    """``channels``, or fewer so that the copies take at most half of ``n`` encoders' capacity."""
    return max(1, min(channels, n * CAPACITY // (2 * REDUNDANCY * rungs)))


def synthetic_view(n: int, seed: int, *, channels: int, rungs: int) -> MeshView:
    """A mesh of ``n`` encoders in latency regions, running ``channels`` × ``rungs`` units."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.0, 0.150, size=(REGIONS, 2))
    spots = centres[rng.integers(0, REGIONS, size=n)] + rng.normal(0.0, 0.010, size=(n, 2))
    heights = rng.uniform(0.0, 0.005, size=n)
    ids = [f"enc-{i:05d}" for i in range(n)]
    return MeshView(
        hosts=tuple(Host(node, CAPACITY, f"zone-{k % ZONES}") for k, node in enumerate(ids)),
        coordinates={
            node: Coordinate((float(x), float(y)), float(h))
            for node, (x, y), h in zip(ids, spots, heights, strict=True)
        },
        confidence={node: float(c) for node, c in zip(ids, rng.uniform(0.6, 1.0, n), strict=True)},
        units=tuple(f"ch{c:05d}/r{r}" for c in range(channels) for r in range(rungs)),
    )


def _only(view: MeshView, keep: set[str]) -> MeshView:
    return MeshView(
        hosts=tuple(h for h in view.hosts if h.encoder_id in keep),
        coordinates={k: v for k, v in view.coordinates.items() if k in keep},
        confidence=view.confidence,
        units=view.units,
    )


def _spread(placement: Placement) -> int:
    """Units per encoder, max − min, over every encoder of the placement."""
    counts = placement.load().values()
    return max(counts) - min(counts) if counts else 0


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


def measure(
    n: int,
    seed: int,
    repeats: int,
    *,
    channels: int = DEFAULT_CHANNELS,
    rungs: int = DEFAULT_RUNGS,
) -> dict[str, Any]:
    """Plan, place, replan after a failure, a join and a scale-out, and check a synthetic mesh
    of ``n`` encoders running ``channels`` × ``rungs`` units (fewer channels if they do not fit)."""
    config = PlannerConfig()
    channels = channels_that_fit(n, channels, rungs)
    added = max(1, n // 10)
    grown = synthetic_view(n + added, seed, channels=channels, rungs=rungs)
    ids = [h.encoder_id for h in grown.hosts]
    view = _only(grown, set(ids[:n]))
    plan_s, plan = timed(repeats, lambda: plan_mesh(view, None, config, epoch=1))
    place_s, _ = timed(repeats, lambda: place(view.units, view.hosts, None, config.placement))
    adjacency = plan.topology.adjacency()
    check_s, survives = timed(repeats, lambda: survives_any_single_failure(adjacency))
    degrees = [len(v) for v in adjacency.values()]
    # The leaver holds work (with under one copy per encoder most hold none), so that its
    # copies have to move.
    holders = sorted({h for hosts in plan.placement.assignments.values() for h in hosts})
    gone = holders[int(np.random.default_rng(seed).integers(0, len(holders)))]
    smaller = _only(view, set(ids[:n]) - {gone})
    replan_s, replan = timed(repeats, lambda: plan_mesh(smaller, plan, config, epoch=2))
    joined = _only(grown, set(ids[: n + 1]))
    join_s, join = timed(repeats, lambda: plan_mesh(joined, plan, config, epoch=2))
    scaled = grown
    scale_out_s, scale_out = timed(repeats, lambda: plan_mesh(scaled, plan, config, epoch=2))
    re_adjacency = replan.topology.adjacency()
    re_degrees = [len(v) for v in re_adjacency.values()]
    sizes = [len(s.members) for s in plan.segments]
    return {
        "encoders": n,
        "channels": channels,
        "rungs": rungs,
        "work_units": len(view.units),
        "redundancy": REDUNDANCY,
        "repeats": repeats,
        "plan_s": plan_s,
        "place_s": place_s,
        "replan_s": replan_s,
        "join_replan_s": join_s,
        "scale_out_encoders": added,
        "scale_out_replan_s": scale_out_s,
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
        "units_per_encoder_spread": _spread(plan.placement),
        "units_per_encoder_spread_after_join": _spread(join.placement),
        "units_per_encoder_spread_after_scale_out": _spread(scale_out.placement),
        "placement_moves_on_join": replica_moves(plan.placement, join.placement),
        "placement_moves_on_scale_out": replica_moves(plan.placement, scale_out.placement),
        "edges_changed_on_join": edge_changes(plan.topology, join.topology).total,
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
        """Two tables in one: the mesh per size, then its work placement per size."""
        grid = Table.grid()
        grid.add_row(self.mesh_table())
        grid.add_row(self.work_table())
        return grid

    def work_table(self) -> Table:
        """One row per mesh size: the work units' placement and how it moves per event."""
        table = results_table(
            f"Work placement: channels × rungs at redundancy {REDUNDANCY}, capacity {CAPACITY}"
            f" copies per encoder (seed {self.seed}), median of {self.repeats} runs, one core",
            (
                "encoders",
                "units (channels × rungs)",
                "place s",
                "replan s: leave / join / scale-out",
                "units per encoder max−min: cold / join / scale-out",
                "moves: leave / join / scale-out",
            ),
        )
        for r in self.results:
            table.add_row(
                f"{r['encoders']:,}",
                f"{r['work_units']:,} ({r['channels']:,} × {r['rungs']})",
                f"{r['place_s']:.3f}",
                f"{r['replan_s']:.3f} / {r['join_replan_s']:.3f} / {r['scale_out_replan_s']:.3f}",
                f"{r['units_per_encoder_spread']} / {r['units_per_encoder_spread_after_join']}"
                f" / {r['units_per_encoder_spread_after_scale_out']}",
                f"{r['placement_moves_on_leave']} / {r['placement_moves_on_join']}"
                f" / {r['placement_moves_on_scale_out']} (+{r['scale_out_encoders']:,})",
            )
        table.caption = (
            "place: the cold placement alone. replan: the whole plan (topology, segments,"
            " placement) after one encoder leaves, one joins, or a tenth of the fleet joins at"
            " once. Units per encoder: copies held, max − min over all encoders. Moves: copies"
            " re-placed by the event."
        )
        return table

    def mesh_table(self) -> Table:
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
            "plan: ring + links + segments + likely leaders + placement of the work below"
            " (channels × rungs at redundancy 2), from nothing. replan: the same after one"
            " encoder fails."
            " check: articulation-point search over the plan. Links changed: between surviving"
            " encoders. Moves: copies re-placed (the failed encoder held the number in brackets)."
        )
        return table


def run_sizes(
    encoders: Sequence[int],
    seed: int,
    repeats: int,
    *,
    channels: int = DEFAULT_CHANNELS,
    rungs: int = DEFAULT_RUNGS,
    progress: Progress = quiet,
) -> PlanBench:
    """:func:`measure` a synthetic mesh of each size."""
    results = []
    for n in encoders:
        progress(f"{n:,} encoders ...")
        results.append(measure(n, seed, repeats, channels=channels, rungs=rungs))
    return PlanBench(seed, repeats, tuple(results))
