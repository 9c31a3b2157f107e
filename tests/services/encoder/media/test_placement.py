"""A placed ladder on real PyAV/libx264: a rung handed from one encoder to another at a GOP
boundary, byte-identical across its holders, and manifests that name only the rungs written.

Nothing is mocked. Three encoders are three real ``FramePipeline``s, each around its own sync
engine (epoch strategy: timecodes straight from the stamps, one silent neighbour so that ESPs
are built), each holding rungs of one two-rung ladder through ``Holdings`` as the runtime does,
fed the same pictures and real AAC. The small rung ``96x64`` is held by A and C; in the middle
of a GOP the placement moves it from A to B (A gives it up, B takes it on), as the manager's
documents would after A is drained. C holds it throughout: the third holder whose copy of each
segment the others' must equal. Pictures are small and GOPs 6 frames, so the file runs in
seconds. The audio runs two frames ahead of the video.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import cast

import pytest

from meshenc.core.engine import NOTHING_WRITTEN, Action, EngineConfig, SendEsp, SyncEngine
from meshenc.core.messages import EncodingStatePacket
from meshenc.core.policy import Strategy
from meshenc.core.timecode import SegmentLayout
from services.encoder.media import EncodedFrame, SegmentFormat, SyntheticSource, VideoFormat
from services.encoder.media.containers import AudioPacket
from services.encoder.media.ladder import (
    MASTER_NAME,
    Holdings,
    LadderManifests,
    Rendition,
    Rung,
    open_rendition,
    top_rung,
)
from services.encoder.media.segments import segment_number
from services.encoder.pipeline import FramePipeline

from .test_cmaf import SOURCE_START, aac_packets
from .test_ladder import BASE, GOP, LADDER, RATE

TOP, SMALL = (rung.name for rung in LADDER)
PICTURES = 7 * GOP
MOVE_AT = 3 * GOP + 2  # the placement changes here, mid-GOP
#: The segment the move takes effect at: the next one to start after the placement came.
HANDOVER = (BASE + MOVE_AT) // GOP + 1
#: Audio arrives this far (90 kHz, two frames) ahead of the video of the same moment, so a
#: rung taken on needs audio that came before its first picture.
AUDIO_LEAD = 6000


class _Shell:
    """The process around a pipeline as the runtime plays it: segments and rung changes go to
    the ladder's manifests; the ESPs are kept."""

    def __init__(self, manifests: LadderManifests) -> None:
        self.manifests = manifests
        self.esps: list[EncodingStatePacket] = []
        #: The rungs written after each change, in order.
        self.changes: list[tuple[str, ...]] = []

    def slot_starts(self, timecode: int, measured: bool) -> None:
        del timecode, measured

    def slot_encoded(self, frame: EncodedFrame, encode_seconds: float) -> None:
        del frame, encode_seconds

    def segments_written(self, rendition: Rendition, paths: list[Path], started_ns: int) -> None:
        del rendition, started_ns
        self.written(paths)

    def written(self, paths: list[Path]) -> None:
        for path in paths:
            number = segment_number(path.name)
            assert number is not None
            self.manifests.segment_written(number)

    def renditions_changed(self, active: Sequence[Rendition]) -> None:
        self.changes.append(tuple(str(r.folder) for r in active))
        self.manifests.follow(active)

    def picture_done(self) -> None:
        pass

    def carry_out(self, action: Action) -> None:
        if isinstance(action, SendEsp):
            self.esps.append(action.esp)


def _run(
    out: Path, fmt: SegmentFormat, audio: list[AudioPacket], before: set[str], after: set[str]
) -> _Shell:
    """One encoder holding ``before`` until picture ``MOVE_AT``, ``after`` from then on."""
    engine = SyncEngine(
        "enc",
        EngineConfig(frame_rate=RATE, strategy=Strategy.EPOCH, gop=GOP, bitrate_kbps=300),
        ["x"],
    )

    def open_rung(rung: Rung) -> Rendition:
        return open_rendition(out, RATE, GOP, rung, top_kbps=top_rung(LADDER).bitrate_kbps, fmt=fmt)

    holdings = Holdings(LADDER, open_rung, engine.config.segments)
    holdings.want(before)
    shell = _Shell(LadderManifests(out, [], fmt))
    pipeline = FramePipeline(engine, shell, lambda: 0.0)
    pipeline.start(holdings, hash_inputs=True)
    source = SyntheticSource(VideoFormat(160, 96, RATE))
    queue = list(audio)
    for index in range(PICTURES):
        stamp = float((BASE + index + Fraction(1, 2)) / 30)  # mid-slot
        source_time = SOURCE_START + index * 3000
        while queue and queue[0].source_time <= source_time + AUDIO_LEAD:
            packet = queue.pop(0)
            for _, paths in holdings.add_audio(packet):
                shell.written(paths)
        if index == MOVE_AT:
            holdings.want(after)
        picture = source.picture(index)
        pipeline.capture(stamp, picture, picture.fingerprint, 1, source_time)
    for rendition in holdings.opened:
        shell.written(rendition.writer.finish())
        rendition.close()
    return shell


def _segments(folder: Path, suffix: str) -> dict[int, bytes]:
    found = {segment_number(p.name): p.read_bytes() for p in folder.glob(f"seg-*{suffix}")}
    return {n: data for n, data in found.items() if n is not None}


def _variants(out: Path) -> list[str]:
    lines = (out / MASTER_NAME).read_text().splitlines()
    return [
        uri.removesuffix("/index.m3u8")
        for info, uri in itertools.pairwise(lines)
        if info.startswith("#EXT-X-STREAM-INF:")
    ]


@pytest.mark.parametrize("fmt", list(SegmentFormat))
def test_a_rung_moved_between_encoders_continues_byte_identical_at_a_gop_boundary(
    tmp_path: Path, fmt: SegmentFormat
) -> None:
    audio = aac_packets(PICTURES / 30 + 0.5)
    a = _run(tmp_path / "a", fmt, audio, {TOP, SMALL}, {TOP})  # gives the small rung up
    b = _run(tmp_path / "b", fmt, audio, {TOP}, {TOP, SMALL})  # takes it on
    c = _run(tmp_path / "c", fmt, audio, {SMALL}, {SMALL})  # holds it throughout
    suffix = fmt.suffix
    old = _segments(tmp_path / "a" / SMALL, suffix)
    new = _segments(tmp_path / "b" / SMALL, suffix)
    third = _segments(tmp_path / "c" / SMALL, suffix)
    first = BASE // GOP

    # The hand-over happens at the first GOP boundary after the placement changed: A wrote
    # the small rung up to the segment before it (its last one whole, audio included), B from
    # it on, with no segment missing between them and none written twice.
    assert sorted(old) == list(range(first, HANDOVER))
    assert sorted(new) == list(range(HANDOVER, first + PICTURES // GOP))
    assert sorted(third) == list(range(first, first + PICTURES // GOP))
    # Every copy is the third holder's bytes: B's first full segment included.
    assert new[HANDOVER] == third[HANDOVER]
    assert all(old[n] == third[n] for n in old) and all(new[n] == third[n] for n in new)
    # The top rung, held by A and B throughout, is identical too.
    top_a = _segments(tmp_path / "a" / TOP, suffix)
    top_b = _segments(tmp_path / "b" / TOP, suffix)
    assert top_a == top_b and len(top_a) == PICTURES // GOP
    # x264's own SEI in B's first segment: a fresh context at the rung's share of the bitrate.
    found = re.search(rb"bitrate=(\d+)", new[HANDOVER])
    assert found is not None and int(found.group(1)) == LADDER[1].bitrate_kbps

    # The rungs written changed once, at the hand-over, and the masters name what is written.
    assert a.changes == [(TOP, SMALL), (TOP,)]
    assert b.changes == [(TOP,), (TOP, SMALL)]
    assert c.changes == [(SMALL,)]
    assert _variants(tmp_path / "a") == [TOP]
    assert _variants(tmp_path / "b") == [TOP, SMALL]
    assert _variants(tmp_path / "c") == [SMALL]

    # A says it writes none of the small rung from the hand-over on (a copy of no bytes,
    # not vouched), so that C's copy of that segment does not wait for A's digest; B and C
    # give nothing up.
    given_up = {
        (e.segment_unit, e.written_segment, e.segment_vouched)
        for e in a.esps
        if e.segment_digest == NOTHING_WRITTEN
    }
    assert given_up == {(SMALL, HANDOVER, False)}
    assert not [e for s in (b, c) for e in s.esps if e.segment_digest == NOTHING_WRITTEN]

    # Whatever rungs they hold, the three encoders' ESPs carry the same hash per slot.
    hashes = [{e.timecode: e.frame_hash for e in s.esps if e.frame_hash} for s in (a, b, c)]
    assert len(hashes[0]) == PICTURES
    assert hashes[0] == hashes[1] == hashes[2]


def test_an_encoder_given_no_rung_writes_none_and_its_master_goes(tmp_path: Path) -> None:
    """Holding nothing from the hand-over on, an encoder writes its last segment whole and
    then nothing; its master playlist, which would name a rung it no longer writes, is
    removed; the rung it never held has no folder."""
    audio = aac_packets(PICTURES / 30 + 0.5)
    shell = _run(tmp_path, SegmentFormat.TS, audio, {SMALL}, set())
    assert shell.changes == [(SMALL,), ()]
    assert sorted(_segments(tmp_path / SMALL, ".ts")) == list(range(BASE // GOP, HANDOVER))
    assert not (tmp_path / MASTER_NAME).exists() and not (tmp_path / TOP).exists()


def test_holdings_change_only_where_a_segment_starts_and_refuse_unknown_rungs() -> None:
    opened: list[str] = []

    def open_rung(rung: Rung) -> Rendition:
        opened.append(rung.name)
        return cast(Rendition, _Stub(rung))

    holdings = Holdings(LADDER, open_rung, SegmentLayout(GOP))
    with pytest.raises(ValueError, match="not rungs of the ladder: 1x1"):
        holdings.want({TOP, "1x1"})
    assert holdings.wanted == {TOP, SMALL}
    holdings.want({TOP})
    started, stopped = holdings.slot(BASE + 2)  # the first slot: whatever its place in a GOP
    assert [r.folder for r in started] == [TOP] and not stopped
    holdings.want({SMALL})
    for timecode in range(BASE + 3, BASE + GOP):  # the rest of the segment: no change
        assert holdings.slot(timecode) == ([], [])
    assert [r.folder for r in holdings.active] == [TOP]
    started, stopped = holdings.slot(BASE + GOP + 1)  # the next segment (its first slot lost)
    assert [r.folder for r in started] == [SMALL]
    assert [(r.folder, paths) for r, paths in stopped] == [(TOP, [])]
    assert opened == [TOP, SMALL]
    holdings.want({TOP, SMALL})
    started, _ = holdings.slot(BASE + 2 * GOP)
    assert [r.folder for r in started] == [TOP] and opened == [TOP, SMALL]  # taken back
    assert [r.folder for r in holdings.active] == [TOP, SMALL]  # ladder order
    # Without a placement (the single output, a benchmark): always written, audio included.
    single = cast(Rendition, _Stub(Rung(96, 64, 100)))
    fixed = Holdings.fixed([single], SegmentLayout(GOP))
    assert fixed.writing == fixed.opened == [single] and fixed.active == (single,)
    fixed.want(None)
    assert fixed.slot(BASE) == ([], []) and fixed.active == (single,)


class _Stub:
    """A rendition reduced to what ``Holdings`` touches (no libx264, no files)."""

    def __init__(self, rung: Rung) -> None:
        self.rung = rung
        self.folder = rung.name
        self.writer = self
        self.encoder = self
        self.waiting = False

    def stop(self, next_segment: int) -> list[Path]:
        del next_segment
        return []

    def close(self) -> None:
        pass
