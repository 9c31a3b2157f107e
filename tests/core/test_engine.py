"""The sync engine driven directly, one behaviour per test, with hand-made neighbour ESPs.

Neighbours here are scripted: their ESPs are built by the test from a chosen label offset, so
each test controls exactly what the engine hears. Whole meshes of real engines are exercised
by the simulator scenarios (tests/sim/test_scenarios.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from meshenc.core.engine import (
    NO_IDENTITY,
    NOTHING_WRITTEN,
    CorrectionApplied,
    EngineConfig,
    Escalate,
    LockInTurnedDown,
    SegmentGivenUp,
    SegmentWritten,
    SendProposal,
    SendVote,
    SyncEngine,
)
from meshenc.core.messages import (
    CorrectionKind,
    EncodingStatePacket,
    ResyncProposal,
    ResyncVote,
)
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from meshenc.core.votes import Verdict

from .engine_shell import EngineShell

FPS = FrameRate(30)
T = FPS.period
#: Start mid-slot, so an unshifted label sits half a frame from either boundary.
START = FPS.slot_middle(FPS.slot(1.8e9))


def _engine(
    neighbours: Sequence[str] = (), strategy: Strategy = Strategy.PREDICTIVE
) -> EngineShell:
    return EngineShell(
        SyncEngine("me", EngineConfig(frame_rate=FPS, strategy=strategy), neighbours)
    )


def _frame_hash(picture: int, timecode: int) -> bytes:
    return picture.to_bytes(16, "big") + timecode.to_bytes(16, "big", signed=True)


def _esp(
    sender: str,
    sequence: int,
    picture: int,
    label: float,
    *,
    frame_hash: bytes | None = None,
    locked: bool = True,
) -> EncodingStatePacket:
    """An ESP from ``sender``, which announces itself as its anchor (``meshenc.core.anchor``):
    scripted neighbours hear no one, so each is its own."""
    tc = FPS.slot(label)
    return EncodingStatePacket(
        sender=sender,
        sequence=sequence,
        topology_epoch=0,
        timecode=tc,
        frame_hash=_frame_hash(picture, tc) if frame_hash is None else frame_hash,
        fingerprint=picture,
        label=label,
        correction=0.0,
        correction_rate=0.0,
        encode_latency=0.0,
        rtt=0.0,
        jitter=0.0,
        confidence=1.0,
        sent_at=label,
        locked=locked,
        anchor=sender,
    )


def _run(
    engine: EngineShell,
    pictures: range,
    offsets: dict[str, Callable[[int], float]],
    *,
    hashes: dict[str, Callable[[int, int], bytes]] | None = None,
    locked: bool = True,
) -> list[object]:
    """Capture ``pictures`` at exact frame times; after each, every scripted neighbour sends
    its ESP for that picture with its label ``offsets[name](picture)`` seconds from ours
    (saying it is ``locked``)."""
    actions: list[object] = []
    for k in pictures:
        now = START + k * T
        decision = engine.frame(now, k)
        if decision.timecodes:
            engine.encoded(now, ((decision.timecodes[-1], _frame_hash(k, decision.timecodes[-1])),))
        for name, offset in offsets.items():
            label = now + offset(k)
            custom = (hashes or {}).get(name)
            frame_hash = custom(k, FPS.slot(label)) if custom else None
            esp = _esp(name, k + 1, k, label, frame_hash=frame_hash, locked=locked)
            engine.esp(now + 0.001, esp)
        actions.extend(engine.drain())
    return actions


def _zero(_: int) -> float:
    return 0.0


def test_emitted_timecodes_stay_continuous_across_clock_jumps() -> None:
    engine = _engine()
    times = [START + k * T for k in range(30)]
    times += [times[-1] + 4 * T + k * T for k in range(30)]  # the clock jumps 3 frames ahead
    times += [times[-1] - 5 * T + k * T for k in range(30)]  # then back by more than that
    decisions = [engine.frame(now, k) for k, now in enumerate(times)]
    emitted = [tc for d in decisions for tc in d.timecodes]
    assert all(b == a + 1 for a, b in itertools.pairwise(emitted)), emitted
    # Forward, one picture filled the gap (repeated into 4 slots); back by five frames, the
    # pictures landing in the five slots already emitted and in the last one again are dropped.
    assert max(len(d.timecodes) for d in decisions) == 4
    assert sum(1 for d in decisions if not d.timecodes) == 6


@pytest.mark.parametrize("resumed", [True, False])
def test_pictures_back_after_fillers_are_labelled_from_their_arrivals(resumed: bool) -> None:
    """A lost input's fillers (no identity, on the engine's own cadence), then the input back
    with pictures that arrived a period and a half before the fillers' times: told
    (``InputResumed``), the engine labels them from their arrivals at once, which is what its
    neighbours measure; not told, it labels them from the fillers' cadence, late by more than
    half a frame."""
    engine = _engine()
    for k in range(60):
        engine.frame(START + k * T, k + 1)
    for k in range(60, 90):
        engine.frame(START + k * T, NO_IDENTITY, 1)
    back = START + 88.5 * T
    if resumed:
        engine.input_resumed(back)
    # The first picture back has no count of periods: the source's cadence starts again too.
    lags = [
        engine.frame(back + j * T, 100 + j, None if j == 0 else 1).label - (back + j * T)
        for j in range(3)
    ]
    if resumed:
        assert max(abs(lag) for lag in lags) < 1e-6, lags
    else:
        assert max(lags) > 0.5 * T, lags


def test_a_stranger_cannot_feed_the_engine() -> None:
    engine = _engine(["a", "b", "c"])
    _run(engine, range(20), {"a": _zero, "b": _zero, "c": _zero})
    before = engine.snapshot(START + 20 * T)
    engine.esp(START + 20 * T, _esp("mallory", 1, 19, START + 5.0))
    after = engine.snapshot(START + 20 * T)
    # Compared as text: a snapshot holds NaNs (an RTT not measured yet), which equal each other
    # only as the same object, and a compiled engine (scripts/compile-hot-path.sh) makes a new one.
    assert repr(before) == repr(after)
    assert engine.proposal(START, ResyncProposal("mallory", 1, CorrectionKind.DROP, -T, 0)) is (
        None
    )


def test_neighbours_with_disagreeing_frame_hashes_lose_trust_others_keep_it() -> None:
    engine = _engine(["a", "b", "c", "d"])
    _run(
        engine,
        range(120),
        {"a": _zero, "b": _zero, "c": _zero, "d": _zero},
        hashes={"d": lambda picture, tc: b"\x00" * 32},
    )
    trust = {n.neighbour: n.trusted for n in engine.snapshot(START + 120 * T).neighbours}
    assert trust == {"a": True, "b": True, "c": True, "d": False}


def test_an_encoder_that_agrees_with_its_neighbours_locks_and_stays_put() -> None:
    engine = _engine(["a", "b", "c"])
    actions = _run(engine, range(150), {"a": _zero, "b": _zero, "c": _zero})
    state = engine.snapshot(START + 150 * T)
    assert state.locked
    assert not [a for a in actions if isinstance(a, CorrectionApplied)]


def test_an_encoder_that_hears_no_one_vouches_for_its_own_slot_until_a_neighbour_speaks() -> None:
    """A first encoder (or a mesh of one) holds its own slot, and that is the timeline: its
    segments carry the shared name from a segment after it started. Once a neighbour speaks,
    it vouches only as any other, locked."""
    gop = 60
    engine = _engine(["a", "b"])
    for k in range(gop // 2):
        engine.frame(START + k * T, k)
    assert not engine.engine.vouches(START + gop // 2 * T)  # not yet a whole segment alone
    for k in range(gop // 2, 2 * gop):
        engine.frame(START + k * T, k)
    assert engine.engine.vouches(START + 2 * gop * T)
    for k in range(2 * gop, 2 * gop + 6):
        engine.esp(START + k * T, _esp("a", k, k, START + k * T, locked=False))
        engine.frame(START + k * T, k)
    assert not engine.engine.vouches(START + (2 * gop + 6) * T)


def test_a_stalled_encoder_vouches_for_nothing_until_a_segment_is_identical_again() -> None:
    """Back from a SIGSTOP, an encoder cannot make up what it missed: it vouches for no
    segment until a whole segment's worth of timecodes hashed like a neighbour's, none
    differing meanwhile; a difference starts the count again."""
    gop = 60
    engine = _engine(["a", "b", "c"])
    neighbours: dict[str, Callable[[int], float]] = {"a": _zero, "b": _zero, "c": _zero}
    _run(engine, range(150), neighbours)
    assert engine.engine.vouches(START + 150 * T)
    before = engine.snapshot(START + 150 * T)
    assert before.vouches and not [n.neighbour for n in before.neighbours if n.silent]
    engine.stalled(START + 240 * T, 3.0)  # frozen for 3 s
    assert not engine.engine.vouches(START + 240 * T)
    after = engine.snapshot(START + 240 * T)
    assert after.unproven and not after.vouches
    assert [n.neighbour for n in after.neighbours if n.silent] == ["a", "b", "c"]  # 3 s ago
    # Its first pictures back differ from everyone's (a GOP it joined mid-way)...
    differ: dict[str, Callable[[int, int], bytes]] = dict.fromkeys(
        neighbours, lambda picture, tc: b"\x01" * 32
    )
    _run(engine, range(240, 240 + gop), neighbours, hashes=differ)
    assert not engine.engine.vouches(START + (240 + gop) * T)
    # ...then they agree, but not yet for a whole segment...
    _run(engine, range(240 + gop, 240 + 2 * gop - 2), neighbours)
    assert engine.snapshot(START + (240 + 2 * gop) * T).unproven
    # ...and after a whole segment's worth it vouches again (still locked).
    _run(engine, range(240 + 2 * gop - 2, 240 + 2 * gop + 2), neighbours)
    assert not engine.snapshot(START + (240 + 2 * gop + 2) * T).unproven
    assert engine.engine.vouches(START + (240 + 2 * gop + 2) * T)


def test_an_encoder_whose_input_lags_its_neighbours_still_agrees_with_them() -> None:
    """The neighbours' ESPs, hashes included, arrive before this encoder has captured the
    picture, as for the encoder with the slowest input: their hashes wait for its own, and
    its segments are agreed like anyone's (else it would never publish one)."""
    gop = 60
    engine = _engine(["a", "b"])
    for k in range(3 * gop):
        now = START + k * T
        for name in ("a", "b"):
            early = _esp(name, k + 1, k, now, frame_hash=_frame_hash(k, FPS.slot(now)))
            engine.esp(now - 0.005, early)
        decision = engine.frame(now, k)
        if decision.timecodes:
            tc = decision.timecodes[-1]
            engine.encoded(now, ((tc, _frame_hash(k, tc)),))
        engine.drain()
    now = START + 3 * gop * T
    assert engine.engine.agreed(FPS.slot(START + 60 * T) // gop, now)
    assert engine.engine.agreed(FPS.slot(START + 120 * T) // gop, now)


def test_a_segment_is_agreed_only_when_a_neighbour_hashed_it_alike() -> None:
    """Per segment, the evidence that a copy is not this encoder's alone: one neighbour whose
    frame hashes equalled ours for half the segment or more, none differing."""
    gop = 60
    alike: dict[str, Callable[[int], float]] = {"a": _zero, "b": _zero}
    engine = _engine(["a", "b"])
    differ: dict[str, Callable[[int, int], bytes]] = {"a": lambda picture, tc: b"\x01" * 32}
    _run(engine, range(3 * gop), alike, hashes=differ)  # a differs throughout, b agrees
    segment = FPS.slot(START + 60 * T) // gop
    now = START + 3 * gop * T
    assert engine.engine.agreed(segment, now)
    everyone_differs = dict.fromkeys(alike, differ["a"])
    other = _engine(["a", "b"])
    _run(other, range(3 * gop), alike, hashes=everyone_differs)
    assert not other.engine.agreed(segment, now)
    # One differing frame among agreeing ones is enough to withhold it.
    once: dict[str, Callable[[int, int], bytes]] = {
        name: lambda picture, tc: b"\x02" * 32 if picture == 70 else _frame_hash(picture, tc)
        for name in alike
    }
    third = _engine(["a", "b"])
    _run(third, range(3 * gop), alike, hashes=once)
    assert not third.engine.agreed(FPS.slot(START + 70 * T) // gop, now)
    assert third.engine.agreed(FPS.slot(START + 130 * T) // gop, now)
    # With every neighbour silent for longer than stale_after, there is no one to ask.
    assert other.engine.agreed(segment, now + 5.0)


def test_a_segment_whose_bytes_differ_is_not_agreed_though_its_frames_were() -> None:
    """Frame hashes cover the video; where neighbours announce digests of the segments they
    wrote and vouched for, equal bytes decide (measured: an encoder back from an input loss
    wrote the mesh's video with less of its audio, its frames all agreed). The newest digest
    rides on the ESPs."""
    gop = 60
    engine = _engine(["a", "b"])
    _run(engine, range(3 * gop), {"a": _zero, "b": _zero})  # every frame hash alike
    segment = FPS.slot(START + 60 * T) // gop
    now = START + 3 * gop * T
    assert engine.engine.agreed(segment, now)
    mine, theirs = b"\x0a" * 32, b"\x0b" * 32
    engine.engine.step(now, SegmentWritten(segment, mine, vouched=True))
    engine.frame(now, 3 * gop)
    (sent, *_) = [esp for _to, esp in engine.encoded(now)]
    assert (sent.written_segment, sent.segment_digest, sent.segment_vouched) == (
        segment,
        mine,
        True,
    )
    differs = replace(
        _esp("a", 10_000, 3 * gop, now), written_segment=segment, segment_vouched=True
    )
    engine.esp(now, replace(differs, segment_digest=theirs))
    assert not engine.engine.agreed(segment, now)
    alike = replace(_esp("b", 10_000, 3 * gop, now), written_segment=segment)
    engine.esp(now, replace(alike, segment_digest=mine))
    assert engine.engine.agreed(segment, now)


def test_placed_rungs_are_compared_with_the_neighbours_that_write_the_same_rung() -> None:
    """Where rungs are placed on different encoders, each rung is its own output: its digest
    rides on the ESPs named after it, one rung per ESP in turn, and where a neighbour writes
    that rung and vouches for it, a copy of the rung is agreed only by a neighbour's equal
    bytes of that rung, whatever the digests of other rungs; one that vouched for the
    segment before is waited for. A neighbour that does not vouch for its copy (locking in,
    or slipped), or stopped writing the rung (it wrote neither this segment nor the one
    before), holds nothing back: the frame hashes decide."""
    gop = 60
    engine = _engine(["a", "b"])
    _run(engine, range(3 * gop), {"a": _zero, "b": _zero})  # every frame hash alike
    segment = FPS.slot(START + 60 * T) // gop
    now = START + 3 * gop * T
    big, small, other = b"\x0a" * 32, b"\x0c" * 32, b"\x0b" * 32
    engine.engine.step(now, SegmentWritten(segment, big, vouched=True, unit="1280x720"))
    engine.engine.step(now, SegmentWritten(segment, small, vouched=True, unit="640x360"))
    sent = []
    for k in range(2):
        engine.frame(now, 3 * gop + k)
        sent.append(next(esp for _to, esp in engine.encoded(now)))
    assert {(e.segment_unit, e.written_segment, e.segment_digest) for e in sent} == {
        ("1280x720", segment, big),
        ("640x360", segment, small),
    }
    # "a" writes 1280x720 with other bytes, "b" writes 640x360 with the same bytes as ours.
    a = replace(
        _esp("a", 10_000, 3 * gop, now),
        written_segment=segment,
        segment_unit="1280x720",
        segment_vouched=True,
    )
    engine.esp(now, replace(a, segment_digest=other))
    b = replace(_esp("b", 10_000, 3 * gop, now), written_segment=segment, segment_unit="640x360")
    engine.esp(now, replace(b, segment_digest=small))
    assert not engine.engine.agreed(segment, now, "1280x720")
    assert engine.engine.agreed(segment, now, "640x360")
    # Other bytes that "a" did not vouch for (it is locking in) hold nothing back.
    locking = _engine(["a", "b"])
    _run(locking, range(3 * gop), {"a": _zero, "b": _zero})
    locking.engine.step(now, SegmentWritten(segment, big, vouched=True, unit="1280x720"))
    locking.esp(now, replace(a, segment_digest=other, segment_vouched=False))
    assert locking.engine.agreed(segment, now, "1280x720")
    # Nor do they once "a" vouched for the segment before: it slipped, and knows it.
    slipped = _engine(["a", "b"])
    _run(slipped, range(3 * gop), {"a": _zero, "b": _zero})
    slipped.engine.step(now, SegmentWritten(segment, big, vouched=True, unit="1280x720"))
    slipped.esp(now, replace(a, written_segment=segment - 1, segment_digest=other))
    assert not slipped.engine.agreed(segment, now, "1280x720")  # "a" will announce it: wait
    slipped.esp(now, replace(a, sequence=10_001, segment_digest=other, segment_vouched=False))
    assert slipped.engine.agreed(segment, now, "1280x720")
    # Once "a" has stopped writing 1280x720 (its newest digest of it two segments old), it
    # holds nothing back: the frame hashes, all alike, decide.
    stopped = _engine(["a", "b"])
    _run(stopped, range(3 * gop), {"a": _zero, "b": _zero})
    stopped.engine.step(now, SegmentWritten(segment, big, vouched=True, unit="1280x720"))
    stopped.esp(now, replace(a, written_segment=segment - 2, segment_digest=other))
    assert stopped.engine.agreed(segment, now, "1280x720")
    stopped.esp(now, replace(a, sequence=10_001, written_segment=segment - 1, segment_digest=other))
    assert not stopped.engine.agreed(segment, now, "1280x720")


def test_a_segment_given_up_is_announced_and_its_other_holders_stop_waiting_for_it() -> None:
    """An encoder that fell behind and shed a segment says so (``SegmentGivenUp``): its ESPs
    carry the segment as a copy written aside, of no bytes. A neighbour whose copy of that rung
    waited for it (it vouched for the segment before, so its digest was due) stops waiting,
    and the frame hashes decide; before, it waited until the shedder announced a later
    segment, past the time it holds a copy. Should the shedder's writer still write the
    segment whole, that digest takes its place."""
    gop = 60
    unit = "1280x720"
    segment = FPS.slot(START + 60 * T) // gop
    now = START + 3 * gop * T
    shedder = _engine(["a", "b"])
    _run(shedder, range(3 * gop), {"a": _zero, "b": _zero})
    shedder.engine.step(now, SegmentGivenUp(segment, unit))
    shedder.frame(now, 3 * gop)
    given_up = next(esp for _to, esp in shedder.encoded(now))
    announced = (given_up.segment_unit, given_up.written_segment, given_up.segment_vouched)
    assert announced == (unit, segment, False)
    assert given_up.segment_digest == NOTHING_WRITTEN
    # The other holder of the rung: "a" is the shedder, seen from there.
    holder = _engine(["a", "b"])
    _run(holder, range(3 * gop), {"a": _zero, "b": _zero})  # every frame hash alike
    holder.engine.step(now, SegmentWritten(segment, b"\x0a" * 32, vouched=True, unit=unit))
    before = replace(
        _esp("a", 10_000, 3 * gop, now),
        written_segment=segment - 1,
        segment_digest=b"\x0a" * 32,
        segment_unit=unit,
        segment_vouched=True,
    )
    holder.esp(now, before)
    assert not holder.engine.agreed(segment, now, unit)  # its digest is due: wait
    assert holder.engine.agreement_account(segment, now, unit).startswith("a: its digest due,")
    shed = replace(
        before,
        sequence=10_001,
        written_segment=given_up.written_segment,
        segment_digest=given_up.segment_digest,
        segment_vouched=given_up.segment_vouched,
    )
    holder.esp(now, shed)
    assert holder.engine.agreed(segment, now, unit)
    account = holder.engine.agreement_account(segment, now, unit)
    assert re.fullmatch(r"a: gave it up, (\d+) frame hashes alike; b: no digest, \1 .*", account)
    # Written whole after all (it had reached its last slot): the real digest replaces it.
    shedder.engine.step(now, SegmentWritten(segment, b"\x0c" * 32, vouched=False, unit=unit))
    shedder.frame(now, 3 * gop + 1)
    written = next(esp for _to, esp in shedder.encoded(now))
    assert (written.written_segment, written.segment_digest) == (segment, b"\x0c" * 32)


def test_a_copy_written_aside_is_confirmed_only_by_a_vouched_copy_of_the_same_bytes() -> None:
    """An encoder that could not vouch for a segment (resuming, locking in) wrote it aside;
    the same bytes from a neighbour that vouched for them make it the mesh's copy. Equal bytes
    from a neighbour that did not vouch either prove nothing, nor do a vouched neighbour's
    other bytes; the ESPs say whether their segment was vouched for."""
    gop = 60
    engine = _engine(["a", "b"])
    _run(engine, range(2 * gop), {"a": _zero, "b": _zero})
    segment = FPS.slot(START + 60 * T) // gop
    now = START + 2 * gop * T
    mine, theirs = b"\x0a" * 32, b"\x0b" * 32
    assert not engine.engine.confirmed(segment)  # nothing written yet
    engine.engine.step(now, SegmentWritten(segment, mine, vouched=False))
    engine.frame(now, 2 * gop)
    (sent, *_) = [esp for _to, esp in engine.encoded(now)]
    assert (sent.written_segment, sent.segment_vouched) == (segment, False)
    base = replace(_esp("a", 10_000, 2 * gop, now), written_segment=segment)
    engine.esp(now, replace(base, segment_digest=mine, segment_vouched=False))
    assert not engine.engine.confirmed(segment)
    other = replace(_esp("b", 10_000, 2 * gop, now), written_segment=segment)
    engine.esp(now, replace(other, segment_digest=theirs, segment_vouched=True))
    assert not engine.engine.confirmed(segment)
    engine.esp(now, replace(base, sequence=10_001, segment_digest=mine, segment_vouched=True))
    assert engine.engine.confirmed(segment)
    assert not engine.engine.confirmed(segment + 1)


def _answering(
    engine: EngineShell,
    pictures: range,
    offsets: dict[str, Callable[[int], float]],
    approve: bool,
) -> list[object]:
    """Like ``_run``, with the scripted neighbours answering every proposal at once."""
    actions: list[object] = []
    for k in pictures:
        step = _run(engine, range(k, k + 1), offsets)
        actions.extend(step)
        for action in step:
            if isinstance(action, SendProposal):
                p = action.proposal
                for voter in action.to:
                    vote = ResyncVote(p.proposer, p.proposal_id, voter, approve, 0.0)
                    engine.vote(START + k * T + 0.002, vote)
                actions.extend(engine.drain())
    return actions


def test_locking_in_moves_towards_the_neighbours_once_they_agree() -> None:
    engine = _engine(["a", "b", "c"])
    ahead = 2.3 * T  # the neighbours label every picture 2.3 frames later than we do
    actions = _answering(engine, range(200), {n: (lambda _k: ahead) for n in "abc"}, True)
    applied = [a for a in actions if isinstance(a, CorrectionApplied)]
    assert applied and any(a.proposal_id > 0 for a in applied)
    # It now gives pictures the neighbours' timecodes (holding the middle of their slot).
    last = 199
    state = engine.snapshot(START + (last + 1) * T)
    assert state.locked
    assert state.timecode == FPS.slot(START + last * T + ahead)


def test_locking_in_does_not_move_against_the_neighbours_votes() -> None:
    engine = _engine(["a", "b", "c"])
    actions = _answering(engine, range(200), {n: (lambda _k: 2.3 * T) for n in "abc"}, False)
    big = [a for a in actions if isinstance(a, CorrectionApplied) and abs(a.shift) > T / 3]
    assert not big
    # Turned-down lock-in moves are routine: nothing is escalated to the manager, but each is
    # told to the shell, with its votes and when the encoder may propose again.
    assert not [a for a in actions if isinstance(a, Escalate)]
    assert not engine.snapshot(START + 200 * T).locked
    proposed = [a.proposal for a in actions if isinstance(a, SendProposal)]
    turned_down = [a for a in actions if isinstance(a, LockInTurnedDown)]
    assert [t.outcome.proposal for t in turned_down] == proposed
    for told in turned_down:
        assert told.outcome.verdict is Verdict.REJECTED
        assert len(told.outcome.rejections & {"a", "b", "c"}) >= 2  # a majority said no
        assert not told.outcome.approvals
        assert told.retry_at == told.outcome.decided_at + engine.engine.config.lock_in_retry_backoff
    # The next move is proposed (and, answered at once, decided) no sooner than that.
    assert len(turned_down) >= 2
    for earlier, later in itertools.pairwise(turned_down):
        assert later.outcome.decided_at >= earlier.retry_at


def _first_proposal(
    engine: EngineShell, offsets: dict[str, Callable[[int], float]], start: int = 0
) -> tuple[int, SendProposal]:
    """Run ``engine`` picture by picture from ``start``, nobody voting, until it proposes:
    (picture, action)."""
    for k in range(start, start + 200):
        for action in _run(engine, range(k, k + 1), offsets):
            if isinstance(action, SendProposal):
                return k, action
    raise AssertionError("no lock-in move was proposed")


def test_a_lock_in_move_goes_only_to_the_neighbours_it_counts() -> None:
    """A neighbour whose labels jumped is not counted (its filter rejected a reading), and it
    does not vote on this encoder's moves either: it judges them from its own view, which the
    move leaves out (three real encoders: the anchor, not counted by the other two, voted
    every move of theirs down for the 30 s of its suspicion)."""
    engine = _engine(["a", "b", "c"])
    ahead = 2.3 * T
    offsets = {
        "a": lambda k: ahead + (0.020 if k >= 3 else 0.0),
        "b": lambda _k: ahead,
        "c": lambda _k: ahead,
    }
    k, sent = _first_proposal(engine, offsets)
    trust = {n.neighbour: n.trusted for n in engine.snapshot(START + k * T).neighbours}
    assert trust == {"a": False, "b": True, "c": True}
    assert set(sent.to) == {"b", "c"}


def test_a_lock_in_move_put_to_a_neighbour_that_left_is_withdrawn_and_the_next_goes_at_once() -> (
    None
):
    engine = _engine(["a", "b", "c"])
    ahead = {n: (lambda _k: 2.3 * T) for n in "abc"}
    k, sent = _first_proposal(engine, ahead)
    assert set(sent.to) == {"a", "b", "c"}
    # The manager rewires: c left, d came. Nobody has voted yet.
    now = START + k * T + 0.003
    engine.neighbours(("a", "b", "d"), epoch=2, now=now)
    (told,) = [a for a in engine.drain() if isinstance(a, LockInTurnedDown)]
    assert told.outcome.proposal == sent.proposal
    assert told.outcome.verdict is Verdict.WITHDRAWN and told.retry_at == now
    # A late vote for it no longer counts: the move is not applied.
    engine.vote(
        now + 0.001, ResyncVote(sent.proposal.proposer, sent.proposal.proposal_id, "a", True, 0.0)
    )
    assert not [a for a in engine.drain() if isinstance(a, CorrectionApplied)]
    # Once it has measured d, the next move goes to the new neighbours, without the lock-in
    # back-off a turned-down move waits (well within it here).
    k2, again = _first_proposal(engine, {n: ahead["a"] for n in "abd"}, k + 1)
    assert set(again.to) == {"a", "b", "d"}
    assert START + k2 * T - now < engine.engine.config.lock_in_retry_backoff


def test_a_rewiring_ends_the_lock_in_back_off() -> None:
    engine = _engine(["a", "b", "c"])
    ahead = {n: (lambda _k: 2.3 * T) for n in "abcd"}
    k, sent = _first_proposal(engine, {n: ahead[n] for n in "abc"})
    now = START + k * T + 0.002
    p = sent.proposal
    for voter in sent.to:
        engine.vote(now, ResyncVote(p.proposer, p.proposal_id, voter, False, 0.0))
    (told,) = [a for a in engine.drain() if isinstance(a, LockInTurnedDown)]
    assert told.outcome.verdict is Verdict.REJECTED and told.retry_at > now
    # c leaves and d comes while it backs off: the judges of that move are no longer all
    # there, so the next move need not wait for the back-off's end.
    engine.neighbours(("a", "b", "d"), epoch=2, now=now + 0.001)
    assert not [a for a in engine.drain() if isinstance(a, LockInTurnedDown)]
    k2, again = _first_proposal(engine, {n: ahead[n] for n in "abd"}, k + 1)
    assert set(again.to) == {"a", "b", "d"}
    assert START + k2 * T < told.retry_at


def test_a_neighbour_joining_leaves_an_open_lock_in_move_to_its_verdict() -> None:
    engine = _engine(["a", "b", "c"])
    k, sent = _first_proposal(engine, {n: (lambda _k: 2.3 * T) for n in "abc"})
    now = START + k * T + 0.002
    engine.neighbours(("a", "b", "c", "d"), epoch=2, now=now)
    assert not [a for a in engine.drain() if isinstance(a, LockInTurnedDown)]
    p = sent.proposal
    for voter in "ab":  # a majority of the three it was put to
        engine.vote(now + 0.001, ResyncVote(p.proposer, p.proposal_id, voter, True, 0.0))
    applied = [a for a in engine.drain() if isinstance(a, CorrectionApplied)]
    assert [a.proposal_id for a in applied] == [p.proposal_id]


def test_a_locked_encoders_open_proposal_outlives_a_rewiring() -> None:
    # A locked encoder's proposals are the manager's to judge when they fail: a neighbour
    # leaving does not withdraw one, it expires and is escalated as before.
    engine = _engine(list("abcdef"))

    def leave(p: ResyncProposal) -> list[ResyncVote]:
        engine.neighbours(tuple("abcde"), epoch=2, now=START + 200 * T)
        return []

    actions = _locked_then_left_behind(leave, engine)
    told = [a for a in actions if isinstance(a, LockInTurnedDown)]
    assert not told
    assert [a for a in actions if isinstance(a, Escalate)]


def test_a_voter_judges_from_its_own_estimate_of_the_proposer() -> None:
    voter = EngineShell(SyncEngine("v", EngineConfig(frame_rate=FPS), ["p", "x", "y"]))
    # x and y label every picture as the voter's clock does; p labels it 0.8 frames later.
    # Locking in, the voter aims for the middle of the slot its anchor p's label is in: a
    # frame after its own label, which sits mid-slot. Nobody answers its own proposal to go
    # there, so it stays put and sees p 0.2 frames before that middle.
    _run(voter, range(120), {"p": lambda _k: 0.8 * T, "x": _zero, "y": _zero}, locked=False)
    now = START + 120 * T
    expected = -0.2 * T

    def vote(shift: float) -> ResyncVote:
        action = voter.proposal(now, ResyncProposal("p", 7, CorrectionKind.DROP, shift, 0))
        assert action is not None
        return action.vote

    assert vote(-expected).approve
    assert not vote(+0.8 * T).approve
    assert abs(vote(0.0).estimated_deviation - expected) < 0.1 * T


def _updates(shell: EngineShell, neighbour: str, now: float) -> int:
    """How many filter updates ``shell``'s engine has made of ``neighbour`` by ``now``."""
    (view,) = [n for n in shell.snapshot(now).neighbours if n.neighbour == neighbour]
    return view.updates


def test_a_voter_still_measuring_the_proposer_answers_once_it_has_measured_it() -> None:
    # The proposer's filter of the voter can reach its count a control step before the
    # voter's of the proposer (their control steps are not in phase). Refused at once for
    # want of an estimate, such a first proposal cost the proposer the lock-in retry.
    voter = EngineShell(SyncEngine("v", EngineConfig(frame_rate=FPS), ["p", "x", "y"]))
    neighbours: dict[str, Callable[[int], float]] = {"p": _zero, "x": _zero, "y": _zero}
    min_updates = voter.engine.config.min_updates
    _run(voter, range(4), neighbours, locked=False)  # control steps at pictures 0 and 3
    assert 0 < _updates(voter, "p", START + 4 * T) < min_updates
    proposal = ResyncProposal("p", 3, CorrectionKind.SLEW, 0.1 * T, 0)
    assert voter.proposal(START + 4 * T, proposal) is None  # not yet: it is measuring p
    votes: list[SendVote] = []
    for k in range(4, 12):
        step = _run(voter, range(k, k + 1), neighbours, locked=False)
        votes += [a for a in step if isinstance(a, SendVote)]
        if votes:
            break
    (sent,) = votes
    assert sent.to == "p" and sent.proposal == proposal
    assert sent.vote.approve and sent.vote.reason == "within tolerance", sent.vote
    assert _updates(voter, "p", START + (k + 1) * T) == min_updates


def test_a_voter_that_cannot_measure_the_proposer_refuses_once_the_vote_is_over() -> None:
    voter = EngineShell(SyncEngine("v", EngineConfig(frame_rate=FPS), ["p", "x", "y"]))
    _run(voter, range(30), {"x": _zero, "y": _zero}, locked=False)
    proposal = ResyncProposal("p", 3, CorrectionKind.SLEW, 0.1 * T, 0)
    refusals: list[SendVote] = []
    for k in range(30, 60):
        now = START + k * T
        voter.frame(now, k)
        # p is heard, but what it sends matches no picture the voter captured.
        voter.esp(now + 0.001, _esp("p", k + 1, 10_000 + k, now, locked=False))
        if k == 31:
            assert voter.proposal(now + 0.002, proposal) is None
        refusals += [a for a in voter.drain() if isinstance(a, SendVote)]
        if refusals:
            break
    (sent,) = refusals
    assert not sent.vote.approve and sent.vote.reason == "no estimate"
    # Once ``vote_timeout`` has passed since the proposal arrived, at the next control step.
    waited = (k - 31) * T
    timeout = voter.engine.config.vote_timeout
    assert timeout <= waited < timeout + voter.engine.config.control_interval + T


def test_an_encoder_does_not_lock_away_from_its_anchors_slot() -> None:
    # Its neighbours label every picture as it does, but announce an anchor whose label is 2.3
    # frames earlier. Locking in, the encoder aims for the anchor's slot; while its moves there
    # go unanswered it stays with its neighbours, and must not lock there: a group locked
    # whole frames off the anchor's slot holds that slot until a merge, seconds later
    # (measured in sparse simulated meshes with noisy capture).
    engine = _engine(["a", "b", "c"])
    for k in range(120):
        now = START + k * T
        decision = engine.frame(now, k)
        sent = engine.encoded(
            now, ((decision.timecodes[-1], _frame_hash(k, decision.timecodes[-1])),)
        )
        for name in "abc":
            esp = _esp(name, k + 1, k, now, locked=False)
            engine.esp(now + 0.001, replace(esp, anchor="0", anchor_hops=1, anchor_offset=2.3 * T))
        engine.drain()
    (_, esp), *_ = sent
    assert esp.anchor == "0" and abs(esp.anchor_offset - 2.3 * T) < 0.1 * T, esp
    assert not engine.snapshot(START + 120 * T).locked


@pytest.mark.parametrize("proposer_locked", [True, False])
def test_a_neighbour_may_move_to_either_slot_at_a_boundary(proposer_locked: bool) -> None:
    # Everyone but the voter labels pictures half a frame later, so the voter, locking in,
    # sees the timeline (its locked neighbours' centre, or its anchor p) on the next slot
    # boundary. Estimates of a timeline there straddle the boundary, so a neighbour may hold
    # the middle of either slot, whether it is locked or still locking in.
    voter = EngineShell(SyncEngine("v", EngineConfig(frame_rate=FPS), ["p", "x", "y"]))
    half = {name: (lambda _k: 0.5 * T) for name in ("p", "x", "y")}
    _run(voter, range(120), half, locked=proposer_locked)
    now = START + 120 * T
    # p sits at the end of the voter's slot; it proposes the middle of the next one.
    proposal = ResyncProposal("p", 7, CorrectionKind.DUPLICATE, 0.5 * T, 0)
    action = voter.proposal(now, proposal)
    assert action is not None
    assert action.vote.approve


def _locked_then_left_behind(
    votes: Callable[[ResyncProposal], list[ResyncVote]],
    engine: EngineShell | None = None,
) -> list[object]:
    """Lock with six neighbours, then have all six label pictures 0.48 frames later (they
    moved together, towards the end of the slot). Counting itself, the engine's neighbourhood
    centre is then 6/7 of that ahead, past the point where a centre counts as in the next
    slot, while the spread stays under the relock limit: the engine keeps its lock and follows
    the mesh into the next slot, a whole-frame correction that needs a vote."""
    names = "abcdef"
    engine = engine or _engine(list(names))
    _run(engine, range(120), {n: _zero for n in names})
    assert engine.snapshot(START + 120 * T).locked
    actions: list[object] = []
    for k in range(120, 240):
        step = _run(engine, range(k, k + 1), {n: (lambda _k: 0.48 * T) for n in names})
        actions.extend(step)
        for action in step:
            if isinstance(action, SendProposal):
                for vote in votes(action.proposal):
                    engine.vote(START + k * T + 0.002, vote)
                actions.extend(engine.drain())
    return actions


def test_a_whole_slot_correction_is_proposed_and_applied_on_a_majority() -> None:
    def approve(p: ResyncProposal) -> list[ResyncVote]:
        return [ResyncVote(p.proposer, p.proposal_id, n, True, 0.0) for n in "abcd"]

    actions = _locked_then_left_behind(approve)
    proposals = [a for a in actions if isinstance(a, SendProposal)]
    applied = [a for a in actions if isinstance(a, CorrectionApplied) and a.proposal_id > 0]
    assert proposals and set(proposals[0].to) == set("abcdef")
    assert applied and applied[0].kind is CorrectionKind.DUPLICATE
    assert not [a for a in actions if isinstance(a, Escalate)]


def test_a_rejected_correction_is_escalated_and_not_applied() -> None:
    def reject(p: ResyncProposal) -> list[ResyncVote]:
        return [ResyncVote(p.proposer, p.proposal_id, n, False, 0.0) for n in "abcd"]

    actions = _locked_then_left_behind(reject)
    escalated = [a for a in actions if isinstance(a, Escalate)]
    assert escalated
    assert not [a for a in actions if isinstance(a, CorrectionApplied) and a.proposal_id > 0]


def test_when_all_neighbours_jump_at_once_the_engine_blames_itself() -> None:
    engine = _engine(["a", "b", "c", "d"])
    _run(engine, range(120), {n: _zero for n in "abcd"})
    # Our own clock steps: every neighbour now appears 20 ms away at once.
    _run(engine, range(120, 160), {n: (lambda _k: 0.020) for n in "abcd"})
    state = engine.snapshot(START + 160 * T)
    assert all(n.trusted for n in state.neighbours)


def test_one_neighbour_jumping_is_the_neighbours_problem() -> None:
    engine = _engine(["a", "b", "c", "d"])
    _run(engine, range(120), {n: _zero for n in "abcd"})
    offsets = {"a": _zero, "b": _zero, "c": _zero, "d": lambda _k: 0.020}
    _run(engine, range(120, 160), offsets)
    trust = {n.neighbour: n.trusted for n in engine.snapshot(START + 160 * T).neighbours}
    assert trust == {"a": True, "b": True, "c": True, "d": False}


def test_neighbours_that_seem_to_jump_one_after_another_are_measured_again() -> None:
    """This encoder moved, but its neighbours' filters noticed at different control steps:
    each would be suspected on its own, until none counted and the engine held its lock on
    its own clock. Once the suspects are most of those still speaking, it blames itself."""
    engine = _engine(["a", "b", "c"])
    _run(engine, range(120), {n: _zero for n in "abc"})

    def moved_at(picture: int) -> Callable[[int], float]:
        return lambda k: 0.020 if k >= picture else 0.0

    offsets = {"a": moved_at(120), "b": moved_at(135), "c": moved_at(150)}
    _run(engine, range(120, 200), offsets)
    trusted = [n.neighbour for n in engine.snapshot(START + 200 * T).neighbours if n.trusted]
    assert len(trusted) >= 2, trusted


def test_baselines_never_correct() -> None:
    for strategy in (Strategy.EPOCH, Strategy.NONE):
        engine = _engine(["a", "b", "c"], strategy)
        actions = _run(engine, range(150), {n: (lambda _k: 3 * T) for n in "abc"})
        assert actions == []


def test_published_esps_describe_the_last_picture_and_echo_now_and_then() -> None:
    engine = _engine(["a", "b"])
    sent: list[EncodingStatePacket] = []
    for k in range(16):
        now = START + k * T
        engine.frame(now, k)
        engine.esp(now + 0.001, _esp("a", k + 1, k, now))
        sent.extend(esp for _to, esp in engine.encoded(now + 0.002))
    assert [esp.fingerprint for esp in sent[::2]] == list(range(16))
    assert [esp.sequence for esp in sent[::2]] == list(range(1, 17))
    echoed = [esp for esp in sent if esp.echo_sequence]
    assert echoed and all(esp.echo_sent_at > 0 for esp in echoed)


def test_a_locked_follower_takes_the_leaders_slot_the_others_hold_the_groups() -> None:
    """Labels spread across a slot boundary: the neighbourhood's mean lies in the lower slot,
    the leader's label in the upper one. Only the follower that knows the leader moves there."""
    # Pictures are captured 0.9 frame into their slot; neighbour a (the leader) labels them
    # 0.15 frame later (the next slot), b and c 0.1 frame earlier.
    top = FPS.slot_middle(FPS.slot(1.8e9)) + 0.4 * T
    offsets = {"a": 0.15 * T, "b": -0.1 * T, "c": -0.1 * T}
    follower, loner = _engine(["a", "b", "c"]), _engine(["a", "b", "c"])
    follower.leader("a")
    for engine in (follower, loner):
        for k in range(240):
            now = top + k * T
            decision = engine.frame(now, k)
            if decision.timecodes:
                engine.encoded(
                    now, ((decision.timecodes[-1], _frame_hash(k, decision.timecodes[-1])),)
                )
            for name, offset in offsets.items():
                esp = _esp(name, k + 1, k, now + offset)
                engine.esp(now + 0.001, esp)
            for action in engine.drain():
                if isinstance(action, SendProposal):
                    p = action.proposal
                    for voter in action.to:
                        engine.vote(
                            now + 0.002, ResyncVote(p.proposer, p.proposal_id, voter, True, 0.0)
                        )
                    engine.drain()
    last = top + 239 * T
    assert follower.snapshot(last).locked and loner.snapshot(last).locked
    assert follower.snapshot(last).timecode == FPS.slot(last + offsets["a"])
    assert loner.snapshot(last).timecode == FPS.slot(last + offsets["b"])


def test_the_managers_apply_verdict_applies_the_escalated_plan_once() -> None:
    def reject(p: ResyncProposal) -> list[ResyncVote]:
        return [ResyncVote(p.proposer, p.proposal_id, n, False, 0.0) for n in "abcdef"]

    engine = _engine(list("abcdef"))
    actions = _locked_then_left_behind(reject, engine)
    last = [a for a in actions if isinstance(a, Escalate)][-1]
    pid = last.outcome.proposal.proposal_id
    now = START + 240 * T  # within a second of the last vote's deadline
    engine.drain()

    def applied_by(proposal_id: int) -> list[CorrectionApplied]:
        engine.approve_escalation(now, proposal_id)
        return [a for a in engine.drain() if isinstance(a, CorrectionApplied)]

    assert not applied_by(pid + 1000)  # not a plan it escalated
    applied = applied_by(pid)
    assert [a.proposal_id for a in applied] == [pid]
    assert applied[0].shift == last.outcome.proposal.shift
    assert not applied_by(pid)  # once only


def test_a_newcomer_still_locking_in_does_not_unlock_its_locked_neighbours() -> None:
    """d joins a locked neighbourhood a whole frame off and says it is not locked yet: the
    engine keeps its lock and its timeline (d must come to the mesh, not the mesh to d)."""
    engine = _engine(["a", "b", "c"])
    _run(engine, range(120), {n: _zero for n in "abc"})
    assert engine.snapshot(START + 120 * T).locked
    engine.neighbours(("a", "b", "c", "d"))
    moves = []
    for k in range(120, 300):
        now = START + k * T
        decision = engine.frame(now, k)
        engine.encoded(now, ((decision.timecodes[-1], _frame_hash(k, decision.timecodes[-1])),))
        for name in "abc":
            engine.esp(now + 0.001, _esp(name, k + 1, k, now))
        engine.esp(now + 0.001, _esp("d", k + 1, k, now + 1.0 * T, locked=False))
        moves += [a for a in engine.drain() if isinstance(a, CorrectionApplied | SendProposal)]
    state = engine.snapshot(START + 300 * T)
    assert state.locked
    assert not moves
    assert state.timecode == FPS.slot(START + 299 * T)


def test_a_locked_pair_a_frame_off_its_unlocked_majority_locks_in_again() -> None:
    """The engine and a locked in one slot; b, c and d, still locking in, a whole frame
    later. Counting only a (the locked), the pair would hold its slot for ever while b, c and
    d, a frame from it, could never agree to lock (measured: a 100-encoder world that never
    locked). Locked neighbours are counted alone only while they are at least as many as the
    others, so the engine locks in again and averages with its neighbourhood."""
    engine = _engine(["a", "b", "c", "d"])
    _run(engine, range(120), {n: _zero for n in "abcd"})
    assert engine.snapshot(START + 120 * T).locked
    for k in range(120, 180):
        now = START + k * T
        decision = engine.frame(now, k)
        engine.encoded(now, ((decision.timecodes[-1], _frame_hash(k, decision.timecodes[-1])),))
        engine.esp(now + 0.001, _esp("a", k + 1, k, now))
        for name in "bcd":
            engine.esp(now + 0.001, _esp(name, k + 1, k, now + 1.0 * T, locked=False))
        engine.drain()
    assert not engine.snapshot(START + 180 * T).locked


@pytest.mark.parametrize("seed", [1, 2])
def test_the_noise_floor_follows_the_measured_capture_jitter(seed: int) -> None:
    # At 60 fps, the same engine fed arrivals with a quarter frame of jitter measures a larger
    # deviation noise than with a fiftieth, and both stay a small part of a frame: the
    # thresholds that scale with it are only raised where the noise could fake them.
    rate = FrameRate(60)
    rng = random.Random(seed)
    noise = []
    for fraction in (0.02, 0.25):
        engine = EngineShell(SyncEngine("me", EngineConfig(frame_rate=rate), ["n"]))
        start = rate.slot_middle(rate.slot(1.8e9))
        for k in range(1200):
            now = start + k * rate.period + rng.gauss(0.0, fraction * rate.period)
            engine.frame(now, k + 1, None if k == 0 else 1)
        noise.append(engine.deviation_noise / rate.period)
    assert noise[0] < 0.5 * noise[1], f"seed {seed}: {noise}"
    assert noise[1] < 0.1, f"seed {seed}: {noise}"


@pytest.mark.parametrize("silent_sends", [True, False])
def test_no_lock_in_move_while_a_sending_neighbour_is_unmeasured(silent_sends: bool) -> None:
    # a labels every picture two frames later. b sends ESPs too, but only for pictures without
    # an identity, so it is live and never measured: while it is, the mean is not yet the
    # neighbourhood's and b could only refuse a vote for want of an estimate, so the engine
    # proposes no lock-in move. A b that sends nothing at all does not hold it back.
    engine = _engine(["a", "b"])
    proposals = []
    for k in range(1, 90):
        now = START + k * T
        engine.frame(now, k)
        engine.esp(now + 0.001, _esp("a", k, k, now + 2 * T, locked=False))
        if silent_sends:
            engine.esp(now + 0.001, _esp("b", k, 0, now, locked=False))
        proposals += [a for a in engine.drain() if isinstance(a, SendProposal)]
    assert bool(proposals) is not silent_sends


def test_no_first_move_while_a_late_first_reading_still_drags_the_capture_fit() -> None:
    """The encoder's first picture was read 60 ms late (a process starting, a decoder joining
    mid-stream), every later one on time, like its neighbours'. Its capture fit starts on the
    late reading and, left alone, slides back for a second or more; a lock-in move made
    meanwhile aims at where the label was, not where it is going (measured: a restarted
    encoder's lock-in landed a whole frame off). The fit restarts on the earlier readings,
    and the neighbours are measured once it has settled: there is nothing to move."""
    engine = _engine(["a", "b"])
    proposals = []
    for k in range(1, 120):
        now = START + k * T
        engine.frame(now + (0.06 if k == 1 else 0.0), k)
        for n, name in enumerate("ab"):
            engine.esp(now + 0.001, _esp(name, k, k, now + (0.002 if n else -0.002)))
        proposals += [(k, a) for a in engine.drain() if isinstance(a, SendProposal)]
    assert not proposals, proposals[:1]
    state = engine.snapshot(START + 120 * T)
    assert state.locked and abs(state.error) < 0.25 * T


def _approved(engine: EngineShell, now: float) -> list[ResyncProposal]:
    """The proposals the engine sent since the last drain, each approved by every voter."""
    proposals = []
    for action in engine.drain():
        if isinstance(action, SendProposal):
            proposals.append(action.proposal)
            for voter in action.to:
                vote = ResyncVote("me", action.proposal.proposal_id, voter, True, 0.0)
                engine.vote(now + 0.002, vote)
    return proposals


def test_locking_in_aims_for_an_anchor_heard_of_through_a_neighbour() -> None:
    # x and y label every picture as this engine does, but x relays the anchor "a": its own
    # label is 0.6 frames before a's. So a's label sits 0.1 frames into the next slot, and the
    # engine (y's anchor being y, a larger id) aims for the middle of that slot, a whole frame
    # on, instead of staying where its neighbours are.
    engine = _engine(["x", "y"])
    proposals: list[ResyncProposal] = []
    for k in range(150):
        now = START + k * T
        engine.frame(now, k)
        for name in ("x", "y"):
            esp = _esp(name, k + 1, k, now, locked=False)
            if name == "x":
                esp = dataclasses.replace(esp, anchor="a", anchor_hops=1, anchor_offset=-0.6 * T)
            engine.esp(now + 0.001, esp)
        proposals += _approved(engine, now)
        engine.drain()
    assert proposals
    assert abs(proposals[0].shift - T) < 0.05 * T
    state = engine.snapshot(START + 150 * T)
    assert state.timecode == FPS.slot(START + 149 * T) + 1


def test_each_neighbours_reported_confidence_is_in_the_snapshot() -> None:
    engine = _engine(["a", "b"])
    reported = {"a": 0.25, "b": 0.75}
    for k in range(10):
        now = START + k * T
        engine.frame(now, k)
        for name, confidence in reported.items():
            esp = dataclasses.replace(_esp(name, k + 1, k, now), confidence=confidence)
            engine.esp(now + 0.001, esp)
    seen = {n.neighbour: n.confidence for n in engine.snapshot(START + 10 * T).neighbours}
    assert seen == reported


def test_what_each_neighbour_reports_of_itself_is_in_the_snapshot() -> None:
    engine = _engine(["a", "b"])
    reports = {"a": (0.004, 0.0012, 0.0003), "b": (0.009, 0.150, 0.020)}
    for k in range(5):
        now = START + k * T
        engine.frame(now, k)
        for name, (latency, rtt, jitter) in reports.items():
            esp = dataclasses.replace(
                _esp(name, k + 1, k, now), encode_latency=latency, rtt=rtt, jitter=jitter
            )
            engine.esp(now + 0.001, esp)
    seen = {
        n.neighbour: (n.reported_encode_latency, n.reported_rtt, n.reported_jitter)
        for n in engine.snapshot(START + 5 * T).neighbours
    }
    assert seen == reports


def _off_its_anchor(
    origins: Sequence[str],
) -> tuple[list[EncodingStatePacket], list[CorrectionApplied]]:
    """The engine locks with b, c and d, all in its slot and locked on the timeline named
    after their anchor a; but each relays a's label a whole frame before its own (they
    locked off a's slot). The beacon of timeline a reaches the engine too, through as many
    of them as there are ``origins``, each naming one: the encoder locked on a it started
    from."""
    engine = _engine(["b", "c", "d"])
    sent: list[EncodingStatePacket] = []
    applied: list[CorrectionApplied] = []
    for k in range(600):
        now = START + k * T
        decision = engine.frame(now, k)
        tcs = decision.timecodes
        hashes = ((tcs[-1], _frame_hash(k, tcs[-1])),) if tcs else ()
        sent += [esp for to, esp in engine.encoded(now, hashes) if to == "b"]
        for n, name in enumerate("bcd"):
            moved = _applied_shift(applied)
            label = now + moved
            esp = replace(
                _esp(name, k + 1, k, label),
                anchor="a",
                anchor_hops=2,
                anchor_offset=T + moved,
                timeline="a",
            )
            if n < len(origins):
                esp = replace(
                    esp,
                    beacon_timeline="a",
                    beacon_hops=2,
                    beacon_offset=T + moved,
                    beacon_origin=origins[n],
                )
            engine.esp(now + 0.001, esp)
        applied += [a for a in engine.drain() if isinstance(a, CorrectionApplied)]
    return sent, applied


def _applied_shift(applied: Sequence[CorrectionApplied]) -> float:
    """How far the scripted neighbours, the engine's own group, moved: as far as the engine
    did by whole frames (they make the same jump at the same boundary)."""
    return sum(
        a.shift for a in applied if a.kind in (CorrectionKind.DROP, CorrectionKind.DUPLICATE)
    )


def test_a_group_a_frame_off_its_anchor_renames_its_timeline_and_moves_to_the_anchors() -> None:
    """Named after an anchor whose slot it is not in, the group's timeline is not the
    anchor's: once the anchor has been that far for ``merge_confirm``, the engine names its
    timeline after itself, takes the beacon of the anchor's timeline (better named, a frame
    away, on two witnesses) as a merge route, and moves to it at the start of a segment, in
    one jump of a frame."""
    sent, applied = _off_its_anchor(["x", "y"])
    locked = [e for e in sent if e.locked and e.timeline]  # named from its next step
    assert [e.timeline for e in locked][:1] == ["a"]  # its neighbours' name, at first
    renamed = [e for e in locked if e.timeline == "me"]
    assert renamed and renamed[0].label - locked[0].label < 2.0 + 0.5
    routes = [e for e in locked if e.merge_timeline]
    assert routes and routes[0].merge_timeline == "a" and routes[0].merge_witnesses == ("x", "y")
    jumps = [a for a in applied if a.kind in (CorrectionKind.DROP, CorrectionKind.DUPLICATE)]
    assert len(jumps) == 1 and abs(jumps[0].shift + T) < 0.1 * T, jumps
    after = [e for e in locked if e.sequence > routes[-1].sequence]
    assert after and after[-1].timeline == "a"


def test_one_witness_of_the_anchors_timeline_moves_no_one() -> None:
    """The same, with the beacon through b alone (one bridge, or one liar): the engine still
    names its timeline after itself, but does not move."""
    sent, applied = _off_its_anchor(["x"])
    locked = [e for e in sent if e.locked and e.timeline]  # named from its next step
    assert locked and locked[-1].timeline == "me"
    assert {e.merge_witnesses for e in locked if e.merge_timeline} == {("x",)}
    assert not [a for a in applied if a.kind in (CorrectionKind.DROP, CorrectionKind.DUPLICATE)]


def test_locking_in_between_two_timelines_comes_to_the_best_named_and_locks() -> None:
    """a and b are locked on timeline x a whole frame later than c, locked on w. Coming to
    its locked neighbours' densest group, the engine would follow a and b and, a frame from
    c, never lock, holding the two groups apart; it comes to c instead (w is the timeline
    kept when they merge), stops counting a and b, and locks."""
    engine = _engine(["a", "b", "c"])
    proposals = []
    for k in range(240):
        now = START + k * T
        decision = engine.frame(now, k)
        engine.encoded(now, ((decision.timecodes[-1], _frame_hash(k, decision.timecodes[-1])),))
        for name, offset, timeline in (("a", T, "x"), ("b", T, "x"), ("c", 0.0, "w")):
            esp = replace(_esp(name, k + 1, k, now + offset), timeline=timeline)
            engine.esp(now + 0.001, esp)
        proposals += _approved(engine, now)
    assert not [p for p in proposals if abs(p.shift) > 0.5 * T], proposals
    state = engine.snapshot(START + 240 * T)
    assert state.locked
    assert state.timecode == FPS.slot(START + 239 * T)
