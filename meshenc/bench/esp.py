"""``meshenc bench esp``: the mesh's ESP path among real nodes, against a baseline.

Theory of operation
-------------------
Each run starts ``nodes`` (default ``NODES``) mesh nodes on 127.0.0.1, each in a process of
its own as encoders are (:mod:`meshenc.bench.esp_node`: the real ``MeshServer`` and
``MeshLinks`` over real gRPC), links them into a full mesh (each has ``nodes - 1``
neighbours, every pair one Exchange stream) or a star (``topology="star"``: the first node
has the others as its ``nodes - 1`` neighbours, each of them the first alone), and has them
all send an ESP per frame at ``FRAMES_PER_SECOND`` to each neighbour from the same moment, as
a locked mesh does. A full mesh of 8 on one machine is 8 encoders of the largest degree
sharing its cores; a star is one such encoder among neighbours that cost little, closer to an
encoder whose neighbours run on machines of their own. After a warm-up, each node measures:

1. *Send→receive latency* of every ESP it receives: the sender stamps ``sent_at`` with the host
   clock just before it hands the ESP to its links, the receiving handler notes the host clock
   on arrival (after the stream check and the conversion). One host clock, so no correction.
2. *CPU per frame*: its process's CPU time (every thread) from its first measured frame until
   every ESP it expects has arrived, divided by the frames: sending to every neighbour and
   receiving from every neighbour (conversions, checks, gRPC, the kernel's loopback TCP), the
   whole mesh path of one frame on one node, and the node's own bookkeeping (building each
   frame's ESP, noting each arrival).

The code measured is the tree this module comes from and, as the baseline, the tree of a git
revision (``baseline``): ``git archive`` of it in a temporary directory, with this tree's
generated protobuf code and node driver (the driver uses only what both trees have), each
with the gRPC I/O its own ``meshenc`` command chooses (:func:`node_environment`). Runs of
the two alternate (this tree first in even repeats, the baseline first in odd ones), so that a
noisy neighbour on the machine hits both alike. Reported per tree: the median over the runs of
each run's p50, p99 and maximum (over every ESP every node received in it: in a star, every
ESP on the first node's links, both ways) and of its CPU per frame (mean over the nodes; in a
star, the first node's).

Bounded: every wait on a node has a timeout; every node is killed if it has not exited by the
end of its run; temporary directories are removed, also on errors.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.table import Table

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
from meshenc.grpc_io import EXPERIMENTS_VARIABLE, MESH_IO_EXPERIMENTS, choose_grpc_io

__all__ = [
    "BASELINE",
    "FRAMES_PER_SECOND",
    "NODES",
    "TOPOLOGIES",
    "EspBench",
    "EspRun",
    "node_environment",
    "run_esp_bench",
]

NODES: Final = 8
"""Mesh nodes per run by default: a full mesh of 8 gives each the largest degree the planner
makes, 7."""
FRAMES_PER_SECOND: Final = 60
TOPOLOGIES: Final = ("full", "star")
"""How the nodes are linked: every pair, or the first node to each of the others."""
WARMUP_FRAMES: Final = 60
"""Frames sent before the measured ones (first-use costs are not the steady state)."""
BASELINE: Final = "5f336fb"
"""The revision measured as the baseline by default: the ESP path before the send-once change
(each ESP converted to its wire form and serialised once per neighbour)."""
CURRENT: Final = "this tree"
RESULT_LINE_LIMIT: Final = 256 << 20
"""The longest line a node may write (its results: every delay it measured)."""
NODE_STARTUP_TIMEOUT: Final = 60.0
LINK_TIMEOUT: Final = 30.0
DRAIN_ALLOWANCE: Final = 30.0

_ROOT: Final = Path(__file__).resolve().parents[2]
_DRIVER: Final = Path(__file__).resolve().with_name("esp_node.py")


@dataclass(frozen=True, slots=True)
class EspRun:
    """One run of one tree: every node's figures pooled."""

    code: str
    repeat: int
    sent: int
    received: int
    #: Send→receive delays (ms) of every measured ESP every node received.
    delays_ms: tuple[float, ...]
    #: CPU seconds per frame of each node (its whole process), the first node first.
    cpu_per_frame_s: tuple[float, ...]
    dropped_esps: int
    topology: str = "full"

    @property
    def p50_ms(self) -> float:
        return percentile(self.delays_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.delays_ms, 99)

    @property
    def max_ms(self) -> float:
        return max(self.delays_ms)

    @property
    def cpu_us(self) -> float:
        """CPU per frame, µs: the mean over the nodes, or in a star the first node's."""
        if self.topology == "star":
            return self.cpu_per_frame_s[0] * 1e6
        return statistics.fmean(self.cpu_per_frame_s) * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "repeat": self.repeat,
            "sent": self.sent,
            "received": self.received,
            "dropped_esps": self.dropped_esps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            # The figure summarised: the mean over the nodes, or in a star the first node's.
            "cpu_us_per_frame": self.cpu_us,
            "cpu_us_per_frame_each_node": [s * 1e6 for s in self.cpu_per_frame_s],
        }


@dataclass(frozen=True, slots=True)
class EspBench:
    """Every run, and the summary per tree."""

    runs: tuple[EspRun, ...]
    codes: tuple[str, ...]
    frames: int
    nodes: int
    topology: str = "full"

    def of(self, code: str) -> list[EspRun]:
        return [r for r in self.runs if r.code == code]

    def spread(self, code: str, figure: str) -> Spread:
        return Spread.of([float(getattr(r, figure)) for r in self.of(code)])

    def summary(self) -> dict[str, Any]:
        figures = ("p50_ms", "p99_ms", "max_ms", "cpu_us")
        out: dict[str, Any] = {
            code: {
                **{f: self.spread(code, f).as_dict() for f in figures},
                "sent": sum(r.sent for r in self.of(code)),
                "received": sum(r.received for r in self.of(code)),
                "dropped_esps": sum(r.dropped_esps for r in self.of(code)),
            }
            for code in self.codes
        }
        if len(self.codes) == 2:
            ours, base = self.codes
            out["ratio"] = {
                f: self.spread(ours, f).median / self.spread(base, f).median for f in figures
            }
        return out

    def payload(self) -> dict[str, Any]:
        return {
            "benchmark": "esp",
            "settings": {
                "nodes": self.nodes,
                "topology": self.topology,
                "neighbours_each": self.nodes - 1 if self.topology == "full" else None,
                "neighbours_of_the_first": self.nodes - 1,
                "frames_per_second": FRAMES_PER_SECOND,
                "warmup_frames": WARMUP_FRAMES,
                "frames": self.frames,
                "codes": list(self.codes),
                "repeats": len(self.runs) // len(self.codes),
            },
            "machine": machine(),
            "load_average": list(os.getloadavg()),
            "summary": self.summary(),
            "runs": [r.as_dict() for r in self.runs],
        }

    def table(self) -> Table:
        repeats = len(self.runs) // len(self.codes)
        links = f"{self.nodes - 1} neighbour{'s' if self.nodes > 2 else ''}"
        star = self.topology == "star"
        shape = (
            f"a star of {self.nodes} nodes (the first with {links}, each other the first's)"
            if star
            else f"a full mesh of {self.nodes} nodes ({links} each)"
        )
        table = results_table(
            f"ESPs in {shape}, each node its own process, over gRPC on 127.0.0.1, "
            f"{FRAMES_PER_SECOND} frames/s, {self.frames} "
            f"frames measured per run; median of {repeats} interleaved runs per code (range)",
            (
                "code",
                "p50 ms",
                "p99 ms",
                "max ms",
                "CPU µs/frame, first node" if star else "CPU µs/frame/node",
                "received",
            ),
            left=("code",),
        )
        for code in self.codes:
            cells = []
            for figure, digits in (("p50_ms", 2), ("p99_ms", 2), ("max_ms", 1), ("cpu_us", 0)):
                s = self.spread(code, figure)
                cells.append(
                    f"{cell(s.median, digits)} ({cell(s.low, digits)}–{cell(s.high, digits)})"
                )
            runs = self.of(code)
            cells.append(f"{sum(r.received for r in runs):,} of {sum(r.sent for r in runs):,}")
            table.add_row(code, *cells)
        if len(self.codes) == 2:
            ratio = self.summary()["ratio"]
            table.add_row(
                f"{self.codes[0]} / {self.codes[1]}",
                *(f"{ratio[f]:.2f}×" for f in ("p50_ms", "p99_ms", "max_ms", "cpu_us")),
                "",
            )
        table.caption = (
            "Latency: sender's host clock before MeshLinks hands the ESP on → receiver's on"
            " arrival (checked and converted). CPU: each node's process (all threads) over the"
            " measured frames, sending to and receiving from every neighbour"
            f"{f' (the first node, with {self.nodes - 1} links)' if star else ''}."
            f" Load average at the end: {os.getloadavg()[0]:.1f}."
        )
        return table


# --- the trees under test -----------------------------------------------------------------------


def _git(*args: str, folder: Path = _ROOT) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"git {' '.join(args)} failed: {exc}") from None
    if done.returncode != 0:
        raise BenchError(
            f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def baseline_tree(revision: str, into: Path) -> str:
    """Write ``revision``'s source into ``into`` (with this tree's generated code and node
    driver); returns the revision's short hash.

    Raises:
        BenchError: this tree is not a git checkout, or the revision does not exist.
    """
    commit = _git("rev-parse", "--verify", "--short", f"{revision}^{{commit}}").decode().strip()
    # From the checkout's top: this tree may be a copy inside it (build/compiled), and git
    # archives only the folder it is run in.
    top = Path(_git("rev-parse", "--show-toplevel").decode().strip())
    with tarfile.open(
        fileobj=io.BytesIO(_git("archive", "--format=tar", commit, folder=top))
    ) as archive:
        archive.extractall(into, filter="data")
    generated = _ROOT / "meshenc" / "v1"
    shutil.copytree(generated, into / "meshenc" / "v1", dirs_exist_ok=True)
    shutil.copy2(_DRIVER, into / "meshenc" / "bench" / "esp_node.py")
    return commit


# --- one run ------------------------------------------------------------------------------------


async def _line(node: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert node.stdout is not None
    try:
        line = await asyncio.wait_for(node.stdout.readline(), timeout)
    except TimeoutError:
        raise BenchError(f"a mesh node said nothing within {timeout:.0f} s") from None
    if not line:
        raise BenchError("a mesh node exited early (run it alone to see why)")
    return dict(json.loads(line))


def _tell(node: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
    assert node.stdin is not None
    node.stdin.write((json.dumps(message) + "\n").encode())


def node_environment(tree: Path) -> dict[str, str]:
    """The environment of a tree's nodes: this process's, the tree on the path, and the gRPC
    I/O the tree's own ``meshenc`` command chooses (``meshenc.grpc_io``): gRPC's defaults in a
    tree from before that module, unless the user's ``GRPC_EXPERIMENTS`` says otherwise."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
    }
    if (tree / "meshenc" / "grpc_io.py").exists():
        choose_grpc_io(env)
    elif env.get(EXPERIMENTS_VARIABLE) == MESH_IO_EXPERIMENTS:
        del env[EXPERIMENTS_VARIABLE]
    return env


def _peers(ids: Sequence[str], topology: str) -> dict[str, list[str]]:
    """Each node's neighbours: every other node, or in a star the first node's every other and
    the others' the first."""
    if topology == "star":
        first, *others = ids
        return {first: list(others), **{i: [first] for i in others}}
    return {i: [j for j in ids if j != i] for i in ids}


async def _one_run(
    code: str, tree: Path, repeat: int, frames: int, count: int, topology: str
) -> EspRun:
    ids = [f"e{i}" for i in range(count)]
    neighbours = _peers(ids, topology)
    env = node_environment(tree)
    nodes: list[asyncio.subprocess.Process] = []
    try:
        for node_id in ids:
            nodes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "meshenc.bench.esp_node",
                    node_id,
                    str(FRAMES_PER_SECOND),
                    cwd=tree,
                    env=env,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                    limit=RESULT_LINE_LIMIT,
                )
            )
        ports = [int((await _line(n, NODE_STARTUP_TIMEOUT))["port"]) for n in nodes]
        addresses = {i: f"127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True)}
        for node_id, node in zip(ids, nodes, strict=True):
            _tell(node, {"peers": {i: addresses[i] for i in neighbours[node_id]}})
        for node in nodes:
            await _line(node, LINK_TIMEOUT)
        start_at = time.time() + 0.5
        for node in nodes:
            _tell(node, {"start_at": start_at, "warmup": WARMUP_FRAMES, "frames": frames})
        bound = 0.5 + (WARMUP_FRAMES + frames) / FRAMES_PER_SECOND + DRAIN_ALLOWANCE
        results = [await _line(n, bound) for n in nodes]
        for node in nodes:  # only now: a node's own last ESPs may be on their way until then
            _tell(node, {"stop": True})
        for node in nodes:
            await asyncio.wait_for(node.wait(), 10.0)
    finally:
        for node in nodes:
            if node.returncode is None:
                node.kill()
                await node.wait()
    for result in results:
        if not Path(result["mesh_module"]).resolve().is_relative_to(tree.resolve()):
            raise BenchError(f"a node ran {result['mesh_module']}, not the code under test")
    delays = tuple(d for r in results for d in r["delays_ms"])
    if not delays:
        raise BenchError(f"no ESP arrived in a run of {code}")
    return EspRun(
        code=code,
        repeat=repeat,
        sent=sum(int(r["sent"]) for r in results),
        received=len(delays),
        delays_ms=delays,
        cpu_per_frame_s=tuple(float(r["cpu_seconds"]) / frames for r in results),
        dropped_esps=sum(int(r["dropped_esps"]) for r in results),
        topology=topology,
    )


def run_esp_bench(
    repeats: int,
    frames: int,
    *,
    nodes: int = NODES,
    topology: str = "full",
    baseline: str | None = BASELINE,
    progress: Progress = quiet,
) -> EspBench:
    """``repeats`` runs of this tree and as many of ``baseline`` (a git revision; None: this
    tree alone), interleaved, each with ``nodes`` linked as ``topology`` says (``TOPOLOGIES``).

    Raises:
        BenchError: bad counts or topology, no baseline to be had, a node failed or overran
            its bound.
    """
    if repeats < 1 or frames < 1 or nodes < 2:
        raise BenchError("repeats and frames must be positive, and there must be 2 nodes or more")
    if topology not in TOPOLOGIES:
        raise BenchError(f"no topology {topology!r}: one of {', '.join(TOPOLOGIES)}")
    with tempfile.TemporaryDirectory(prefix="meshenc-bench-esp-") as folder:
        trees: dict[str, Path] = {CURRENT: _ROOT}
        if baseline is not None:
            commit = baseline_tree(baseline, Path(folder))
            trees[f"baseline {commit}"] = Path(folder)
        codes: Sequence[str] = tuple(trees)
        runs: list[EspRun] = []
        for repeat in range(repeats):
            order = codes if repeat % 2 == 0 else tuple(reversed(codes))
            for code in order:
                progress(f"run {repeat + 1}/{repeats}: {code}")
                runs.append(
                    asyncio.run(_one_run(code, trees[code], repeat, frames, nodes, topology))
                )
    return EspBench(tuple(runs), tuple(codes), frames, nodes, topology)
