"""``meshenc verify`` and its module on synthetic output folders.

The folders hold made-up bytes under real segment names (``segment_name``), so every case —
identical, differing, gaps, splits, the lock-in window — is exact and fast; frames per segment
are given (``frames=`` / ``--gop``) because made-up bytes cannot be demuxed. The frame counter
on real MPEG-TS files is exercised by the recorder test, which runs real encoders; on real CMAF
segments (behind their init segment), by the one test here that writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshenc.cli.main import cli
from meshenc.core.timecode import FrameRate
from meshenc.report.verify import compare, count_frames, find_outputs, scan_output, verify
from services.encoder.media import EncoderParams, GopEncoder, SyntheticSource, VideoFormat
from services.encoder.media.segments import (
    PLAYLIST_NAME,
    SegmentFormat,
    SegmentWriter,
    aside_name,
    segment_name,
)

from .synthetic import FIRST, make_run, run_of, write_folder

GOP = 30
COUNT = 10


def test_identical_folders_are_locked_from_the_first_segment(tmp_path: Path) -> None:
    folders = make_run(tmp_path, {n: run_of() for n in "abc"})
    result = verify(folders, lock_in=3, frames=GOP)
    assert result.locked
    assert result.judged == COUNT - 3  # the first three are every run's lock-in
    assert result.agreed == result.judged
    assert result.misaligned_frames == 0 and result.lock_in_misaligned_frames == 0
    assert result.locked_after == 0
    assert all(s.identical for s in result.segments)
    assert result.gaps == {}


def test_one_differing_segment_after_lock_in_unlocks_and_counts_its_frames(
    tmp_path: Path,
) -> None:
    folders = make_run(
        tmp_path, {"a": run_of(), "b": run_of(), "c": run_of(different={FIRST + 5: b"late"})}
    )
    result = verify(folders, lock_in=3, frames=GOP)
    assert not result.locked
    check = result.segment(FIRST + 5)
    assert check is not None
    assert check.reference == scan_output(folders[0]).digests[FIRST + 5]
    assert [c.encoder for c in check.copies if not c.matches] == ["c"]
    assert result.misaligned_frames == GOP  # one minority copy of one segment
    assert result.agreed == result.judged - 1
    # c holds the reference again from FIRST + 6 on: six segments of its run came before.
    assert {r.encoder: r.lock_in_taken for r in result.runs} == {"a": 0, "b": 0, "c": 6}


def test_differences_inside_the_lock_in_window_do_not_unlock(tmp_path: Path) -> None:
    early = {FIRST + i: f"c{i}".encode() for i in range(3)}
    folders = make_run(tmp_path, {"a": run_of(), "b": run_of(), "c": run_of(different=early)})
    result = verify(folders, lock_in=3, frames=GOP)
    assert result.locked
    assert result.misaligned_frames == 0
    assert result.lock_in_misaligned_frames == 3 * GOP
    assert result.locked_after == 3
    # A shorter window judges the third segment, where c still differs.
    assert not verify(folders, lock_in=2, frames=GOP).locked
    assert not verify(folders, lock_in=0, frames=GOP).locked


def test_gaps_are_reported_and_the_run_after_a_gap_gets_its_own_lock_in(tmp_path: Path) -> None:
    b = run_of(different={FIRST + 7: b"b relocking"})
    del b[FIRST + 4], b[FIRST + 5]
    folders = make_run(tmp_path, {"a": run_of(), "b": b, "c": run_of()})
    result = verify(folders, lock_in=3, frames=GOP)
    assert result.gaps == {"b": ((FIRST + 4, FIRST + 5),)}
    gap_check = result.segment(FIRST + 4)
    assert gap_check is not None and gap_check.gaps == ("b",)
    # b's second run starts at FIRST + 6; its differing FIRST + 7 is inside that run's lock-in.
    assert result.locked
    assert result.lock_in_misaligned_frames == GOP
    assert [(r.first, r.last) for r in result.runs if r.encoder == "b"] == [
        (FIRST, FIRST + 3),
        (FIRST + 6, FIRST + COUNT - 1),
    ]


def test_two_encoders_that_differ_split_and_count_one_copy(tmp_path: Path) -> None:
    folders = make_run(tmp_path, {"a": run_of(), "b": run_of(different={FIRST + 4: b"other"})})
    result = verify(folders, lock_in=3, frames=GOP)
    check = result.segment(FIRST + 4)
    assert check is not None and check.reference is None
    assert not any(c.matches for c in check.copies)
    assert check.misaligned_frames == GOP
    assert not result.locked


def test_frames_are_counted_in_the_reference_copy_only_where_copies_differ(
    tmp_path: Path,
) -> None:
    folders = make_run(
        tmp_path,
        {
            "a": run_of(),
            "b": run_of(different={FIRST + 8: b"x"}),
            "c": run_of(different={FIRST + 8: b"y"}),
            "d": run_of(),
        },
    )
    asked: list[Path] = []

    def frames(path: Path) -> int:
        asked.append(path)
        return 25

    result = compare([scan_output(f) for f in folders], lock_in=3, frames=frames)
    assert [p.name for p in asked] == [segment_name(FIRST + 8)]
    assert asked[0].parent.name in ("a", "d")  # a holder of the majority's bytes
    assert result.misaligned_frames == 2 * 25


def test_the_verdict_does_not_depend_on_the_order_of_the_folders(tmp_path: Path) -> None:
    folders = make_run(
        tmp_path,
        {
            "a": run_of(different={FIRST + 6: b"a"}),
            "b": run_of(first=FIRST + 2),
            "c": run_of(count=COUNT - 1),
        },
    )
    forward = verify(folders, lock_in=2, frames=GOP).to_json()
    backward = verify(list(reversed(folders)), lock_in=2, frames=GOP).to_json()
    assert forward == backward


def test_other_files_are_ignored_and_the_playlist_is_checked(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "a", run_of(count=3))
    (folder / f".tmp-{segment_name(FIRST + 3)}.x7k2").write_bytes(b"half written")
    (folder / "encoder.log").write_text("seg-12 done\n")
    (folder / PLAYLIST_NAME).write_text(
        "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:1000\n#EXTINF:1.000,\n"
        f"{segment_name(FIRST)}\n#EXTINF:1.000,\n{segment_name(FIRST + 2)}\n"
    )
    output = scan_output(folder)
    assert sorted(output.digests) == [FIRST, FIRST + 1, FIRST + 2]
    assert len(output.playlist_problems) == 1
    assert segment_name(FIRST + 2) in output.playlist_problems[0]


def test_a_segment_written_aside_is_what_the_encoder_produced_but_not_served(
    tmp_path: Path,
) -> None:
    """Aside copies are judged with the rest (lock-in is measured from them) and listed in
    the playlist without being a problem; ``served`` leaves them out."""
    folder = write_folder(tmp_path / "a", run_of(count=3))
    (folder / segment_name(FIRST + 1)).rename(folder / aside_name(FIRST + 1))
    (folder / PLAYLIST_NAME).write_text(
        "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:1000\n"
        + "".join(f"#EXTINF:1.000,\n{segment_name(FIRST + i)}\n" for i in range(3))
    )
    output = scan_output(folder)
    assert sorted(output.digests) == [FIRST, FIRST + 1, FIRST + 2]
    assert output.aside == {FIRST + 1}
    assert sorted(output.served) == [FIRST, FIRST + 2]
    assert output.path(FIRST + 1) == folder / aside_name(FIRST + 1)
    assert output.playlist_problems == ()
    write_folder(tmp_path / "b", run_of(count=3, different={FIRST + 1: b"other"}))
    check = verify([tmp_path / "a", tmp_path / "b"], lock_in=0).segment(FIRST + 1)
    assert check is not None and not check.agreed


def test_a_run_folder_stands_for_its_encoder_subfolders(tmp_path: Path) -> None:
    make_run(tmp_path, {"b": run_of(), "a": run_of()})
    (tmp_path / "plots").mkdir()
    assert [p.name for p in find_outputs([tmp_path])] == ["a", "b"]


def test_a_ladder_output_is_judged_by_the_rung_its_master_lists_first(tmp_path: Path) -> None:
    """Folders as ``meshenc encoder --ladder`` leaves them: a master playlist above the rungs."""
    for name, low in (("a", run_of()), ("b", run_of(different={FIRST + 5: b"other"}))):
        write_folder(tmp_path / name / "160x96", run_of(different={FIRST + 7: name.encode()}))
        write_folder(tmp_path / name / "96x64", low)
        (tmp_path / name / "master.m3u8").write_text(
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,RESOLUTION=160x96\n160x96/index.m3u8\n"
            "#EXT-X-STREAM-INF:BANDWIDTH=1,RESOLUTION=96x64\n96x64/index.m3u8\n"
        )
    result = verify([tmp_path], lock_in=0, frames=GOP)
    assert [(e.name, e.folder.name) for e in result.encoders] == [("a", "160x96"), ("b", "160x96")]
    assert [s.segment for s in result.segments if not s.identical] == [FIRST + 7]


def test_duplicate_names_and_negative_windows_are_refused(tmp_path: Path) -> None:
    one = write_folder(tmp_path / "x" / "a", run_of())
    two = write_folder(tmp_path / "y" / "a", run_of())
    with pytest.raises(ValueError, match="same name"):
        verify([one, two], frames=GOP)
    with pytest.raises(ValueError, match="lock_in"):
        verify([one], lock_in=-1, frames=GOP)


def test_count_frames_reads_nothing_from_a_file_that_is_not_mpeg_ts(tmp_path: Path) -> None:
    junk = tmp_path / segment_name(1)
    junk.write_bytes(b"\x00" * 1000)
    assert count_frames(junk) == 0
    assert count_frames(tmp_path / "missing.ts") == 0


def test_cmaf_folders_are_judged_by_their_m4s_segments(tmp_path: Path) -> None:
    """Real CMAF from two writers: identical folders are locked; a segment swapped for another
    is a misaligned copy whose frames are counted from the segment behind its init."""
    fmt = VideoFormat(160, 96, FrameRate(30))
    params = EncoderParams.for_format(fmt, gop=6, bitrate_kbps=300)
    source, encoder = SyntheticSource(fmt), GopEncoder(params)
    frames = [encoder.encode(600 + n, source.read()) for n in range(5 * params.gop)]
    folders = []
    for name in "ab":
        writer = SegmentWriter(tmp_path / name, params, fmt=SegmentFormat.CMAF)
        for frame in frames:
            writer.add(frame)
        writer.finish()
        folders.append(tmp_path / name)
    output = scan_output(folders[0])
    assert output.format is SegmentFormat.CMAF
    assert sorted(output.digests) == list(range(100, 105))
    assert output.playlist_problems == ()
    assert output.path(100).name == segment_name(100, SegmentFormat.CMAF)
    assert count_frames(output.path(100)) == params.gop
    assert find_outputs([tmp_path]) == folders
    assert verify(folders, lock_in=0).locked
    swapped = folders[1] / segment_name(103, SegmentFormat.CMAF)
    swapped.write_bytes((folders[1] / segment_name(102, SegmentFormat.CMAF)).read_bytes())
    result = verify(folders, lock_in=0)
    assert not result.locked
    assert result.misaligned_frames == params.gop
    # A copy its encoder wrote aside is read behind the same init, as a CMAF segment.
    aside = folders[1] / aside_name(103, SegmentFormat.CMAF)
    swapped.rename(aside)
    assert count_frames(aside) == params.gop
    result = verify(folders, lock_in=0)
    assert result.misaligned_frames == params.gop and not result.uncounted


# -- the command line ------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    return result.exit_code, result.output


def test_cli_exit_code_is_zero_when_locked_and_one_when_not(tmp_path: Path) -> None:
    good = make_run(tmp_path / "good", {n: run_of() for n in "ab"})
    bad = make_run(
        tmp_path / "bad", {"a": run_of(), "b": run_of(different={FIRST + 6: b"drifted"})}
    )
    code, output = invoke(*map(str, good), "--gop", str(GOP))
    assert code == 0, output
    assert "LOCKED" in output and "NOT LOCKED" not in output
    code, output = invoke(str(tmp_path / "bad"), "--gop", str(GOP))
    assert code == 1, output
    assert "NOT LOCKED" in output and f"{GOP} misaligned frames" in output
    # A wider lock-in window forgives the difference.
    code, _ = invoke(*map(str, bad), "--gop", str(GOP), "--lock-in", "7")
    assert code == 0


def test_cli_json_is_one_object_with_the_verdict(tmp_path: Path) -> None:
    make_run(tmp_path, {"a": run_of(), "b": run_of(different={FIRST + 9: b"z"}), "c": run_of()})
    code, output = invoke(str(tmp_path), "--json", "--gop", str(GOP))
    assert code == 1
    data = json.loads(output)
    assert data["locked"] is False
    assert data["misaligned_frames"] == GOP
    differing = [s for s in data["segments"] if not s["agreed"] and s["judged"]]
    assert [s["segment"] for s in differing] == [FIRST + 9]
    assert differing[0]["copies"]["b"]["matches"] is False


def test_cli_refuses_fewer_than_two_encoders_and_missing_folders(tmp_path: Path) -> None:
    (one,) = make_run(tmp_path, {"a": run_of()})
    code, output = invoke(str(one))
    assert code == 2 and "at least two" in output
    code, output = invoke(str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in output
    code, _ = invoke(str(one), str(one), "--lock-in", "-1")
    assert code == 2


def test_differing_segments_that_do_not_demux_are_reported_as_uncounted(tmp_path: Path) -> None:
    drifted = run_of(different={FIRST + 5: b"late"})
    make_run(tmp_path, {"a": run_of(), "b": run_of(), "c": drifted})
    result = verify([tmp_path], lock_in=3)  # the real frame counter: made-up bytes do not demux
    assert result.uncounted == (FIRST + 5,)
    assert result.misaligned_frames == 0
    code, output = invoke(str(tmp_path))
    assert code == 1 and "could not be demuxed" in output


def test_cli_judges_a_placed_rung_among_its_holders_and_refuses_to_mix_rungs(
    tmp_path: Path,
) -> None:
    """Rungs placed on different encoders: ``a`` writes 160x96 only, ``b`` both, ``c`` 96x64
    only. Without ``--rung`` the masters' first rungs differ, so the comparison would mix
    rungs: refused, naming the rungs. ``--rung 96x64`` judges the encoders that wrote it."""
    for name, rungs in (("a", ["160x96"]), ("b", ["160x96", "96x64"]), ("c", ["96x64"])):
        for rung in rungs:
            different = {FIRST + 4: b"drifted"} if (name, rung) == ("c", "96x64") else None
            write_folder(tmp_path / name / rung, run_of(different=different))
        (tmp_path / name / "master.m3u8").write_text(
            "#EXTM3U\n" + "".join(f"#EXT-X-STREAM-INF:BANDWIDTH=1\n{r}/index.m3u8\n" for r in rungs)
        )
    code, output = invoke(str(tmp_path), "--gop", str(GOP))
    assert code == 2 and "--rung (160x96, 96x64)" in output
    code, output = invoke(str(tmp_path), "--gop", str(GOP), "--rung", "160x96", "--json")
    assert code == 0 and [e["name"] for e in json.loads(output)["encoders"]] == ["a", "b"]
    code, output = invoke(str(tmp_path), "--gop", str(GOP), "--rung", "96x64", "--json")
    assert code == 1 and json.loads(output)["misaligned_frames"] == GOP


def test_cli_judges_one_channel_of_encoders_that_encode_several(tmp_path: Path) -> None:
    """``--channel``: each encoder's ``FOLDER/NAME``, named after the encoder, from encoder
    folders or a run's folder; the other channel's differences do not count."""
    for encoder in ("e1", "e2"):
        write_folder(tmp_path / encoder / "news", run_of())
    write_folder(tmp_path / "e1" / "sport", run_of())
    write_folder(tmp_path / "e2" / "sport", run_of(different={FIRST + 6: b"drifted"}))
    code, output = invoke("--channel", "news", "--json", "--gop", str(GOP), str(tmp_path))
    assert code == 0, output
    assert [e["name"] for e in json.loads(output)["encoders"]] == ["e1", "e2"]
    folders = [str(tmp_path / "e1"), str(tmp_path / "e2")]
    code, output = invoke("--channel", "sport", "--gop", str(GOP), *folders)
    assert code == 1 and "NOT LOCKED" in output
    code, output = invoke("--channel", "..", *folders)
    assert code == 2 and "--channel" in output
