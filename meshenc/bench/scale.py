"""``meshenc bench scale``: how many real encoder processes this machine holds, and whether a
mesh that was overloaded locks again once the load is gone.

Theory of operation: every trial is a ``meshenc up`` run (:class:`~meshenc.local.demo.DemoRun`:
real etcd, registry replicas, the manager planning the links, one live source sending the test
pattern to every encoder over its own UDP path) at a small picture size, without the kill and
the join, the origin or the player, in plaintext. While it runs, the bench samples the host's
1-minute load average and every encoder's CPU time (``/proc``). An *overload* trial starts more
encoders than the machine can carry and, at ``relief_at``, kills all but ``keep`` of them: the
CPU comes back to the survivors at a known moment. A *starvation* trial takes one encoder's
CPU instead, from ``relief_at`` for ``starve_for`` seconds (``meshenc up --starve-at``: stopped
for most of every tenth of a second), as a noisy neighbour on its machine would; its relief is
the starvation's end, and it is the one survivor judged.

Everything is judged from the segment files afterwards (:func:`meshenc.report.verify.verify`):
of the copies each encoder wrote after its first ``LOCK_IN_SEGMENTS`` segments, how many hold
their segment's reference (the digest most copies hold), and how many segments are missing
between its first and its last (given up behind its input, or lost); the longest lock-in; and,
for an overload trial, per survivor, how many segments after the one in progress at the
relief its copies start to hold their reference for good (``recovered``), and how long after
the relief it made its last whole-frame correction, a drop or a duplicate (``last_frame_move``,
from the corrections the run recorded: a figure that, unlike the segments, does not depend on
where in its segment the relief fell). The copies are
counted from each encoder's start, not per run as ``verify`` judges: an encoder that gave
up a segment starts a new run there, and its next segments are not exempt here. What each
encoder logs when it stops adds what ran out: pictures it dropped behind its input, the longest
its loop was held up, ESPs its links dropped, and the messages its links sent per gRPC write
(batches carry several when a link fell behind); summed over the encoders that logged it,
whose number the table gives (an overload trial's killed encoders log nothing).

Invariants: every process started is stopped however a trial ends (the launcher's; a first
SIGINT or SIGTERM ends the trial in order and the benchmark after it, a second kills every
process of the trial at once); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from rich.table import Table

from meshenc.bench.results import Progress, Spread, cell, machine, quiet, results_table
from meshenc.core.timecode import FrameRate
from meshenc.local.demo import DemoConfig, DemoRun
from meshenc.local.launcher import Launcher
from meshenc.report.chaos import segment_at
from meshenc.report.recorder import EVENTS_NAME, CorrectionRecord, read_events
from meshenc.report.verify import Verification, verify

__all__ = [
    "ScaleBench",
    "ScaleTrial",
    "TrialPlan",
    "count_copies",
    "recovered_after",
    "run_scale_bench",
]

#: Segments each encoder may take to lock in (the first, partial one included), as in
#: ``meshenc bench live``.
LOCK_IN_SEGMENTS = 2
_SAMPLE_EVERY = 2.0
#: The stop line an encoder logs (``EncoderRuntime.run``), read for what ran out.
_STOPPED = re.compile(r"encoder \S+ stopped: RunStats\((?P<fields>[^)]*)\)")


@dataclass(frozen=True, slots=True)
class TrialPlan:
    """``encoders`` started at once; with ``keep``, all but that many killed at ``relief_at``;
    with ``starve_for``, one of them starved from ``relief_at`` for that many seconds (its
    relief is the starvation's end)."""

    encoders: int
    keep: int | None = None
    relief_at: float | None = None
    starve_for: float | None = None

    @property
    def plain(self) -> bool:
        """Neither an overload nor a starvation: nothing happens at ``relief_at``."""
        return self.keep is None and self.starve_for is None

    @property
    def name(self) -> str:
        if self.starve_for is not None:
            return f"{self.encoders}, one starved {self.starve_for:g} s"
        return f"{self.encoders}" if self.keep is None else f"{self.encoders} → {self.keep}"


@dataclass(frozen=True, slots=True)
class ScaleTrial:
    """What one trial measured."""

    plan: TrialPlan
    load: Spread
    #: CPU of one encoder process in cores (its CPU seconds over wall seconds), the median over
    #: the encoders, from the first sample to the relief (or to the end).
    cpu_per_encoder: float | None
    #: Copies past each encoder's first ``LOCK_IN_SEGMENTS`` segments; of those, the ones
    #: holding their segment's reference; segments missing between an encoder's first and last.
    copies: int
    matching: int
    missing: int
    #: The longest lock-in of any encoder's run, in segments; None when one never locked.
    locked_after: int | None
    #: Summed over the encoders that logged their stop line (``reported`` of them; an
    #: overload trial's killed encoders log none): pictures dropped behind the input, ESPs
    #: dropped, mesh messages sent and the gRPC writes that carried them; the longest any
    #: loop was held up (s). None where no encoder logged its stop line.
    skipped: int | None
    dropped_esps: int | None
    longest_hold: float | None
    mesh_messages: int | None = None
    mesh_writes: int | None = None
    reported: int = 0
    #: Per survivor of an overload trial: segments after the relief until its copies hold
    #: their reference for good (None: never, within the run).
    recovered: tuple[int | None, ...] = ()
    #: Per survivor: seconds from the relief to its last drop or duplicate (None: none).
    last_frame_move: tuple[float | None, ...] = ()
    started_ok: bool = True
    error: str = ""

    def payload(self) -> dict[str, Any]:
        return {
            "encoders": self.plan.encoders,
            "keep": self.plan.keep,
            "relief_at_s": self.plan.relief_at,
            "starve_for_s": self.plan.starve_for,
            "load_1min": self.load.as_dict(),
            "cpu_per_encoder_cores": self.cpu_per_encoder,
            "copies": self.copies,
            "matching_copies": self.matching,
            "missing_segments": self.missing,
            "locked_after_segments": self.locked_after,
            "skipped_pictures": self.skipped,
            "dropped_esps": self.dropped_esps,
            "longest_hold_s": self.longest_hold,
            "mesh_messages": self.mesh_messages,
            "mesh_writes": self.mesh_writes,
            "stop_lines": self.reported,
            "recovered_after_segments": list(self.recovered),
            "last_frame_move_after_relief_s": list(self.last_frame_move),
            "started": self.started_ok,
            "error": self.error,
        }


def recovered_after(outcome: Verification, encoder: str, relief_segment: int) -> int | None:
    """Segments after ``relief_segment`` until ``encoder`` writes every segment and each
    copy holds its segment's reference, to its last (0: already at the relief); None when its
    last copy does not. A segment it did not write (given up) counts as not holding it."""
    copies = {
        check.segment: copy
        for check in outcome.segments
        for copy in check.copies
        if copy.encoder == encoder
    }
    if not copies or max(copies) < relief_segment:
        return None
    good_from: int | None = None
    for number in range(max(copies), relief_segment - 1, -1):
        copy = copies.get(number)
        if copy is None or not copy.matches:
            break
        good_from = number
    return None if good_from is None else good_from - relief_segment


def last_frame_move(
    corrections: Sequence[CorrectionRecord], encoder: str, relieved_at: float
) -> float | None:
    """Seconds from ``relieved_at`` to ``encoder``'s last whole-frame correction (a drop or a
    duplicate: what puts other pictures in its slots) recorded after it; None when it made
    none."""
    moves = [
        c["at"]
        for c in corrections
        if c["encoder"] == encoder
        and c["correction"] in ("drop", "duplicate")
        and c["at"] >= relieved_at
    ]
    return max(moves) - relieved_at if moves else None


def count_copies(outcome: Verification) -> tuple[int, int, int]:
    """Copies past each encoder's first ``LOCK_IN_SEGMENTS`` segments, those holding their
    segment's reference, and segments missing between each encoder's first and last."""
    copies = matching = missing = 0
    for output in outcome.encoders:
        if not output.digests:
            continue
        first, last = min(output.digests), max(output.digests)
        missing += last - first + 1 - len(output.digests)
        for number in output.digests:
            check = outcome.segment(number)
            if number < first + LOCK_IN_SEGMENTS or check is None or len(check.copies) < 2:
                continue
            copies += 1
            copy = next(c for c in check.copies if c.encoder == output.name)
            matching += copy.matches
    return copies, matching, missing


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop_stats(log: Path) -> dict[str, str] | None:
    """The fields of the stop line in an encoder's log (None: it logged none)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = list(_STOPPED.finditer(text))
    if not found:
        return None
    pairs = (part.split("=", 1) for part in found[-1]["fields"].split(", ") if "=" in part)
    return {key.strip(): value.strip() for key, value in pairs}


class _ScaleRun(DemoRun):
    """A ``meshenc up`` run that samples the load and CPU and, for an overload trial, kills
    all but ``keep`` encoders at ``relief_at`` or starves one from then for ``starve_for``."""

    def __init__(self, config: DemoConfig, trial: TrialPlan) -> None:
        super().__init__(config)
        self.trial = trial
        self.loads: list[float] = []
        self.cpu: dict[str, float] = {}
        self.relieved_at: float | None = None
        self.survivors: tuple[str, ...] = ()

    async def _timeline(self, launcher: Launcher) -> None:
        self._set_phase("running")
        start = self.state.started_at or time.time()
        trial = self.trial
        relief = None if trial.relief_at is None else start + trial.relief_at
        end = start + self.config.duration
        first: dict[str, tuple[float, float]] = {}
        last: dict[str, tuple[float, float]] = {}
        while (now := time.time()) < end and not self._stop.is_set():
            self.loads.append(os.getloadavg()[0])
            if relief is None or now < relief:
                for name, child in launcher.children.items():
                    if name.startswith("e") and (used := _cpu_seconds(child.pid)) is not None:
                        first.setdefault(name, (now, used))
                        last[name] = (now, used)
            if relief is not None and self.relieved_at is None and now >= relief:
                self._relieve(launcher)
            wake = min(now + _SAMPLE_EVERY, end)
            if relief is not None and self.relieved_at is None:
                wake = min(wake, relief)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, wake - time.time()))
        await self._end_starvation()
        for name, (t0, c0) in first.items():
            t1, c1 = last[name]
            if t1 > t0:
                self.cpu[name] = (c1 - c0) / (t1 - t0)

    def _relieve(self, launcher: Launcher) -> None:
        if (seconds := self.trial.starve_for) is not None:
            victim = self._starve_one(seconds)
            self.survivors = () if victim is None else (victim,)
            self.relieved_at = time.time() + seconds  # ``starve`` ends on the clock
            return
        keep = self.trial.keep or 0
        running = [n for n, v in self.state.encoders.items() if v.status == "running"]
        self.survivors = tuple(running[:keep])
        recorder = self._recorder
        launcher.kill(*running[keep:])
        for name in running[keep:]:
            self.state.encoders[name].status = "killed"
            if recorder is not None:
                recorder.lifecycle("killed", name)
                recorder.remove(name)
        self.relieved_at = time.time()
        self._note(f"killed {len(running) - keep} encoders: {keep} left", "bold red")


def _sum_field(stats: Sequence[dict[str, str]], key: str) -> int | None:
    values = [int(s[key]) for s in stats if key in s]
    return sum(values) if values else None


async def _run_trial(
    plan: TrialPlan, config: DemoConfig, progress: Progress
) -> tuple[ScaleTrial, bool]:
    """One trial, and whether a signal asked the benchmark to stop during it."""
    run = _ScaleRun(config, plan)
    error = ""
    try:
        # SIGINT/SIGTERM stop the trial in order (its processes with it), as ``meshenc up``.
        await run.run(launcher_ready=lambda launcher: launcher.handle_signals(run.request_stop))
    except Exception as exc:  # a process that did not start is a result at this scale
        error = str(exc).splitlines()[0]
    names = [e.name for e in run.plan.encoders if (config.out / e.name).is_dir()]
    stats = [s for n in names if (s := _stop_stats(config.out / "logs" / f"{n}.log"))]
    holds = [float(s["longest_hold"]) for s in stats if "longest_hold" in s]
    loads = Spread.of(run.loads or [os.getloadavg()[0]])  # none sampled: it never ran
    stopped = run.state.stop_requested
    if error or len(names) < 2:
        progress(f"{plan.name}: {error or 'no output'}")
        failed = ScaleTrial(
            plan, loads, None, 0, 0, 0, None, None, None, None, started_ok=False, error=error
        )
        return failed, stopped
    outcome = await asyncio.to_thread(
        verify, [config.out / n for n in names], lock_in=LOCK_IN_SEGMENTS
    )
    recovered: tuple[int | None, ...] = ()
    moves: tuple[float | None, ...] = ()
    if (relieved_at := run.relieved_at) is not None:
        rate = FrameRate.parse(config.fps)
        relief = segment_at(relieved_at, Fraction(rate.num, rate.den), config.gop)
        recovered = tuple(recovered_after(outcome, n, relief) for n in run.survivors)
        corrections = read_events(config.out / EVENTS_NAME).corrections()
        moves = tuple(last_frame_move(corrections, n, relieved_at) for n in run.survivors)
    trial = ScaleTrial(
        plan,
        loads,
        statistics.median(run.cpu.values()) if run.cpu else None,
        *count_copies(outcome),
        outcome.locked_after,
        _sum_field(stats, "skipped"),
        _sum_field(stats, "dropped_esps"),
        max(holds) if holds else None,
        _sum_field(stats, "mesh_messages"),
        _sum_field(stats, "mesh_writes"),
        len(stats),
        recovered,
        moves,
    )
    return trial, stopped


@dataclass(frozen=True, slots=True)
class ScaleBench:
    """Every trial, in the order they ran, and what they shared."""

    size: str
    fps: str
    gop: int
    duration: float
    registries: int
    trials: tuple[ScaleTrial, ...]
    machine: dict[str, Any] = field(default_factory=machine)

    def payload(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "fps": self.fps,
            "gop": self.gop,
            "duration_s": self.duration,
            "registries": self.registries,
            "machine": self.machine,
            "trials": [t.payload() for t in self.trials],
        }

    def table(self) -> Table:
        table = results_table(
            f"Real encoder processes at {self.size}, {self.fps} fps, GOP {self.gop}, with etcd,"
            f" {self.registries} registry replica(s) and the manager, {self.duration:g} s a"
            " trial; lock-in: each"
            f" encoder's first {LOCK_IN_SEGMENTS} segments; pictures and ESPs dropped and"
            " messages per write: over the encoders that logged their stop line (stop lines);"
            " recovered: segments after the relief (the kills, or a starvation's end) until a"
            " survivor's (the starved encoder's) copies hold their reference for good (median,"
            " worst); last frame move: seconds from the relief to a survivor's last drop or"
            " duplicate (median, latest)",
            (
                "encoders",
                "load (median)",
                "CPU / encoder",
                "identical copies",
                "missing",
                "longest lock-in",
                "pictures dropped",
                "longest hold-up",
                "ESPs dropped",
                "messages / write",
                "stop lines",
                "recovered",
                "last frame move",
            ),
            left={"encoders"},
        )
        for t in self.trials:
            if not t.started_ok:
                table.add_row(t.plan.name, cell(t.load.median), *(["—"] * 10), "did not start")
                continue
            table.add_row(
                t.plan.name,
                cell(t.load.median),
                "—" if t.cpu_per_encoder is None else f"{t.cpu_per_encoder:.2f}",
                f"{t.matching:,} / {t.copies:,}",
                cell(t.missing),
                "never" if t.locked_after is None else str(t.locked_after),
                cell(t.skipped),
                "—" if t.longest_hold is None else f"{t.longest_hold:.2f} s",
                cell(t.dropped_esps),
                _per_write_cell(t.mesh_messages, t.mesh_writes),
                str(t.reported),
                _recovered_cell(t.recovered),
                _moves_cell(t.last_frame_move),
            )
        return table


def _per_write_cell(messages: int | None, writes: int | None) -> str:
    if messages is None or not writes:
        return "—"
    return f"{messages / writes:.2f}"


def _recovered_cell(recovered: Sequence[int | None]) -> str:
    if not recovered:
        return "—"
    if any(r is None for r in recovered):
        never = sum(1 for r in recovered if r is None)
        return f"never ({never} of {len(recovered)})"
    values = [r for r in recovered if r is not None]
    return f"{statistics.median(values):g}, {max(values)}"


def _moves_cell(moves: Sequence[float | None]) -> str:
    made = [m for m in moves if m is not None]
    if not made:
        return "—" if not moves else "none"
    return f"{statistics.median(made):.2f}, {max(made):.2f} s"


def run_scale_bench(
    plans: Sequence[TrialPlan],
    encoder_options: frozenset[str],
    *,
    size: str = "160x90",
    fps: str = "30",
    gop: int = 30,
    duration: float = 60.0,
    registries: int = 1,
    degree_max: int | None = None,
    keep: Path | None = None,
    progress: Progress = quiet,
) -> ScaleBench:
    """Run every trial in turn (see the module docstring). ``encoder_options``: the options
    this installation's ``meshenc encoder`` accepts (``DemoConfig.encoder_options``);
    ``keep``: a folder to keep each trial's run folder in (default: a temporary one)."""
    trials = []
    with tempfile.TemporaryDirectory(prefix="meshenc-scale-") as scratch:
        root = keep if keep is not None else Path(scratch)
        for i, plan in enumerate(plans):
            config = DemoConfig(
                encoders=plan.encoders,
                duration=duration,
                out=root / f"trial-{i}-{plan.encoders}",
                faults=False,
                size=size,
                fps=fps,
                gop=gop,
                registries=registries,
                degree_max=degree_max,
                manager=True,
                origin=False,
                player=False,
                tls=False,
                encoder_options=encoder_options,
            )
            progress(f"trial {plan.name}: {duration:g} s, load {os.getloadavg()[0]:.1f}")
            trial, stopped = asyncio.run(_run_trial(plan, config, progress))
            progress(f"trial {plan.name}: {trial.matching} of {trial.copies} copies identical")
            trials.append(trial)
            if stopped:
                progress("stopped by a signal: the trials so far")
                break
    return ScaleBench(size, fps, gop, duration, registries, tuple(trials))
