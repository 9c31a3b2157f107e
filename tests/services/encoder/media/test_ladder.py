"""The ABR ladder on real PyAV/libx264: the option, byte identity per rung, GOP alignment across
rungs, the master playlist and the MPD against what PyAV reads from the segments.

Nothing is mocked. Two encoders are two real ``FramePipeline``s, each around its own sync engine
(epoch strategy: timecodes straight from the stamps) with one silent neighbour so that ESPs are
built; the second starts mid-GOP, 8 pictures after the first. Audio is real AAC in ADTS. Pictures
are small (160x96 and 96x64) and GOPs 6 frames, so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from click.testing import CliRunner

from meshenc.cli.encoder import encoder as encoder_command
from meshenc.core.engine import (
    NO_IDENTITY,
    Action,
    EngineConfig,
    EspReceived,
    SendEsp,
    SyncEngine,
)
from meshenc.core.messages import EncodingStatePacket
from meshenc.core.policy import Strategy
from meshenc.core.timecode import FrameRate
from services.encoder.media import EncodedFrame, SegmentFormat, SyntheticSource, VideoFormat
from services.encoder.media.containers import AudioPacket
from services.encoder.media.gop import GopEncoder
from services.encoder.media.ladder import (
    MASTER_NAME,
    MAX_RUNGS,
    LadderManifests,
    Rendition,
    Rung,
    channel_master,
    channel_mpd,
    channel_rungs,
    combined_hash,
    parse_ladder,
    renditions_for,
    top_rung,
)
from services.encoder.media.segments import segment_number
from services.encoder.media.source import Picture
from services.encoder.pipeline import FramePipeline
from services.encoder.settings import EncoderSettings

from .test_cmaf import SOURCE_START, aac_packets

RATE = FrameRate(30)
GOP = 6
LADDER = parse_ladder("160x96@300,96x64@150")
#: A GOP boundary about 2027 on the epoch-locked timeline, in frame slots.
BASE = 54_000_000_000 - 54_000_000_000 % GOP
PICTURES = 8 * GOP
LATE_START = 8  # the second encoder's first picture: mid-GOP
#: A mesh-wide bitrate change, for the top rung, learnt from a neighbour at this picture.
CHANGE_AT = 3 * GOP
CHANGED_KBPS = 150


# --- the option -----------------------------------------------------------------------------------


def test_a_ladder_is_read_rung_by_rung_in_the_order_given() -> None:
    rungs = parse_ladder(" 640x360@800, 480x270@450 ,320X180@200")
    assert rungs == (Rung(640, 360, 800), Rung(480, 270, 450), Rung(320, 180, 200))
    assert [r.name for r in rungs] == ["640x360", "480x270", "320x180"]
    assert top_rung(tuple(reversed(rungs))) == Rung(640, 360, 800)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty rung"),
        ("640x360@800,", "empty rung"),
        ("640x360", "not WIDTHxHEIGHT@KBPS"),
        ("640x360@fast", "not WIDTHxHEIGHT@KBPS"),
        ("640-360@800", "not WIDTHxHEIGHT@KBPS"),
        ("-640x360@800", "not WIDTHxHEIGHT@KBPS"),
        ("640x360@8\u00b2", "not WIDTHxHEIGHT@KBPS"),
        ("641x360@800", "width must be even"),
        ("8x8@100", "width must be even and in 16"),
        ("640x360@5", "bitrate must be 16..200000"),
        ("640x360@800,640x360@400", "already has a 640x360 rung"),
        (",".join(f"{16 + 2 * i}x16@100" for i in range(MAX_RUNGS + 1)), "at most 8 rungs"),
    ],
)
def test_a_bad_ladder_is_refused_with_a_message_that_names_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ladder(text)


def test_the_command_refuses_a_bad_ladder_and_a_ladder_beside_size_or_bitrate(
    tmp_path: Path,
) -> None:
    run = CliRunner().invoke
    base = ["--id", "a", "--out", str(tmp_path), "--insecure"]
    bad = run(encoder_command, [*base, "--ladder", "640x360@800,641x360@400"])
    assert bad.exit_code == 2
    assert "rung '641x360@400'" in bad.output and "width must be even" in bad.output
    both = run(encoder_command, [*base, "--ladder", "640x360@800", "--size", "320x180"])
    assert both.exit_code == 2 and "leave out --size" in both.output
    env = run(
        encoder_command, [*base, "--ladder", "640x360@800"], env={"MESHENC_BITRATE_KBPS": "9"}
    )
    assert env.exit_code == 2 and "leave out --bitrate-kbps" in env.output
    threads = run(encoder_command, [*base, "--rung-threads", "2"])
    assert threads.exit_code == 2 and "--rung-threads encodes the rungs of a --ladder" in (
        threads.output
    )
    many = run(encoder_command, [*base, "--ladder", "640x360@800", "--rung-threads", "9"])
    assert many.exit_code == 2 and "--rung-threads" in many.output
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_settings_take_the_picture_size_and_the_mesh_bitrate_from_the_top_rung(
    tmp_path: Path,
) -> None:
    # Text, read as --ladder reads it.
    settings = EncoderSettings.model_validate(
        {"id": "a", "out": tmp_path, "ladder": "320x180@200,640x360@800"}
    )
    assert settings.picture_size == (640, 360)
    assert settings.mesh_bitrate_kbps == 800
    plain = EncoderSettings(id="a", out=tmp_path, size=(320, 180), bitrate_kbps=700)
    assert (plain.picture_size, plain.mesh_bitrate_kbps, plain.ladder) == ((320, 180), 700, ())
    with pytest.raises(ValueError, match="leave out --size"):
        EncoderSettings(id="a", out=tmp_path, ladder=parse_ladder("640x360@800"), size=(640, 360))


def test_a_mesh_wide_bitrate_change_scales_every_rung_by_the_same_share(tmp_path: Path) -> None:
    rungs = parse_ladder("640x360@800,480x270@450,320x180@200")
    renditions = renditions_for(
        tmp_path, RATE, GOP, rungs, size=(0, 0), bitrate_kbps=0, fmt=SegmentFormat.TS
    )
    assert [r.bitrate_for(800) for r in renditions] == [800, 450, 200]
    assert [r.bitrate_for(400) for r in renditions] == [400, 225, 100]
    assert [r.published_name(tmp_path / "seg.ts") for r in renditions] == [
        "640x360/seg.ts",
        "480x270/seg.ts",
        "320x180/seg.ts",
    ]


def test_the_frame_hash_covers_every_rung() -> None:
    a, b, c = (
        EncodedFrame(0, bytes([i]), True, hashlib.sha256(bytes([i])).digest()) for i in range(3)
    )
    assert combined_hash([a]) == a.sha256  # one rung: the hash it always was
    assert combined_hash([a, b]) == combined_hash([a, b])
    assert combined_hash([a, b]) != combined_hash([a, c]) != combined_hash([c, b])


# --- two encoders, one ladder --------------------------------------------------------------------


class _Shell:
    """The process around a pipeline, reduced to what the test reads: the ESPs sent."""

    def __init__(self) -> None:
        self.esps: list[EncodingStatePacket] = []

    def slot_starts(self, timecode: int, measured: bool) -> None:
        del timecode, measured

    def slot_encoded(self, frame: EncodedFrame, encode_seconds: float) -> None:
        del frame, encode_seconds

    def segments_written(self, rendition: Rendition, paths: list[Path], started_ns: int) -> None:
        del rendition, paths, started_ns

    def renditions_changed(self, active: Sequence[Rendition]) -> None:
        del active

    def picture_done(self) -> None:
        pass

    def carry_out(self, action: Action) -> None:
        if isinstance(action, SendEsp):
            self.esps.append(action.esp)


def agreed_change(
    now: float, segment: int, bitrate_kbps: int, size: tuple[int, int] | None = None
) -> EspReceived:
    """A silent neighbour's word that the mesh agreed on new parameters from ``segment``."""
    return EspReceived(
        EncodingStatePacket(
            sender="x",
            sequence=1,
            topology_epoch=0,
            timecode=0,
            frame_hash=b"",
            fingerprint=NO_IDENTITY,
            label=now,
            correction=0.0,
            correction_rate=0.0,
            encode_latency=0.0,
            rtt=0.0,
            jitter=0.0,
            confidence=1.0,
            sent_at=now,
            params_segment=segment,
            params_bitrate_kbps=bitrate_kbps,
            params_size=size,
        )
    )


def _run_encoder(
    out: Path,
    fmt: SegmentFormat,
    audio: list[AudioPacket],
    first: int,
    *,
    ladder: Sequence[Rung] = LADDER,
    rung_threads: int = 1,
) -> tuple[list[Rendition], LadderManifests, _Shell]:
    """One encoder of the ladder fed pictures ``first..PICTURES-1`` (and their audio) as the
    runtime feeds them: audio to every rung, the ladder's manifests told of every segment."""
    engine = SyncEngine(
        "enc",
        EngineConfig(frame_rate=RATE, strategy=Strategy.EPOCH, gop=GOP, bitrate_kbps=300),
        ["x"],
    )
    renditions = renditions_for(out, RATE, GOP, ladder, size=(0, 0), bitrate_kbps=0, fmt=fmt)
    manifests = LadderManifests(out, renditions, fmt)

    def written(paths: list[Path]) -> None:
        for path in paths:
            number = segment_number(path.name)
            assert number is not None
            manifests.segment_written(number)

    class Shell(_Shell):
        def segments_written(
            self, rendition: Rendition, paths: list[Path], started_ns: int
        ) -> None:
            del rendition, started_ns
            written(paths)

    shell = Shell()
    pipeline = FramePipeline(engine, shell, lambda: 0.0, rung_threads=rung_threads)
    pipeline.start(renditions)
    source = SyntheticSource(VideoFormat(160, 96, RATE))
    queue = [p for p in audio if p.source_time >= SOURCE_START + first * 3000]
    for index in range(first, PICTURES):
        stamp = float((BASE + index + Fraction(1, 2)) / 30)  # mid-slot
        source_time = SOURCE_START + index * 3000
        while queue and queue[0].source_time <= source_time:
            packet = queue.pop(0)
            for rendition in renditions:
                written(rendition.writer.add_audio(packet))
        if index == CHANGE_AT:
            pipeline.step(stamp, agreed_change(stamp, (BASE + index) // GOP + 2, CHANGED_KBPS))
        picture = source.picture(index)
        pipeline.capture(stamp, picture, picture.fingerprint, 1, source_time)
    pipeline.close()
    for rendition in renditions:
        written(rendition.writer.finish())
        rendition.close()
    return renditions, manifests, shell


def _playable(path: Path) -> io.BytesIO:
    """A segment as a player reads it: a CMAF one behind its rung's init segment."""
    init = path.parent / "init.mp4"
    head = init.read_bytes() if path.suffix == ".m4s" else b""
    return io.BytesIO(head + path.read_bytes())


def _video(path: Path) -> list[tuple[int, bool]]:
    """(pts, keyframe) of each video packet in a segment, as PyAV demuxes it."""
    with av.open(_playable(path), "r") as container:
        stream = container.streams.video[0]
        return [(int(p.pts or 0), p.is_keyframe) for p in container.demux(stream) if p.size]


def _x264_bitrate(path: Path) -> int:
    """The bitrate libx264 wrote into the segment's SEI (its options, ``bitrate=N``)."""
    found = re.search(rb"bitrate=(\d+)", path.read_bytes())
    assert found is not None
    return int(found.group(1))


@pytest.mark.parametrize("fmt", list(SegmentFormat))
def test_two_encoders_write_each_rung_byte_identical_and_gop_aligned(
    tmp_path: Path, fmt: SegmentFormat
) -> None:
    audio = aac_packets(PICTURES / 30 + 0.5)
    early, manifests, early_shell = _run_encoder(tmp_path / "early", fmt, audio, 0)
    late, _, late_shell = _run_encoder(tmp_path / "late", fmt, audio, LATE_START)
    suffix = fmt.suffix

    numbers: list[set[int]] = []
    for first, second in zip(early, late, strict=True):
        folder = first.folder
        assert folder is not None and folder == second.folder
        mine = {p.name: p.read_bytes() for p in (tmp_path / "early" / folder).glob(f"*{suffix}")}
        theirs = {p.name: p.read_bytes() for p in (tmp_path / "late" / folder).glob(f"*{suffix}")}
        # The late encoder's first GOP is partial and not written; every segment both wrote
        # is the same bytes.
        assert len(theirs) >= 5 and set(theirs) < set(mine)
        assert all(theirs[name] == mine[name] for name in theirs), folder
        numbers.append({n for n in map(segment_number, mine) if n is not None})
    # Same segment numbers on every rung; each segment opens with a keyframe at the same PTS.
    assert numbers[0] == numbers[1]
    for number in sorted(numbers[0]):
        name = f"seg-{number:012d}{suffix}"
        opened = []
        for rendition in early:
            packets = _video(tmp_path / "early" / str(rendition.folder) / name)
            assert len(packets) == GOP and packets[0][1], (rendition.folder, name)
            assert sum(1 for _, key in packets if key) == 1
            opened.append(packets[0][0])
        assert len(set(opened)) == 1, name

    # The mesh-wide change reached every rung at its share, at the same segment.
    change = (BASE + CHANGE_AT) // GOP + 2
    for rendition, before, after in zip(early, (300, 150), (150, 75), strict=True):
        rung = tmp_path / "early" / str(rendition.folder)
        assert _x264_bitrate(rung / f"seg-{change - 1:012d}{suffix}") == before
        assert _x264_bitrate(rung / f"seg-{change:012d}{suffix}") == after

    # The ESPs' frame hash is one per slot for all rungs, the same on both encoders.
    early_hashes = {e.timecode: e.frame_hash for e in early_shell.esps if e.frame_hash}
    late_hashes = {e.timecode: e.frame_hash for e in late_shell.esps if e.frame_hash}
    judged = [tc for tc in late_hashes if tc >= (BASE + LATE_START) // GOP * GOP + GOP]
    assert judged and all(late_hashes[tc] == early_hashes[tc] for tc in judged)

    _check_master(tmp_path / "early", early, audio)
    _check_channel_master(tmp_path / "early", early, fmt)
    if fmt is SegmentFormat.CMAF:
        _check_mpd(tmp_path / "early", early, manifests)


def test_rungs_encoded_at_once_are_the_bytes_of_rungs_encoded_one_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[tuple[int, int], set[str]] = {}
    encode = GopEncoder.encode

    def recorded(self: GopEncoder, timecode: int, picture: Picture, **kwargs: Any) -> EncodedFrame:
        size = (picture.width, picture.height)
        threads.setdefault(size, set()).add(threading.current_thread().name)
        return encode(self, timecode, picture, **kwargs)

    monkeypatch.setattr(GopEncoder, "encode", recorded)
    audio = aac_packets(PICTURES / 30 + 0.5)
    smallest_first = LADDER[::-1]
    _, _, alone = _run_encoder(
        tmp_path / "alone", SegmentFormat.TS, audio, 0, ladder=smallest_first
    )
    assert {name for names in threads.values() for name in names} == {"MainThread"}
    threads.clear()
    _, _, at_once = _run_encoder(
        tmp_path / "at-once", SegmentFormat.TS, audio, 0, ladder=smallest_first, rung_threads=2
    )
    # The largest rung on the pipeline's thread, the other in the pool's.
    assert threads[(160, 96)] == {"MainThread"}
    assert len(threads[(96, 64)]) == 1 and threads[(96, 64)] != {"MainThread"}

    files = {p.relative_to(tmp_path / "alone"): p.read_bytes() for p in _files(tmp_path / "alone")}
    again = {
        p.relative_to(tmp_path / "at-once"): p.read_bytes() for p in _files(tmp_path / "at-once")
    }
    assert len(files) > PICTURES // GOP and files == again
    hashes = [(e.timecode, e.frame_hash) for e in alone.esps]
    assert any(h for _, h in hashes) and hashes == [
        (e.timecode, e.frame_hash) for e in at_once.esps
    ]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _check_master(out: Path, renditions: list[Rendition], audio: list[AudioPacket]) -> None:
    """Every rung's CODECS, RESOLUTION and BANDWIDTH in the master, against its segments."""
    lines = (out / MASTER_NAME).read_text().splitlines()
    assert lines[0] == "#EXTM3U"
    variants = {
        uri: dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', info.split(":", 1)[1]))
        for info, uri in itertools.pairwise(lines)
        if info.startswith("#EXT-X-STREAM-INF:")
    }
    assert list(variants) == [f"{r.folder}/index.m3u8" for r in renditions]
    for rendition in renditions:
        folder = out / str(rendition.folder)
        attributes = variants[f"{rendition.folder}/index.m3u8"]
        segments = sorted(folder.glob("seg-*"))
        with av.open(_playable(segments[-1]), "r") as container:
            video = container.streams.video[0].codec_context
            sound = container.streams.audio[0].codec_context
            resolution = f"{video.width}x{video.height}"
            assert video.profile is not None and "Baseline" in video.profile
            level = video.level
            frames = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
            assert (sound.name, sound.profile) == ("aac", "LC")
        assert attributes["RESOLUTION"] == resolution == rendition.folder
        codecs = attributes["CODECS"].strip('"').split(",")
        # avc1.PPCCLL: 0x42 Baseline with the constraint flags of constrained baseline, level
        # as PyAV reads it; mp4a.40.2: AAC-LC.
        assert codecs[0][:7] == "avc1.42" and int(codecs[0][-2:], 16) == level
        assert codecs[1:] == ["mp4a.40.2"]
        assert attributes["FRAME-RATE"] == "30.000"
        duration = Fraction(frames, 30)
        peak = max(math.ceil(s.stat().st_size * 8 / duration) for s in segments)
        assert int(attributes["BANDWIDTH"]) == peak
    assert audio  # the segments above carried it


def _variants(text: str) -> dict[str, dict[str, str]]:
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    return {
        uri: dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', info.split(":", 1)[1]))
        for info, uri in itertools.pairwise(lines)
        if info.startswith("#EXT-X-STREAM-INF:")
    }


def _check_channel_master(out: Path, renditions: list[Rendition], fmt: SegmentFormat) -> None:
    """The channel's manifests (what every holder of a placed ladder publishes alike) name
    each rung with the codecs its written segments carry — the video's probed from one black
    picture, not read from them — and a bandwidth no written segment exceeded: the master
    against the ladder's own master (made from the segments' SPS and peaks), and for CMAF the
    MPD against the ladder's own MPD, Representation by Representation."""
    others = [c for c in renditions[0].writer.codecs if not c.startswith("avc1.")]
    # The newest segments were written at the bitrate the mesh changed to.
    rungs = channel_rungs(LADDER, RATE, GOP, CHANGED_KBPS, others)
    channel = _variants(channel_master(rungs, fmt))
    own = _variants((out / MASTER_NAME).read_text())
    assert list(channel) == [f"{rung.name}/index.m3u8" for rung in LADDER] == list(own)
    for uri, attributes in channel.items():
        assert attributes["CODECS"] == own[uri]["CODECS"]
        assert attributes["RESOLUTION"] == own[uri]["RESOLUTION"]
        assert int(own[uri]["BANDWIDTH"]) <= int(attributes["BANDWIDTH"])
    if fmt is not SegmentFormat.CMAF:
        return
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    channel_set = ET.fromstring(channel_mpd(rungs, window=5, publish_time="1970-01-01T00:00:00Z"))
    own_set = ET.parse(out / "manifest.mpd").getroot()
    paths = (
        "d:Period/d:AdaptationSet/d:SegmentTemplate",
        "d:Period/d:AdaptationSet/d:Representation",
    )
    theirs = channel_set.findall(paths[1], ns)
    mine = own_set.findall(paths[1], ns)
    assert [r.attrib["id"] for r in theirs] == [rung.name for rung in LADDER]
    assert [r.attrib["id"] for r in mine] == [rung.name for rung in LADDER]
    for element, written in zip(theirs, mine, strict=True):
        for name in ("codecs", "width", "height", "frameRate"):
            assert element.attrib[name] == written.attrib[name], name
        assert int(written.attrib["bandwidth"]) <= int(element.attrib["bandwidth"])
    template, own_template = (e.find(paths[0], ns) for e in (channel_set, own_set))
    assert template is not None and own_template is not None
    assert template.attrib == own_template.attrib  # the same files, named alike


def _check_mpd(out: Path, renditions: list[Rendition], manifests: LadderManifests) -> None:
    """One AdaptationSet, one Representation per rung whose template resolves to its files."""
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.parse(out / "manifest.mpd").getroot()
    sets = mpd.findall("d:Period/d:AdaptationSet", ns)
    assert len(sets) == 1
    template = sets[0].find("d:SegmentTemplate", ns)
    assert template is not None
    representations = sets[0].findall("d:Representation", ns)
    assert [r.attrib["id"] for r in representations] == [r.folder for r in renditions]
    master = (out / MASTER_NAME).read_text()
    for element, rendition in zip(representations, renditions, strict=True):
        folder = out / str(rendition.folder)
        newest = max(n for n in map(segment_number, (p.name for p in folder.glob("*.m4s"))) if n)
        media = template.attrib["media"].replace("$RepresentationID$", element.attrib["id"])
        assert (out / media.replace("$Number%012d$", f"{newest:012d}")).is_file()
        init = template.attrib["initialization"].replace("$RepresentationID$", element.attrib["id"])
        assert (out / init).is_file()
        assert f'CODECS="{element.attrib["codecs"]}"' in master
        assert f"BANDWIDTH={element.attrib['bandwidth']}," in master
        assert (element.attrib["width"], element.attrib["height"]) == tuple(
            str(rendition.folder).split("x")
        )
    assert manifests.master is not None and manifests.master == (out / MASTER_NAME).read_bytes()
