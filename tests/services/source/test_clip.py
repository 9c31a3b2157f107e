"""The test clip: its pictures (pure functions of the frame number) and the file it writes."""

from __future__ import annotations

import hashlib
import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from meshenc.cli.main import cli
from meshenc.core.timecode import FrameRate
from services.source.clip import SCENES, ClipRenderer, SceneSpan, write_test_clip

RATE = FrameRate(25)
FRAMES = 30 * 25


@pytest.fixture(scope="module")
def renderer() -> ClipRenderer:
    return ClipRenderer(96, 64, RATE, FRAMES, seed=7)


def _span(renderer: ClipRenderer, kind: str) -> SceneSpan:
    return next(s for s in renderer.spans if s.kind == kind)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_the_schedule_is_thirty_seconds_of_the_listed_scenes(renderer: ClipRenderer) -> None:
    assert sum(s.seconds for s in SCENES) == 30
    assert [s.kind for s in renderer.spans] == [s.kind for s in SCENES]
    assert renderer.spans[0].start == 0
    assert renderer.spans[-1].stop == FRAMES
    assert all(a.stop == b.start for a, b in itertools.pairwise(renderer.spans))
    black = _span(renderer, "black")
    assert black.stop - black.start == 3 * 25


def test_black_is_exactly_black_and_the_freeze_repeats_the_picture_before(
    renderer: ClipRenderer,
) -> None:
    black = _span(renderer, "black")
    h = renderer.height
    for n in range(black.start, black.stop, 7):
        picture = renderer.render(n)
        assert (picture[:h] == 16).all()
        assert (picture[h:] == 128).all()
    freeze = _span(renderer, "freeze")
    before = renderer.render(freeze.start - 1)
    assert all(np.array_equal(renderer.render(n), before) for n in range(freeze.start, freeze.stop))
    slate = _span(renderer, "slate")
    assert np.array_equal(renderer.render(slate.start), renderer.render(slate.stop - 1))


def test_cuts_change_the_picture_and_noise_barely_does(renderer: ClipRenderer) -> None:
    for span in renderer.spans[1:]:
        if span.kind in ("freeze", "fade"):
            continue
        assert _diff(renderer.render(span.start - 1), renderer.render(span.start)) > 10, span
    noise = _span(renderer, "noise")
    a, b = renderer.render(noise.start), renderer.render(noise.start + 1)
    assert not np.array_equal(a, b)
    assert _diff(a, b) < 4
    fade = _span(renderer, "fade")
    middle = renderer.render((fade.start + fade.stop) // 2)
    assert abs(float(middle[: renderer.height].mean()) - 16) < 1  # black at the fade's middle


def test_the_last_scene_repeats_the_second_scenes_pictures(renderer: ClipRenderer) -> None:
    first, again = (s for s in renderer.spans if s.kind == "blobs")
    assert np.array_equal(renderer.render(first.start + 5), renderer.render(again.start + 5))


def test_pictures_depend_on_the_seed_only_where_the_seed_matters() -> None:
    a = ClipRenderer(96, 64, RATE, FRAMES, seed=1)
    b = ClipRenderer(96, 64, RATE, FRAMES, seed=2)
    c = ClipRenderer(96, 64, RATE, FRAMES, seed=1)
    texture = _span(a, "texture").start
    assert np.array_equal(a.render(texture), c.render(texture))
    assert not np.array_equal(a.render(texture), b.render(texture))


def test_the_clip_file_has_every_frame_and_a_tone_and_is_the_same_every_time(
    tmp_path: Path,
) -> None:
    rate = FrameRate(30000, 1001)
    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    info = write_test_clip(first, seconds=2, frame_rate=rate, width=64, height=48, seed=3)
    write_test_clip(second, seconds=2, frame_rate=rate, width=64, height=48, seed=3)
    assert info.frames == 60
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    assert digest[0] == digest[1]
    with av.open(str(first)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
        pictures = sum(1 for _ in container.decode(video=0))
    with av.open(str(first)) as container:
        sound = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    assert pictures == 60
    spectrum = np.abs(np.fft.rfft(sound[4800:52800]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # one second of sound: 1 Hz bins


def test_mp4_is_written_too_and_other_suffixes_are_refused(tmp_path: Path) -> None:
    info = write_test_clip(tmp_path / "c.mp4", seconds=0.4, frame_rate=RATE, width=64, height=48)
    assert info.frames == 10
    with av.open(str(tmp_path / "c.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
    with pytest.raises(ValueError, match="must end in one of"):
        write_test_clip(tmp_path / "c.avi", seconds=1)


def test_meshenc_clip_writes_the_file_and_lists_the_scenes(tmp_path: Path) -> None:
    out = tmp_path / "clip.ts"
    result = CliRunner().invoke(
        cli, ["clip", "--out", str(out), "--seconds", "8", "--fps", "25", "--size", "64x48"]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    assert "200 frames at 25 fps" in result.output
    assert "black" in result.output
    bad = CliRunner().invoke(cli, ["clip", "--out", str(tmp_path / "x.ts"), "--size", "64by48"])
    assert bad.exit_code == 2
    assert "expected WIDTHxHEIGHT" in bad.output
