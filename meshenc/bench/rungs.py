"""``meshenc bench rungs``: a ladder's rungs encoded one after another against several at once.

Theory of operation: ``meshenc encoder --rung-threads N`` encodes up to N rungs of each picture
at the same time (``services.encoder.pipeline``). That does not lower the CPU a picture costs;
it lowers the wall time a picture takes, which is what decides whether an encoder keeps up with
a live source: a ladder whose rungs together take longer than a frame period falls behind on
one core however idle the others are. The benchmark runs the encoder benchmark's per-frame path
(``meshenc bench encoder``'s ``run_path``: decode, engine, every rung scaled and encoded,
segments, the ESPs of three neighbours) over one stream at the top rung's size, once per thread
count in each round (the order reversed every other round), every run stamped from the same
instant so that all must write the same files, and reports per thread count the wall and CPU
time per picture (medians over the rounds) and the wall time against one thread's in the same
round. A run whose files differ from the one-thread run's of its round is an error, not a
figure.

Invariants: every run writes into a folder of its own under a temporary directory, removed at
the end; the stream is written once.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from meshenc.bench.encoder import FRAME_RATE, EncoderSize, run_path, write_stream
from meshenc.bench.results import (
    BenchError,
    Progress,
    Spread,
    machine,
    quiet,
    results_table,
)
from meshenc.wire import hot_path
from services.encoder.media.ladder import Rung, top_rung

__all__ = ["DEFAULT_LADDER", "RungsBench", "RungsResult", "run_rungs_bench"]

#: A ladder whose top rung is about half of its work (the test pattern, preset veryfast).
DEFAULT_LADDER = "1280x720@3000,960x540@1800,640x360@1000,480x270@500"


@dataclass(frozen=True, slots=True)
class RungsResult:
    """One thread count's runs, one per round."""

    threads: int
    #: Wall and process CPU milliseconds per picture, the neighbours' part taken out.
    wall_ms: tuple[float, ...]
    cpu_ms: tuple[float, ...]
    #: Wall milliseconds per picture of encoding alone (every rung scaled and encoded).
    encode_ms: tuple[float, ...]
    #: Wall time over the one-thread run's of the same round.
    wall_ratios: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "wall_ms": self.wall_ms,
            "cpu_ms": self.cpu_ms,
            "encode_ms": self.encode_ms,
            "wall_ratios": self.wall_ratios,
            "wall_ms_median": statistics.median(self.wall_ms),
            "wall_ratio_median": statistics.median(self.wall_ratios),
        }


@dataclass(frozen=True, slots=True)
class RungsBench:
    """``meshenc bench rungs``: every thread count asked, the one-thread runs first."""

    ladder: tuple[Rung, ...]
    frames: int
    rounds: int
    results: tuple[RungsResult, ...]

    def payload(self) -> dict[str, Any]:
        return {
            "benchmark": "rungs",
            "settings": {
                "ladder": [rung.name + f"@{rung.bitrate_kbps}" for rung in self.ladder],
                "frames": self.frames,
                "rounds": self.rounds,
                "frame_rate": str(FRAME_RATE),
                "hot_path": hot_path.describe(),
            },
            "machine": machine(),
            "results": [r.as_dict() for r in self.results],
        }

    def table(self) -> Table:
        rungs = ", ".join(f"{r.name}@{r.bitrate_kbps}" for r in self.ladder)
        table = results_table(
            f"Rungs encoded at once (--rung-threads): {rungs}; median of {self.rounds} rounds"
            f" × {self.frames} pictures, no pacing",
            ("rung threads", "wall per picture", "against 1 thread", "encoding", "CPU per picture"),
        )
        period_ms = FRAME_RATE.period * 1e3
        for r in self.results:
            wall = Spread.of(r.wall_ms)
            ratio = Spread.of(r.wall_ratios)
            table.add_row(
                str(r.threads),
                f"{wall.median:.2f} ms ({wall.low:.2f}–{wall.high:.2f})",
                f"{ratio.median:.2f}× ({ratio.low:.2f}–{ratio.high:.2f})",
                f"{Spread.of(r.encode_ms).median:.2f} ms",
                f"{Spread.of(r.cpu_ms).median:.2f} ms",
            )
        table.caption = (
            "The encoder benchmark's per-frame path (decode, engine, every rung scaled and"
            " encoded, segments, 3 neighbours' ESPs), each thread count once per round, all"
            " writing the same files (checked). Wall per picture against the"
            f" {period_ms:.1f} ms frame period at {FRAME_RATE.fps:g} fps says whether the ladder"
            f" keeps up live; CPU is the process's, all threads. {machine()['cpus']} CPUs."
        )
        return table


def _digest(folder: Path) -> str:
    """SHA-256 over every file under ``folder``: its path and its bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_rungs_bench(
    ladder: Sequence[Rung],
    threads: Sequence[int],
    frames: int,
    rounds: int,
    *,
    progress: Progress = quiet,
) -> RungsBench:
    """Each of ``threads`` once per round over one stream of ``frames`` pictures.

    Raises:
        BenchError: a run wrote other files than the one-thread run of its round.
    """
    counts = sorted(set(threads) | {1})
    top = top_rung(ladder)
    size = EncoderSize(top.width, top.height, top.bitrate_kbps)
    origin = float(math.floor(time.time()))
    wall: dict[int, list[float]] = {n: [] for n in counts}
    cpu: dict[int, list[float]] = {n: [] for n in counts}
    encode: dict[int, list[float]] = {n: [] for n in counts}
    ratios: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="meshenc-rungs-") as scratch:
        stream = Path(scratch) / "stream.ts"
        progress(f"writing {frames} pictures at {size.name} ...")
        write_stream(size, frames, stream)
        for round_ in range(rounds):
            # Alternate the order, so that neither end of a round is always the same count.
            runs = {}
            for count in counts if round_ % 2 == 0 else counts[::-1]:
                progress(f"round {round_ + 1}/{rounds}: {count} rung thread(s) ...")
                out = Path(scratch) / f"out-{round_}-{count}"
                run = run_path(size, stream, out, ladder=ladder, rung_threads=count, origin=origin)
                runs[count] = (run, _digest(out))
            alone, files = runs[1]
            for count, (run, written) in runs.items():
                if written != files:
                    raise BenchError(
                        f"{count} rung threads wrote other files than one thread did"
                        f" (round {round_ + 1})"
                    )
                wall[count].append(run.seconds / run.frames * 1e3)
                cpu[count].append(run.cpu_seconds / run.frames * 1e3)
                encode[count].append(run.parts["encode"] / run.frames * 1e3)
                ratios[count].append(run.seconds / alone.seconds)
    results = tuple(
        RungsResult(n, tuple(wall[n]), tuple(cpu[n]), tuple(encode[n]), tuple(ratios[n]))
        for n in counts
    )
    return RungsBench(tuple(ladder), frames, rounds, results)
