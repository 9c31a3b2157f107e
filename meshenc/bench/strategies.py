"""The resync strategies compared in the simulator: ``meshenc bench sim``, ``lockin`` and ``wan``.

Every figure is computed by :func:`meshenc.sim.metrics.score` from the timecodes a simulated
run recorded, so a run is a function of its scenario and strategy: the same options give the
same figures (wall times aside). Three comparisons:

- :func:`compare_sizes`: every strategy on the standard scenario at several mesh sizes;
- :func:`lockin_sweep`: predictive and reactive on seeded worlds of several sizes and degrees
  (:data:`LOCKIN_WORLDS`), the standard scenario's faults;
- :func:`compare_worlds`: predictive, reactive and epoch on a list of worlds, each its own
  scenario: the broadcast frame rates (:func:`lockin_at_rates`) or mesh links of every kind
  (:func:`wan_comparison`), from :mod:`meshenc.bench.worlds`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rich.table import Table

from meshenc.bench.results import Progress, cell, quiet, results_table
from meshenc.bench.worlds import SEGMENT_S, rate_worlds, wan_worlds
from meshenc.core.policy import Strategy
from meshenc.sim.metrics import Score, score
from meshenc.sim.runner import run
from meshenc.sim.scenario import Scenario, packaged_scenario

__all__ = [
    "LOCKIN_WORLDS",
    "LockinRow",
    "LockinSweep",
    "SizeComparison",
    "WorldComparison",
    "compare_sizes",
    "compare_worlds",
    "lockin_at_rates",
    "lockin_sweep",
    "score_table",
    "wan_comparison",
]

#: (encoders, degree, seeds, simulated seconds) of the lock-in sweep.
LOCKIN_WORLDS: tuple[tuple[int, int, range, float], ...] = (
    (10, 4, range(1, 21), 120.0),
    (100, 4, range(1, 6), 60.0),
    (16, 3, range(1, 8), 60.0),
    (20, 5, range(1, 5), 60.0),
    (30, 7, range(1, 4), 60.0),
)

#: The strategies :func:`compare_worlds` runs on every world, in the table's order.
COMPARED = (Strategy.PREDICTIVE, Strategy.REACTIVE, Strategy.EPOCH)


def score_table(scores: Iterable[Score], title: str) -> Table:
    """One row per scored run (``meshenc sim`` prints it too)."""
    table = results_table(
        title,
        (
            "encoders",
            "strategy",
            "misaligned frames",
            "max |offset| ms",
            "corrections slew/drop/dup/param",
            "median lead ms",
            "lock-in s",
            "wall s",
            "events/s",
        ),
        left={"strategy"},
    )
    for s in scores:
        c = s.corrections
        table.add_row(
            cell(s.encoders),
            s.strategy,
            cell(s.misaligned_frames),
            cell(s.max_abs_offset_ms),
            f"{c['slew']}/{c['drop']}/{c['duplicate']}/{c['parameter']}",
            cell(s.median_lead_ms, 0),
            cell(s.lock_in_s),
            cell(s.wall_s),
            cell(s.events_per_s, 0),
        )
    return table


# --- every strategy at several sizes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeComparison:
    """``meshenc bench sim``: every strategy at each size, sizes in the order asked."""

    duration_s: float
    seed: int
    scores: tuple[Score, ...]

    def payload(self) -> dict[str, object]:
        return {"benchmark": "sim", "results": [s.as_dict() for s in self.scores]}

    def table(self) -> Table:
        title = (
            f"Strategy comparison, standard scenario, {self.duration_s:g} simulated s, "
            f"seed {self.seed}"
        )
        return score_table(self.scores, title)


def compare_sizes(
    sizes: Sequence[int], duration_s: float, seed: int, *, progress: Progress = quiet
) -> SizeComparison:
    """Each size runs every strategy in the same simulated world (same seed)."""
    base = packaged_scenario("standard")
    scores: list[Score] = []
    for size in sizes:
        scenario = base.with_overrides(
            **{"mesh.encoders": size, "mesh.duration_s": duration_s, "seed": seed}
        )
        for strategy in Strategy:
            progress(f"{size} encoders, {strategy.value} ...")
            scores.append(score(run(scenario, strategy)))
    return SizeComparison(duration_s, seed, tuple(scores))


# --- the lock-in sweep over sizes and degrees ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockinRow:
    """One world of the sweep, with predictive and reactive."""

    encoders: int
    degree: int
    seed: int
    predictive: Score
    reactive: Score


@dataclass(frozen=True, slots=True)
class LockinSweep:
    """``meshenc bench lockin``: a row per world of :data:`LOCKIN_WORLDS`."""

    rows: tuple[LockinRow, ...]

    def payload(self) -> dict[str, object]:
        results = [
            {
                "encoders": r.encoders,
                "degree": r.degree,
                "seed": r.seed,
                "predictive": r.predictive.as_dict(),
                "reactive": r.reactive.as_dict(),
            }
            for r in self.rows
        ]
        return {"benchmark": "lockin", "results": results}

    def table(self) -> Table:
        table = results_table(
            "Lock-in across seeded worlds (warm-up 10 s)",
            (
                "encoders",
                "degree",
                "seed",
                "predictive misaligned",
                "predictive lock-in s",
                "predictive corrections",
                "reactive misaligned",
                "reactive corrections",
            ),
        )
        for r in self.rows:
            p, q = r.predictive, r.reactive
            table.add_row(
                str(r.encoders),
                str(r.degree),
                str(r.seed),
                cell(p.misaligned_frames),
                cell(p.lock_in_s),
                cell(p.corrections_total),
                cell(q.misaligned_frames),
                cell(q.corrections_total),
            )
        locked = sum(1 for r in self.rows if r.predictive.misaligned_frames == 0)
        table.caption = (
            f"predictive: {locked} of {len(self.rows)} worlds without a misaligned frame"
        )
        return table


def lockin_sweep(*, progress: Progress = quiet) -> LockinSweep:
    """Predictive and reactive on every world of :data:`LOCKIN_WORLDS` (standard faults)."""
    base = packaged_scenario("standard")
    rows = []
    for encoders, degree, seeds, seconds in LOCKIN_WORLDS:
        for seed in seeds:
            scenario = base.with_overrides(
                **{
                    "mesh.encoders": encoders,
                    "mesh.neighbors": degree,
                    "mesh.duration_s": seconds,
                    "seed": seed,
                }
            )
            progress(f"{encoders} encoders, degree {degree}, seed {seed} ...")
            predictive = score(run(scenario, Strategy.PREDICTIVE))
            reactive = score(run(scenario, Strategy.REACTIVE))
            rows.append(LockinRow(encoders, degree, seed, predictive, reactive))
    return LockinSweep(tuple(rows))


# --- predictive, reactive and epoch on worlds of their own --------------------------------------


@dataclass(frozen=True, slots=True)
class WorldComparison:
    """A row per world: its keys, then each of :data:`COMPARED`'s figures."""

    name: str
    title: str
    rows: tuple[tuple[Mapping[str, object], Mapping[Strategy, Score]], ...]

    def payload(self) -> dict[str, object]:
        results = [
            {**keys, **{s.value: scores[s].as_dict() for s in COMPARED}}
            for keys, scores in self.rows
        ]
        return {"benchmark": self.name, "results": results}

    def table(self) -> Table:
        """With a caption saying how many worlds each strategy locked within the warm-up (two
        segments) without a misaligned frame after it."""
        key_columns = list(self.rows[0][0]) if self.rows else []
        table = results_table(
            self.title,
            (
                *(key.replace("_", " ") for key in key_columns),
                "predictive misaligned",
                "predictive lock-in s",
                "predictive corrections",
                "reactive misaligned",
                "reactive lock-in s",
                "epoch misaligned",
            ),
        )
        for keys, scores in self.rows:
            p, r, e = (scores[s] for s in COMPARED)
            table.add_row(
                *(
                    f"{keys[key]:g}" if isinstance(keys[key], float) else str(keys[key])
                    for key in key_columns
                ),
                cell(p.misaligned_frames),
                cell(p.lock_in_s, 2),
                cell(p.corrections_total),
                cell(r.misaligned_frames),
                cell(r.lock_in_s, 2),
                cell(e.misaligned_frames),
            )

        def passed(s: Score) -> bool:
            # The warm-up is exactly two segments of frames (at 30000/1001 that is 4.004 s), so
            # no misaligned frame after it is lock-in within two segments.
            return s.misaligned_frames == 0 and s.lock_in_s is not None

        counts = {s: sum(1 for _, scores in self.rows if passed(scores[s])) for s in COMPARED}
        table.caption = "worlds locked within 2 segments and without a misaligned frame after: " + (
            ", ".join(f"{s.value} {counts[s]} of {len(self.rows)}" for s in COMPARED)
        )
        return table


def compare_worlds(
    worlds: Sequence[tuple[Mapping[str, object], Scenario]],
    *,
    name: str,
    title: str,
    progress: Progress = quiet,
) -> WorldComparison:
    """Run every world (its keys, its scenario) with each strategy of :data:`COMPARED`."""
    rows = []
    for keys, scenario in worlds:
        progress(", ".join(f"{k} {v}" for k, v in keys.items()) + " ...")
        rows.append((keys, {s: score(run(scenario, s)) for s in COMPARED}))
    return WorldComparison(name, title, tuple(rows))


def lockin_at_rates(
    rates: Sequence[str], worlds: int, duration_s: float, *, progress: Progress = quiet
) -> WorldComparison:
    """``meshenc bench lockin --rates``: ``worlds`` seeded worlds at each frame rate."""
    return compare_worlds(
        [
            (
                {
                    "fps": w.fps,
                    "seed": w.seed,
                    "jitter_frames": w.jitter_frames,
                    "jitter_ms": round(w.scenario.capture_jitter_s * 1000, 2),
                },
                w.scenario,
            )
            for w in rate_worlds(rates, worlds, duration_s=duration_s)
        ],
        name="lockin-rates",
        title=(
            f"Lock-in at broadcast frame rates: 10 encoders, degree 4, {duration_s:g} s, jitter "
            "up to 1/4 frame, ±200 ppm, ±1 s offsets, ingest 20–320 ms; misaligned frames after "
            f"2 segments ({2 * SEGMENT_S:g} s)"
        ),
        progress=progress,
    )


def wan_comparison(
    worlds: int, duration_s: float, *, progress: Progress = quiet
) -> WorldComparison:
    """``meshenc bench wan``: ``worlds`` seeded worlds for every kind of mesh link."""
    rows: list[tuple[Mapping[str, object], Scenario]] = []
    for w in wan_worlds(worlds=worlds, duration_s=duration_s):
        links = w.links
        between = (
            f"{links.between_delay_ms[0]:g}–{links.between_delay_ms[1]:g}"
            if links.regions > 1
            else "—"
        )
        keys: dict[str, object] = {
            "links": links.name,
            "delay_ms": f"{links.delay_ms[0]:g}–{links.delay_ms[1]:g}",
            "regions": links.regions,
            "between_ms": between,
            "jitter_ms": links.jitter_ms,
            "loss": links.loss,
            "seed": w.seed,
        }
        rows.append((keys, w.scenario))
    return compare_worlds(
        rows,
        name="wan",
        title=(
            f"Lock-in over mesh links of every kind: 30 encoders, degree 5, {duration_s:g} s, "
            "±150 ppm, ±500 ms offsets, ingest 20–220 ms; misaligned frames after 2 segments "
            f"({2 * SEGMENT_S:g} s)"
        ),
        progress=progress,
    )
