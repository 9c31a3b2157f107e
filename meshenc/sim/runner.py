"""The event loop: N engines, one source, a network, and a record of every timecode.

Events are kept in one heap ordered by true time (ties by insertion order, so runs are
deterministic). Each encoder's next frame arrival is scheduled when it handles the previous
one; packets are scheduled when they are sent. Engines only ever see their own clock's
reading: the simulator knows true time, the engines do not.

Fault injection lives here, not in the engine: liars run an honest engine but falsify what
they send (labels off by ``lie_frames`` with a sign that flips every few seconds, random frame
hashes) and vote against everything.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from meshenc.core.engine import (
    Action,
    CorrectionApplied,
    EncodeFrame,
    EngineConfig,
    Escalate,
    EspReceived,
    FrameCaptured,
    FrameEncoded,
    ProposalReceived,
    SendEsp,
    SendProposal,
    SendVote,
    SyncEngine,
    VoteReceived,
)
from meshenc.core.messages import CorrectionKind, EncodingStatePacket, ResyncProposal, ResyncVote
from meshenc.core.policy import Strategy
from meshenc.sim.scenario import Scenario
from meshenc.sim.world import World, build_world

__all__ = ["CorrectionRecord", "Recording", "run"]

_FRAME, _ESP, _PROPOSAL, _VOTE = 0, 1, 2, 3
#: Liars flip the sign of their lie with this period (s).
_LIE_PERIOD = 10.0
#: Random numbers are drawn in blocks of this size (one numpy call per block, not per use).
_BLOCK = 65_536
#: Allocations between two collections of the young generation while a run lasts (CPython's
#: default is 700). The engines keep small tuples alive for seconds, and a young collection
#: visits the old objects they point to, spread over every encoder's state: at the default,
#: collecting took 5 % of a compiled 1,000-encoder run (timed with ``gc.callbacks``), at this
#: value 0.5 %.
_YOUNG_COLLECTION = 50_000


@dataclass(frozen=True, slots=True)
class CorrectionRecord:
    encoder: int
    at: float
    kind: CorrectionKind
    shift: float
    lead: float
    voted: bool


@dataclass(frozen=True, slots=True)
class Recording:
    """What a run produced. Rows are encoders, columns are source pictures."""

    scenario: Scenario
    strategy: Strategy
    world: World
    #: Timecode each picture got on each encoder; -1 where it was dropped.
    timecodes: np.ndarray
    #: Label (s) each picture got on each encoder.
    labels: np.ndarray
    #: Output slots filled by repeating a picture, per encoder and picture.
    repeats: np.ndarray
    corrections: tuple[CorrectionRecord, ...]
    escalations: int
    events: int
    wall_s: float


class _Noise:
    """Blocks of random numbers drawn from one seeded stream, consumed in order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._normal: list[float] = []
        self._uniform: list[float] = []

    def normal(self) -> float:
        if not self._normal:
            self._normal = self._rng.standard_normal(_BLOCK).tolist()
        return self._normal.pop()

    def uniform(self) -> float:
        if not self._uniform:
            self._uniform = self._rng.random(_BLOCK).tolist()
        return self._uniform.pop()


def run(
    scenario: Scenario,
    strategy: Strategy,
    *,
    config: Callable[[Strategy], EngineConfig] | None = None,
) -> Recording:
    """Simulate ``scenario`` with every encoder running ``strategy``."""
    started = time.perf_counter()
    world = build_world(scenario)
    fr = scenario.frame_rate
    n = scenario.mesh.encoders
    frames = int(scenario.mesh.duration_s * fr.num // fr.den)
    period = fr.period
    make_config = config or (lambda s: EngineConfig(frame_rate=fr, strategy=s, gop=scenario.gop))
    engines = [
        SyncEngine(f"enc-{i}", make_config(strategy), (f"enc-{j}" for j in world.neighbours[i]))
        for i in range(n)
    ]
    clocks = world.clocks
    # Drawn frame by frame (rows are frames), so a longer run starts with the same noise.
    # One compact row of doubles per encoder: 8 bytes a picture, not a float object each.
    noise = np.random.default_rng([scenario.seed, 1]).standard_normal((frames, n))
    noise *= scenario.capture_jitter_s
    capture_jitter = [array("d", row.tobytes()) for row in noise.T]
    del noise
    # The source's timestamps say how many periods passed between pictures (always one here:
    # the simulated source loses none); without them the engines count from arrival times.
    with_pts = scenario.source.timestamps
    net = _Noise(np.random.default_rng([scenario.seed, 2]))
    net_jitter = scenario.network.jitter_ms / 1000.0
    loss = scenario.network.loss
    liars = world.liars
    lie = scenario.liars.lie_frames * period
    lie_rng = np.random.default_rng([scenario.seed, 3])
    start = world.start
    ingest = world.ingest
    link_delay = world.link_delay

    timecodes = [array("q", [-1]) * frames for _ in range(n)]
    labels = [array("d", [math.nan]) * frames for _ in range(n)]
    repeats = [array("q", [0]) * frames for _ in range(n)]
    corrections: list[CorrectionRecord] = []
    escalations = 0
    heap: list[tuple[float, int, int, int, object]] = []
    seq = 0

    def arrival(i: int, k: int) -> float:
        source = start + k * period
        return source + ingest[i].delay(k * period)

    for i in range(n):
        heap.append((arrival(i, 0), i, _FRAME, i, 0))
        seq = i + 1
    heapq.heapify(heap)

    region = world.region
    cuts = [
        (start + cut.at_s, start + cut.at_s + cut.duration_s, cut.region)
        for cut in scenario.network.cuts
    ]

    def cut_off(t: float, sender: int, receiver: int) -> bool:
        return any(
            begin <= t < end and (region[sender] == r) != (region[receiver] == r)
            for begin, end, r in cuts
        )

    # Each sender's links by the receiver's name: (receiver, the link's base delay).
    links = [
        {f"enc-{j}": (j, link_delay.get((i, j), 0.005)) for j in world.neighbours[i]}
        for i in range(n)
    ]
    uniform, normal, heappush = net.uniform, net.normal, heapq.heappush

    def send(t: float, sender: int, to: str, kind: int, payload: object) -> None:
        nonlocal seq
        if loss and uniform() < loss:
            return
        receiver, base_delay = links[sender][to]
        if cuts and cut_off(t, sender, receiver):
            return
        delay = base_delay + abs(normal()) * net_jitter
        seq += 1
        heappush(heap, (t + delay, seq, kind, receiver, payload))

    def carry_out(t: float, i: int, now: float, k: int, actions: list[Action]) -> None:
        """Carry out engine ``i``'s actions in order (``k``: the picture captured at ``now``)."""
        nonlocal escalations
        engine = engines[i]
        liar = i in liars
        noise = b""
        for action in actions:
            if isinstance(action, SendEsp):
                esp = action.esp
                if liar:
                    # One lie per picture: the same offset and hash noise to every neighbour.
                    noise = noise or lie_rng.bytes(32)
                    esp = _lie(esp, lie_now(t), noise)
                received = EspReceived(esp)  # what every receiver is told: one event for all
                for name in action.to:
                    send(t, i, name, _ESP, received)
            elif isinstance(action, EncodeFrame):
                codes = action.timecodes
                labels[i][k] = action.label
                hashes: tuple[tuple[int, bytes], ...] = ()
                if codes:
                    tc = codes[-1]
                    timecodes[i][k] = tc
                    repeats[i][k] = len(codes) - 1
                    hashes = ((tc, _frame_hash(k, tc)),)
                engine.step(now, FrameEncoded(hashes))
                published = engine.ready()
                # Baselines ignore the mesh: their ESPs would change nothing, so none is sent.
                if not engine.policy.uses_mesh:
                    published = [a for a in published if not isinstance(a, SendEsp)]
                carry_out(t, i, now, k, published)
            elif isinstance(action, SendVote):
                vote = action.vote
                if liar:
                    vote = replace(vote, approve=False, reason="liar")
                send(t, i, action.to, _VOTE, vote)
            elif isinstance(action, CorrectionApplied):
                corrections.append(
                    CorrectionRecord(
                        i, t, action.kind, action.shift, action.lead, action.proposal_id > 0
                    )
                )
            elif isinstance(action, SendProposal):
                for name in action.to:
                    send(t, i, name, _PROPOSAL, action.proposal)
            elif isinstance(action, Escalate):
                escalations += 1

    def lie_now(t: float) -> float:
        """A liar's offset at ``t``: ``lie`` one way, then the other, every half period."""
        return lie if math.sin(2 * math.pi * (t - start) / _LIE_PERIOD) >= 0 else -lie

    events = 0
    heappop = heapq.heappop
    # The collector's young generation is held to more allocations while the run lasts
    # (``_YOUNG_COLLECTION``) and given back as it was, also when the run fails.
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, _YOUNG_COLLECTION), *older)
    try:
        while heap:
            t, _, kind, i, payload = heappop(heap)
            events += 1
            engine = engines[i]
            if kind == _ESP:  # most events: first
                assert isinstance(payload, EspReceived)
                engine.step(clocks[i].read(t), payload)
            elif kind == _FRAME:
                k = payload
                assert isinstance(k, int)
                now = clocks[i].read(t, capture_jitter[i][k])
                periods = 1 if with_pts and k else None
                engine.step(now, FrameCaptured(k + 1, periods))  # identity 0 means "none"
                if k + 1 < frames:
                    seq += 1
                    heapq.heappush(heap, (arrival(i, k + 1), seq, _FRAME, i, k + 1))
                carry_out(t, i, now, k, engine.ready())
            elif kind == _PROPOSAL:
                assert isinstance(payload, ResyncProposal)
                now = clocks[i].read(t)
                engine.step(now, ProposalReceived(payload))
                carry_out(t, i, now, -1, engine.ready())
            else:
                assert isinstance(payload, ResyncVote)
                now = clocks[i].read(t)
                engine.step(now, VoteReceived(payload))
                carry_out(t, i, now, -1, engine.ready())
    finally:
        gc.set_threshold(young, *older)

    return Recording(
        scenario=scenario,
        strategy=strategy,
        world=world,
        timecodes=_matrix(timecodes, np.int64),
        labels=_matrix(labels, np.float64),
        repeats=_matrix(repeats, np.int64),
        corrections=tuple(corrections),
        escalations=escalations,
        events=events,
        wall_s=time.perf_counter() - started,
    )


def _matrix(rows: list[array[int]] | list[array[float]], dtype: type[np.generic]) -> np.ndarray:
    """One row per encoder, as a numpy matrix."""
    return np.stack([np.frombuffer(row, dtype=dtype) for row in rows])


def _frame_hash(picture: int, timecode: int) -> bytes:
    """Stand-in for the SHA-256 of an encoded access unit: a function of picture and slot.

    GOP-deterministic encoding makes the real hash depend on exactly these two (and the fixed
    parameters), which is all the mesh uses it for.
    """
    return ((picture & 0xFFFFFFFF) << 64 | (timecode & 0xFFFFFFFFFFFFFFFF)).to_bytes(32, "big")


def _lie(esp: EncodingStatePacket, offset: float, noise: bytes) -> EncodingStatePacket:
    return replace(esp, label=esp.label + offset, frame_hash=noise if esp.frame_hash else b"")
