"""A picture size the mesh agreed, through the real frame path: two encoders, one output.

Two pipelines (the runtime's own ``FramePipeline`` with real libx264 and real segment writers)
are fed the same pictures and audio, the second from mid-GOP, and told by a neighbour's ESP
that the mesh agreed on a smaller picture from a segment ahead. The verdicts come from the
segment files, decoded with PyAV: every segment before the change at the started size, every
one from it on at the new size, the size changing only where a GOP starts, and the two
encoders' segments byte-identical across the change; for CMAF the init segment carries the new
size and the manifests name it.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import av
import pytest

from meshenc.core.engine import EngineConfig, SyncEngine
from meshenc.core.policy import Strategy
from services.encoder.media import SegmentFormat, SyntheticSource, VideoFormat
from services.encoder.media.containers import AudioPacket
from services.encoder.media.ladder import Holdings, Rendition, renditions_for
from services.encoder.media.segments import segment_number
from services.encoder.pipeline import FramePipeline

from .test_cmaf import SOURCE_START, aac_packets
from .test_ladder import BASE, GOP, RATE, _Shell, agreed_change

STARTED = (160, 96)
CHANGED = (96, 64)
PICTURES = 8 * GOP
CHANGE_TOLD_AT = 2 * GOP + 1  # the ESP arrives mid-GOP
CHANGE = (BASE + CHANGE_TOLD_AT) // GOP + 2  # the segment it names
LATE_START = 8  # the second encoder's first picture: mid-GOP


def _run(out: Path, fmt: SegmentFormat, audio: list[AudioPacket], first: int) -> Rendition:
    """One encoder's single output fed pictures ``first..PICTURES-1`` and their audio."""
    engine = SyncEngine(
        "enc",
        EngineConfig(frame_rate=RATE, strategy=Strategy.EPOCH, gop=GOP, bitrate_kbps=300),
        ["x"],
    )
    (rendition,) = renditions_for(out, RATE, GOP, None, size=STARTED, bitrate_kbps=300, fmt=fmt)
    pipeline = FramePipeline(engine, _Shell(), lambda: 0.0)
    pipeline.start(Holdings.fixed([rendition], engine.config.segments))
    source = SyntheticSource(VideoFormat(*STARTED, RATE))
    queue = [p for p in audio if p.source_time >= SOURCE_START + first * 3000]
    for index in range(first, PICTURES):
        stamp = float((BASE + index + Fraction(1, 2)) / 30)  # mid-slot
        source_time = SOURCE_START + index * 3000
        while queue and queue[0].source_time <= source_time:
            rendition.writer.add_audio(queue.pop(0))
        if index == CHANGE_TOLD_AT:
            pipeline.step(stamp, agreed_change(stamp, CHANGE, 300, CHANGED))
        picture = source.picture(index)
        pipeline.capture(stamp, picture, picture.fingerprint, 1, source_time)
    rendition.writer.finish()
    rendition.close()
    return rendition


def _decoded_sizes(path: Path) -> list[tuple[int, int]]:
    """The size of every picture of a segment as a player decodes it (CMAF behind its init)."""
    head = (path.parent / "init.mp4").read_bytes() if path.suffix == ".m4s" else b""
    with av.open(io.BytesIO(head + path.read_bytes()), "r") as container:
        return [(f.width, f.height) for f in container.decode(container.streams.video[0])]


@pytest.mark.parametrize("fmt", list(SegmentFormat))
def test_an_agreed_size_starts_at_its_segment_on_both_encoders_byte_identical(
    tmp_path: Path, fmt: SegmentFormat
) -> None:
    audio = aac_packets(PICTURES / 30 + 0.5)
    early = _run(tmp_path / "early", fmt, audio, 0)
    _run(tmp_path / "late", fmt, audio, LATE_START)

    mine = {p.name: p.read_bytes() for p in (tmp_path / "early").glob(f"seg-*{fmt.suffix}")}
    theirs = {p.name: p.read_bytes() for p in (tmp_path / "late").glob(f"seg-*{fmt.suffix}")}
    numbers = sorted(n for n in map(segment_number, mine) if n is not None)
    assert numbers[0] < CHANGE - 1 and numbers[-1] > CHANGE + 1
    # The late encoder's first GOP is partial and not written; every other segment it wrote,
    # across the change, is the early one's bytes.
    assert len(theirs) >= 5 and set(theirs) < set(mine)
    assert all(theirs[name] == mine[name] for name in theirs)
    assert any(segment_number(name) == CHANGE for name in theirs)

    for number in numbers:
        sizes = _decoded_sizes(tmp_path / "early" / f"seg-{number:012d}{fmt.suffix}")
        assert len(sizes) == GOP, number
        assert set(sizes) == {CHANGED if number >= CHANGE else STARTED}, number

    if fmt is SegmentFormat.CMAF:
        # The init segment now describes the new size, and the manifests follow it.
        with av.open(str(tmp_path / "early" / "init.mp4")) as container:
            video = container.streams.video[0].codec_context
            assert (video.width, video.height) == CHANGED
        assert (early.writer.params.width, early.writer.params.height) == CHANGED
        mpd = ET.fromstring((tmp_path / "early" / "manifest.mpd").read_text())
        (representation,) = mpd.iter("{urn:mpeg:dash:schema:mpd:2011}Representation")
        assert (representation.get("width"), representation.get("height")) == ("96", "64")
