"""The run's plan, its output folder and whether a browser plays, without starting anything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import av
import pytest
from click.testing import CliRunner

from meshenc.cli.encoder import encoder as encoder_command
from meshenc.cli.main import cli
from meshenc.cli.manager import manager as manager_command
from meshenc.local import demo, player
from meshenc.local.demo import (
    DemoConfig,
    parse_change,
    plan_run,
    player_skipped,
    ports_needed,
    prepare_out_dir,
)
from services.encoder.media.containers import SegmentFormat


@pytest.mark.parametrize(("encoders", "faults"), [(2, True), (3, True), (6, True), (12, False)])
def test_plan_gives_every_encoder_its_own_clock_and_a_mesh_that_survives_a_failure(
    encoders: int, faults: bool
) -> None:
    config = DemoConfig(encoders=encoders, faults=faults, seed=7)
    ports = list(range(20_000, 20_000 + ports_needed(config)))
    plan = plan_run(config, ports)
    names = [e.name for e in plan.encoders]
    assert len(names) == encoders + int(faults) == len(set(names))
    drifts = [e.drift_ppm for e in plan.encoders]
    assert len(set(drifts)) == len(drifts), "two encoders share a drift"
    assert all(abs(d) <= config.max_drift_ppm for d in drifts)
    assert max(drifts) - min(drifts) == pytest.approx(2 * config.max_drift_ppm)
    taken = [p for e in plan.encoders for p in (e.port, e.input_port, e.output_port)]
    assert len(set(taken) | set(plan.registry_ports)) == len(ports), "two uses of one port"
    delays = [e.ingest_delay_ms for e in plan.encoders]
    assert len(set(delays)) == len(delays), "two encoders share a path from the source"
    for encoder in plan.encoders:
        assert encoder.name not in encoder.peers
        for peer in encoder.peers:  # links are symmetric
            assert encoder.name in plan.encoder(peer).peers
    # The initial encoders stay connected when any one of them is killed.
    initial = {e.name for e in plan.initial}
    for victim in initial:
        alive = initial - {victim}
        start = next(iter(alive))
        reached, frontier = {start}, [start]
        while frontier:
            for peer in plan.encoder(frontier.pop()).peers:
                if peer in alive and peer not in reached:
                    reached.add(peer)
                    frontier.append(peer)
        assert reached == alive, f"killing {victim} splits the mesh"
    joiner = plan.joiner
    assert (joiner is not None) == faults
    if joiner is not None:
        assert joiner.peers, "the newcomer must have neighbours that expect it"
    assert plan_run(config, ports) == plan, "the plan must depend only on its inputs"


@pytest.mark.parametrize("fmt", list(SegmentFormat))
def test_every_encoder_is_started_with_the_runs_segment_format(fmt: SegmentFormat) -> None:
    config = DemoConfig(encoders=2, output_format=fmt)
    run = demo.DemoRun(config, plan_run(config, list(range(20_000, 20_000 + ports_needed(config)))))
    for encoder in run.plan.encoders:
        args = run.encoder_args(encoder, "http://127.0.0.1:2379")
        assert args[args.index("--format") + 1] == fmt.value


def test_plan_rejects_a_timeline_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="kill_at"):
        DemoConfig(duration=30.0, kill_at=20.0, join_at=10.0)
    with pytest.raises(ValueError, match="at least 2"):
        DemoConfig(encoders=1)
    with pytest.raises(ValueError, match="starve_at"):
        DemoConfig(duration=30.0, starve_at=28.0, starve_for=4.0)  # ends after the run


def _state(pid: int) -> str:
    """The process's state letter in ``/proc`` (``T``: stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


def test_a_starved_process_is_stopped_most_of_the_time_and_left_running_when_cancelled() -> None:
    """``meshenc up --starve-at``'s starvation, on a real process: stopped (state ``T``) in
    most samples while it lasts, and running again once it is cancelled part-way."""
    child = subprocess.Popen(["sleep", "60"])
    try:

        async def starve_and_sample() -> tuple[list[str], int]:
            def pause() -> None:
                os.kill(child.pid, signal.SIGSTOP)

            def resume() -> None:
                os.kill(child.pid, signal.SIGCONT)

            task = asyncio.create_task(demo.starve(pause, resume, seconds=30.0))
            states = []
            for _ in range(20):
                await asyncio.sleep(0.023)
                states.append(_state(child.pid))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return states, child.pid

        states, pid = asyncio.run(starve_and_sample())
        assert states.count("T") > len(states) / 2, states
        assert _state(pid) != "T"  # left running
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("192x108@400", (400, (192, 108))), ("192x108", (0, (192, 108))), ("@400", (400, None))],
)
def test_a_parameter_change_names_a_size_a_bitrate_or_both(
    text: str, expected: tuple[int, tuple[int, int] | None]
) -> None:
    assert parse_change(text) == expected


@pytest.mark.parametrize("text", ["", "@", "191x108", "192x108@63", "@fast", "192x@400", "8x8"])
def test_a_parameter_change_out_of_bounds_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_change(text)


def test_the_abr_player_needs_placed_rungs_and_the_origin() -> None:
    with pytest.raises(ValueError, match="placed rungs"):
        DemoConfig(abr_link_kbps=300)
    with pytest.raises(ValueError, match="placed rungs"):
        DemoConfig(size="320x180", ladder="320x180@400,160x90@200", manager=True, origin=False,
                   abr_link_kbps=300)  # fmt: skip
    DemoConfig(size="320x180", ladder="320x180@400,160x90@200", manager=True, abr_link_kbps=300)


def test_a_parameter_change_needs_its_time_and_fits_the_run() -> None:
    with pytest.raises(ValueError, match="both"):
        DemoConfig(change="192x108")
    with pytest.raises(ValueError, match="change_at"):
        DemoConfig(duration=30.0, change="192x108", change_at=30.0)
    with pytest.raises(ValueError, match="ladder"):
        DemoConfig(size="320x180", ladder="320x180@400,160x90@200", change="192x108", change_at=9)
    DemoConfig(size="320x180", ladder="320x180@400,160x90@200", change="@300", change_at=9)


def test_out_dir_of_a_previous_run_is_cleared_and_any_other_is_refused(tmp_path: Path) -> None:
    previous = tmp_path / "previous"
    (previous / "e0").mkdir(parents=True)
    (previous / "e0" / "seg-000000000001.ts").write_bytes(b"x")
    (previous / "e1" / "320x180").mkdir(parents=True)  # an encoder's ABR ladder
    (previous / "e1" / "320x180" / "seg-000000000001.ts").write_bytes(b"x")
    (previous / "e1" / "master.m3u8").write_text("#EXTM3U\n")
    (previous / "e2" / "notes").mkdir(parents=True)  # a folder in a folder that is not a rung
    (previous / "e2" / "notes" / "todo.txt").write_text("mine")
    (previous / "logs").mkdir()
    (previous / "player").mkdir()
    (previous / "player" / "screenshot.png").write_bytes(b"png")
    (previous / "events.jsonl").write_text("")
    (previous / "notes.txt").write_text("mine")
    prepare_out_dir(previous)
    assert sorted(p.name for p in previous.iterdir()) == ["e2", "notes.txt"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError):
        prepare_out_dir(foreign)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_the_run_says_why_no_browser_plays(monkeypatch: pytest.MonkeyPatch) -> None:
    assert player_skipped(DemoConfig(player=False)) == "--no-player"
    assert player_skipped(DemoConfig(origin=False)) == "no origin to play (--no-origin)"
    monkeypatch.setattr(demo, "unavailable", lambda: "chromium is not installed")
    assert player_skipped(DemoConfig()) == "chromium is not installed"
    monkeypatch.setattr(demo, "unavailable", lambda: None)
    assert player_skipped(DemoConfig()) is None


def test_player_without_an_origin_or_a_browser_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    refused = runner.invoke(cli, ["up", "--player", "--no-origin"])
    assert refused.exit_code == 2 and "needs --origin" in refused.output
    monkeypatch.setattr(player, "unavailable", lambda: "chromium is not installed")
    refused = runner.invoke(cli, ["up", "--player"])
    assert refused.exit_code == 2 and "--player: chromium is not installed" in refused.output


def test_a_ladder_goes_to_every_encoder_in_place_of_the_size(tmp_path: Path) -> None:
    config = DemoConfig(
        out=tmp_path,
        ladder="320x180@600,160x90@200",
        size="320x180",
        rung_threads=2,
        tls=False,
        player=False,
    )
    run = demo.DemoRun(config)
    run.origin_url = "http://127.0.0.1:8080"
    for encoder in run.plan.encoders:
        args = run.encoder_args(encoder, "http://127.0.0.1:2379")
        assert args[args.index("--ladder") + 1] == "320x180@600,160x90@200"
        assert args[args.index("--rung-threads") + 1] == "2"
        assert "--size" not in args and "--bitrate-kbps" not in args  # the ladder gives both
    source = run.source_args()
    assert source is not None and source[source.index("--size") + 1] == "320x180"
    assert run.playback_url == "http://127.0.0.1:8080/320x180/index.m3u8"
    with pytest.raises(ValueError, match="largest rung's, 320x180"):
        DemoConfig(ladder="320x180@600,160x90@200")  # the default size is not the top rung's
    refused = CliRunner().invoke(cli, ["up", "--ladder", "320x180@600", "--size", "320x180"])
    assert refused.exit_code == 2 and "leave out --size" in refused.output
    refused = CliRunner().invoke(cli, ["up", "--ladder", "320x180@600,321x180@100"])
    assert refused.exit_code == 2 and "rung '321x180@100'" in refused.output
    refused = CliRunner().invoke(cli, ["up", "--rung-threads", "2"])
    assert refused.exit_code == 2 and "encodes the rungs of --ladder" in refused.output


def test_a_ladder_under_the_manager_is_placed_rung_by_rung(tmp_path: Path) -> None:
    """With the manager planning the links, ``up --ladder`` hands it the rungs as work units
    of channel 0, each on ``--redundancy`` encoders; without a ladder, or with static links,
    the manager places nothing (every encoder writes its whole output, as before)."""
    options = frozenset({"--manager", "--topology"})
    ladder, size = "320x180@600,160x90@200", "320x180"
    placed = demo.DemoRun(
        DemoConfig(
            out=tmp_path / "p",
            tls=False,
            manager=True,
            encoder_options=options,
            redundancy=3,
            ladder=ladder,
            size=size,
        )
    )
    args = placed.manager_args("http://127.0.0.1:2379")
    assert args[args.index("--work-units") + 1] == "0/320x180,0/160x90"
    assert args[args.index("--redundancy") + 1] == "3"
    assert float(args[args.index("--frame-budget") + 1]) == pytest.approx(1 / 30, abs=1e-6)
    for config in (
        DemoConfig(out=tmp_path / "n", tls=False, manager=True, encoder_options=options),
        DemoConfig(
            out=tmp_path / "s",
            tls=False,
            manager=True,
            encoder_options=options,
            managed_topology=False,
            ladder=ladder,
            size=size,
        ),
    ):
        assert "--work-units" not in demo.DemoRun(config).manager_args("http://127.0.0.1:2379")
    with pytest.raises(ValueError, match=r"redundancy must be 1\.\.2"):
        DemoConfig(encoders=2, redundancy=3)
    refused = CliRunner().invoke(cli, ["up", "--redundancy", "2"])
    assert refused.exit_code == 2 and "places the rungs of --ladder" in refused.output


def test_several_channels_give_every_encoder_each_channel_over_its_own_path(
    tmp_path: Path,
) -> None:
    """``up --channels 3 --ladder``: each encoder takes in every channel on a port of its own
    (``--channel NAME=URL``, as ``meshenc encoder`` parses it), each channel's source sends to
    that port of every encoder (channel 0 the test pattern, the others their clips), and the
    manager places every rung of every channel."""
    ladder, size = "320x180@600,160x90@200", "320x180"
    config = DemoConfig(
        out=tmp_path,
        tls=False,
        manager=True,
        encoder_options=frozenset({"--manager", "--topology"}),
        ladder=ladder,
        size=size,
        channels=3,
    )
    ports = list(range(20_000, 20_000 + ports_needed(config)))
    run = demo.DemoRun(config, plan_run(config, ports))
    assert run.plan.manager_port is not None
    taken = [p for e in run.plan.encoders for p in (e.port, e.output_port, *e.input_ports)]
    taken += [*run.plan.registry_ports, run.plan.manager_port]
    assert sorted(taken) == ports, "every port used once"
    for encoder in run.plan.encoders:
        args = run.encoder_args(encoder, "http://127.0.0.1:2379")
        assert "--source" not in args
        params = encoder_command.make_context("encoder", args[1:]).params
        assert params["channels"] == {
            str(c): f"udp://127.0.0.1:{encoder.input_ports[c]}" for c in range(3)
        }
    for channel in range(3):
        source = run.source_args(channel)
        assert source is not None
        targets = [source[i + 1].partition("?")[0] for i, a in enumerate(source) if a == "--to"]
        assert targets == [f"udp://127.0.0.1:{e.input_ports[channel]}" for e in run.plan.encoders]
        given = source[source.index("--input") + 1]
        assert given == ("testpattern" if channel == 0 else str(run.clip_path(channel)))
    args = run.manager_args("http://127.0.0.1:2379")
    units = args[args.index("--work-units") + 1].split(",")
    assert units == [f"{c}/{r}" for c in "012" for r in ("320x180", "160x90")]
    run.origin_url = "http://127.0.0.1:8080"
    assert run.playback_url == "http://127.0.0.1:8080/0/320x180/index.m3u8"
    assert run.master_url is None
    assert run.channel_masters == tuple(f"http://127.0.0.1:8080/{c}/master.m3u8" for c in "012")
    assert run.output_folder("e0") == tmp_path / "e0" / "0"
    with pytest.raises(ValueError, match="stream URL"):
        DemoConfig(channels=2, source="udp://127.0.0.1:5000")
    refused = CliRunner().invoke(cli, ["up", "--channels", "17"])
    assert refused.exit_code == 2 and "--channels" in refused.output


def test_the_dash_player_plays_channel_0s_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CMAF the dash.js player plays the origin's MPD of channel ``0``: at the origin's
    root with one channel, under ``0/`` with several (a placed ladder's channel MPD)."""
    monkeypatch.setattr(demo, "find_dashjs", lambda: tmp_path / "dash.all.min.js")
    for channels, path in ((1, "manifest.mpd"), (2, "0/manifest.mpd")):
        config = DemoConfig(
            out=tmp_path,
            tls=False,
            ladder="320x180@600,160x90@200",
            size="320x180",
            channels=channels,
            output_format=SegmentFormat.CMAF,
        )
        run = demo.DemoRun(config)
        assert run.dash_url is None  # no origin yet
        run.origin_url = "http://127.0.0.1:8080"
        assert run.dash_url == f"http://127.0.0.1:8080/{path}"


def test_channel_clips_differ_from_each_other(tmp_path: Path) -> None:
    """The further channels' clips are of the run's size and differ (their own seeds)."""
    config = DemoConfig(out=tmp_path, tls=False, size="160x96", channels=3, fps="25")
    run = demo.DemoRun(config)
    run._write_clips()
    first, second = (run.clip_path(c) for c in (1, 2))
    assert first.read_bytes() != second.read_bytes()
    with av.open(str(first)) as clip:
        video = clip.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (160, 96)
        assert video.average_rate == 25


def test_autoscaling_plans_spares_that_start_only_when_the_manager_asks() -> None:
    """``--autoscale-max`` plans the spares up front (ports, and certificates with them), after
    the joiner and out of the initial set; the manager gets the bounds; a run without the
    manager planning the links, or with a maximum not above the start, is refused."""
    config = DemoConfig(encoders=3, manager=True, autoscale_max=6, autoscale_cooldown=9.0)
    ports = list(range(21_000, 21_000 + ports_needed(config)))
    plan = plan_run(config, ports)
    assert [e.name for e in plan.initial] == ["e0", "e1", "e2"]
    assert plan.joiner is not None and plan.joiner.name == "e3"
    assert [e.name for e in plan.spares] == ["e4", "e5", "e6"]
    assert len({e.port for e in plan.encoders}) == 7
    run = demo.DemoRun(config, plan)
    assert {"e4", "e5", "e6"} <= set(run.identities())
    args = run.manager_args("http://127.0.0.1:2379")
    # As `meshenc manager` parses them: a flag it did not know would fail here.
    params = manager_command.make_context("manager", args[1:]).params
    assert (params["autoscale_min"], params["autoscale_max"]) == (3, 6)
    assert params["autoscale_cooldown"] == 9.0
    assert params["autoscale_high_water"] == config.autoscale_high_water
    assert "--autoscale-max" not in demo.DemoRun(DemoConfig(manager=True)).manager_args("x")
    with pytest.raises(ValueError, match="manager planning the links"):
        DemoConfig(encoders=3, autoscale_max=6)
    with pytest.raises(ValueError, match=r"autoscale_max must be in 4\.\.64"):
        DemoConfig(encoders=3, manager=True, autoscale_max=3)
    with pytest.raises(ValueError, match="low_water < autoscale_high_water"):
        DemoConfig(manager=True, autoscale_max=8, autoscale_low_water=0.8)


def test_the_manager_s_wish_is_read_only_when_it_is_a_plain_number() -> None:
    assert demo._replicas(b"5") == 5
    for bad in (None, b"", b"-1", b"5.0", b"abc", b"99999"):
        assert demo._replicas(bad) is None


@pytest.mark.parametrize("degree_max", [2, 3, 5])
def test_a_degree_bound_holds_the_static_plan_and_reaches_the_manager(degree_max: int) -> None:
    """``degree_max`` bounds every encoder's links in the run's own plan and is handed to the
    manager as ``meshenc manager`` parses it, the lower bound moved under it where it must."""
    config = DemoConfig(encoders=12, manager=True, degree_max=degree_max)
    plan = plan_run(config, list(range(22_000, 22_000 + ports_needed(config))))
    default = plan_run(
        DemoConfig(encoders=12, manager=True), list(range(22_000, 22_000 + ports_needed(config)))
    )
    assert max(len(e.peers) for e in plan.encoders) <= degree_max
    assert max(len(e.peers) for e in default.encoders) > degree_max  # the bound did the work
    args = demo.DemoRun(config, plan).manager_args("http://127.0.0.1:2379")
    params = manager_command.make_context("manager", args[1:]).params
    assert (params["degree_min"], params["degree_max"]) == (min(3, degree_max), degree_max)
    assert "--degree-max" not in demo.DemoRun(DemoConfig(manager=True)).manager_args("x")
    with pytest.raises(ValueError, match=r"degree_max must be 2\.\.64"):
        DemoConfig(degree_max=1)
