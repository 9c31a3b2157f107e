"""``meshenc chaos`` as a user runs it, short: three real encoders, etcd, a registry replica, the
manager, the origin (nginx) and a live network source, with three faults on a seeded schedule —
the segment leader frozen (SIGSTOP) for 3 s, etcd stopped for 3 s, a follower frozen for 3 s.

One run answers two questions, judged from what it left on disk (segment files, the origin's
copies, the processes' logs, ``chaos.json``), never from what the encoders say of themselves:

- gray failures: every frozen encoder found out on resuming (its log), its neighbours noticed
  its silence within a few frame periods (their logs), it shed the segments it missed or
  wrote them aside in its own folder (every differing one), none reached the origin, and leadership
  moved away from the frozen leader;
- the chaos verdict: ``chaos.json`` has every field measured, and its checker
  (:func:`meshenc.report.chaos.check`) sees a copy corrupted on purpose in a copy of the run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import subprocess
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from meshenc.report.chaos import FaultKind, FaultRecord, check, segment_at
from meshenc.report.verify import ORIGIN_DIR, scan_output
from services.encoder.media.segments import aside_name, segment_name

from .support import MESHENC, left_behind

pytestmark = pytest.mark.slow

FPS = Fraction(30)
GOP = 30
ENCODERS = ("e0", "e1", "e2")
#: Three faults 7 s apart from 10 s, each held 3 s, in the order seed 3 deals them.
KINDS = (FaultKind.PAUSE_LEADER, FaultKind.STOP_ETCD, FaultKind.PAUSE_ENCODER)
ARGS = (
    "--duration", "34", "--encoders", "3", "--seed", "3", "--warmup", "10", "--spacing", "7",
    "--hold", "3", "3", "--kinds", ",".join(k.value for k in KINDS), "--json",
)  # fmt: skip
#: Neighbours count a peer lost after 8 silent frame periods (267 ms); noticing takes a
#: tick more, and a busy machine adds its own delays: a bound of 20 periods.
NOTICED_WITHIN = 20 / 30
#: A finished run: its folder, its verdict (the JSON it printed) and what it wrote on stderr.
ChaosRun = tuple[Path, dict[str, Any], str]
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> ChaosRun:
    out = tmp_path_factory.mktemp("chaos") / "out"
    try:
        done = subprocess.run(
            [*MESHENC, "chaos", "--out", str(out), *ARGS],
            capture_output=True,
            text=True,
            timeout=240.0,
            check=False,
        )
    finally:
        assert not left_behind(out), "processes left behind"
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return out, json.loads(done.stdout), done.stderr


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _log_times(path: Path, needle: str) -> list[float]:
    """Unix times of the log lines of ``path`` that contain ``needle``."""
    times = []
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_TIME.match(line)
        if match and needle in line:
            local = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times.append(local.timestamp())
    return times


def test_the_verdict_has_every_field_measured(chaos_run: ChaosRun) -> None:
    out, verdict, stderr = chaos_run
    print(stderr[-2500:])
    assert verdict == json.loads((out / "chaos.json").read_text())
    assert verdict["faults"] == 3
    assert sorted(f["kind"] for f in verdict["fault_list"]) == sorted(k.value for k in KINDS)
    first, last = verdict["judged_segments"]
    assert last - first >= 15, "too few segments judged"
    for field in ("lost_segments", "mismatched_segments", "crashes"):
        assert isinstance(verdict[field], list), field
    assert isinstance(verdict["max_relock_segments"], int)
    assert len(verdict["relocks"]) == 2  # the two frozen encoders; etcd disturbs none
    assert verdict["dual_leader_intervals"] == 0
    assert verdict["crashes"] == [], verdict["crashes"]
    assert "max re-lock (segments)" in stderr  # the table


def test_a_frozen_encoder_is_noticed_and_never_publishes_what_it_missed(
    chaos_run: ChaosRun,
) -> None:
    out, verdict, _ = chaos_run
    pauses = [
        FaultRecord.from_json(f)
        for f in verdict["fault_list"]
        if f["kind"] in (FaultKind.PAUSE_LEADER.value, FaultKind.PAUSE_ENCODER.value)
    ]
    assert len(pauses) == 2
    logs = out / "logs"
    for pause in pauses:
        frozen = pause.target
        # It found out on resuming, from its own clock.
        resumed = _log_times(logs / f"{frozen}.log", "stalled for")
        assert any(pause.end - 0.5 <= t <= pause.end + 2.0 for t in resumed), resumed
        # Its neighbours noticed its silence within a few frame periods of the SIGSTOP.
        for other in ENCODERS:
            if other == frozen:
                continue
            noticed = _log_times(logs / f"{other}.log", f"neighbour {frozen} lost")
            delays = [t - pause.start for t in noticed if pause.start - 0.1 <= t <= pause.end]
            assert delays, f"{other} never noticed {frozen}'s silence"
            print(f"{other} noticed {frozen} frozen after {min(delays) * 1000:.0f} ms")
            assert min(delays) <= NOTICED_WITHIN
        # The slots it missed cost it segments: it shed them (more than a second behind, it
        # writes nothing until the next segment) or wrote them differing from the others'
        # copies, and none of those is under the shared name, in its own folder (it went
        # aside) or on the origin.
        differing = shed = 0
        for n in range(segment_at(pause.start, FPS, GOP), segment_at(pause.end, FPS, GOP) + 4):
            name = segment_name(n)
            mine = _digest(out / frozen / name) or _digest(out / frozen / aside_name(n))
            others = Counter(
                d for e in ENCODERS if e != frozen and (d := _digest(out / e / name)) is not None
            )
            if not others:
                continue
            if mine is None:
                shed += 1
                continue
            if mine in others:
                continue
            differing += 1
            assert _digest(out / frozen / name) != mine, f"{frozen}'s segment {n} not aside"
            assert _digest(out / ORIGIN_DIR / name) != mine, f"{frozen}'s segment {n} published"
        print(f"{frozen}: {shed} segments shed, {differing} differing, all aside, none published")
        assert shed + differing >= 1, "the freeze cost the frozen encoder nothing: no test"


def test_leadership_moves_away_from_the_frozen_leader(chaos_run: ChaosRun) -> None:
    """The frozen leader is replaced (two tenures at least). How many more follow is not
    bounded here: one fresh-clone run held 7 tenures in this run's 34 s (the first leader, the
    takeover, a claim as the run stops, and four more), so leadership does not yet settle
    reliably after a freeze (docs/leadership.md, Known limits)."""
    _, verdict, _ = chaos_run
    tenures = verdict["leader_tenures"]
    assert isinstance(tenures, dict) and len(tenures) == 1
    (count,) = tenures.values()
    print(f"leader tenures: {tenures}")
    assert count >= 2, tenures


def test_the_checker_sees_a_copy_corrupted_on_purpose(chaos_run: ChaosRun, tmp_path: Path) -> None:
    out, verdict, _ = chaos_run
    faults = [FaultRecord.from_json(f) for f in verdict["fault_list"]]
    first, last = verdict["judged_segments"]
    for name in (*ENCODERS, ORIGIN_DIR):
        shutil.copytree(out / name, tmp_path / name)
    outputs = [scan_output(tmp_path / e) for e in ENCODERS]
    origin = scan_output(tmp_path / ORIGIN_DIR)
    before = check(outputs, faults, fps=FPS, gop=GOP, first=first, last=last, origin=origin)
    assert list(before.mismatched_segments) == verdict["mismatched_segments"]
    # A segment whose copy by an encoder no fault hit (the frozen ones' copies are exempt until
    # they re-lock, by design) another encoder shares: corrupt that copy.
    disturbed = {f.target for f in faults if f.kind.disturbs_encoder}
    encoder = next((e for e in ENCODERS if e not in disturbed), ENCODERS[-1])

    def shared(n: int) -> bool:
        mine = _digest(tmp_path / encoder / segment_name(n))
        others = {_digest(tmp_path / e / segment_name(n)) for e in ENCODERS if e != encoder}
        return mine is not None and mine in others

    clean = [n for n in range(first, last + 1) if n not in before.mismatched_segments and shared(n)]
    assert clean, "no segment two encoders agree on: nothing to corrupt"
    victim = clean[len(clean) // 2]
    path = tmp_path / encoder / segment_name(victim)
    path.write_bytes(path.read_bytes()[:-188])  # one TS packet short
    after = check(
        [scan_output(tmp_path / e) for e in ENCODERS],
        faults,
        fps=FPS,
        gop=GOP,
        first=first,
        last=last,
        origin=origin,
    )
    print(f"corrupted {encoder}'s segment {victim}: mismatched {after.mismatched_segments}")
    if encoder in disturbed and victim not in after.mismatched_segments:
        # Its own fault's window may exempt the copy; then its re-lock must have grown.
        assert after.max_relock_segments > before.max_relock_segments
    else:
        assert victim in after.mismatched_segments
