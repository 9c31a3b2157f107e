"""The scripted local run behind ``meshenc up`` and ``make demo``.

Theory of operation
-------------------
:func:`plan_run` decides everything up front, as a pure function of the settings and the free
ports: encoder ids ``e0``, ``e1``, ..., each with its own injected clock (drifts spread evenly
over ±``max_drift_ppm`` and shuffled by the seed, so no two are alike; offsets from the same
seeded generator) and its own path from the live source (a UDP port and a delay line: mean
delay, jitter and a slow swing, all different), the mesh topology and the encoder groups (the
Mesh Manager's own planner, :func:`meshenc.core.planner.manager.plan_mesh`: degree 3-7, or at
most ``degree_max``, no single point of failure, groups of 5-10), and the timeline: kill -9 of
the then segment leader at ``kill_at``, a new encoder joining at ``join_at``. By default the
Mesh Manager plans the links at run time (``meshenc encoder --manager ... --topology etcd``): it
rewires the mesh around the killed encoder and links the newcomer in. With static links
(``managed_topology=False``, or an installation whose encoders cannot follow the manager) the
plan's links are passed as ``--peers`` and fixed for the run, so the encoder that joins later is
planned in from the start: its neighbours list it and keep trying to reach it.

:class:`DemoRun` carries the plan out, as plain asyncio code:

1. the real etcd (:class:`~meshenc.local.etcd.EtcdProcess`), the registry replicas, the
   manager when this installation has one, the live source (``meshenc source``: the test
   pattern or the user's file, looped, sent to every encoder over its own path; a stream URL
   instead goes to every encoder as it is), the browser player unless it is skipped
   (:class:`~meshenc.local.player.BrowserPlayer`, launched on a blank page), then every
   encoder at once, each through the
   :class:`~meshenc.local.launcher.Launcher` (own process group, log under ``out/logs/``,
   pid in ``out/pids.json``, ready when its health service answers); the one that joins later
   starts its process with them, loads and waits (``meshenc encoder --standby``) until its
   join, so that the second or so of CPU a start-up takes does not fall on the running mesh;
2. the :class:`~meshenc.report.recorder.Recorder` polls every encoder's GetState into
   ``out/events.jsonl``; the run records its own ``started``/``killed``/``joined``/
   ``stopped`` events through it, and a ``leader`` event whenever the leader key of a group
   changes in etcd (a watch in this process);
3. every encoder serves its own output folder (``--serve-output``, a planned port), and once
   encoders vouch for their segments the run PUTs ``redundant.m3u8`` to the origin, listing each
   one's own media playlist as a redundant variant, the first group's leader first
   (:meth:`DemoRun._update_master`; again whenever the list changes); the player opens the
   origin's stream once its playlist lists three segments, the master playlist beside it (and,
   with CMAF, the origin's MPD with dash.js), and takes its screenshot halfway between the kill
   and the join; the kill (of the leader, and of the encoder the redundant player is on if that
   is another one) and the join at their times; the mesh runs until ``duration`` is over or
   :meth:`DemoRun.request_stop` is called (Ctrl-C);
4. the shutdown in dependency order: the player first (the stream's end is no stall), then
   the encoders (SIGTERM: each finishes its segment and
   resigns its leadership), then the recorder, the manager and registries, etcd last; then
   :func:`meshenc.report.write_report` builds ``summary.json``, the plots and ``report.html``.

Everything the run started is stopped however the run ends. The live view (``meshenc up``)
only reads :attr:`DemoRun.state`, which the run updates as events arrive.

Invariants: every encoder process is in ``pids.json``; every ``killed`` or ``joined`` event in
``events.jsonl`` was recorded right after the launcher did it; the report is written only from
the files, the events and the player's log; a skipped player leaves ``player/log.jsonl`` saying
why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import aiohttp
import av
import grpc

from meshenc.core.planner.autoscale import ordinal
from meshenc.core.planner.manager import MeshView, PlannerConfig, plan_mesh
from meshenc.core.planner.placement import Host
from meshenc.core.planner.topology import MAX_DEGREE, TopologyConfig
from meshenc.core.timecode import FrameRate
from meshenc.local.etcd import EtcdProcess
from meshenc.local.launcher import (
    DEFAULT_READY_TIMEOUT,
    LOGS_DIR,
    PIDS_NAME,
    ChildFailedError,
    Launcher,
)
from meshenc.local.master import REDUNDANT_NAME, StreamAttributes, master_playlist, segment_codecs
from meshenc.local.origin import OriginProcess
from meshenc.local.player import BrowserPlayer, find_dashjs, unavailable, write_skipped
from meshenc.local.ports import free_ports
from meshenc.local.segment import SegmentWatch
from meshenc.report import PLOTS_DIR, REPORT_NAME, SUMMARY_NAME, Summary, write_report
from meshenc.report.playback import (
    ABR_PLAYER,
    CHANNEL_PLAYER,
    DASH_PLAYER,
    PLAYER_DIR,
    REDUNDANT_PLAYER,
)
from meshenc.report.recorder import EVENTS_NAME, Event, ParametersEvent, Recorder, StateEvent
from meshenc.report.verify import (
    DEFAULT_LOCK_IN,
    ORIGIN_DIR,
    EncoderOutput,
    Verification,
    compare,
    rendition_folder,
)
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from meshenc.wire.adjacency import EtcdLayout
from meshenc.wire.validation import InvalidMessage, validate_set_parameters_request
from services.common.certs import CertificateSet, make_certificates
from services.common.etcd import DEFAULT_ETCD_PREFIX, EtcdSettings, connect_client
from services.common.grpc_server import open_channel
from services.common.tls import MANAGER, OPERATOR, REGISTRY, TlsFiles
from services.encoder.leadership import SegmentKeys
from services.encoder.media.containers import SegmentFormat
from services.encoder.media.ingest import is_network_url
from services.encoder.media.ladder import CHANNEL, MASTER_NAME, parse_ladder, top_rung
from services.encoder.media.segments import (
    MPD_NAME,
    PLAYLIST_NAME,
    segment_name,
    segment_number,
)
from services.encoder.settings import MAX_CHANNELS, parse_size
from services.source.clip import write_test_clip

__all__ = [
    "DemoConfig",
    "DemoRun",
    "DemoState",
    "EncoderPlan",
    "EncoderView",
    "Note",
    "RunPlan",
    "parse_change",
    "plan_run",
    "starve",
]

log = logging.getLogger("meshenc.demo")

HOST: Final = "127.0.0.1"
KILL_AT: Final = 0.35
"""Default kill time, as a fraction of the duration."""
JOIN_AT: Final = 0.55
"""Default join time, as a fraction of the duration."""
MAX_OFFSET_MS: Final = 40.0
MIN_INGEST_DELAY_MS: Final = 20.0
MAX_INGEST_DELAY_MS: Final = 220.0
#: The slow swing of every path's delay (amplitude, ms) and its period (s).
INGEST_SWING_MS: Final = 10.0
INGEST_SWING_PERIOD_S: Final = 20.0
MAX_AUTOSCALE: Final = 64
"""The most encoders ``meshenc up`` plans for its autoscaler (ports and certificates for each
are made at the start)."""
CLIP_SECONDS: Final = 10.0
"""The length of a further channel's test clip (looped; its timestamps go on)."""
_REPLICAS_POLL: Final = 0.5
LIVE_SEGMENTS: Final = 12
"""Newest media segments the live identity strip compares."""
_LEADER_POLL: Final = 0.1
_IDENTITY_EVERY: Final = 1.0
_NOTES: Final = 14
_SCREENSHOT_AFTER: Final = 3.0
"""At least this long after playback began before the screenshot."""
_POLL_MASTER: Final = 1.0
_MASTER_WAIT: Final = 10.0
"""Seconds the player waits, once the origin's playlist is there, for a master of two."""
CERTS_DIR: Final = "certs"
"""The run's development CA and certificates (``meshenc certs``), under the run folder."""
SOURCES_DIR: Final = "sources"
"""The run's own test clips (the further channels' sources)."""
#: Files a previous run leaves in its folder; only such a folder is cleared for a new run.
_RUN_MARKERS: Final = (EVENTS_NAME, PIDS_NAME, SUMMARY_NAME)

#: The share of the time a starved encoder runs (``starve``), and the cycle it runs in.
STARVED_SHARE: Final = 0.12
STARVE_PERIOD: Final = 0.1
#: The longest starvation a run takes (s).
MAX_STARVE: Final = 30.0


async def starve(
    pause: Callable[[], None],
    resume: Callable[[], None],
    seconds: float,
    share: float = STARVED_SHARE,
    period: float = STARVE_PERIOD,
) -> None:
    """Stop a process for ``1 - share`` of every ``period``, for ``seconds``: its CPU taken
    in slices shorter than its stall detection looks for (a heartbeat gap of about a
    second), as on a machine that cannot carry its load, rather than one long SIGSTOP. It is
    left running, also when cancelled."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            pause()
            await asyncio.sleep(period * (1 - share))
            resume()
            await asyncio.sleep(period * share)
    finally:
        resume()


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What ``meshenc up`` runs. Durations in seconds from the moment the encoders run."""

    encoders: int = 6
    duration: float = 90.0
    out: Path = Path("out")
    source: str | None = None
    sync: bool = True
    faults: bool = True
    seed: int = 0
    size: str = "640x360"
    #: An ABR ladder every encoder encodes (``meshenc encoder --ladder``; ``size`` is then its
    #: largest rung's, the source's size); "": one output of ``size``.
    ladder: str = ""
    #: With a ladder and the manager planning the links: the encoders each rung (work unit
    #: ``<channel>/<rung>``) is placed on, so that each encoder writes only the rungs placed
    #: on it.
    redundancy: int = 2
    #: With a ladder: rungs of each picture an encoder encodes at once (``meshenc encoder
    #: --rung-threads``).
    rung_threads: int = 1
    #: Live channels every encoder takes in (``meshenc encoder --channel``): channel ``0`` is
    #: ``source`` (the test pattern by default); each further channel a test clip of its own
    #: (its own textures and tone), looped. With one, the encoders run as without channels.
    channels: int = 1
    #: Autoscaling (needs the manager): the most encoders the manager may ask for (None: off).
    #: The fewest is ``encoders``; spare encoders beyond them are planned from the start and
    #: started or stopped as the manager's wish (``P/manager/replicas`` in etcd) changes.
    autoscale_max: int | None = None
    #: The manager's autoscaling marks (mean pressure: CPU share or encode time over the frame
    #: budget) and cool-down in seconds (``meshenc manager --autoscale-*``).
    autoscale_high_water: float = 0.75
    autoscale_low_water: float = 0.30
    autoscale_cooldown: float = 30.0
    #: The most neighbours an encoder gets (``meshenc manager --degree-max``; the static plan
    #: likewise): fewer links, fewer messages per frame. None: the planner's default bounds.
    degree_max: int | None = None
    fps: str = "30"
    gop: int = 60
    #: The encoders' video bitrate (``--bitrate-kbps``; a ladder gives each rung its own),
    #: also the redundant master playlist's BANDWIDTH.
    bitrate_kbps: int = 1500
    registries: int = 3
    max_drift_ppm: float = 100.0
    #: Arrival jitter of every encoder's path from the source (the delay line's, ms).
    jitter_ms: float = 2.0
    kill_at: float | None = None
    join_at: float | None = None
    #: An operator's parameter change (``SetParameters`` to one running encoder) at
    #: ``change_at`` seconds: ``WIDTHxHEIGHT@KBPS``, ``WIDTHxHEIGHT`` or ``@KBPS`` ("": none).
    change: str = ""
    change_at: float | None = None
    #: At ``starve_at`` seconds one encoder's CPU is taken for ``starve_for`` seconds
    #: (``starve``): it falls behind its input and sheds, as on a machine that cannot carry it.
    starve_at: float | None = None
    starve_for: float = 4.0
    #: Start ``meshenc manager`` (an installation without it runs without a manager).
    manager: bool = False
    #: The options this installation's ``meshenc encoder`` accepts (``--registry``,
    #: ``--manager``...): the run wires up what is there.
    encoder_options: frozenset[str] = frozenset()
    #: Run a real HTTP origin (nginx) that the encoders publish to; what it received stays in
    #: ``out/origin/``.
    origin: bool = True
    #: Let the manager plan the links when it can (off: the static plan, ``--peers``).
    managed_topology: bool = True
    #: Play the origin's stream in a headless browser (hls.js) for the whole run: True, False,
    #: or None for "when this machine can" (:func:`meshenc.local.player.unavailable`).
    player: bool | None = None
    etcd_binary: str = "etcd"
    #: The encoders' segments (``meshenc encoder --format``): MPEG-TS or CMAF; with CMAF the
    #: browser also plays the origin's DASH manifest with dash.js.
    output_format: SegmentFormat = SegmentFormat.TS
    #: Mutual TLS between every process of the run, with certificates made into ``out/certs``
    #: (off: plaintext, every service started with ``--insecure``).
    tls: bool = True
    #: With placed rungs and the player: one more hls.js player of channel ``0``'s master,
    #: through the origin over a link of this many kbit/s, choosing rungs by its own rate
    #: adaptation (None: none).
    abr_link_kbps: int | None = None

    def __post_init__(self) -> None:
        if self.ladder and (top := top_rung(parse_ladder(self.ladder)).name) != self.size:
            raise ValueError(f"with a ladder, size must be its largest rung's, {top}")
        if self.rung_threads != 1 and not self.ladder:
            raise ValueError("rung_threads encodes the rungs of a ladder at once: give one")
        if self.encoders < 2:
            raise ValueError("a mesh needs at least 2 encoders")
        if self.degree_max is not None and not 2 <= self.degree_max <= MAX_DEGREE:
            raise ValueError(f"degree_max must be 2..{MAX_DEGREE}, got {self.degree_max}")
        if not 1 <= self.redundancy <= min(self.encoders, 16):
            raise ValueError(
                f"redundancy must be 1..{min(self.encoders, 16)} (at most the encoders), "
                f"got {self.redundancy}"
            )
        if not self.duration > 0:
            raise ValueError("duration must be > 0")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, got {self.channels}")
        if self.channels > 1 and self.source is not None and is_network_url(self.source):
            raise ValueError(
                "several channels need a file or the test pattern as channel 0's source (a"
                " stream URL goes to every encoder as it is, with no path of its own)"
            )
        if self.autoscale_max is not None:
            if not (self.manager and self.managed_topology):
                raise ValueError("autoscaling needs the manager planning the links")
            if not self.encoders < self.autoscale_max <= MAX_AUTOSCALE:
                raise ValueError(
                    f"autoscale_max must be in {self.encoders + 1}..{MAX_AUTOSCALE} "
                    f"(above encoders), got {self.autoscale_max}"
                )
            if not 0 < self.autoscale_low_water < self.autoscale_high_water <= 1:
                raise ValueError("need 0 < autoscale_low_water < autoscale_high_water <= 1")
            if not 0 < self.autoscale_cooldown <= 3600:
                raise ValueError("autoscale_cooldown must be in (0, 3600] seconds")
        if self.registries < 0:
            raise ValueError("registries must be >= 0")
        if not 0 <= self.max_drift_ppm <= 10_000 or self.jitter_ms < 0:
            raise ValueError("max_drift_ppm must be in 0..10000 and jitter_ms >= 0")
        if self.abr_link_kbps is not None:
            if not (self.ladder and self.manager and self.managed_topology and self.origin):
                raise ValueError(
                    "the ABR player needs placed rungs (a ladder under the manager) and the origin"
                )
            if not 16 <= self.abr_link_kbps <= 1_000_000:
                raise ValueError("abr_link_kbps must be in 16..1000000")
        if bool(self.change) != (self.change_at is not None):
            raise ValueError("a parameter change needs both change and change_at")
        if self.change_at is not None:
            _, size = parse_change(self.change)
            if size is not None and self.ladder:
                raise ValueError("a ladder's rungs keep their sizes: change the bitrate alone")
            if not 0 < self.change_at < self.duration:
                raise ValueError(f"need 0 < change_at < duration ({self.duration:g})")
        if self.starve_at is not None and not (
            0 < self.starve_for <= MAX_STARVE
            and 0 < self.starve_at < self.duration - self.starve_for
        ):
            raise ValueError(
                f"need 0 < starve_for <= {MAX_STARVE:g} and 0 < starve_at < duration - starve_for"
            )
        kill, join = self.kill_time, self.join_time
        if self.faults and not 0 < kill < join < self.duration:
            raise ValueError(
                f"need 0 < kill_at ({kill:g}) < join_at ({join:g}) < duration ({self.duration:g})"
            )

    @property
    def kill_time(self) -> float:
        return self.duration * KILL_AT if self.kill_at is None else self.kill_at

    @property
    def join_time(self) -> float:
        return self.duration * JOIN_AT if self.join_at is None else self.join_at

    @property
    def spares(self) -> int:
        """Encoders planned for the autoscaler alone: running at most ``autoscale_max``."""
        return 0 if self.autoscale_max is None else self.autoscale_max - self.encoders

    def planner_config(self) -> PlannerConfig:
        """The planner's settings for this run: its degree bounds (``degree_max``, the lower
        bound moved under it where it must be), the rest the defaults."""
        if self.degree_max is None:
            return PlannerConfig()
        low = min(TopologyConfig().min_degree, self.degree_max)
        return PlannerConfig(topology=TopologyConfig.within(low, self.degree_max))

    @property
    def planned_encoders(self) -> int:
        """Every encoder the run plans: the initial ones, the joiner, the spares."""
        return self.encoders + (1 if self.faults else 0) + self.spares

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The channels' names, ``0`` first (the channel a one-channel encoder is)."""
        return tuple(str(i) for i in range(self.channels))


def parse_change(text: str) -> tuple[int, tuple[int, int] | None]:
    """``WIDTHxHEIGHT@KBPS``, ``WIDTHxHEIGHT`` or ``@KBPS``: the bitrate (0: kept) and the
    size (None: kept) an operator asks the mesh for.

    Raises:
        ValueError: anything else, or a size or bitrate out of bounds.
    """
    size_text, _, kbps_text = text.partition("@")
    size = parse_size(size_text) if size_text else None
    try:
        kbps = int(kbps_text) if kbps_text else 0
    except ValueError:
        raise ValueError(f"not a bitrate: {kbps_text!r}") from None
    if kbps_text and kbps == 0:
        raise ValueError("a bitrate of 0 kbit/s is no bitrate")
    width, height = size or (0, 0)
    try:  # the bounds an encoder holds the request to
        validate_set_parameters_request(
            mesh_pb2.SetParametersRequest(bitrate_kbps=kbps, width=width, height=height)
        )
    except (InvalidMessage, ValueError) as exc:
        raise ValueError(f"not a change: {text!r} ({exc})") from None
    return kbps, size


@dataclass(frozen=True, slots=True)
class EncoderPlan:
    """One encoder of the run: where it listens, its injected clock, its group and links."""

    name: str
    port: int
    drift_ppm: float
    offset_ms: float
    #: The mean delay of its path from the source, and the UDP port it listens on for it (for
    #: each channel, in the order of ``DemoConfig.channel_names``).
    ingest_delay_ms: float
    input_ports: tuple[int, ...]
    #: Where it serves its own output folder over HTTP (``--serve-output``).
    output_port: int
    seed: int
    group: str
    peers: tuple[str, ...]
    joins_later: bool = False
    #: Started only when the manager asks for more encoders (autoscaling).
    spare: bool = False

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def input_port(self) -> int:
        """Where channel ``0`` arrives."""
        return self.input_ports[0]

    @property
    def output_url(self) -> str:
        """The base URL of its output folder: its media playlist is ``output_url/index.m3u8``."""
        return f"http://{HOST}:{self.output_port}"


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The whole run, decided before anything starts."""

    encoders: tuple[EncoderPlan, ...]
    registry_ports: tuple[int, ...]
    manager_port: int | None

    def encoder(self, name: str) -> EncoderPlan:
        return next(e for e in self.encoders if e.name == name)

    @property
    def initial(self) -> tuple[EncoderPlan, ...]:
        return tuple(e for e in self.encoders if not (e.joins_later or e.spare))

    @property
    def spares(self) -> tuple[EncoderPlan, ...]:
        return tuple(e for e in self.encoders if e.spare)

    @property
    def joiner(self) -> EncoderPlan | None:
        return next((e for e in self.encoders if e.joins_later), None)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted({e.group for e in self.encoders}))

    @property
    def registry_addresses(self) -> tuple[str, ...]:
        return tuple(f"{HOST}:{p}" for p in self.registry_ports)

    @property
    def manager_address(self) -> str | None:
        return None if self.manager_port is None else f"{HOST}:{self.manager_port}"


def plan_run(config: DemoConfig, ports: Sequence[int]) -> RunPlan:
    """Decide ids, clocks, links and groups (see the module docstring).

    Args:
        config: the run's settings.
        ports: free ports, at least :func:`ports_needed` of them; encoders take the first.

    Raises:
        ValueError: too few ports.
    """
    if len(ports) < ports_needed(config):
        raise ValueError(f"need {ports_needed(config)} ports, got {len(ports)}")
    count = config.planned_encoders
    joiner = config.encoders if config.faults else None
    names = [f"e{i}" for i in range(count)]
    rng = random.Random(config.seed)
    spread = config.max_drift_ppm
    drifts = [
        round(-spread + 2 * spread * i / (count - 1), 1) if count > 1 else 0.0 for i in range(count)
    ]
    rng.shuffle(drifts)
    view = MeshView(hosts=tuple(Host(n, 1) for n in names), coordinates={})
    mesh = plan_mesh(view, None, config.planner_config(), epoch=1)
    adjacency = mesh.topology.adjacency()
    group_of = {member: s.segment_id for s in mesh.segments for member in s.members}
    encoders = tuple(
        EncoderPlan(
            name=name,
            port=ports[i],
            drift_ppm=drifts[i],
            offset_ms=round(rng.uniform(-MAX_OFFSET_MS, MAX_OFFSET_MS), 1),
            ingest_delay_ms=round(rng.uniform(MIN_INGEST_DELAY_MS, MAX_INGEST_DELAY_MS), 1),
            input_ports=tuple(ports[count * (2 + c) + i] for c in range(config.channels)),
            output_port=ports[count + i],
            seed=rng.randrange(1 << 31),
            group=group_of[name],
            peers=tuple(adjacency[name]),
            joins_later=i == joiner,
            spare=i >= config.encoders + (1 if config.faults else 0),
        )
        for i, name in enumerate(names)
    )
    rest = list(ports[(2 + config.channels) * count :])
    registry_ports = tuple(rest[: config.registries])
    manager_port = rest[config.registries] if config.manager else None
    return RunPlan(encoders, registry_ports, manager_port)


def ports_needed(config: DemoConfig) -> int:
    """Ports a run takes: each encoder's gRPC and output ports and an input port per channel,
    the registries, the manager."""
    return (2 + config.channels) * config.planned_encoders + config.registries + int(config.manager)


def _replicas(value: bytes | None) -> int | None:
    """The manager's wish as stored in etcd, or None when there is none or it is malformed
    (then nothing changes)."""
    if value is None or not value.isdigit() or len(value) > 4:
        return None
    return int(value)


# --- what the live view reads -----------------------------------------------------------------

EncoderStatus = Literal["planned", "running", "killed", "stopped", "exited"]


@dataclass(slots=True)
class EncoderView:
    """One encoder as the run knows it: its plan, its process and its newest GetState."""

    plan: EncoderPlan
    status: EncoderStatus = "planned"
    pid: int | None = None
    state: StateEvent | None = None
    state_at: float = 0.0
    voted: int = 0


@dataclass(frozen=True, slots=True)
class Note:
    """One line of the run's event feed."""

    t: float
    text: str
    style: str = ""


@dataclass(slots=True)
class DemoState:
    """What the run has done and seen so far; updated in place, read by the live view."""

    config: DemoConfig
    plan: RunPlan
    phase: str = "planning"
    started_at: float | None = None
    etcd_endpoint: str | None = None
    encoders: dict[str, EncoderView] = field(default_factory=dict)
    leaders: dict[str, tuple[str, int]] = field(default_factory=dict)
    leader_terms: dict[str, int] = field(default_factory=dict)
    notes: deque[Note] = field(default_factory=lambda: deque(maxlen=_NOTES))
    corrections: dict[str, int] = field(default_factory=dict)
    identity: Verification | None = None
    summary: Summary | None = None
    stop_requested: bool = False

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.time() - self.started_at

    def note(self, text: str, style: str = "") -> None:
        self.notes.append(Note(time.time(), text, style))
        log.info("%s", text)


class _FeedingRecorder(Recorder):
    """The recorder, also handing every event it writes to the run (for the live view)."""

    def __init__(
        self, out_dir: Path, on_event: Callable[[Event], None], tls: TlsFiles | None
    ) -> None:
        super().__init__(out_dir, tls=tls)
        self._on_event = on_event

    def record(self, event: Event) -> None:
        super().record(event)
        self._on_event(event)


#: Seconds of health-check patience per encoder of a run: every encoder starts at once, and on
#: a 2-core machine each takes a second or more of CPU to import and start (measured: 12
#: encoders at load 8, with 30 s for all, failed the check).
READY_PER_ENCODER: Final = 4.0


class DemoRun:
    """One scripted run (see the module docstring). ``await run()`` once.

    Args:
        config: the settings.
        plan: the plan (default: :func:`plan_run` on fresh free ports).
        on_note: called with every line of the event feed as it happens (for plain output).
    """

    #: Seconds each process gets to answer its health check when started; a run of many
    #: encoders gives each at least ``READY_PER_ENCODER`` per encoder (they start at once).
    ready_timeout: float = DEFAULT_READY_TIMEOUT

    def __init__(
        self,
        config: DemoConfig,
        plan: RunPlan | None = None,
        *,
        on_note: Callable[[Note], None] | None = None,
    ) -> None:
        self.config = config
        self.ready_timeout = max(self.ready_timeout, READY_PER_ENCODER * config.encoders)
        self.plan = plan if plan is not None else plan_run(config, free_ports(ports_needed(config)))
        self.out = Path(config.out)
        self.state = DemoState(config, self.plan)
        for encoder in self.plan.encoders:
            self.state.encoders[encoder.name] = EncoderView(encoder)
        self._on_note = on_note
        self._stop = asyncio.Event()
        self._digests: dict[tuple[str, int], str] = {}
        self._first_segment: dict[str, int] = {}
        self._launcher: Launcher | None = None
        self._recorder: _FeedingRecorder | None = None
        #: The origin the encoders publish to, once it serves (None: no origin).
        self.origin_url: str | None = None
        #: The origin over the ABR player's constrained link (``abr_link_kbps``), once started.
        self.limited_origin_url: str | None = None
        #: Why no browser plays the stream in this run (None: one does).
        self.player_skipped = player_skipped(config)
        self._player: BrowserPlayer | None = None
        self._play_task: asyncio.Task[None] | None = None
        #: The encoders the master playlist lists, in its order (empty: none published yet).
        self.master_listed: tuple[str, ...] = ()
        self._vouching: set[str] = set()
        self._master_attributes: StreamAttributes | None = None
        #: Whether the browser's second player plays the master playlist.
        self._redundant_playing = False
        #: The starvation under way (``_starve``), if any.
        self._starving: asyncio.Task[None] | None = None
        #: Where the run's certificates go (made when the run starts); None without TLS.
        self.certs = CertificateSet(self.out / CERTS_DIR) if config.tls else None

    @property
    def playback_url(self) -> str | None:
        """The media playlist a player opens on the origin (with a ladder: its top rung's; the
        player waits for a media playlist that lists segments, which a master does not)."""
        if self.origin_url is None:
            return None
        base = self._channel_url(self.origin_url, CHANNEL)
        if self.config.ladder:
            return f"{base}/{self.config.size}/{PLAYLIST_NAME}"
        return f"{base}/{PLAYLIST_NAME}"

    def _channel_url(self, base: str, channel: str) -> str:
        """Where a channel's files are under ``base`` (an origin, an encoder's output): the
        base itself with one channel, its ``<channel>/`` with several."""
        return base if self.config.channels == 1 else f"{base}/{channel}"

    @property
    def channel_masters(self) -> tuple[str, ...]:
        """Each channel's master over every rung on the origin, which the holders of a placed
        ladder publish (empty: no origin, or no placed ladder)."""
        if self.origin_url is None or not self.work_units:
            return ()
        origin = self.origin_url
        return tuple(
            f"{self._channel_url(origin, c)}/{MASTER_NAME}" for c in self.config.channel_names
        )

    @property
    def dash_url(self) -> str | None:
        """Channel ``0``'s DASH manifest on the origin, for the dash.js player: the ladder's or
        the one output's, or a placed ladder's channel MPD over every rung (None: not CMAF,
        no origin, or dash.js not installed)."""
        if (
            self.origin_url is None
            or self.config.output_format is not SegmentFormat.CMAF
            or find_dashjs() is None
        ):
            return None
        return f"{self._channel_url(self.origin_url, self.config.channel_names[0])}/{MPD_NAME}"

    @property
    def serves_output(self) -> bool:
        """Whether every encoder serves its output folder (this installation's can)."""
        return "--serve-output" in self.config.encoder_options

    @property
    def master_url(self) -> str | None:
        """The master playlist of redundant encoders, on the origin (None: no origin, the
        encoders serve no output, they encode a ladder (each encoder's ``master.m3u8`` then
        lists its rungs, and a master of encoders × rungs is not built), or several channels
        (the origin's folder holds one per channel))."""
        config = self.config
        if (
            self.origin_url is None
            or not self.serves_output
            or config.ladder
            or config.channels > 1
        ):
            return None
        return f"{self.origin_url}/{REDUNDANT_NAME}"

    # -- control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """End the run early, in order (the report is still written)."""
        if not self._stop.is_set():
            self.state.stop_requested = True
            self._note("stop requested: stopping the mesh", "yellow")
            self._stop.set()

    @property
    def operator_tls(self) -> TlsFiles | None:
        """The operator's TLS files (the run's own calls: readiness, the recorder)."""
        return None if self.certs is None else self.certs.files(OPERATOR)

    def identities(self) -> list[str]:
        """Every identity the run certifies: its encoders, registry, manager and operator."""
        return [*(e.name for e in self.plan.encoders), REGISTRY, MANAGER, OPERATOR]

    def tls_args(self, identity: str) -> list[str]:
        """The TLS flags of the process that runs as ``identity`` (``--insecure`` without)."""
        if self.certs is None:
            return ["--insecure"]
        return self.certs.files(identity).flags()

    def encoder_args(self, encoder: EncoderPlan, etcd_endpoint: str) -> list[str]:
        """The ``meshenc encoder`` command line of one encoder."""
        plan, config = self.plan, self.config
        args = [
            "encoder",
            "--id", encoder.name,
            "--listen", encoder.address,
            "--out", str(self.out / encoder.name),
            "--format", config.output_format.value,
            *(
                ("--ladder", config.ladder, "--rung-threads", str(config.rung_threads))
                if config.ladder
                else ("--size", config.size, "--bitrate-kbps", str(config.bitrate_kbps))
            ),
            "--fps", config.fps,
            "--gop", str(config.gop),
            "--drift-ppm", str(encoder.drift_ppm),
            "--offset-ms", str(encoder.offset_ms),
            "--seed", str(encoder.seed),
            "--segment", encoder.group,
            "--etcd", etcd_endpoint,
            *self.tls_args(encoder.name),
        ]  # fmt: skip
        if config.channels == 1:
            args += ["--source", self.input_url(encoder)]
        else:
            for channel, port in zip(config.channel_names, encoder.input_ports, strict=True):
                args += ["--channel", f"{channel}={self.input_url(encoder, port)}"]
        if self.origin_url is not None:
            args += ["--publish", self.origin_url]
        if self.serves_output:
            args += ["--serve-output", f"{HOST}:{encoder.output_port}"]
        if not config.sync:
            args.append("--no-sync")
        options = config.encoder_options
        if "--registry" in options and plan.registry_addresses:
            args += ["--registry", ",".join(plan.registry_addresses)]
        if self.managed_topology:
            assert plan.manager_address is not None
            # The manager plans the links (etcd keys), rewires around the killed encoder and
            # links the newcomer in; the encoders report their health to it.
            args += ["--manager", plan.manager_address, "--topology", "etcd"]
            args += ["--advertise", encoder.address]
        else:
            peers = ",".join(f"{p}={plan.encoder(p).address}" for p in encoder.peers)
            args += ["--peers", peers]
            if "--manager" in options and plan.manager_address is not None:
                args += ["--manager", plan.manager_address]
        return args

    def output_folder(self, encoder: str) -> Path:
        """The encoder's folder of channel ``0``: what the live view compares."""
        folder = self.out / encoder
        return folder if self.config.channels == 1 else folder / CHANNEL

    def input_url(self, encoder: EncoderPlan, port: int | None = None) -> str:
        """What the encoder ingests (on ``port``, its channel's; channel ``0``'s by default):
        its own path from the live source, or the user's stream."""
        source = self.config.source
        if source is not None and is_network_url(source):
            return source
        return f"udp://{HOST}:{encoder.input_port if port is None else port}"

    def source_args(self, channel: int = 0) -> list[str] | None:
        """One channel's ``meshenc source`` command line: the test pattern or the user's file
        (channel ``0``; a further channel its test clip, :meth:`clip_path`), looped, to every
        encoder (the later joiner too) over a delay line of its own; None when the user gave a
        stream URL, which every encoder opens itself."""
        config = self.config
        if config.source is not None and is_network_url(config.source):
            return None
        input_ = str(self.clip_path(channel)) if channel else config.source or "testpattern"
        args = ["source", "--input", input_, "--loop"]
        args += ["--size", config.size, "--fps", config.fps]
        for e in self.plan.encoders:
            path = (
                f"delay_ms={e.ingest_delay_ms}&jitter_ms={config.jitter_ms}"
                f"&swing_ms={INGEST_SWING_MS}&swing_period_s={INGEST_SWING_PERIOD_S}&seed={e.seed}"
            )
            args += ["--to", f"udp://{HOST}:{e.input_ports[channel]}?{path}"]
        return args

    def clip_path(self, channel: int) -> Path:
        """Where a further channel's test clip is written before the run starts."""
        return self.out / SOURCES_DIR / f"channel-{channel}.ts"

    def _write_clips(self) -> None:
        """Each further channel's test clip: the run's size and rate, textures of its own."""
        config = self.config
        width, height = parse_size(config.size)
        (self.out / SOURCES_DIR).mkdir(parents=True, exist_ok=True)
        for channel in range(1, config.channels):
            write_test_clip(
                self.clip_path(channel),
                seconds=CLIP_SECONDS,
                frame_rate=FrameRate.parse(config.fps),
                width=width,
                height=height,
                seed=config.seed + channel,
            )

    @property
    def managed_topology(self) -> bool:
        """Whether the manager plans the links (this installation's encoder can follow it)."""
        config = self.config
        return config.manager and config.managed_topology and "--topology" in config.encoder_options

    def registry_args(self, index: int) -> list[str]:
        address = self.plan.registry_addresses[index]
        args = ["registry", "--listen", address, "--advertise", address, *self.tls_args(REGISTRY)]
        if index > 0:
            args += ["--seeds", self.plan.registry_addresses[0]]
        return args

    @property
    def work_units(self) -> tuple[str, ...]:
        """The work the manager places: with a ladder whose encoders follow the manager's
        documents, each rung of each channel (``<channel>/<rung>``); else none (every encoder
        writes its whole output, as without a placement)."""
        config = self.config
        if not (config.ladder and self.managed_topology):
            return ()
        rungs = parse_ladder(config.ladder)
        return tuple(f"{c}/{rung.name}" for c in config.channel_names for rung in rungs)

    def manager_args(self, etcd_endpoint: str) -> list[str]:
        address = self.plan.manager_address
        assert address is not None
        args = [
            "manager", "--listen", address, "--actuator", "embedded", "--etcd", etcd_endpoint,
            *self.tls_args(MANAGER),
        ]  # fmt: skip
        if units := self.work_units:
            args += ["--work-units", ",".join(units), "--redundancy", str(self.config.redundancy)]
        config = self.config
        # One frame interval: what the encoders' measured capacities and pressure are read
        # against.
        args += ["--frame-budget", f"{1.0 / FrameRate.parse(config.fps).fps:.6f}"]
        if config.degree_max is not None:
            topology = config.planner_config().topology
            args += [
                "--degree-min", str(topology.min_degree),
                "--degree-max", str(topology.max_degree),
            ]  # fmt: skip
        if config.autoscale_max is not None:
            args += [
                "--autoscale-min", str(config.encoders),
                "--autoscale-max", str(config.autoscale_max),
                "--autoscale-high-water", str(config.autoscale_high_water),
                "--autoscale-low-water", str(config.autoscale_low_water),
                "--autoscale-cooldown", str(config.autoscale_cooldown),
            ]  # fmt: skip
        return args

    # -- the run ------------------------------------------------------------------------------

    async def run(self, *, launcher_ready: Callable[[Launcher], None] | None = None) -> Summary:
        """Carry the plan out and write the report; returns the run's summary.

        Args:
            launcher_ready: called with the launcher once it exists (to hook signals to it).

        Raises:
            ChildFailedError: a process did not start (everything started is stopped).
        """
        prepare_out_dir(self.out)
        if self.certs is not None:
            await asyncio.to_thread(make_certificates, self.certs.folder, self.identities())
        if self.player_skipped is not None:
            write_skipped(self.out / PLAYER_DIR, self.player_skipped)
            self._note(f"player: skipped ({self.player_skipped})", "yellow")
        etcd = EtcdProcess(
            binary=self.config.etcd_binary, log_path=self.out / LOGS_DIR / "etcd.log"
        )
        origin = None
        if self.config.origin:
            (self.out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
            link = self.config.abr_link_kbps
            origin = OriginProcess(
                self.out / ORIGIN_DIR,
                log_path=self.out / LOGS_DIR / "origin.log",
                limited_rate=None if link is None else link * 1000 // 8,
            )
            self.limited_origin_url = origin.limited_url
        try:
            async with Launcher(
                self.out, tls=self.operator_tls, ready_timeout=self.ready_timeout
            ) as launcher:
                self._launcher = launcher
                if launcher_ready is not None:
                    launcher_ready(launcher)
                if origin is not None:
                    await asyncio.to_thread(origin.start)
                    assert origin.pid is not None
                    launcher.adopt("origin", origin.pid, ("nginx", origin.url))
                    self.origin_url = origin.url
                    self._note(f"origin serving at {origin.url}: play {self.playback_url}")
                    if masters := self.channel_masters:
                        self._note(f"every rung of a channel, once published: {' '.join(masters)}")
                    if self.master_url is not None:
                        self._note(f"redundant encoders, once they vouch: {self.master_url}")
                await self._run_mesh(launcher, etcd)
        finally:
            await self._stop_player()
            etcd.stop()
            etcd.close()
            if origin is not None:
                origin.close()
        self._set_phase("writing the report")
        summary = await asyncio.to_thread(write_report, self.out)
        self.state.summary = summary
        self._set_phase("done")
        return summary

    async def _run_mesh(self, launcher: Launcher, etcd: EtcdProcess) -> None:
        self._set_phase("starting etcd")
        (self.out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(etcd.start)
        assert etcd.pid is not None
        launcher.adopt("etcd", etcd.pid, ("etcd", etcd.endpoint))
        self.state.etcd_endpoint = etcd.endpoint
        self._note(f"etcd serving at {etcd.endpoint}")
        services = [
            (f"registry-{i}", self.registry_args(i), address)
            for i, address in enumerate(self.plan.registry_addresses)
        ]
        if self.plan.manager_address is not None:
            services.append(
                ("manager", self.manager_args(etcd.endpoint), self.plan.manager_address)
            )
        if services:
            self._set_phase("starting the registry and the manager")
            await launcher.start_many(services)
            if self.plan.registry_ports:
                self._note(f"{len(self.plan.registry_ports)} registry replicas serving")
            if self.plan.manager_address is not None:
                self._note(f"manager serving at {self.plan.manager_address}")
        if self._stop.is_set():
            return
        if self.config.channels > 1:
            self._set_phase("writing the channels' test clips")
            await asyncio.to_thread(self._write_clips)
        sources = [self.source_args(channel) for channel in range(self.config.channels)]
        for channel, source in enumerate(sources):
            if source is not None:
                launcher.spawn(f"source-{channel}" if channel else "source", source)
        if sources[0] is not None:
            self._note("live source sending to every encoder over its own path")
            if self.config.channels > 1:
                self._note(f"{self.config.channels - 1} more channels' sources sending too")
        await self._launch_player()
        self._set_phase("starting encoders")
        recorder = _FeedingRecorder(self.out, self._on_event, self.operator_tls)
        async with recorder:
            self._recorder = recorder
            if (joiner := self.plan.joiner) is not None:
                # Loaded now, beside the others, and started at its join (``_join``): the CPU
                # its start-up takes does not fall on the running mesh then.
                launcher.spawn(
                    joiner.name,
                    [*self.encoder_args(joiner, etcd.endpoint), "--standby"],
                    address=joiner.address,
                    held=True,
                )
            await launcher.start_many(
                [
                    (e.name, self.encoder_args(e, etcd.endpoint), e.address)
                    for e in self.plan.initial
                ]
            )
            self.state.started_at = time.time()
            for encoder in self.plan.initial:
                self._started(encoder, "started")
            watchers = [
                asyncio.create_task(self._watch_leaders(etcd.endpoint), name="leader-watch"),
                asyncio.create_task(self._watch_identity(), name="identity"),
            ]
            if self.master_url is not None:
                watchers.append(asyncio.create_task(self._keep_master(), name="master"))
            if self.config.autoscale_max is not None:
                scaling = asyncio.create_task(self._follow_replicas(etcd.endpoint), name="scale")
                watchers.append(scaling)
            if self._player is not None:
                self._play_task = asyncio.create_task(self._play(self._player), name="player")
            try:
                await self._timeline(launcher)
                if self.config.autoscale_max is not None:  # no encoder starts while all stop
                    scaling.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await scaling
                if self._player is not None:
                    # Before the encoders stop: the stream's end is not a stall.
                    self._set_phase("stopping the player")
                    await self._stop_player()
                self._set_phase("stopping encoders")
                names = [n for n, v in self.state.encoders.items() if v.status == "running"]
                for name in names:
                    self.state.encoders[name].status = "stopped"
                codes = await launcher.stop(names)
                for name, code in codes.items():
                    recorder.lifecycle("stopped", name)
                    if code != 0:
                        self._note(f"{name} exited with code {code}", "red")
            finally:
                for task in watchers:
                    task.cancel()
                for task in watchers:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                self._recorder = None
        self._set_phase("stopping services")
        await launcher.stop_all()

    async def _timeline(self, launcher: Launcher) -> None:
        """Wait out the run, doing the kill and the join at their times."""
        config = self.config
        steps: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        if config.faults:
            steps = [(config.kill_time, self._kill_leader), (config.join_time, self._join)]
        if config.change_at is not None:
            steps.append((config.change_at, self._change_parameters))
        if config.starve_at is not None:
            steps.append((config.starve_at, self._starve))
        steps.sort(key=lambda step: step[0])
        steps.append((config.duration, _nothing))
        self._set_phase("running")
        start = self.state.started_at or time.time()
        try:
            for at, step in steps:
                remaining = start + at - time.time()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=remaining)
                if self._stop.is_set():
                    return
                self._check_children(launcher)
                await step()
        finally:
            await self._end_starvation()

    async def _end_starvation(self) -> None:
        """End a starvation still under way (cancelled, ``starve`` resumes its encoder): at
        the end of a run it is over unless the run was stopped early."""
        if (starving := self._starving) is not None:
            starving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starving

    async def _starve(self) -> None:
        """Take one encoder's CPU for ``starve_for`` seconds (``_starve_one``)."""
        self._starve_one(self.config.starve_for)

    def _starve_one(self, seconds: float) -> str | None:
        """Take one encoder's CPU for ``seconds`` (``starve``), in the background: the first
        running encoder that does not lead the first group, so that the kill's failover stays
        its own fault. Returns its name (None: no encoder to starve)."""
        launcher = self._launcher
        assert launcher is not None
        running = [n for n, v in self.state.encoders.items() if v.status == "running"]
        leader = self.state.leaders.get(self.plan.groups[0], ("", 0))[0]
        victim = next((n for n in running if n != leader), None)
        if victim is None:
            return None
        self._note(
            f"starving {victim} for {seconds:g} s: running {STARVED_SHARE:.0%} of the time",
            "bold red",
        )
        self._starving = asyncio.create_task(
            starve(lambda: launcher.pause(victim), lambda: launcher.resume(victim), seconds)
        )
        return victim

    async def _kill_leader(self) -> None:
        """kill -9 the leader of the first group (any running encoder if none is known).

        The master playlist lists the leader first, so the redundant player plays from it; if
        that player is on another encoder all the same (the lead moved after it started), that
        encoder is killed too: the failover a viewer sees is the point of the kill."""
        launcher, recorder = self._launcher, self._recorder
        assert launcher is not None and recorder is not None
        running = [n for n, v in self.state.encoders.items() if v.status == "running"]
        group = self.plan.groups[0]
        leader = self.state.leaders.get(group, ("", 0))[0]
        victim = leader if leader in running else running[0]
        what = f"leader of {group}" if victim == leader else "an encoder (no leader known)"
        victims = [(victim, what)]
        if self._player is not None and self._redundant_playing:
            on = self._encoder_of(await self._player.current(REDUNDANT_PLAYER))
            if on is not None and on != victim and on in running:
                victims.append((on, "the encoder the redundant player plays from"))
        for name, why in victims:
            launcher.kill(name)
            recorder.lifecycle("killed", name)
            recorder.remove(name)
            self.state.encoders[name].status = "killed"
            self._note(f"kill -9 {name}, {why}", "bold red")

    async def _change_parameters(self) -> None:
        """Ask the first running encoder for the run's parameter change, as an operator does
        (``SetParameters`` with the operator's certificate); the mesh agrees on it and every
        encoder switches at the segment it names."""
        recorder = self._recorder
        assert recorder is not None
        bitrate, size = parse_change(self.config.change)
        name = next(n for n, v in self.state.encoders.items() if v.status == "running")
        width, height = size or (0, 0)
        request = mesh_pb2.SetParametersRequest(bitrate_kbps=bitrate, width=width, height=height)
        async with open_channel(
            self.plan.encoder(name).address, tls=self.operator_tls, server_name=name
        ) as channel:
            try:
                answer = await mesh_pb2_grpc.EncoderMeshStub(channel).SetParameters(
                    request, timeout=5.0
                )
            except grpc.aio.AioRpcError as exc:
                self._note(f"{name} refused {self.config.change}: {exc.details()}", "bold red")
                return
        segment = int(answer.effective_segment)
        recorder.record(
            ParametersEvent(
                t=time.time(), kind="parameters", encoder=name, segment=segment,
                bitrate_kbps=bitrate, width=width, height=height,
            )
        )  # fmt: skip
        self._note(f"asked {name} for {self.config.change} from segment {segment}", "bold")

    def _encoder_of(self, url: str | None) -> str | None:
        """The encoder whose own server ``url`` is on (None: none of them)."""
        if url is None:
            return None
        return next(
            (e.name for e in self.plan.encoders if url.startswith(e.output_url + "/")), None
        )

    async def _join(self) -> None:
        """Start the planned newcomer, loaded since the run began (``--standby``); it counts as
        joined once its health service answers."""
        joiner, launcher = self.plan.joiner, self._launcher
        assert joiner is not None and launcher is not None
        self._note(f"starting {joiner.name} to join the mesh", "bold green")
        await launcher.release(joiner.name)
        self._started(joiner, "joined")

    async def _follow_replicas(self, endpoint: str) -> None:
        """Start or stop encoders as the manager's autoscaler asks (``P/manager/replicas``):
        each new wish is applied once — more running than asked, the highest ordinal stops
        first (SIGTERM, after the manager drained it), as a StatefulSet scales in; fewer, the
        next spare starts. The run's own kill and join in between are left alone."""
        client = connect_client(EtcdSettings(endpoints=(endpoint,), prefix=DEFAULT_ETCD_PREFIX))
        key = EtcdLayout(DEFAULT_ETCD_PREFIX).replicas
        applied: int | None = None
        try:
            while not self._stop.is_set():
                wish = None
                with contextlib.suppress(Exception):  # etcd away: ask again next time
                    found = await client.get(key)
                    wish = _replicas(None if found is None else bytes(found.value))
                if wish is not None and wish != applied:
                    applied = wish
                    await self._scale_to(wish)
                await asyncio.sleep(_REPLICAS_POLL)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _scale_to(self, wish: int) -> None:
        launcher, recorder = self._launcher, self._recorder
        assert launcher is not None and recorder is not None
        running = [n for n, v in self.state.encoders.items() if v.status == "running"]
        if wish < len(running):
            for name in sorted(running, key=lambda n: ordinal(n) or 0)[wish - len(running) :]:
                self._note(f"the manager asks for {wish} encoders: stopping {name}", "yellow")
                self.state.encoders[name].status = "stopped"
                code = (await launcher.stop([name])).get(name)
                recorder.lifecycle("stopped", name)
                recorder.remove(name)
                if code:
                    self._note(f"{name} exited with code {code}", "red")
            return
        spares = [e for e in self.plan.spares if self.state.encoders[e.name].status == "planned"]
        for encoder in spares[: wish - len(running)]:
            assert self.state.etcd_endpoint
            self._note(f"the manager asks for {wish} encoders: starting {encoder.name}", "green")
            try:
                await launcher.start(
                    encoder.name,
                    self.encoder_args(encoder, self.state.etcd_endpoint),
                    address=encoder.address,
                )
            except ChildFailedError as exc:  # the run goes on with the encoders it has
                self.state.encoders[encoder.name].status = "exited"
                self._note(f"{encoder.name} did not start: {exc}", "bold red")
                continue
            self._started(encoder, "joined")

    def _started(self, encoder: EncoderPlan, kind: Literal["started", "joined"]) -> None:
        launcher, recorder = self._launcher, self._recorder
        assert launcher is not None and recorder is not None
        recorder.add(encoder.name, encoder.address)
        recorder.lifecycle(kind, encoder.name)
        view = self.state.encoders[encoder.name]
        view.status = "running"
        view.pid = launcher.children[encoder.name].pid
        if kind == "joined":
            self._note(f"{encoder.name} joined ({encoder.drift_ppm:+.1f} ppm)", "green")

    @property
    def screenshot_time(self) -> float:
        """When the player's screenshot is due: between the kill and the join, else at 75 %."""
        config = self.config
        if config.faults:
            return (config.kill_time + config.join_time) / 2
        return config.duration * 0.75

    async def _launch_player(self) -> None:
        """Start the browser before the encoders, when this run has a player."""
        if self.player_skipped is not None or self.playback_url is None:
            return
        self._set_phase("starting the browser")
        player = self._player = BrowserPlayer(self.out / PLAYER_DIR, self.playback_url)
        try:
            await player.launch()
        except Exception as exc:
            self._note(f"player: the browser did not start: {exc}", "bold red")
            await player.stop(f"the browser did not start: {exc}")
            self._player = None

    async def _play(self, player: BrowserPlayer) -> None:
        """Open the stream in the browser once the origin announces it; take the screenshot."""
        self._note("player: waiting for the origin's playlist")
        try:
            await player.wait_for_stream()
            redundant = await self._wait_for_master()
            more = {}
            if redundant is not None:
                player.note(
                    "variants",
                    player=REDUNDANT_PLAYER,
                    encoders={e.name: e.output_url for e in self.plan.encoders},
                )
                more[REDUNDANT_PLAYER] = redundant
            if (dash := self.dash_url) is not None:
                more[DASH_PLAYER] = dash
            if masters := self.channel_masters:
                more[CHANNEL_PLAYER] = masters[0]
                if (limited := self.limited_origin_url) is not None and self.origin_url:
                    more[ABR_PLAYER] = limited + masters[0].removeprefix(self.origin_url)
            await player.play(more)
            self._redundant_playing = redundant is not None
        except Exception as exc:
            self._note(f"player: the page did not open: {exc}", "bold red")
            player.note("stopped", reason=f"the page did not open: {exc}")
            return
        self._note(f"player: chromium plays {self.playback_url} with hls.js", "green")
        if self._redundant_playing:
            self._note(f"player: and the redundant encoders' {self.master_url}", "green")
        if self.dash_url is not None:
            self._note(f"player: and {self.dash_url} with dash.js", "green")
        if masters := self.channel_masters:
            self._note(f"player: and the channel master {masters[0]} with hls.js", "green")
        if (link := self.config.abr_link_kbps) is not None and masters:
            self._note(f"player: and that master over a {link} kbit/s link, hls.js's ABR", "green")
        start = self.state.started_at or time.time()
        # At the chosen moment, or a few seconds in when playback began after it.
        await asyncio.sleep(max(start + self.screenshot_time - time.time(), _SCREENSHOT_AFTER))
        if await player.screenshot() is not None:
            self._note("player: screenshot taken")

    async def _stop_player(self) -> None:
        """Stop the player and close the browser (once; nothing when there is none)."""
        if self._play_task is not None:
            self._play_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._play_task
        if self._player is not None:
            reason = "the run stopped" if self.state.stop_requested else "the run ended"
            await self._player.stop(reason)

    async def _wait_for_master(self) -> str | None:
        """The master playlist's URL once it lists two encoders (None: no master in this run,
        or not within _MASTER_WAIT seconds)."""
        if self.master_url is None:
            return None
        deadline = time.monotonic() + _MASTER_WAIT
        while len(self.master_listed) < 2:
            if time.monotonic() > deadline:
                self._note("player: no master playlist of two encoders yet; playing without")
                return None
            await asyncio.sleep(_POLL_MASTER)
        return self.master_url

    async def _keep_master(self) -> None:
        """Keep the origin's master playlist listing every running encoder that vouches for
        its segments, the first group's leader first (see :meth:`_update_master`)."""
        assert self.origin_url is not None
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self._update_master(session)
                except (OSError, ValueError, av.FFmpegError, aiohttp.ClientError) as exc:
                    log.warning("master playlist: %s", exc)
                await asyncio.sleep(_POLL_MASTER)

    async def _update_master(self, session: aiohttp.ClientSession) -> None:
        """List an encoder once it vouches for its segments: it is locked and its own copy of
        the newest segment on the origin is the origin's bytes (so a joiner still locking in,
        whose segments may differ, is not yet a place to fail over to); unlist it when it stops.
        PUT the master to the origin when its text changes."""
        running = {n for n, v in self.state.encoders.items() if v.status == "running"}
        self._vouching &= running
        candidates = [
            n
            for n in sorted(running - self._vouching)
            if (view := self.state.encoders[n]).state is not None and view.state["locked"]
        ]
        newest = await asyncio.to_thread(_newest_segment, self.out / ORIGIN_DIR)
        if newest is None:
            return
        if candidates:
            agreeing = await asyncio.to_thread(self._holding, newest, candidates)
            self._vouching.update(agreeing)
        if self._master_attributes is None:
            codecs = await asyncio.to_thread(segment_codecs, newest)
            width, height = parse_size(self.config.size)
            self._master_attributes = StreamAttributes(
                self.config.bitrate_kbps * 1000,
                width,
                height,
                FrameRate.parse(self.config.fps),
                codecs,
            )
        leader = self.state.leaders.get(self.plan.groups[0], ("", 0))[0]
        order = tuple(sorted(self._vouching, key=lambda n: (n != leader, n)))
        if not order or order == self.master_listed:
            return
        uris = [f"{self.plan.encoder(n).output_url}/{PLAYLIST_NAME}" for n in order]
        text = master_playlist(self._master_attributes, uris)
        assert self.master_url is not None
        async with session.put(self.master_url, data=text.encode()) as answer:
            if answer.status not in (200, 201, 204):
                raise OSError(f"the origin answered {answer.status} to the master playlist")
        self.master_listed = order
        self._note(f"master playlist: {', '.join(order)} (redundant variants, leader first)")

    def _holding(self, newest: Path, candidates: list[str]) -> list[str]:
        """The candidates whose own copy of ``newest`` holds the origin's bytes."""
        published = newest.read_bytes()
        found = []
        for name in candidates:
            with contextlib.suppress(OSError):
                if (self.output_folder(name) / newest.name).read_bytes() == published:
                    found.append(name)
        return found

    def _check_children(self, launcher: Launcher) -> None:
        """Note encoders that died on their own (not killed by the run)."""
        for name, view in self.state.encoders.items():
            if view.status == "running" and not launcher.running(name):
                view.status = "exited"
                child = launcher.children[name]
                self._note(f"{name} exited by itself (code {child.returncode})", "bold red")

    # -- watchers -----------------------------------------------------------------------------

    async def _watch_leaders(self, endpoint: str) -> None:
        """Record a ``leader`` event whenever a segment's leader key changes in etcd.

        Segments are found as they appear under the prefix: the manager names them, and
        encoders move their election to the segment their topology document gives. Each
        channel elects its own (channel ``0`` under the prefix, channel ``N`` under
        ``P/channels/N``): a group of channel ``N`` is named ``N/<segment>``.
        """
        settings = EtcdSettings(endpoints=(endpoint,), prefix=DEFAULT_ETCD_PREFIX)
        client = connect_client(settings)
        roots = {"": settings.prefix} | {
            channel: f"{settings.prefix}/channels/{channel}"
            for channel in self.config.channel_names[1:]
        }
        watches: dict[str, SegmentWatch] = {}
        follows: list[asyncio.Task[None]] = []
        try:
            while True:
                for channel, root in roots.items():
                    segments_root = f"{root}/segments/".encode()
                    with contextlib.suppress(Exception):
                        for kv in await client.get_prefix(segments_root):
                            name = kv.key[len(segments_root) :].split(b"/", 1)[0].decode()
                            group = f"{channel}/{name}" if channel else name
                            if name and group not in watches:
                                watches[group] = SegmentWatch(SegmentKeys(root, name))
                                follows.append(
                                    asyncio.create_task(watches[group].follow_resuming(client))
                                )
                for group, watch in watches.items():
                    known = self.state.leaders.get(group)
                    if watch.leader is not None and known != (watch.leader, watch.token):
                        self.state.leaders[group] = (watch.leader, watch.token)
                        self.state.leader_terms[group] = self.state.leader_terms.get(group, 0) + 1
                        if self._recorder is not None:
                            self._recorder.leader(group, watch.leader, watch.token)
                        self._note(f"{watch.leader} leads {group} (revision {watch.token})", "cyan")
                if self._launcher is not None:
                    self._check_children(self._launcher)
                await asyncio.sleep(_LEADER_POLL)
        finally:
            for task in follows:
                task.cancel()
            for task in follows:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await client.close()

    async def _watch_identity(self) -> None:
        """Compare the newest segment files of all encoders, for the live view."""
        while True:
            await asyncio.sleep(_IDENTITY_EVERY)
            with contextlib.suppress(OSError, ValueError):
                self.state.identity = await asyncio.to_thread(self._identity)

    def _identity(self) -> Verification | None:
        """The verdict on every segment written since each encoder's first GetState answer
        (whole runs, so the lock-in window is where verify puts it; files hashed once)."""
        outputs = []
        for name, view in self.state.encoders.items():
            first = self._first_segment.get(name)
            if first is None or view.state is None:
                continue
            digests: dict[int, str] = {}
            for number in range(first, view.state["segment_number"] + 1):
                digest = self._digest(name, number)
                if digest is not None:
                    digests[number] = digest
            outputs.append(EncoderOutput(name, self.output_folder(name), digests))
        if len([o for o in outputs if o.digests]) < 2:
            return None
        return compare(outputs, lock_in=DEFAULT_LOCK_IN, frames=self.config.gop)

    def _digest(self, encoder: str, number: int) -> str | None:
        key = (encoder, number)
        known = self._digests.get(key)
        if known is None:
            folder = rendition_folder(self.output_folder(encoder))  # a ladder: its first rung
            path = folder / segment_name(number, self.config.output_format)
            if not path.is_file():
                return None
            known = self._digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return known

    # -- events -------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event["kind"] == "state":
            view = self.state.encoders.get(event["encoder"])
            if view is not None:
                view.state, view.state_at = event, event["t"]
                if event["timecode"] > 0:  # 0: no picture yet (waiting for its input)
                    self._first_segment.setdefault(event["encoder"], event["segment_number"])
        elif event["kind"] == "correction":
            kind = event["correction"]
            self.state.corrections[kind] = self.state.corrections.get(kind, 0) + 1
            view = self.state.encoders.get(event["encoder"])
            voted = event["proposal_id"] > 0
            if view is not None and voted:
                view.voted += 1
            if kind != "slew" or voted:
                how = f"approved by vote (proposal {event['proposal_id']})" if voted else "no vote"
                self._note(
                    f"{event['encoder']}: {kind} {event['shift_ns'] / 1e6:+.2f} ms, {how}",
                    "magenta",
                )

    def _set_phase(self, phase: str) -> None:
        self.state.phase = phase

    def _note(self, text: str, style: str = "") -> None:
        self.state.note(text, style)
        if self._on_note is not None:
            self._on_note(self.state.notes[-1])


def player_skipped(config: DemoConfig) -> str | None:
    """Why no browser plays the origin's stream in this run; None when one does."""
    if config.player is False:
        return "--no-player"
    if not config.origin:
        return "no origin to play (--no-origin)"
    return unavailable()


def _newest_segment(folder: Path) -> Path | None:
    """The highest-numbered media segment in ``folder`` (None: none)."""
    numbered = [
        (number, path)
        for path in folder.glob("seg-*")
        if (number := segment_number(path.name)) is not None
    ]
    return max(numbered)[1] if numbered else None


async def _nothing() -> None:
    """The last step of the timeline: the end of the run."""


def prepare_out_dir(out: Path) -> None:
    """Make ``out`` ready for a new run: create it, or clear a previous run's results from it.

    Raises:
        FileExistsError: ``out`` holds files but is not a previous run's folder (nothing is
            deleted then).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not any((out / marker).exists() for marker in _RUN_MARKERS):
            raise FileExistsError(
                f"{out} is not empty and holds no previous run: choose another --out"
            )
        for entry in out.iterdir():
            is_run_file = entry.name in (*_RUN_MARKERS, REPORT_NAME) or entry.suffix == ".tmp"
            if entry.is_dir() and (
                entry.name in (LOGS_DIR, PLOTS_DIR, ORIGIN_DIR, PLAYER_DIR, CERTS_DIR, SOURCES_DIR)
                or _is_encoder(entry)
            ):
                shutil.rmtree(entry)
            elif is_run_file:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _is_encoder(folder: Path, *, levels: int = 2) -> bool:
    """A previous run's encoder folder: segment files, playlists and CMAF's init, nothing else
    (with ``--ladder``: its master and MPD, and one such folder per rung; with several
    channels, one folder per channel, each of them such a folder)."""
    return all(
        (levels > 0 and _is_encoder(p, levels=levels - 1))
        if p.is_dir()
        else p.suffix in _ENCODER_FILE_SUFFIXES or p.name.startswith(".tmp-")
        for p in folder.iterdir()
    )


#: What an encoder's folder holds (``services.encoder.media``: segments of either format,
#: the HLS playlist, CMAF's init segment and DASH manifest, temp files).
_ENCODER_FILE_SUFFIXES = (*(f.suffix for f in SegmentFormat), ".m3u8", ".mp4", ".mpd", ".tmp")
