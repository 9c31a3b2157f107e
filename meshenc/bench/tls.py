"""``meshenc bench tls``: the mesh's ESP traffic with mutual TLS on and off, side by side.

Theory of operation
-------------------
Each run starts two mesh nodes on 127.0.0.1, linked as encoders are
(:func:`meshenc.bench.encoder.linked_pair`: the real ``MeshServer`` and ``MeshLinks`` over real
gRPC, in one event loop), in plaintext or with mutual TLS (certificates for "a" and "b" from
the development CA of ``meshenc certs``, made in a temporary directory), and measures:

1. *Send→receive latency*: ESPs sent each way at the frame rate (30/s), each stamped with the
   host clock just before ``MeshLinks.send`` and noted on arrival by the receiving handler
   (:func:`~meshenc.bench.encoder.esp_delays`; one host clock, no correction).
2. *Throughput*: for ``seconds``, "a" keeps an outbox's worth of ESPs (``WINDOW``) in flight
   to "b" (it sends as soon as "b" received one; none is dropped), and the ESPs "b" receives
   in that time are counted: what the whole path (queue, protobuf, HTTP/2, TLS or not, the
   stream checks, conversion, handler) delivers on this machine, sender and receiver sharing
   one event loop.

Runs alternate between TLS off and on (off first in even repeats, on first in odd ones), so
that a noisy neighbour on the machine hits both alike. Reported per mode: the median and range
of the throughput over the repeats, and the latency percentiles over every ESP of every run of
that mode; and the ratio on/off of each.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.table import Table

from meshenc.bench.encoder import (
    DRAIN_TIMEOUT,
    FRAME_RATE,
    LINK_TIMEOUT,
    LinkedPair,
    esp_delays,
    latency_esp,
    linked_pair,
)
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
from services.common.certs import make_certificates
from services.common.tls import TlsFiles
from services.encoder.mesh import DEFAULT_ESP_CAPACITY

__all__ = ["MODES", "TlsBench", "TlsRun", "run_tls_bench"]

MODES: Final = ("off", "on")
"""Plaintext, and mutual TLS."""
WINDOW: Final = DEFAULT_ESP_CAPACITY
"""ESPs in flight at most in the throughput phase (sent, not yet received): an outbox's worth,
so that none is dropped to make room."""


@dataclass(frozen=True, slots=True)
class TlsRun:
    """One run of one mode."""

    mode: str
    repeat: int
    #: ESPs "b" received per second while "a" sent as fast as it could.
    delivered_per_s: float
    #: ESPs "a" handed to its links per second meanwhile.
    offered_per_s: float
    #: Send→receive delays (ms) of the ESPs sent at the frame rate, both directions.
    delays_ms: tuple[float, ...]
    #: ESPs sent at the frame rate, both directions together.
    sent: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "repeat": self.repeat,
            "delivered_per_s": self.delivered_per_s,
            "offered_per_s": self.offered_per_s,
            "sent": self.sent,
            "received": len(self.delays_ms),
            "p50_ms": percentile(self.delays_ms, 50) if self.delays_ms else None,
            "p99_ms": percentile(self.delays_ms, 99) if self.delays_ms else None,
        }


@dataclass(frozen=True, slots=True)
class TlsBench:
    """Every run, and the summary per mode."""

    runs: tuple[TlsRun, ...]
    esps: int
    seconds: float

    def throughput(self, mode: str) -> Spread:
        return Spread.of([r.delivered_per_s for r in self.runs if r.mode == mode])

    def delays(self, mode: str) -> list[float]:
        return [d for r in self.runs if r.mode == mode for d in r.delays_ms]

    def sent(self, mode: str) -> int:
        return sum(r.sent for r in self.runs if r.mode == mode)

    def latency(self, mode: str, q: float) -> float:
        delays = self.delays(mode)
        return percentile(delays, q) if delays else float("nan")

    def summary(self) -> dict[str, Any]:
        modes = {
            mode: {
                "delivered_per_s": self.throughput(mode).as_dict(),
                "received": len(self.delays(mode)),
                "sent": self.sent(mode),
                "p50_ms": self.latency(mode, 50),
                "p99_ms": self.latency(mode, 99),
            }
            for mode in MODES
        }
        modes["ratio_on_off"] = {
            "delivered_per_s": self.throughput("on").median / self.throughput("off").median,
            "p50_ms": self.latency("on", 50) / self.latency("off", 50),
            "p99_ms": self.latency("on", 99) / self.latency("off", 99),
        }
        return modes

    def payload(self) -> dict[str, Any]:
        return {
            "benchmark": "tls",
            "settings": {
                "esps_each_way": self.esps,
                "rate_per_s": FRAME_RATE.fps,
                "throughput_seconds": self.seconds,
                "repeats": len(self.runs) // len(MODES),
            },
            "machine": machine(),
            "summary": self.summary(),
            "runs": [r.as_dict() for r in self.runs],
        }

    def table(self) -> Table:
        repeats = len(self.runs) // len(MODES)
        table = results_table(
            f"ESPs between two mesh nodes over gRPC on 127.0.0.1, mutual TLS off and on "
            f"({repeats} interleaved runs each; latency: {self.esps} ESPs each way at "
            f"{FRAME_RATE.fps:g}/s per run; throughput: {self.seconds:g} s with {WINDOW} ESPs "
            "in flight)",
            ("mutual TLS", "ESPs delivered/s (median)", "range", "p50 ms", "p99 ms", "received"),
            left=("mutual TLS", "range"),
        )
        for mode in MODES:
            spread = self.throughput(mode)
            table.add_row(
                mode,
                cell(spread.median, 0),
                f"{spread.low:,.0f}–{spread.high:,.0f}",
                cell(self.latency(mode, 50), 2),
                cell(self.latency(mode, 99), 2),
                f"{len(self.delays(mode)):,} of {self.sent(mode):,}",
            )
        ratio = self.summary()["ratio_on_off"]
        table.add_row(
            "on / off",
            f"{ratio['delivered_per_s']:.2f}×",
            "",
            f"{ratio['p50_ms']:.2f}×",
            f"{ratio['p99_ms']:.2f}×",
            "",
        )
        return table


async def _throughput(pair: LinkedPair, seconds: float, first: int) -> tuple[float, float]:
    """(delivered, sent) ESPs per second from "a" to "b", at most ``WINDOW`` in flight."""
    receiver = pair.nodes[1]
    receiver.arrivals.clear()
    links = pair.links[0]
    sequence = first
    end = time.time() + seconds
    while time.time() < end:
        in_flight = sequence - first - len(receiver.arrivals)
        for _ in range(WINDOW - in_flight):
            links.send("b", latency_esp("a", sequence, time.time()))
            sequence += 1
        await asyncio.sleep(0)
    delivered = sum(1 for _, received in receiver.arrivals if received <= end)
    return delivered / seconds, (sequence - first) / seconds


async def _one_run(
    mode: str, repeat: int, tls: dict[str, TlsFiles] | None, esps: int, seconds: float
) -> TlsRun:
    async with linked_pair(tls) as pair:
        delays = await esp_delays(pair, esps)
        # Sequences go on rising on the stream: a stream refuses an ESP older than the last.
        delivered, offered = await _throughput(pair, seconds, first=esps + 1)
    return TlsRun(mode, repeat, delivered, offered, tuple(delays), 2 * esps)


def run_tls_bench(
    repeats: int, esps: int, seconds: float, *, progress: Progress = quiet
) -> TlsBench:
    """``repeats`` runs with mutual TLS off and as many on, interleaved.

    Raises:
        BenchError: bad counts, the nodes did not link up, nothing arrived, or a run overran
            its bound.
    """
    if repeats < 1 or esps < 1 or seconds <= 0:
        raise BenchError("repeats, ESPs and seconds must be positive")
    bound = LINK_TIMEOUT + esps * FRAME_RATE.period + DRAIN_TIMEOUT + seconds + 10.0
    runs: list[TlsRun] = []
    with tempfile.TemporaryDirectory(prefix="meshenc-bench-tls-") as folder:
        certs = make_certificates(Path(folder), ["a", "b"])
        files = {name: certs.files(name) for name in ("a", "b")}
        for repeat in range(repeats):
            order: Sequence[str] = MODES if repeat % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                progress(f"run {repeat + 1}/{repeats}, mutual TLS {mode}")
                tls = files if mode == "on" else None
                try:
                    run = asyncio.run(
                        asyncio.wait_for(_one_run(mode, repeat, tls, esps, seconds), bound)
                    )
                except TimeoutError:
                    raise BenchError(f"a run overran its {bound:.0f} s bound") from None
                if not run.delays_ms:
                    raise BenchError(f"no ESP arrived with mutual TLS {mode}")
                runs.append(run)
    return TlsBench(tuple(runs), esps, seconds)
