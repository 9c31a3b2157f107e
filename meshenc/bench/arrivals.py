"""``meshenc bench arrivals``: how late an encoder stamps a picture's arrival, against when it
was sent.

Theory of operation: a sender process sends the test pattern (H.264 in MPEG-TS, as a live
source does) over UDP on 127.0.0.1 at 30 pictures a second on an absolute schedule, and notes
the host clock just before it sends each picture's first datagram. This process receives it
with the encoder's own receiver (``DatagramInput``) and takes each picture's arrival stamp;
the stamp minus the send time is the stamp's lateness (one host clock: nothing to correct).
Each run is one of three conditions:

- **quiet**: the receiving process does nothing else;
- **busy**: ``BUSY_THREADS`` Python threads of the receiving process spin, as an encoder's
  event loop and encoding keep the GIL busy (its receiver thread must take the GIL before it
  reads the clock; the switch interval is the encoder's, 1 ms);
- **stopped**: the sender stops the receiving process (SIGSTOP) for ``STOP_SECONDS`` a third
  of the way in, as a machine that takes the CPU away for a while does.

and one of two ways of stamping: the kernel's receive time (``SO_TIMESTAMPNS``, what the
encoder does) or the clock read when the receiver thread has read the datagram (the baseline,
what it did before). Runs alternate between the two. Reported per condition and stamping: the
median over the runs of each run's p50, p99 and maximum lateness.

Bounded: the sender has a timeout and is killed if it overruns; it continues the process it
stopped in a ``finally``, whatever ends its sending.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rich.table import Table

from meshenc.bench.encoder import FRAME_RATE, EncoderSize, write_stream
from meshenc.bench.results import (
    BenchError,
    Progress,
    Spread,
    cell,
    machine,
    percentile,
    quiet,
    results_table,
)
from meshenc.local.ports import free_ports
from services.encoder.media.datagrams import Arrivals, DatagramInput, video_pes_starts
from services.encoder.media.ingest import SWITCH_INTERVAL
from services.source.pacing import DATAGRAM_SIZE

__all__ = ["CONDITIONS", "ArrivalsBench", "ArrivalsRun", "run_arrivals_bench", "send_stream"]

CONDITIONS: Final = ("quiet", "busy", "stopped")
STAMPINGS: Final = ("kernel", "read")
SIZE: Final = EncoderSize(320, 180, 600)
BUSY_THREADS: Final = 2
STOP_SECONDS: Final = 0.5


@dataclass(frozen=True, slots=True)
class ArrivalsRun:
    """One run: the lateness (ms) of every picture's stamp."""

    condition: str
    stamping: str
    lateness_ms: tuple[float, ...]

    def figure(self, name: str) -> float:
        values = self.lateness_ms
        return max(values) if name == "max" else percentile(values, float(name[1:]))


@dataclass(frozen=True, slots=True)
class ArrivalsBench:
    """``meshenc bench arrivals``: every run, in the order made."""

    frames: int
    repeats: int
    runs: tuple[ArrivalsRun, ...]

    def spread(self, condition: str, stamping: str, figure: str) -> Spread:
        return Spread.of(
            [
                r.figure(figure)
                for r in self.runs
                if r.condition == condition and r.stamping == stamping
            ]
        )

    def payload(self) -> dict[str, object]:
        return {
            "benchmark": "arrivals",
            "settings": {
                "frames": self.frames,
                "repeats": self.repeats,
                "size": SIZE.name,
                "frames_per_second": FRAME_RATE.fps,
                "busy_threads": BUSY_THREADS,
                "stop_seconds": STOP_SECONDS,
            },
            "machine": machine(),
            "load_average": os.getloadavg(),
            "summary": {
                f"{c}/{s}": {f: self.spread(c, s, f).as_dict() for f in ("p50", "p99", "max")}
                for c in CONDITIONS
                for s in STAMPINGS
            },
            "runs": [
                {"condition": r.condition, "stamping": r.stamping, "lateness_ms": r.lateness_ms}
                for r in self.runs
            ],
        }

    def table(self) -> Table:
        table = results_table(
            f"Arrival stamp minus send time, ms (median of {self.repeats} runs, range)",
            ("condition", "stamped", "p50", "p99", "max"),
            left=("condition", "stamped"),
        )
        for condition in CONDITIONS:
            for stamping in STAMPINGS:
                cells = []
                for figure in ("p50", "p99", "max"):
                    s = self.spread(condition, stamping, figure)
                    cells.append(f"{cell(s.median, 2)} ({cell(s.low, 2)}–{cell(s.high, 2)})")
                what = "kernel receive time" if stamping == "kernel" else "when read (before)"
                table.add_row(condition, what, *cells)
        table.caption = (
            f"{self.frames} pictures at {FRAME_RATE.fps:g}/s over UDP on 127.0.0.1 per run;"
            f" busy: {BUSY_THREADS} spinning Python threads in the receiver;"
            f" stopped: the receiver stopped for {STOP_SECONDS:g} s."
            f" Load average at the end: {os.getloadavg()[0]:.1f}."
        )
        return table


def send_stream(path: str, port: int, stop_pid: int, stop_at: int) -> None:
    """The sender (a process of its own): the file's datagrams to ``port``, a picture every
    frame period from 0.2 s on; stops ``stop_pid`` for ``STOP_SECONDS`` from picture
    ``stop_at`` (0: never). Prints ``{pts: send time}`` as JSON."""
    data = Path(path).read_bytes()
    period = FRAME_RATE.period
    sent: dict[int, float] = {}
    start = time.time() + 0.2
    picture = -1
    resume_at = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        try:
            for offset in range(0, len(data), DATAGRAM_SIZE):
                chunk = data[offset : offset + DATAGRAM_SIZE]
                starts = video_pes_starts(chunk)
                if starts:
                    picture += 1
                    if picture == stop_at and stop_at:
                        os.kill(stop_pid, signal.SIGSTOP)
                        resume_at = time.time() + STOP_SECONDS
                    if resume_at is not None and time.time() >= resume_at:
                        os.kill(stop_pid, signal.SIGCONT)
                        resume_at = None
                    time.sleep(max(0.0, start + picture * period - time.time()))
                    for pts in starts:
                        sent[pts] = time.time()
                sender.sendto(chunk, ("127.0.0.1", port))
        finally:
            if resume_at is not None:
                os.kill(stop_pid, signal.SIGCONT)
    print(json.dumps(sent))


def _spin(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def measure(path: Path, frames: int, condition: str, stamping: str) -> ArrivalsRun:
    """One run of the stream through a fresh receiver."""
    port = free_ports(1)[0]
    receiver = DatagramInput(
        f"udp://127.0.0.1:{port}", time.time, kernel_times=stamping == "kernel"
    )
    receiver.arrivals = Arrivals(capacity=frames + 64)
    stop = threading.Event()
    spinners = [
        threading.Thread(target=_spin, args=(stop,), daemon=True)
        for _ in range(BUSY_THREADS if condition == "busy" else 0)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    stop_at = frames // 3 if condition == "stopped" else 0
    command = [
        sys.executable,
        "-c",
        "import sys; from meshenc.bench.arrivals import send_stream;"
        " send_stream(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))",
        str(path),
        str(port),
        str(os.getpid()),
        str(stop_at),
    ]
    receiver.start()
    for spinner in spinners:
        spinner.start()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=frames / 10 + 30, check=False
        )
        time.sleep(0.3)  # the last datagrams' way through the receiver
    except subprocess.TimeoutExpired:
        raise BenchError("the sender took too long and was stopped") from None
    finally:
        stop.set()
        receiver.close()
        sys.setswitchinterval(interval)
    if done.returncode != 0:
        raise BenchError(f"the sender failed: {done.stderr[-500:]}")
    sent = {int(pts): at for pts, at in json.loads(done.stdout).items()}
    lateness = []
    for pts, at in sent.items():
        stamp = receiver.arrivals.take(pts)
        if stamp is not None:
            lateness.append((stamp - at) * 1000.0)
    if len(lateness) < frames * 0.9:
        raise BenchError(f"only {len(lateness)} of {frames} pictures were received")
    return ArrivalsRun(condition, stamping, tuple(lateness))


def run_arrivals_bench(frames: int, repeats: int, *, progress: Progress = quiet) -> ArrivalsBench:
    """Every condition, ``repeats`` times each way of stamping, alternating."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="meshenc-arrivals-") as folder:
        path = Path(folder) / "stream.ts"
        write_stream(SIZE, frames, path, audio=False)
        for repeat in range(repeats):
            order = STAMPINGS if repeat % 2 == 0 else STAMPINGS[::-1]
            for condition in CONDITIONS:
                for stamping in order:
                    progress(f"run {repeat + 1}/{repeats}: {condition}, {stamping} stamps")
                    runs.append(measure(path, frames, condition, stamping))
    return ArrivalsBench(frames, repeats, tuple(runs))
