"""``meshenc bench ingest``: CPU per picture of the encoder's ingest path against the ``ffmpeg``
command line decoding the same stream.

Theory of operation: one MPEG-TS file (the test pattern, H.264 at the mesh's settings, with an
MP2 tone) is made once per size. *Ours* is the encoder's ingest path exactly as it runs live
(``LiveIngest``: demux, decode, scale to the mesh format, hand over; the pictures carry
timestamps, so none is fingerprinted), reading the file as fast as it can instead of in real
time, plus the UDP receiver's per-datagram work (the TS scan for video PES starts) over the
same bytes in 1,316-byte datagrams. Its cost is the
process's CPU time (all threads) per picture, opening the input included. *ffmpeg* decodes the
same file to the null muxer (``-f null``); its cost is the child's user + system CPU time for
the whole file minus that of a run that decodes one picture (its process start-up and probing),
per picture. Runs alternate, so a noisy neighbour hurts both alike; the table gives medians.

Invariants: every run is bounded in time; ffmpeg is waited for or killed.
"""

from __future__ import annotations

import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from meshenc.bench.encoder import FRAME_RATE, EncoderSize, ffmpeg_binary, write_stream
from meshenc.bench.results import BenchError, Progress, Spread, quiet, results_table
from services.encoder.media.datagrams import video_pes_starts
from services.encoder.media.ingest import Ingested, IngestedPicture, LiveIngest
from services.encoder.media.source import VideoFormat
from services.source.pacing import DATAGRAM_SIZE

__all__ = ["IngestBench", "IngestResult", "measure_ingest", "run_ingest_bench"]

#: The slowest run accepted before it is stopped, pictures per second.
MIN_FPS = 20.0


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Medians over the runs, microseconds of CPU per picture."""

    size: str
    frames: int
    ours_us: tuple[float, ...]
    scan_us: tuple[float, ...]
    ffmpeg_us: tuple[float, ...]

    @property
    def ratios(self) -> tuple[float, ...]:
        """Ours (with the scan) over ffmpeg's, per pair of alternating runs."""
        return tuple(
            (o + s) / f for o, s, f in zip(self.ours_us, self.scan_us, self.ffmpeg_us, strict=True)
        )


def _ours(path: Path, size: EncoderSize, frames: int) -> float:
    """CPU seconds of this process to ingest ``frames`` pictures of the file."""
    done = threading.Event()
    count = 0

    def deliver(item: Ingested) -> None:
        nonlocal count
        if isinstance(item, IngestedPicture):
            count += 1
            if count >= frames:
                done.set()

    fmt = VideoFormat(size.width, size.height, FRAME_RATE)
    ingest = LiveIngest(str(path), fmt, deliver, paced=False)
    started = time.process_time()
    ingest.start()
    try:
        if not done.wait(frames / MIN_FPS + 10.0):
            raise BenchError(f"ingest took too long: {count} of {frames} pictures")
    finally:
        ingest.stop()
    return time.process_time() - started


def _scan(data: bytes) -> float:
    """CPU seconds of the receiver's TS scan over the file in datagrams."""
    started = time.process_time()
    for offset in range(0, len(data), DATAGRAM_SIZE):
        video_pes_starts(data[offset : offset + DATAGRAM_SIZE])
    return time.process_time() - started


def _ffmpeg(binary: str, path: Path, frames: int) -> float:
    """CPU seconds (user + system) of ``ffmpeg`` decoding ``frames`` pictures minus one."""
    return _ffmpeg_run(binary, path, frames) - _ffmpeg_run(binary, path, 1)


def _ffmpeg_run(binary: str, path: Path, frames: int) -> float:
    """CPU seconds (user + system) of ``ffmpeg`` decoding ``frames`` pictures to nothing."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [binary, "-hide_banner", "-nostdin", "-nostats", "-i", str(path)]
    command += ["-frames:v", str(frames), "-f", "null", "-"]
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=frames / MIN_FPS + 10.0, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError("ffmpeg took too long decoding and was stopped") from None
    if done.returncode != 0:
        raise BenchError(f"ffmpeg failed: {done.stderr.decode(errors='replace')[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure_ingest(
    binary: str, size: EncoderSize, frames: int, repeats: int, folder: Path
) -> IngestResult:
    """Alternate runs of ours and ffmpeg's on one stream of ``frames`` pictures."""
    path = folder / f"ingest-{size.name}.ts"
    write_stream(size, frames, path)
    data = path.read_bytes()
    ours, scans, theirs = [], [], []
    for _ in range(repeats):
        ours.append(_ours(path, size, frames) / frames * 1e6)
        scans.append(_scan(data) / frames * 1e6)
        theirs.append(_ffmpeg(binary, path, frames) / (frames - 1) * 1e6)
    return IngestResult(size.name, frames, tuple(ours), tuple(scans), tuple(theirs))


@dataclass(frozen=True, slots=True)
class IngestBench:
    """``meshenc bench ingest``: one :class:`IngestResult` per size, in the order asked."""

    frames: int
    repeats: int
    results: tuple[IngestResult, ...]

    def payload(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "repeats": self.repeats,
            "results": [
                {
                    "size": r.size,
                    "ours_us": r.ours_us,
                    "scan_us": r.scan_us,
                    "ffmpeg_us": r.ffmpeg_us,
                    "ratio_median": Spread.of(r.ratios).median,
                }
                for r in self.results
            ],
        }

    def table(self) -> Table:
        table = results_table(
            f"Ingest CPU per picture (median of {self.repeats} alternating runs)",
            (
                "size",
                "ours: demux+decode+scale",
                "+ UDP TS scan",
                "ffmpeg -f null",
                "ratio",
            ),
        )
        for r in self.results:
            table.add_row(
                r.size,
                f"{Spread.of(r.ours_us).median:,.0f} µs",
                f"{Spread.of(r.scan_us).median:,.0f} µs",
                f"{Spread.of(r.ffmpeg_us).median:,.0f} µs",
                f"{Spread.of(r.ratios).median:.2f}×",
            )
        return table


def run_ingest_bench(
    sizes: Sequence[EncoderSize], frames: int, repeats: int, *, progress: Progress = quiet
) -> IngestBench:
    """:func:`measure_ingest` at every size, the streams in a temporary directory.

    Raises:
        BenchError: ffmpeg is missing, fails or is too slow, or ingest is too slow.
    """
    binary = ffmpeg_binary()
    with tempfile.TemporaryDirectory(prefix="meshenc-ingest-") as folder:
        results = []
        for size in sizes:
            progress(f"ingest {size.name}: {repeats} × {frames} pictures ...")
            results.append(measure_ingest(binary, size, frames, repeats, Path(folder)))
    return IngestBench(frames, repeats, tuple(results))
