"""``meshenc chaos``: the local mesh of ``meshenc up`` under a seeded storm of faults.

Theory of operation
-------------------
:func:`plan_faults` decides the faults up front, as a pure function of the seed: one at a
time, every ``spacing`` seconds after a warm-up, each held for a few seconds; the kinds are
dealt from shuffled decks of every kind (:class:`~meshenc.report.chaos.FaultKind`), so a run
of ten faults or more has each kind at least once, and targets are drawn from the same seeded
generator. A fault's target is a role (an encoder, the leader, a registry replica, the
manager, etcd, an encoder's input), resolved to a process when the fault happens (the leader
is whoever etcd says it is then).

:class:`ChaosRun` is a :class:`~meshenc.local.demo.DemoRun` (the same etcd, registry
replicas, manager, origin, live network source, encoders, recorder and report) whose
timeline is the fault plan instead of one kill and one join, with the encoders on static
links (``--peers``) and every encoder's input passing through a datagram relay in a process
of their own (:class:`~meshenc.local.relay.InputRelays`) so that it can be cut. Each fault is
carried out and undone by the launcher (kill -9 then a restart, SIGSTOP then SIGCONT), by etcd's own
process (stopped, then started on the same data and port) or by the relay (cut, healed), and
recorded as a :class:`~meshenc.report.chaos.FaultRecord` with its wall times. Every few
seconds the run checks the files so far (:func:`meshenc.report.chaos.check`) and notes new
losses or mismatches as they appear. After the run, before etcd stops, each group's leader
history is audited (:mod:`services.encoder.leadership_audit`); the final verdict comes from
the files, the origin's copies and those audits.

Invariants: at most one fault is in effect at a time; every fault is undone before the run
ends (a paused process is resumed, a killed one restarted, etcd started, the input healed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Final

from meshenc.core.timecode import FrameRate
from meshenc.local.demo import HOST, DemoConfig, DemoRun, EncoderPlan, Note
from meshenc.local.etcd import EtcdProcess
from meshenc.local.launcher import DEFAULT_READY_TIMEOUT, ChildFailedError, Launcher
from meshenc.local.relay import InputRelays
from meshenc.report.chaos import (
    ChaosReport,
    FaultKind,
    FaultRecord,
    GroupLeadership,
    check,
    segment_at,
)
from meshenc.report.verify import ORIGIN_DIR, EncoderOutput, scan_output
from services.common.etcd import DEFAULT_ETCD_PREFIX, EtcdSettings, connect_client
from services.encoder.leadership import SegmentKeys, decode_leader
from services.encoder.leadership_audit import audit, read_history

__all__ = [
    "CHAOS_NAME",
    "ChaosConfig",
    "ChaosRun",
    "PlannedFault",
    "count_tracebacks",
    "plan_faults",
]

log = logging.getLogger("meshenc.chaos")

CHAOS_NAME: Final = "chaos.json"
"""The verdict, in the run folder."""
_CHECK_EVERY: Final = 5.0
#: Segments at the end of the run not judged: the newest may still be on their way.
_TAIL_SEGMENTS: Final = 2


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault of the plan: at ``at`` seconds into the run, for ``hold`` seconds; ``index``
    picks the target among the role's processes (modulo their number)."""

    at: float
    kind: FaultKind
    hold: float
    index: int


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """What ``meshenc chaos`` runs. Durations in seconds from the moment the encoders run."""

    duration: float = 120.0
    encoders: int = 4
    out: Path = Path("out-chaos")
    seed: int = 0
    size: str = "160x96"
    gop: int = 30
    registries: int = 2
    #: Seconds before the first fault (the mesh locks in) and between faults' starts.
    warmup: float = 12.0
    spacing: float = 15.0
    #: Each fault lasts between these many seconds.
    min_hold: float = 2.0
    max_hold: float = 5.0
    kinds: tuple[FaultKind, ...] = tuple(FaultKind)
    #: The faults to carry out, when not planned from the seed (tests script them).
    plan: tuple[PlannedFault, ...] | None = None
    tls: bool = False
    etcd_binary: str = "etcd"
    #: The options this installation's ``meshenc encoder`` accepts (as ``DemoConfig``'s).
    encoder_options: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.encoders < 3:
            raise ValueError("chaos needs at least 3 encoders (2 keep going while one is hit)")
        if not self.duration > self.warmup >= 0 or not self.spacing > 0:
            raise ValueError("need duration > warmup >= 0 and spacing > 0")
        if not 0 < self.min_hold <= self.max_hold < self.spacing:
            raise ValueError("need 0 < min_hold <= max_hold < spacing")
        if not self.kinds:
            raise ValueError("at least one kind of fault")

    def faults(self) -> tuple[PlannedFault, ...]:
        if self.plan is not None:
            return self.plan
        return plan_faults(
            self.seed,
            self.duration,
            warmup=self.warmup,
            spacing=self.spacing,
            holds=(self.min_hold, self.max_hold),
            kinds=self.kinds,
        )

    def demo(self) -> DemoConfig:
        """The mesh it runs on: ``meshenc up``'s, static links, no player, no kill or join."""
        return DemoConfig(
            encoders=self.encoders,
            duration=self.duration,
            out=self.out,
            faults=False,
            seed=self.seed,
            size=self.size,
            gop=self.gop,
            registries=self.registries,
            manager="--manager" in self.encoder_options,
            encoder_options=self.encoder_options,
            managed_topology=False,
            player=False,
            etcd_binary=self.etcd_binary,
            tls=self.tls,
        )


def plan_faults(
    seed: int,
    duration: float,
    *,
    warmup: float,
    spacing: float,
    holds: tuple[float, float],
    kinds: Sequence[FaultKind] = tuple(FaultKind),
) -> tuple[PlannedFault, ...]:
    """The faults of a run (see the module docstring): every ``spacing`` s from ``warmup``,
    each over (with its recovery) before ``duration`` minus a spacing."""
    rng = random.Random(seed)
    deck: list[FaultKind] = []
    faults = []
    at = warmup
    while at + spacing <= duration:
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        kind = deck.pop()
        hold = round(rng.uniform(*holds), 2)
        faults.append(PlannedFault(round(at, 2), kind, hold, rng.randrange(1 << 16)))
        at += spacing
    return tuple(faults)


#: A log record of OpenTelemetry's gRPC instrumentation when a streaming call ends in another
#: context than it began (a peer killed mid-stream): logged with two tracebacks, harmless
#: (open-telemetry/opentelemetry-python-contrib#2357), not a crash of ours.
_LIBRARY_NOISE: Final = "opentelemetry.context: Failed to detach context"
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def count_tracebacks(log: str) -> int:
    """Tracebacks in a process's log, those of known library noise aside."""
    count = 0
    noise = False
    for line in log.splitlines():
        if _LOG_RECORD.match(line):
            noise = _LIBRARY_NOISE in line
        elif line.startswith("Traceback (most recent call") and not noise:
            count += 1
    return count


class ChaosRun(DemoRun):
    """One chaos run (see the module docstring). ``await run()`` once, then read
    :attr:`report`."""

    #: Restarts happen while the machine is busy with the rest of the mesh (and, in a test,
    #: with whatever else runs): give every start three times ``meshenc up``'s patience.
    ready_timeout = 3 * DEFAULT_READY_TIMEOUT

    def __init__(
        self, chaos: ChaosConfig, *, on_note: Callable[[Note], None] | None = None
    ) -> None:
        super().__init__(chaos.demo(), on_note=on_note)
        self.chaos = chaos
        self.relays = InputRelays({e.name: e.input_port for e in self.plan.encoders})
        self.records: list[FaultRecord] = []
        self.crashes: list[str] = []
        self.report: ChaosReport | None = None
        self._etcd: EtcdProcess | None = None
        self._groups: list[GroupLeadership] = []
        self._seen_bad: set[int] = set()
        self._fault_since: float | None = None
        #: The host's 1-minute load average, every few seconds (real-time encoders on a
        #: machine busier than its cores lose frames, which the verdict should be read with).
        self._loads: list[float] = []
        #: Services (not encoders) that had to be killed at the end.
        self._slow_stops: list[str] = []
        self._stopped_at: float | None = None

    @property
    def frame_rate(self) -> Fraction:
        rate = FrameRate.parse(self.config.fps)
        return Fraction(rate.num, rate.den)

    def source_args(self, channel: int = 0) -> list[str] | None:
        """The live source, sending every encoder's stream to its relay (channel ``0``: a
        chaos run has one)."""
        args = super().source_args(channel)
        if args is None or channel:
            return args
        for encoder in self.plan.encoders:
            direct = f"udp://{HOST}:{encoder.input_port}?"
            relayed = f"udp://{HOST}:{self.relays.ports[encoder.name]}?"
            args = [a.replace(direct, relayed) if a.startswith(direct) else a for a in args]
        return args

    async def _run_mesh(self, launcher: Launcher, etcd: EtcdProcess) -> None:
        self._etcd = etcd
        self.relays.start()
        try:
            await super()._run_mesh(launcher, etcd)
        finally:
            self.relays.close()
            if not etcd.running:
                await asyncio.to_thread(etcd.start)
            self._groups = await self._audit(etcd.endpoint)
        self._collect_crashes(launcher)
        self.report = self._check(final=True)

    async def _timeline(self, launcher: Launcher) -> None:
        """Carry out the plan, one fault at a time, checking the files as the run goes."""
        self._set_phase("running")
        start = self.state.started_at or time.time()
        checker = asyncio.create_task(self._check_as_we_go(), name="chaos-check")
        try:
            for planned in self.chaos.faults():
                if not await self._wait_until(start + planned.at):
                    return
                await self._inject(launcher, planned)
            await self._wait_until(start + self.chaos.duration)
        finally:
            self._stopped_at = time.time()
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker

    async def _wait_until(self, when: float) -> bool:
        """Sleep until ``when`` (Unix seconds); False when the run was asked to stop."""
        remaining = when - time.time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=remaining)
        return not self._stop.is_set()

    # -- the faults -----------------------------------------------------------------------

    async def _inject(self, launcher: Launcher, planned: PlannedFault) -> None:
        kind = planned.kind
        target = await self._target(kind, planned.index)
        if target is None:
            self._note(f"{kind.value}: no target (skipped)", "yellow")
            return
        self._note(f"{kind.value} {target} for {planned.hold:g} s", "bold red")
        began = self._fault_since = time.time()
        if kind is FaultKind.STOP_ETCD:
            assert self._etcd is not None
            await asyncio.to_thread(self._etcd.stop)
            await asyncio.sleep(planned.hold)
            await asyncio.to_thread(self._etcd.start)
        elif kind is FaultKind.CUT_INPUT:
            self.relays.cut(target)
            await asyncio.sleep(planned.hold)
            self.relays.heal(target)
        elif kind.value.startswith("pause"):
            launcher.pause(target)
            await asyncio.sleep(planned.hold)
            launcher.resume(target)
        else:
            launcher.kill(target)
            if target in self.state.encoders:
                self.state.encoders[target].status = "killed"
                if self._recorder is not None:
                    self._recorder.lifecycle("killed", target)
                    self._recorder.remove(target)
            await asyncio.sleep(planned.hold)
            try:
                await self._restart(launcher, target)
            except ChildFailedError as exc:
                # The run goes on without it; the verdict counts it.
                self.crashes.append(f"{target} did not restart: {str(exc)[:200]}")
                self._note(f"{target} did not restart", "bold red")
        ended = time.time()
        self.records.append(FaultRecord(kind, target, began, ended))
        self._fault_since = None
        self._note(f"{kind.value} {target}: over after {ended - began:.1f} s", "green")

    async def _target(self, kind: FaultKind, index: int) -> str | None:
        """The process a fault hits now."""
        encoders = [n for n, v in self.state.encoders.items() if v.status == "running"]
        if kind in (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER):
            leader = await self._leader()
            return leader if leader in encoders else None
        if kind in (FaultKind.KILL_ENCODER, FaultKind.PAUSE_ENCODER, FaultKind.CUT_INPUT):
            return encoders[index % len(encoders)] if encoders else None
        if kind in (FaultKind.KILL_REGISTRY, FaultKind.PAUSE_REGISTRY):
            count = len(self.plan.registry_addresses)
            return f"registry-{index % count}" if count else None
        if kind in (FaultKind.KILL_MANAGER, FaultKind.PAUSE_MANAGER):
            return "manager" if self.plan.manager_address is not None else None
        return "etcd"

    async def _leader(self) -> str | None:
        """The leader of the first group, as etcd says now."""
        if self.state.etcd_endpoint is None:
            return None
        settings = EtcdSettings(endpoints=(self.state.etcd_endpoint,), prefix=DEFAULT_ETCD_PREFIX)
        client = connect_client(settings)
        try:
            keys = SegmentKeys(settings.prefix, self.plan.groups[0])
            got = await asyncio.wait_for(client.get(keys.leader), 5.0)
            return None if got is None else decode_leader(got.value)
        except Exception:  # etcd unreachable: no leader to hit
            return None
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _restart(self, launcher: Launcher, name: str) -> None:
        """Start a killed process again, as it was started."""
        assert self.state.etcd_endpoint is not None
        endpoint = self.state.etcd_endpoint
        if name in self.state.encoders:
            encoder: EncoderPlan = self.plan.encoder(name)
            args = self.encoder_args(encoder, endpoint)
            await launcher.start(name, args, address=encoder.address)
            self._started(encoder, "joined")
        elif name.startswith("registry-"):
            index = int(name.removeprefix("registry-"))
            registry = self.plan.registry_addresses[index]
            await launcher.start(name, self.registry_args(index), address=registry)
        elif name == "manager":
            manager = self.plan.manager_address
            assert manager is not None
            await launcher.start(name, self.manager_args(endpoint), address=manager)

    def _collect_crashes(self, launcher: Launcher) -> None:
        """Processes that died by themselves, or did not stop cleanly when asked."""
        for name, child in launcher.children.items():
            code = child.returncode
            if code == -signal.SIGKILL and self.state.encoders.get(name) is None:
                # Not stopped within the grace after SIGTERM (a busy machine): killed by the
                # launcher at the end, no crash of the mesh's; noted.
                self._slow_stops.append(name)
            elif code not in (0, None, -signal.SIGTERM):
                self.crashes.append(f"{name} exited with code {code}")
        for name, view in self.state.encoders.items():
            if view.status == "exited":
                self.crashes.append(f"{name} exited by itself")
        for path in sorted((self.out / "logs").glob("*.log")):
            tracebacks = count_tracebacks(path.read_text(errors="replace"))
            if tracebacks:
                self.crashes.append(f"{path.stem}: {tracebacks} traceback(s) in its log")

    # -- the checks -----------------------------------------------------------------------

    async def _check_as_we_go(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_EVERY)
            self._loads.append(os.getloadavg()[0])
            try:
                report = await asyncio.to_thread(self._check, final=False)
            except (OSError, ValueError):
                continue
            for n in [*report.lost_segments, *report.mismatched_segments]:
                if n not in self._seen_bad:
                    self._seen_bad.add(n)
                    what = "mismatched" if n in report.mismatched_segments else "lost"
                    self._note(f"segment {n}: {what}", "bold red")

    def _check(self, *, final: bool) -> ChaosReport:
        fps, gop = self.frame_rate, self.config.gop
        start = self.state.started_at or time.time()
        first = segment_at(start + self.chaos.warmup, fps, gop)
        now = time.time() if not final else (self._stopped_at or time.time())
        last = segment_at(now, fps, gop) - _TAIL_SEGMENTS
        if not final and self._fault_since is not None:
            # A fault in progress is not judged yet.
            last = min(last, segment_at(self._fault_since, fps, gop) - 1)
        outputs = [
            scan_output(self.out / e.name)
            for e in self.plan.encoders
            if (self.out / e.name).is_dir()
        ]
        origin_dir = self.out / ORIGIN_DIR
        origin: EncoderOutput | None = None
        if origin_dir.is_dir() and self.origin_url is not None:
            origin = replace(scan_output(origin_dir), name="origin")
        notes: tuple[str, ...] = ()
        if self._loads:
            notes = (
                f"host load average (1 min) median {statistics.median(self._loads):.1f}, "
                f"max {max(self._loads):.1f}, on {os.cpu_count()} cores",
            )
        if self._slow_stops:
            notes += (f"killed after the stop's grace: {', '.join(self._slow_stops)}",)
        return check(
            outputs,
            self.records,
            fps=fps,
            gop=gop,
            first=first,
            last=last,
            origin=origin,
            groups=self._groups,
            crashes=self.crashes,
            notes=notes,
        )

    async def _audit(self, endpoint: str) -> list[GroupLeadership]:
        """Each group's leader history from etcd (the run's etcd, running again)."""
        settings = EtcdSettings(endpoints=(endpoint,), prefix=DEFAULT_ETCD_PREFIX)
        client = connect_client(settings)
        groups = []
        try:
            for group in self.plan.groups:
                keys = SegmentKeys(settings.prefix, group)
                report = audit(await read_history(client, keys), keys)
                groups.append(
                    GroupLeadership(
                        group,
                        len(report.tenures),
                        report.dual_leader_intervals,
                        report.acts_outside_tenure,
                    )
                )
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        return groups
