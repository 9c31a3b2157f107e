"""``meshenc bench simspeed``: how fast the simulator runs, in events per second.

Each run simulates the standard scenario (predictive strategy, seed 1) at one mesh size for
some simulated seconds, in a fresh interpreter of its own, so that its peak resident memory
(the interpreter and the simulator's imports included) is that run's alone.
A reference world (by default 100 encoders × 20 s) is measured in the same invocation,
interleaved with the sizes asked, repeat by repeat: on a shared, noisy machine the sizes'
events per second divided by the reference's says more than either figure alone. Figures are
medians over the repeats; CPU seconds are the run's own process time (what a busy machine
inflates least). The simulator is single-threaded: one core per run. Each run says whether
the mesh's hot path, its sync engine among it, was compiled by mypyc
(``scripts/compile-hot-path.sh``; ``make bench`` runs the benchmark with
``PYTHONPATH=build/compiled``) or pure Python.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from meshenc.bench.results import BenchError, Progress, cell, machine, quiet, results_table
from meshenc.core.policy import Strategy
from meshenc.sim.runner import run
from meshenc.sim.scenario import Scenario, packaged_scenario
from meshenc.wire import hot_path

__all__ = ["REFERENCE", "SimSpeed", "SpeedRow", "SpeedRun", "measure_speed", "simulate_once"]

#: The reference world measured alongside every size: (encoders, simulated seconds).
REFERENCE: tuple[int, float] = (100, 20.0)


@dataclass(frozen=True, slots=True)
class SpeedRun:
    """One simulated run, measured in its own process."""

    encoders: int
    duration_s: float
    events: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    #: Whether the mesh's hot path ran compiled (C extensions built by mypyc), not pure Python.
    compiled: bool = False


def _world(encoders: int, duration_s: float, seed: int) -> Scenario:
    """The standard scenario at this size (ScenarioError: a run no longer than its warm-up)."""
    return packaged_scenario("standard").with_overrides(
        **{"mesh.encoders": encoders, "mesh.duration_s": duration_s, "seed": seed}
    )


def simulate_once(encoders: int, duration_s: float, seed: int = 1) -> SpeedRun:
    """Simulate the standard scenario at this size once, in this process, and measure it."""
    scenario = _world(encoders, duration_s, seed)
    cpu = time.process_time()
    wall = time.perf_counter()
    recording = run(scenario, Strategy.PREDICTIVE)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    rss = _peak_rss_kib() / 1024
    return SpeedRun(encoders, duration_s, recording.events, wall, cpu, rss, hot_path.compiled())


def _peak_rss_kib() -> int:
    """This process's peak resident memory (KiB). Linux's ``VmHWM`` where there is one:
    ``getrusage``'s maximum RSS carries over the parent's from before ``exec`` (a run started
    from the 180 MB command line showed 180 MB for a 60 MB simulation)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _in_own_process(encoders: int, duration_s: float, seed: int) -> SpeedRun:
    """``simulate_once`` in a fresh interpreter that imports only the simulator (this
    module run as a script), so that its peak RSS is this run's and the simulator's alone."""
    command = [sys.executable, "-m", __name__, str(encoders), repr(duration_s), str(seed)]
    # The same code as this process's (the compiled copy's, when this one runs from it),
    # wherever the child starts: ``-m`` puts the working folder first on the module path, so
    # the child starts in the code's root, not in a source tree that would shadow the copy.
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=root)
    if done.returncode != 0:
        raise BenchError(f"{encoders} encoders × {duration_s:g} s failed: {done.stderr.strip()}")
    return SpeedRun(**json.loads(done.stdout))


@dataclass(frozen=True, slots=True)
class SpeedRow:
    """Every repeat of one world, and their medians."""

    encoders: int
    duration_s: float
    reference: bool
    runs: tuple[SpeedRun, ...]

    @property
    def events(self) -> int:
        return self.runs[0].events  # the same in every run: the simulator is deterministic

    @property
    def wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def cpu_s(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    @property
    def events_per_s(self) -> float:
        """Events per wall second, median over the runs."""
        return statistics.median(r.events / r.wall_s for r in self.runs)

    @property
    def events_per_cpu_s(self) -> float:
        return statistics.median(r.events / r.cpu_s for r in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        return max(r.peak_rss_mb for r in self.runs)

    @property
    def compiled(self) -> bool:
        """Whether every run's sync engine was compiled (one PYTHONPATH for all of them)."""
        return all(r.compiled for r in self.runs)

    def as_dict(self) -> dict[str, object]:
        return {
            "encoders": self.encoders,
            "duration_s": self.duration_s,
            "reference": self.reference,
            "events": self.events,
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "events_per_cpu_s": round(self.events_per_cpu_s, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "compiled": self.compiled,
            "runs": [
                {
                    "wall_s": round(r.wall_s, 3),
                    "cpu_s": round(r.cpu_s, 3),
                    "peak_rss_mb": round(r.peak_rss_mb, 1),
                }
                for r in self.runs
            ],
        }


@dataclass(frozen=True, slots=True)
class SimSpeed:
    """The reference row first, then the sizes in the order asked."""

    rows: tuple[SpeedRow, ...]
    repeats: int
    #: One-minute load averages when the measurement started and ended.
    load: tuple[float, float]

    @property
    def reference(self) -> SpeedRow:
        return next(r for r in self.rows if r.reference)

    def payload(self) -> dict[str, object]:
        return {
            "benchmark": "simspeed",
            "machine": machine(),
            "repeats": self.repeats,
            "load": list(self.load),
            "results": [r.as_dict() for r in self.rows],
        }

    def table(self) -> Table:
        title = (
            f"Simulator speed: standard scenario, predictive, one process per run; medians of "
            f"{self.repeats} run(s); load {self.load[0]:.1f} at start, {self.load[1]:.1f} at end"
        )
        table = results_table(
            title,
            (
                "world",
                "encoders",
                "simulated s",
                "wall s",
                "CPU s",
                "events",
                "events/s",
                "events/CPU s",
                "peak RSS MB",
                "× reference",
                "engine",
            ),
            left={"world", "engine"},
        )
        base = self.reference.events_per_s
        for row in self.rows:
            table.add_row(
                "reference" if row.reference else "",
                cell(row.encoders),
                cell(row.duration_s, 0),
                cell(row.wall_s),
                cell(row.cpu_s),
                cell(row.events),
                cell(row.events_per_s, 0),
                cell(row.events_per_cpu_s, 0),
                cell(row.peak_rss_mb, 0),
                cell(row.events_per_s / base, 2),
                "compiled" if row.compiled else "pure Python",
            )
        return table


def measure_speed(
    sizes: Sequence[int],
    duration_s: float,
    repeats: int,
    *,
    reference: tuple[int, float] = REFERENCE,
    seed: int = 1,
    progress: Progress = quiet,
) -> SimSpeed:
    """Run the reference world and every size ``repeats`` times, interleaved repeat by repeat
    (a load that comes and goes then weighs on all of them alike)."""
    worlds = [(*reference, True), *((size, duration_s, False) for size in sizes)]
    for encoders, duration, _ in worlds:
        _world(encoders, duration, seed)  # a bad size or duration fails here, not in a child
    runs: list[list[SpeedRun]] = [[] for _ in worlds]
    load_at_start = os.getloadavg()[0]
    for repeat in range(1, repeats + 1):
        for world, (encoders, duration, _) in zip(runs, worlds, strict=True):
            progress(f"run {repeat}/{repeats}: {encoders} encoders × {duration:g} s ...")
            world.append(_in_own_process(encoders, duration, seed))
    rows = tuple(
        SpeedRow(encoders, duration, is_reference, tuple(done))
        for (encoders, duration, is_reference), done in zip(worlds, runs, strict=True)
    )
    return SimSpeed(rows, repeats, (load_at_start, os.getloadavg()[0]))


if __name__ == "__main__":  # one run, for ``_in_own_process``: ENCODERS SECONDS SEED
    print(json.dumps(asdict(simulate_once(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))))
