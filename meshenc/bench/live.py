"""``meshenc bench live``: real encoder processes on a live network source, world after world:
do they lock?

Theory of operation: a *world* is a frame rate and a seed. The seed draws, per encoder, an
injected clock drift (±``max_drift_ppm``), a clock offset (±``max_offset_ms``) and a path from
the source: a mean delay spread over ``delay_spread_ms``, arrival jitter up to a quarter of the
frame period, a slow swing. One ``meshenc source`` plays the test pattern live at the world's
rate and sends it over those paths to every encoder of every strategy at once — each strategy
gets its own copy of the same encoders with the same clocks and paths, so the strategies are
compared on the very same world. After ``duration`` the outputs are compared from the files
(:func:`meshenc.report.verify.verify`): how many segments each encoder needed to lock in, and
how many frames were misaligned after lock-in. Nothing is taken from what the encoders say.

Invariants: every process started is stopped (SIGTERM, then SIGKILL) however a world ends;
every wait is bounded.
"""

from __future__ import annotations

import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from meshenc.bench.results import Progress, quiet, results_table
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from meshenc.local.launcher import meshenc_command
from meshenc.local.ports import free_ports
from meshenc.report.verify import verify

__all__ = [
    "LiveBench",
    "LiveWorld",
    "WorldResult",
    "plan_world",
    "run_live_bench",
    "run_world",
    "spawn_logged",
    "stop_processes",
]

#: Segments each encoder may take to lock in (the first, partial one included).
LOCK_IN_SEGMENTS = 2
_STOP_GRACE = 15.0


@dataclass(frozen=True, slots=True)
class EncoderWorld:
    """One encoder of a world: its injected clock and its path from the source."""

    name: str
    drift_ppm: float
    offset_ms: float
    path: str


@dataclass(frozen=True, slots=True)
class LiveWorld:
    """A frame rate, a seed and what they drew."""

    frame_rate: FrameRate
    seed: int
    encoders: tuple[EncoderWorld, ...]

    @property
    def gop(self) -> int:
        """Frames per segment: two seconds' worth, rounded."""
        return max(1, round(2 * self.frame_rate.fps))


def plan_world(
    frame_rate: FrameRate,
    seed: int,
    *,
    encoders: int = 3,
    max_drift_ppm: float = 200.0,
    max_offset_ms: float = 1000.0,
    delay_spread_ms: float = 300.0,
    jitter_fraction: float = 0.25,
) -> LiveWorld:
    """Draw a world (pure: the same arguments give the same world)."""
    rng = random.Random(f"{frame_rate}/{seed}")
    period_ms = 1000.0 * frame_rate.period
    planned = []
    for i in range(encoders):
        jitter = round(rng.uniform(0.0, jitter_fraction * period_ms), 2)
        swing = round(rng.uniform(0.0, 5.0), 2)
        delay = round(10.0 + jitter + swing + rng.uniform(0.0, delay_spread_ms), 1)
        period = round(rng.uniform(40.0, 120.0), 1)
        path = (
            f"delay_ms={delay}&jitter_ms={jitter}&swing_ms={swing}"
            f"&swing_period_s={period}&seed={seed * 100 + i}"
        )
        planned.append(
            EncoderWorld(
                name=f"e{i}",
                drift_ppm=round(rng.uniform(-max_drift_ppm, max_drift_ppm), 1),
                offset_ms=round(rng.uniform(-max_offset_ms, max_offset_ms), 1),
                path=path,
            )
        )
    return LiveWorld(frame_rate, seed, tuple(planned))


@dataclass(frozen=True, slots=True)
class WorldResult:
    """What the files say about one strategy in one world."""

    strategy: Strategy
    judged: int
    misaligned_frames: int
    #: The longest lock-in of any encoder, in segments; None when one never locked.
    locked_after: int | None


def _encoder_command(
    world: LiveWorld,
    encoder: EncoderWorld,
    strategy: Strategy,
    ports: dict[str, int],
    source: str,
    out: Path,
    duration: float,
) -> list[str]:
    peers = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items() if n != encoder.name)
    return [
        *meshenc_command("encoder", "--insecure"),
        "--id", encoder.name,
        "--listen", f"127.0.0.1:{ports[encoder.name]}",
        "--peers", peers,
        "--out", str(out / encoder.name),
        "--source", source,
        "--size", "160x96",
        "--fps", str(world.frame_rate),
        "--gop", str(world.gop),
        "--strategy", strategy.value,
        "--duration", str(duration),
        "--drift-ppm", str(encoder.drift_ppm),
        "--offset-ms", str(encoder.offset_ms),
    ]  # fmt: skip


def run_world(
    world: LiveWorld,
    strategies: Sequence[Strategy],
    duration: float,
    *,
    progress: Progress = quiet,
) -> list[WorldResult]:
    """Run the world once for every strategy at the same time; judge each from its files."""
    names = [e.name for e in world.encoders]
    with tempfile.TemporaryDirectory(prefix="meshenc-live-") as folder:
        root = Path(folder)
        inputs = free_ports(len(names) * len(strategies))
        source = meshenc_command("source", "--input", "testpattern")
        source += ["--size", "160x96", "--fps", str(world.frame_rate)]
        paths = [e.path for e in world.encoders] * len(strategies)
        for port, path in zip(inputs, paths, strict=True):
            source += ["--to", f"udp://127.0.0.1:{port}?{path}"]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            processes.append(spawn_logged(source, root / "source.log"))
            for s, strategy in enumerate(strategies):
                ports = dict(zip(names, free_ports(len(names)), strict=True))
                for i, encoder in enumerate(world.encoders):
                    url = f"udp://127.0.0.1:{inputs[s * len(names) + i]}"
                    out = root / strategy.value
                    command = _encoder_command(world, encoder, strategy, ports, url, out, duration)
                    processes.append(
                        spawn_logged(command, root / f"{strategy.value}-{encoder.name}.log")
                    )
            progress(f"{world.frame_rate} fps, seed {world.seed}: running {duration:g} s")
            _wait(processes[1:], duration + 30.0)
        finally:
            stop_processes(processes)
        results = []
        for strategy in strategies:
            outcome = verify([root / strategy.value / n for n in names], lock_in=LOCK_IN_SEGMENTS)
            results.append(
                WorldResult(
                    strategy, outcome.judged, outcome.misaligned_frames, outcome.locked_after
                )
            )
        return results


def spawn_logged(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output (both streams) in the file ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def _wait(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM whatever still runs, then SIGKILL what has not ended within the grace."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the benchmark: every rate, seed after seed ---------------------------------------------


def _cell(results: Sequence[WorldResult]) -> str:
    """Misaligned frames after lock-in, summed, and the worst lock-in in segments."""
    misaligned = sum(r.misaligned_frames for r in results)
    lock = [r.locked_after for r in results]
    worst = "never" if any(x is None for x in lock) else f"{max(x for x in lock if x is not None)}"
    return f"{misaligned:,} / {worst}"


@dataclass(frozen=True, slots=True)
class LiveBench:
    """Every world's results, in the order they ran: (rate, seed, one strategy's result)."""

    rates: tuple[FrameRate, ...]
    seeds: int
    encoders: int
    duration: float
    strategies: tuple[Strategy, ...]
    runs: tuple[tuple[FrameRate, int, WorldResult], ...]

    def payload(self) -> list[dict[str, object]]:
        return [
            {
                "rate": str(rate),
                "seed": seed,
                "strategy": result.strategy.value,
                "judged_segments": result.judged,
                "misaligned_frames": result.misaligned_frames,
                "locked_after_segments": result.locked_after,
            }
            for rate, seed, result in self.runs
        ]

    def table(self) -> Table:
        """A row per frame rate, a column per strategy (cells: see :func:`_cell`)."""
        rows: dict[str, dict[Strategy, list[WorldResult]]] = {}
        for rate in self.rates:
            rows.setdefault(str(rate), {s: [] for s in self.strategies})
        for rate, _seed, result in self.runs:
            rows[str(rate)][result.strategy].append(result)
        table = results_table(
            f"Real encoders on a live source: {self.encoders} per world, {self.seeds} world(s)"
            f" per rate, {self.duration:g} s; cells: misaligned frames after lock-in"
            f" (each encoder's first {LOCK_IN_SEGMENTS} segments) / longest lock-in, segments",
            ("fps", *(s.value for s in self.strategies)),
            left={"fps"},
        )
        for name, row in rows.items():
            table.add_row(name, *(_cell(row[s]) for s in self.strategies))
        return table


def run_live_bench(
    rates: Sequence[FrameRate],
    seeds: int,
    encoders: int,
    duration: float,
    strategies: Sequence[Strategy],
    *,
    progress: Progress = quiet,
) -> LiveBench:
    """For each rate, worlds of seeds ``0..seeds-1``, each run once for every strategy at once.

    Each world draws drifts within ±200 ppm, offsets within ±1 s, path delays spread over
    300 ms and arrival jitter up to a quarter frame period (:func:`plan_world`).
    """
    runs = []
    for rate in rates:
        for seed in range(seeds):
            world = plan_world(rate, seed, encoders=encoders)
            for result in run_world(world, strategies, duration, progress=progress):
                runs.append((rate, seed, result))
    return LiveBench(tuple(rates), seeds, encoders, duration, tuple(strategies), tuple(runs))
