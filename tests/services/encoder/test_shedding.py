"""An encoder that fell behind its input sheds work and writes the mesh's segments again.

Nothing is mocked: two real ``FramePipeline``s, each around its own sync engine, encode the same
pictures with PyAV/libx264 into real segment files. One keeps up; the other falls more than a
second behind mid-segment, gives up the queued pictures as the runtime does
(``newest_picture``) and sheds the segment in progress (``FramePipeline.shed``). Pictures are
small (160x96) and GOPs 6 frames, so the file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from meshenc.core.engine import Action, EngineConfig, SyncEngine
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from services.encoder.media import EncodedFrame, SegmentFormat, SyntheticSource, VideoFormat
from services.encoder.media.ingest import Ingested, IngestedAudio, IngestedPicture
from services.encoder.media.ladder import Rendition, renditions_for
from services.encoder.media.segments import segment_number
from services.encoder.pipeline import FramePipeline
from services.encoder.runtime import FallingBehind, newest_picture

RATE = FrameRate(30)
GOP = 6
BASE = 54_000_000_000 - 54_000_000_000 % GOP  # a segment boundary on the epoch timeline
PICTURES = 8 * GOP
#: The slow encoder gives up pictures FALL_AT .. FALL_AT + GIVEN_UP - 1 (mid-segment 2).
FALL_AT = 2 * GOP + 2
GIVEN_UP = 3  # within the segment: the next one opens on a picture of its own


class _Shell:
    """The process around a pipeline, keeping what the runtime would act on."""

    def __init__(self) -> None:
        self.encoded: list[int] = []
        self.written: dict[int, Path] = {}

    def slot_starts(self, timecode: int, measured: bool) -> None:
        del timecode, measured

    def slot_encoded(self, frame: EncodedFrame, encode_seconds: float) -> None:
        del encode_seconds
        self.encoded.append(frame.timecode)

    def segments_written(self, rendition: Rendition, paths: list[Path], started_ns: int) -> None:
        del rendition, started_ns
        for path in paths:
            number = segment_number(path.name)
            assert number is not None
            self.written[number] = path

    def renditions_changed(self, active: Sequence[Rendition]) -> None:
        del active

    def picture_done(self) -> None:
        pass

    def carry_out(self, action: Action) -> None:
        del action


def _encode(out: Path, falls_behind: bool) -> tuple[_Shell, FramePipeline]:
    engine = SyncEngine(
        "enc", EngineConfig(frame_rate=RATE, strategy=Strategy.EPOCH, gop=GOP), ["x"]
    )
    shell = _Shell()
    pipeline = FramePipeline(engine, shell, lambda: 0.0)
    renditions = renditions_for(
        out, RATE, GOP, None, size=(160, 96), bitrate_kbps=300, fmt=SegmentFormat.TS
    )
    pipeline.start(renditions)
    source = SyntheticSource(VideoFormat(160, 96, RATE))
    previous = -1
    for index in range(PICTURES):
        if falls_behind and FALL_AT <= index < FALL_AT + GIVEN_UP:
            continue
        if falls_behind and index == FALL_AT + GIVEN_UP:
            pipeline.shed()
        stamp = float((BASE + index + Fraction(1, 2)) / 30)  # mid-slot
        picture = source.picture(index)
        pipeline.capture(stamp, picture, picture.fingerprint, index - previous, index * 3000)
        previous = index
    for rendition in renditions:
        shell.segments_written(rendition, rendition.writer.finish(), 0)
        rendition.close()
    return shell, pipeline


def test_an_encoder_that_fell_behind_sheds_the_segment_and_writes_the_next_ones_alike(
    tmp_path: Path,
) -> None:
    steady, _ = _encode(tmp_path / "steady", falls_behind=False)
    behind, pipeline = _encode(tmp_path / "behind", falls_behind=True)
    first = BASE // GOP
    shed = first + FALL_AT // GOP
    # The segment it fell behind in is given up, not written with duplicates in the gap...
    assert shed in steady.written
    assert shed not in behind.written
    # ...nothing more of it is encoded (the rest of the segment is work saved)...
    resumed_at = (shed + 1) * GOP
    assert not [tc for tc in behind.encoded if BASE + FALL_AT <= tc < resumed_at]
    assert behind.encoded[-1] == steady.encoded[-1]
    assert pipeline.shed_slots == resumed_at - (BASE + FALL_AT)
    assert not pipeline.shedding
    # ...and every other segment is the same file, before and after.
    assert set(behind.written) == set(steady.written) - {shed}
    for number, path in behind.written.items():
        assert path.read_bytes() == steady.written[number].read_bytes(), number


def test_a_picture_filling_a_gap_does_not_reopen_a_segment_while_shedding(
    tmp_path: Path,
) -> None:
    """Shedding ends on a picture's own slot only: a duplicate that would fill the first slot
    of a segment is not the picture every other encoder put there."""
    engine = SyncEngine(
        "enc", EngineConfig(frame_rate=RATE, strategy=Strategy.EPOCH, gop=GOP), ["x"]
    )
    shell = _Shell()
    pipeline = FramePipeline(engine, shell, lambda: 0.0)
    renditions = renditions_for(
        tmp_path, RATE, GOP, None, size=(160, 96), bitrate_kbps=300, fmt=SegmentFormat.TS
    )
    pipeline.start(renditions)
    source = SyntheticSource(VideoFormat(160, 96, RATE))
    for index, periods in ((0, 1), (1, 1), (2, 1)):
        stamp = float((BASE + index + Fraction(1, 2)) / 30)
        pipeline.capture(stamp, source.picture(index), index + 1, periods, index * 3000)
    pipeline.shed()
    # Pictures 3..6 given up: picture 7 fills slots 3..7, and slot 6 opens segment 1.
    stamp = float((BASE + 7 + Fraction(1, 2)) / 30)
    pipeline.capture(stamp, source.picture(7), 8, 5, 7 * 3000)
    assert pipeline.shedding
    assert shell.encoded == [BASE, BASE + 1, BASE + 2]
    # The first picture on a segment's first slot ends it.
    for index in range(8, 13):
        stamp = float((BASE + index + Fraction(1, 2)) / 30)
        pipeline.capture(stamp, source.picture(index), index + 1, 1, index * 3000)
    assert not pipeline.shedding
    assert shell.encoded[3:] == [BASE + 12]
    for rendition in renditions:
        rendition.close()


def test_catching_up_takes_the_newest_picture_and_keeps_the_audio_in_order() -> None:
    picture = SyntheticSource(VideoFormat(32, 32, RATE)).picture(0)
    base = Fraction(1, 90_000)

    def at(pts: int) -> IngestedPicture:
        return IngestedPicture(float(pts), picture, pts, base)

    def audio(pts: int) -> IngestedAudio:
        return IngestedAudio("aac", 48_000, pts, base, b"")

    queue: asyncio.Queue[Ingested] = asyncio.Queue()
    for item in (at(2), audio(10), at(3), audio(11), at(4)):
        queue.put_nowait(item)
    newest, packets, given_up = newest_picture(at(1), queue)
    assert newest.pts == 4
    assert [p.pts for p in packets] == [10, 11]
    assert given_up == 3  # pictures 1, 2 and 3
    assert queue.empty()


def test_a_stall_of_a_second_is_caught_up_and_a_lasting_lag_is_given_up() -> None:
    """Ages of the pictures reaching the loop, every 1/30 s of the loop's time: after a 1.3 s
    stall the backlog drains at twice the input's rate, and nothing is given up; a lag that
    stays over a second is given up after the grace, one past twice the limit at once."""
    step = 1 / 30
    watch = FallingBehind(max_lag=1.0, grace=0.5)
    draining = [1.3 - k * step for k in range(40)]  # 1.3 s behind, a frame period less each step
    assert not any(watch.gives_up(lag, k * step) for k, lag in enumerate(draining))
    watch = FallingBehind(max_lag=1.0, grace=0.5)
    stuck = [watch.gives_up(1.2, k * step) for k in range(30)]
    assert stuck.index(True) == 15  # 0.5 s of the loop's time over the limit
    assert FallingBehind(max_lag=1.0, grace=0.5).gives_up(2.1, 0.0)
    assert not FallingBehind(max_lag=1.0, grace=0.5).gives_up(1.0, 0.0)
