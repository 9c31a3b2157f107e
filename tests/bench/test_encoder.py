"""The encoder benchmark's own path, without ffmpeg: a real H.264 stream is decoded and the
runtime's frame pipeline runs with three neighbours fed back over the wire conversions and
checks, and every part is timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshenc.bench.encoder import (
    GOP,
    PARTS,
    EncoderSize,
    parse_sizes,
    results_dict,
    run_path,
    write_stream,
)
from meshenc.core import engine


def test_sizes_get_the_default_bitrate_unless_one_is_given() -> None:
    assert parse_sizes("640x360, 1280x720,320x180@900") == [
        EncoderSize(640, 360, 1500),
        EncoderSize(1280, 720, 4000),
        EncoderSize(320, 180, 900),
    ]
    for bad in ("640", "640x360@fast", ","):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_the_path_runs_every_frame_with_the_neighbours_answering(tmp_path: Path) -> None:
    frames = 2 * GOP + 10  # one whole GOP at least, wherever the first slot falls
    size = EncoderSize(160, 96, 200)
    stream = tmp_path / "in.ts"
    write_stream(size, frames, stream, audio=False)
    run = run_path(size, stream, tmp_path / "out")
    assert run.frames == len(run.mesh_seconds) == frames
    assert run.cpu_seconds > 0.0
    assert set(run.parts) == set(PARTS)
    assert all(seconds >= 0.0 for seconds in run.parts.values())
    assert run.segments >= 1
    assert run.locked


def test_the_results_say_whether_the_mesh_hot_path_ran_compiled() -> None:
    # The tests of build/compiled (scripts/compile-hot-path.sh) run a compiled engine.
    here = "pure Python" if Path(str(engine.__file__)).suffix == ".py" else "compiled"
    assert results_dict([], None)["settings"]["hot_path"] == here
