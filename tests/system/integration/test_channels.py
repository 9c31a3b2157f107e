"""Two real encoder processes, each encoding two channels from two live sources.

Channel ``a`` is the test pattern and channel ``b`` a clip, both live over UDP (``meshenc
source``), to each encoder over its own path. Each encoder runs both with ``--channel``: one
mesh port, one stream per neighbour and channel. Midway an operator asks one encoder for a much
lower bitrate on channel ``b`` alone. The verdicts come from the segment files: each channel's
segments that both encoders served (under the shared name: a copy an encoder could not vouch
for goes aside) are byte-identical after lock-in; the change took effect on ``b``'s
segments at the segment the encoders agreed, on both, and on none of ``a``'s (the bitrate
libx264 wrote into each segment), so each channel keeps a timeline and agreements of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from meshenc.cli.inspect import ask_states
from meshenc.cli.verify import verify as verify_command
from meshenc.core.timecode import FrameRate
from meshenc.local.ports import free_ports
from meshenc.report.verify import compare, scan_output
from meshenc.v1 import mesh_pb2, mesh_pb2_grpc
from services.encoder.media.segments import segment_number
from services.source.clip import write_test_clip
from tests.conftest import LiveSource, wait_or_kill

GOP = 30  # 1 s segments at 30 fps
DURATION = 15.0
#: Seconds after both encoders answer that the change is asked for.
CHANGE_AFTER = 5.0
BITRATE_KBPS = 1500  # the encoders' default
LOW_BITRATE_KBPS = 100
ENCODERS = ("left", "right")
CHANNELS = ("a", "b")
PATHS = ("delay_ms=20&jitter_ms=2", "delay_ms=60&jitter_ms=3")


def _x264_bitrate(path: Path) -> int:
    """The bitrate libx264 wrote into the segment's SEI (its options, ``bitrate=N``)."""
    found = re.search(rb"bitrate=(\d+)", path.read_bytes())
    assert found is not None, path
    return int(found.group(1))


def _call(port: int, method: str, request: object, *, timeout: float = 15.0) -> object:
    """One call, waiting up to ``timeout`` for the encoder to serve."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = mesh_pb2_grpc.EncoderMeshStub(channel)
        return getattr(stub, method)(request, timeout=timeout, wait_for_ready=True)


@pytest.mark.slow
def test_each_channel_is_identical_across_its_encoders_and_agrees_on_its_own(
    tmp_path: Path, live_source: LiveSource
) -> None:
    clip = tmp_path / "clip.ts"
    write_test_clip(clip, seconds=8.0, frame_rate=FrameRate(30), width=160, height=96)
    sources = {
        "a": live_source.start(PATHS, name="source-a"),
        "b": live_source.start(PATHS, source=str(clip), name="source-b"),
    }
    ports = dict(zip(ENCODERS, free_ports(len(ENCODERS)), strict=True))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, name in enumerate(ENCODERS):
            peers = ",".join(f"{p}=127.0.0.1:{ports[p]}" for p in ENCODERS if p != name)
            command = [
                sys.executable, "-m", "meshenc", "encoder", "--insecure", "--id", name,
                "--listen", f"127.0.0.1:{ports[name]}", "--peers", peers,
                "--out", str(tmp_path / name), "--size", "160x96", "--gop", str(GOP),
                "--duration", str(DURATION),
            ]  # fmt: skip
            for channel in CHANNELS:
                command += ["--channel", f"{channel}={sources[channel][i]}"]
            with (tmp_path / f"{name}.log").open("wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        for name in ENCODERS:  # a busy machine may take many seconds to start a process
            _call(ports[name], "GetState", mesh_pb2.GetStateRequest(), timeout=60.0)
        time.sleep(CHANGE_AFTER)
        answer = _call(
            ports["left"],
            "SetParameters",
            mesh_pb2.SetParametersRequest(bitrate_kbps=LOW_BITRATE_KBPS, channel="b"),
        )
        assert isinstance(answer, mesh_pb2.SetParametersResponse)
        effective = answer.effective_segment
        # What `meshenc inspect status --channel b` asks.
        (answer_b,) = asyncio.run(ask_states([f"127.0.0.1:{ports['right']}"], 15.0, None, "b"))
        state = answer_b.state
        assert state is not None, answer_b.problem
        assert (state.channel, state.input.source) == ("b", sources["b"][1])
    finally:
        wait_or_kill(processes, DURATION + 30.0)
    assert [p.returncode for p in processes] == [0, 0]

    digests: dict[str, set[str]] = {}
    for channel in CHANNELS:
        outputs = [scan_output(tmp_path / name / channel, name) for name in ENCODERS]
        verdict = compare(outputs, lock_in=4)
        judged = [s.segment for s in verdict.segments if s.judged]
        # What the encoders served: both copies under the shared name. A copy written aside
        # (its encoder could not vouch for it: a busy machine made it drop pictures) may
        # differ, and is never served.
        aside = {output.name: output.aside for output in outputs}
        served = [
            s
            for s in verdict.segments
            if s.judged
            and len(s.copies) == len(ENCODERS)
            and not any(s.segment in aside[c.encoder] for c in s.copies)
        ]
        print(
            f"channel {channel}: {verdict.judged} segments judged, {verdict.agreed} identical "
            f"on both; {len(served)} served by both, {sum(s.agreed for s in served)} identical"
        )
        assert len(served) >= 6, channel
        assert all(s.agreed for s in served), [s.segment for s in served if not s.agreed]
        # The same verdict from `meshenc verify --channel` on the run's folder.
        cli = CliRunner().invoke(
            verify_command, ["--channel", channel, "--lock-in", "4", "--json", str(tmp_path)]
        )
        assert cli.exit_code == (0 if verdict.locked else 1), cli.output
        answer = json.loads(cli.output)
        assert [e["name"] for e in answer["encoders"]] == list(ENCODERS)
        assert answer["judged_segments"] == verdict.judged
        digests[channel] = {c.digest for s in verdict.segments for c in s.copies}
        # The bitrate each segment was encoded at, on both encoders: b's from the agreed
        # segment on is the low one; a's never changed.
        for name in ENCODERS:
            folder = tmp_path / name / channel
            rates = {
                number: _x264_bitrate(path)
                for path in folder.glob("seg-*.ts")
                if (number := segment_number(path.name)) is not None and number in judged
            }
            low = {n for n, rate in rates.items() if rate == LOW_BITRATE_KBPS}
            expected = {n for n in rates if n >= effective} if channel == "b" else set()
            assert low == expected, (name, channel, effective, rates)
            assert all(rates[n] == BITRATE_KBPS for n in set(rates) - low), (name, channel)
            print(
                f"  {name}/{channel}: {len(rates)} judged segments, {len(low)} at "
                f"{LOW_BITRATE_KBPS} kbit/s (the change was agreed from segment {effective})"
            )
        assert channel == "a" or any(n >= effective for n in judged), "no segment after it"
    assert not digests["a"] & digests["b"]  # two sources, two different outputs
