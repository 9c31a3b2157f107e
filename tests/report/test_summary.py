"""summary.json, the plots and report.html from synthetic run folders and recorded events.

The run folders are made up (segment files of made-up bytes, an events.jsonl written line by
line), so failover and join times are known exactly; frames per segment are given because
made-up bytes cannot be demuxed. Real encoders feed the same code in test_recorder.py.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from meshenc.cli.main import cli
from meshenc.core.timecode import FrameRate
from meshenc.local.player import write_skipped
from meshenc.report import PLOTS_DIR, REPORT_NAME, SUMMARY_NAME, write_report
from meshenc.report.playback import PLAYER_DIR
from meshenc.report.plots import IDENTITY_PNG, LEADERS_PNG, OFFSETS_PNG, OFFSETS_PREDICTED_PNG
from meshenc.report.recorder import EVENTS_NAME, StateEvent, read_events
from meshenc.report.summary import arrival_figures, leader_timeline, load_run, summarize
from services.encoder.media.gop import EncoderParams, GopEncoder
from services.encoder.media.ladder import scale_picture
from services.encoder.media.segments import SegmentWriter
from services.encoder.media.source import SyntheticSource, VideoFormat

from .synthetic import FIRST, make_run, run_of, write_folder

GOP = 30
FPS = 30.0  # one segment per second: segment s starts at Unix second s


def state(t: float, encoder: str, *, leader: str = "", group: str = "g1") -> dict[str, Any]:
    timecode = round(t * FPS)
    return {
        "t": t,
        "kind": "state",
        "encoder": encoder,
        "timecode": timecode,
        "segment_number": timecode // GOP,
        "locked": True,
        "error_ns": 150_000 if encoder == "a" else -120_000,
        "predicted_error_ns": 100_000,
        "leader": leader,
        "segment": group,
        "gop": GOP,
        "fps": FPS,
        "neighbours": [{"id": "x", "measured_ns": 1, "predicted_ns": 2, "connected": True}],
        "corrections": {"slew": 1},
    }


def write_events(folder: Path, events: list[dict[str, Any]], *extra_lines: str) -> None:
    lines = [json.dumps(e) for e in events] + list(extra_lines)
    (folder / EVENTS_NAME).write_text("\n".join(lines) + "\n")


def test_failover_runs_from_the_leaders_kill_to_the_next_leader_event(tmp_path: Path) -> None:
    make_run(tmp_path, {n: run_of(FIRST, 10) for n in "abc"})
    write_events(
        tmp_path,
        [
            {"t": 1000.0, "kind": "leader", "segment": "g1", "leader": "a", "revision": 5},
            {"t": 1002.0, "kind": "killed", "encoder": "c"},  # not a leader: no failover
            {"t": 1004.0, "kind": "killed", "encoder": "a"},
            {"t": 1004.18, "kind": "leader", "segment": "g1", "leader": "b", "revision": 9},
        ],
    )
    summary = summarize(load_run(tmp_path, frames=GOP))
    assert len(summary.failovers) == 1
    failover = summary.failovers[0]
    assert (failover.killed, failover.new_leader) == ("a", "b")
    assert failover.ms == pytest.approx(180.0)
    assert summary.line.endswith("failover 180 ms")


def test_without_leader_events_leaders_come_from_the_getstate_answers(tmp_path: Path) -> None:
    make_run(tmp_path, {n: run_of(FIRST, 6) for n in "ab"})
    write_events(
        tmp_path,
        [
            state(1000.0, "a", leader="a"),
            state(1000.0, "b", leader="a"),
            {"t": 1001.0, "kind": "killed", "encoder": "a"},
            state(1001.5, "b", leader="a"),  # not yet noticed
            state(1002.0, "b", leader="b"),
        ],
    )
    run = load_run(tmp_path, frames=GOP)
    assert [(c.leader, c.source) for c in leader_timeline(run.events)] == [
        ("a", "state"),
        ("b", "state"),
    ]
    (failover,) = summarize(run).failovers
    assert failover.ms == pytest.approx(1000.0)


def test_a_killed_leader_without_a_successor_has_no_failover_time(tmp_path: Path) -> None:
    make_run(tmp_path, {n: run_of(FIRST, 6) for n in "ab"})
    write_events(
        tmp_path,
        [
            {"t": 1000.0, "kind": "leader", "segment": "g1", "leader": "a", "revision": 1},
            {"t": 1001.0, "kind": "killed", "encoder": "a"},
        ],
    )
    summary = summarize(load_run(tmp_path, frames=GOP))
    assert summary.failovers[0].new_leader is None
    assert summary.failover_ms is None
    assert "failover —" in summary.line


def test_join_runs_to_the_start_of_the_first_segment_with_the_majoritys_bytes(
    tmp_path: Path,
) -> None:
    joiner = run_of(FIRST + 10, 10, different={FIRST + 10: b"j0", FIRST + 11: b"j1"})
    make_run(tmp_path, {"a": run_of(FIRST, 20), "b": run_of(FIRST, 20), "c": joiner})
    write_events(
        tmp_path,
        [
            state(FIRST + 1.0, "a"),
            {"t": FIRST + 9.5, "kind": "joined", "encoder": "c"},
        ],
    )
    summary = summarize(load_run(tmp_path, frames=GOP))
    (join,) = summary.joins
    assert join.first_agreed_segment == FIRST + 12
    assert join.ms == pytest.approx(2500.0)  # segment FIRST+12 starts at Unix second FIRST+12
    assert summary.locked  # the joiner's first two segments were its lock-in
    assert summary.lock_in_misaligned_frames == 2 * GOP


def test_a_joiner_of_placed_units_is_timed_in_the_unit_it_wrote(tmp_path: Path) -> None:
    """Placed units: the joiner writes none of the headline unit (the one most encoders
    wrote), so its join is found in the unit it does write."""
    for name in ("a", "b", "c"):
        write_folder(tmp_path / name / "0" / "160x96", run_of(FIRST, 20))
    for name in ("a", "b"):
        write_folder(tmp_path / name / "0" / "96x64", run_of(FIRST, 20))
    joiner = run_of(FIRST + 10, 10, different={FIRST + 10: b"j0"})
    write_folder(tmp_path / "d" / "0" / "96x64", joiner)
    write_events(
        tmp_path,
        [state(FIRST + 1.0, "a"), {"t": FIRST + 9.5, "kind": "joined", "encoder": "d"}],
    )
    summary = summarize(load_run(tmp_path, frames=GOP))
    assert summary.encoders == ("a", "b", "c", "d")  # every encoder, of any unit
    (join,) = summary.joins
    assert join.first_agreed_segment == FIRST + 11
    assert join.ms == pytest.approx(1500.0)


def test_join_time_is_unknown_without_recorded_timing(tmp_path: Path) -> None:
    make_run(tmp_path, {n: run_of(FIRST, 5) for n in "ab"})
    write_events(tmp_path, [{"t": FIRST + 0.5, "kind": "joined", "encoder": "b"}])
    (join,) = summarize(load_run(tmp_path, frames=GOP)).joins
    assert join.ms is None


def test_lines_that_do_not_fit_the_schema_are_skipped_and_counted(tmp_path: Path) -> None:
    write_events(
        tmp_path,
        [state(1.0, "a"), {"t": 2.0, "kind": "stopped", "encoder": "a"}],
        '{"t": 3.0, "kind": "teleported", "encoder": "a"}',  # a kind this version lacks
        '{"t": "soon", "kind": "killed", "encoder": "a"}',  # a wrong type
        '{"t": 4.0, "kind": "state", "encoder": "a", "timec',  # cut off by a crash
    )
    log = read_events(tmp_path / EVENTS_NAME)
    assert [e["kind"] for e in log.events] == ["state", "stopped"]
    assert log.skipped_lines == 3


def test_write_report_writes_summary_pngs_and_a_page_that_links_them(tmp_path: Path) -> None:
    hostile = "<script>evil"
    make_run(
        tmp_path,
        {"a": run_of(FIRST, 12), hostile: run_of(FIRST, 12, different={FIRST + 8: b"x"})},
    )
    write_events(
        tmp_path,
        [
            {"t": FIRST + 0.0, "kind": "started", "encoder": "a"},
            {"t": FIRST + 0.1, "kind": "leader", "segment": "g1", "leader": "a", "revision": 1},
            *(state(FIRST + i / 2, "a", leader="a") for i in range(20)),
            {
                "t": FIRST + 3.0,
                "kind": "correction",
                "encoder": "a",
                "at": FIRST + 2.9,
                "correction": "drop",
                "shift_ns": -33_000_000,
                "rate_ppb": 0,
                "lead_ns": 12_000_000,
                "proposal_id": 4,
            },
            {"t": FIRST + 9.0, "kind": "killed", "encoder": "a"},
        ],
    )
    summary = write_report(tmp_path, frames=GOP)

    data = json.loads((tmp_path / SUMMARY_NAME).read_text())
    assert data["encoders"] == sorted(["a", hostile])
    assert data["segments"] == 12
    assert data["misaligned_frames"] == GOP  # the one differing copy past lock-in
    assert data["corrections"] == {"drop": 1}
    assert data["line"] == summary.line
    assert data["failovers"][0]["new_leader"] is None

    page = (tmp_path / REPORT_NAME).read_text()
    for name in (OFFSETS_PNG, OFFSETS_PREDICTED_PNG, LEADERS_PNG, IDENTITY_PNG):
        png = tmp_path / PLOTS_DIR / name
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        image = imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert f'src="{PLOTS_DIR}/{name}"' in page
    assert hostile not in page and "&lt;script&gt;evil" in page
    assert escape(summary.line) in page


def test_report_cli_rebuilds_the_report_of_a_finished_run(tmp_path: Path) -> None:
    make_run(tmp_path, {n: run_of(FIRST, 6) for n in "ab"})
    (tmp_path / "a" / "encoder.log").write_text("not a segment\n")
    write_skipped(tmp_path / PLAYER_DIR, "--no-player")
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--lock-in", "1"])
    assert result.exit_code == 0, result.output
    assert "2 encoders, 6 segments, 100 % locked after segment 0" in result.output
    # A skipped player is neither green nor red: the page says "skipped" as the terminal does.
    page = (tmp_path / REPORT_NAME).read_text()
    assert '<p class="verdict skipped">player: skipped (--no-player)</p>' in page
    assert json.loads((tmp_path / SUMMARY_NAME).read_text())["judged_segments"] == 5


def test_report_cli_rebuilds_the_report_of_a_run_of_channels(tmp_path: Path) -> None:
    """A run of several channels keeps its segments in ``<encoder>/<channel>/<rung>/``."""
    for name in ("a", "b"):
        write_folder(tmp_path / name / "0" / "160x96", run_of(FIRST, 6))
        write_folder(tmp_path / name / "1" / "160x96", run_of(FIRST, 6))
    write_events(tmp_path, [])
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--lock-in", "1"])
    assert result.exit_code == 0, result.output
    rungs = json.loads((tmp_path / SUMMARY_NAME).read_text())["rungs"]
    assert [(r["rung"], r["locked"]) for r in rungs] == [("0/160x96", True), ("1/160x96", True)]
    assert all(r["origin"] is None for r in rungs)  # no origin in this run
    # The page has a row per unit: its holders and copies.
    page = (tmp_path / REPORT_NAME).read_text()
    units = page.split("<h2>Work units</h2>", 1)[1].split("<h2>", 1)[0]
    assert units.count("<tr>") == 3 and '<td class="name">1/160x96</td>' in units


def test_report_cli_refuses_a_folder_without_encoder_output(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no encoder folders" in result.output
    assert not (tmp_path / SUMMARY_NAME).exists()


def test_arrival_figures_are_medians_and_delays_relative_to_the_earliest_encoder() -> None:
    def state(jitter_us: int, offset_ns: int, input_state: str = "live") -> StateEvent:
        return StateEvent(
            t=0.0, kind="state", encoder="x", timecode=1, segment_number=0, locked=True,
            error_ns=0, predicted_error_ns=0, leader="", segment="s", gop=30, fps=30.0,
            neighbours=[], corrections={}, input_state=input_state,
            arrival_jitter_us=jitter_us, arrival_offset_ns=offset_ns,
        )  # fmt: skip

    figures = arrival_figures(
        {
            "a": [state(1000, 20_000_000), state(3000, 22_000_000), state(2000, 21_000_000)],
            "b": [state(500, 120_000_000), state(9999, 999_000_000, "lost")],
            "c": [state(0, 0, "waiting")],
        }
    )
    assert figures["a"] == (2.0, 0.0)
    assert figures["b"] == (0.5, 99.0)  # the lost input's figures do not count
    assert figures["c"] == (None, None)


def test_a_placed_ladder_is_judged_rung_by_rung_among_the_encoders_that_wrote_it(
    tmp_path: Path,
) -> None:
    """Rungs placed on different encoders (``meshenc up --ladder``): each encoder's master
    lists only its rungs, so each rung is compared among its holders — the small rung moved
    from ``a`` to ``b`` at segment FIRST+5 while ``c`` held it throughout. The headline is
    the rung most encoders wrote; the run is locked only if every rung is."""
    big, small = "160x96", "96x64"

    def ladder(name: str, rungs: dict[str, dict[int, bytes]]) -> None:
        for rung, contents in rungs.items():
            write_folder(tmp_path / name / rung, contents)
        (tmp_path / name / "master.m3u8").write_text(
            "#EXTM3U\n" + "".join(f"#EXT-X-STREAM-INF:BANDWIDTH=1\n{r}/index.m3u8\n" for r in rungs)
        )

    ladder("a", {big: run_of(FIRST, 10), small: run_of(FIRST, 5)})
    ladder("b", {big: run_of(FIRST, 10), small: run_of(FIRST + 5, 5)})
    ladder("c", {small: run_of(FIRST, 10, different={FIRST + 8: b"other"})})
    ladder("d", {big: run_of(FIRST + 5, 5)})  # none of the headline rung
    write_events(tmp_path, [])
    summary = summarize(load_run(tmp_path, lock_in=0, frames=GOP))
    rungs = {r.rung: r for r in summary.rungs}
    assert dict(rungs[small].holders) == {"a": 5, "b": 5, "c": 10}
    assert rungs[small].min_copies == 2 and rungs[small].shared == 10
    assert rungs[small].identical == 9 and not rungs[small].locked
    assert dict(rungs[big].holders) == {"a": 10, "b": 10, "d": 5} and rungs[big].locked
    assert rungs[big].line == (
        f"{big}: a (10), b (10), d (5); 10 segments, at least 2 copies,"
        " 10/10 shared segments identical"
    )
    # The headline: the small rung, written by three encoders; not locked (c's FIRST+8). The
    # run's encoders are all four.
    assert summary.encoders == ("a", "b", "c", "d") and not summary.locked
    assert summary.line.startswith("4 encoders")
    assert summary.to_json()["rungs"][1]["holders"] == {"a": 5, "b": 5, "c": 10}


def test_several_channels_are_judged_unit_by_unit(tmp_path: Path) -> None:
    """Encoders of several channels (``meshenc up --channels``) write ``<encoder>/<channel>/``,
    with a ladder ``<encoder>/<channel>/<rung>/``: each unit is judged among its holders, under
    ``<channel>`` or ``<channel>/<rung>``; a difference in one channel does not touch another,
    and the run is locked only if every unit is."""
    for name in ("a", "b"):
        write_folder(tmp_path / name / "0" / "160x96", run_of(FIRST, 8))
        write_folder(tmp_path / name / "0" / "96x64", run_of(FIRST, 8))
        drifted = {FIRST + 3: b"other"} if name == "b" else None
        write_folder(tmp_path / name / "1" / "160x96", run_of(FIRST, 8, different=drifted))
    write_folder(tmp_path / "c" / "1" / "160x96", run_of(FIRST, 8))
    write_events(tmp_path, [])
    summary = summarize(load_run(tmp_path, lock_in=0, frames=GOP))
    units = {r.rung: r for r in summary.rungs}
    assert set(units) == {"0/160x96", "0/96x64", "1/160x96"}
    assert units["0/160x96"].locked and units["0/96x64"].locked
    assert dict(units["1/160x96"].holders) == {"a": 8, "b": 8, "c": 8}
    assert units["1/160x96"].identical == 7 and not units["1/160x96"].locked
    # The headline: the unit most encoders wrote, channel 1's big rung; the run is not locked.
    assert summary.encoders == ("a", "b", "c") and not summary.locked

    # Channels without a ladder: the channel is the unit.
    plain = tmp_path / "plain"
    for name in ("a", "b"):
        for channel in ("0", "1"):
            write_folder(plain / name / channel, run_of(FIRST, 6))
    write_events(plain, [])
    summary = summarize(load_run(plain, lock_in=0, frames=GOP))
    assert [r.rung for r in summary.rungs] == ["0", "1"]
    assert summary.locked and summary.encoders == ("a", "b")


def _written_with_a_switch(folder: Path, switch_at: int) -> None:
    """Real segments 100..104 of a 5-frame GOP, 64x48 pictures up to segment ``switch_at``
    and 32x32 from it on, as an encoder writes them after an agreed size change."""
    params = EncoderParams.for_format(VideoFormat(64, 48, FrameRate(30)), gop=5, bitrate_kbps=200)
    source, encoder = SyntheticSource(VideoFormat(64, 48, FrameRate(30))), GopEncoder(params)
    writer = SegmentWriter(folder, params, audio_wait=0.0)
    for i in range(5 * 5):
        timecode = 100 * 5 + i
        picture = source.picture(i)
        if timecode // 5 >= switch_at:
            picture = scale_picture(picture, 32, 32)
        writer.add(encoder.encode(timecode, picture), i * 3000)
    writer.finish()
    encoder.close()


def test_a_size_asked_of_the_mesh_is_judged_on_each_encoders_pictures(tmp_path: Path) -> None:
    """Where each encoder's decoded pictures took the asked size: exactly at the segment the
    change was proposed for, or not; a bitrate alone is not judged."""
    _written_with_a_switch(tmp_path / "a", 102)
    _written_with_a_switch(tmp_path / "b", 102)
    _written_with_a_switch(tmp_path / "c", 103)  # one segment late
    asked = {"t": 5.0, "kind": "parameters", "encoder": "a", "segment": 102}
    write_events(
        tmp_path,
        [
            {**asked, "bitrate_kbps": 0, "width": 32, "height": 32},
            {**asked, "bitrate_kbps": 300, "width": 0, "height": 0},
        ],
    )
    summary = summarize(load_run(tmp_path, frames=5))
    (switch,) = summary.size_switches
    assert (switch.encoder, switch.segment, switch.size) == ("a", 102, (32, 32))
    assert switch.on_time == {"a": True, "b": True, "c": False}
    assert switch.line == "size 32x32 from segment 102 on 2 of 3 encoders"
    assert summary.to_json()["size_switches"][0]["on_time"]["c"] is False
