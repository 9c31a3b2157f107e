"""``meshenc source`` and ``meshenc clip``: a live MPEG-TS source, and a test clip for it.

Every flag has an environment variable of the same meaning (shown in ``--help``). Values are
validated once, at start, with errors that name the flag or the URL parameter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from meshenc.cli.service_options import configure_logging, log_level_option
from meshenc.core.timecode import FrameRate
from services.source.clip import write_test_clip
from services.source.media import FileInput, MediaError, StreamFormat
from services.source.path import PathError, parse_destination
from services.source.service import SourceError, SourceSettings, run_source

#: Python's thread switch interval while the source runs: the sending loop gets the
#: interpreter back within this when the producer is busy in Python code (default 5 ms).
SWITCH_INTERVAL = 0.0005
#: The scheduling priority the source asks for (below 0 needs privileges; refused quietly).
SOURCE_NICENESS = -5


def _size(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, int] | None:
    if value is None:
        return None
    width, sep, height = value.strip().lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width), int(height)
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, e.g. 640x360, got {value!r}") from None


def _fps(_ctx: click.Context, _param: click.Parameter, value: str | None) -> FrameRate | None:
    if value is None:
        return None
    try:
        return FrameRate.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option(
    "--input",
    "input_",
    envvar="MESHENC_SOURCE_INPUT",
    default="testpattern",
    show_default=True,
    help="A file PyAV can read, or 'testpattern' (colour bars, a counter and a 1 kHz tone).",
)
@click.option(
    "--to",
    "to",
    envvar="MESHENC_SOURCE_TO",
    multiple=True,
    required=True,
    help="Destination udp://HOST:PORT?... or rtp://HOST:PORT?... with its own path "
    "(delay_ms, jitter_ms, swing_ms, swing_period_s, loss, seed, localaddr, ttl); repeat the "
    "flag for more (the variable: URLs separated by spaces).",
)
@click.option(
    "--loop",
    envvar="MESHENC_SOURCE_LOOP",
    is_flag=True,
    help="Play the file again at its end; timestamps continue, so the stream never restarts.",
)
@click.option(
    "--duration",
    envvar="MESHENC_SOURCE_DURATION",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds of stream (default: at the input's end, or never).",
)
@click.option(
    "--size",
    envvar="MESHENC_SOURCE_SIZE",
    default=None,
    callback=_size,
    help="Picture WIDTHxHEIGHT [default: the file's; 640x360 for the test pattern].",
)
@click.option(
    "--fps",
    envvar="MESHENC_SOURCE_FPS",
    default=None,
    callback=_fps,
    help="Frame rate: 25, 30000/1001, 50, 59.94 ... [default: the file's; 30 for the test "
    "pattern]. A file's pictures are played one per frame at this rate.",
)
@click.option(
    "--bitrate-kbps",
    envvar="MESHENC_SOURCE_BITRATE_KBPS",
    type=int,
    default=2000,
    show_default=True,
    help="Video bitrate cap (libx264, VBV).",
)
@log_level_option
def source(
    input_: str,
    to: tuple[str, ...],
    loop: bool,
    duration: float | None,
    size: tuple[int, int] | None,
    fps: FrameRate | None,
    bitrate_kbps: int,
    log_level: str,
) -> None:
    """Play a file or the test pattern as a live MPEG-TS stream to every --to destination.

    H.264 (fixed one-second GOP, no B-frames) and AAC in 188-byte TS packets, seven to a UDP
    datagram, sent in real time. Each destination's datagrams go through a delay line of
    their own. SIGTERM or Ctrl-C stops at once.
    """
    configure_logging(log_level, "source")
    try:
        destinations = tuple(parse_destination(url) for url in to)
    except PathError as exc:
        raise click.BadParameter(str(exc), param_hint="'--to'") from exc
    path = None if input_ == "testpattern" else Path(input_)
    width, height, rate = 640, 360, FrameRate(30)
    if path is not None:
        try:
            probed = FileInput(path).probe()
        except MediaError as exc:
            raise click.BadParameter(str(exc), param_hint="'--input'") from exc
        width, height = probed.width, probed.height
        if probed.frame_rate is None and fps is None:
            raise click.UsageError(f"{path}: no frame rate found; give --fps")
        rate = probed.frame_rate or rate
    width, height = size or (width, height)
    try:
        settings = SourceSettings(
            input=path,
            fmt=StreamFormat(width, height, fps or rate, bitrate_kbps=bitrate_kbps),
            destinations=destinations,
            loop=loop,
            duration=duration,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # The source stands in for a sender on another machine: on a shared host it asks for the
    # CPU before the encoders, where the system allows it (a late datagram is a late network).
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, SOURCE_NICENESS)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        stats = run_source(settings, stop)
    except (SourceError, MediaError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        sys.setswitchinterval(interval)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo(
        f"source: {stats.frames} frames, {stats.loops} loops, {stats.datagrams} datagrams; "
        f"sent late by {stats.late_p99_ms:.1f} ms (p99), {stats.late_max_ms:.1f} ms (max)"
    )
    for dest in stats.destinations:
        click.echo(
            f"  {dest.destination}: {dest.sent} sent, {dest.lost} lost on the path, "
            f"{dest.dropped} dropped (socket full)"
        )


@click.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The clip file: .ts, .m2ts, .mts (MPEG-TS) or .mp4.",
)
@click.option(
    "--seconds", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True
)
@click.option("--fps", default="30", show_default=True, callback=_fps, help="Frame rate.")
@click.option("--size", default="640x360", show_default=True, callback=_size, help="WIDTHxHEIGHT.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the textures.")
def clip(out: Path, seconds: float, fps: FrameRate, size: tuple[int, int], seed: int) -> None:
    """Write a test clip of ordinary content whose pictures are hard to tell apart.

    Hard cuts, 3 s of black, a 3 s freeze, a still slate, a fade through black, low-motion
    noise and a repeated scene, with a 440 Hz tone; the same arguments give the same file.
    Play it with: meshenc source --input FILE --loop --to udp://...
    """
    width, height = size
    try:
        info = write_test_clip(
            out, seconds=seconds, frame_rate=fps, width=width, height=height, seed=seed
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"{out}: {info.frames} frames at {fps} fps")
    for span in info.scenes:
        click.echo(f"  frames {span.start:>6}-{span.stop - 1:<6} {span.kind}")
