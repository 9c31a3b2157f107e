"""The chaos verdict from made-up folders: real segment names, made-up bytes (no mesh runs).

Each case is a run the checker must see through: a fault's window exempt and its re-lock
counted (and a copy that differs after it judged), a copy corrupted outside any fault, an
origin served bytes nobody agreed on, a segment no one wrote, and dual leaders from the
audits.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import pytest

from meshenc.report.chaos import (
    ChaosReport,
    FaultKind,
    FaultRecord,
    GroupLeadership,
    check,
    segment_at,
)
from meshenc.report.verify import scan_output
from services.encoder.media.segments import aside_name, segment_name

from .synthetic import FIRST, make_run, run_of, write_folder

FPS = Fraction(30)
GOP = 30  # 1 s segments: segment n covers Unix second n


def _judge(
    root: Path,
    folders: dict[str, dict[int, bytes]],
    *,
    faults: Sequence[FaultRecord] = (),
    origin: dict[int, bytes] | None = None,
    groups: Sequence[GroupLeadership] = (),
    crashes: Sequence[str] = (),
) -> ChaosReport:
    """Write the folders (and the origin's), digest them and judge segments FIRST..FIRST+19."""
    outputs = [scan_output(path) for path in make_run(root, folders)]
    served = None if origin is None else scan_output(write_folder(root / "origin", origin))
    return check(
        outputs,
        faults,
        fps=FPS,
        gop=GOP,
        first=FIRST,
        last=FIRST + 19,
        origin=served,
        groups=groups,
        crashes=crashes,
    )


def test_a_segment_maps_to_the_unix_seconds_it_covers() -> None:
    assert segment_at(FIRST + 0.999, FPS, GOP) == FIRST
    assert segment_at(FIRST + 1.0, FPS, GOP) == FIRST + 1
    assert segment_at(FIRST + 1.0, Fraction(30000, 1001), 60) == (FIRST + 1) * 30000 // 60060


def test_a_clean_run_is_clean(tmp_path: Path) -> None:
    everyone = {"a": run_of(count=20), "b": run_of(count=20), "c": run_of(count=20)}
    report = _judge(tmp_path, everyone, origin=run_of(count=20))
    assert report.clean
    assert report.judged == 20
    assert report.to_json()["lost_segments"] == []


def test_a_corrupted_copy_outside_any_fault_is_a_mismatch(tmp_path: Path) -> None:
    bad = {FIRST + 7: b"corrupted"}
    folders = {"a": run_of(count=20), "b": run_of(count=20, different=bad), "c": run_of(count=20)}
    report = _judge(tmp_path, folders)
    assert report.mismatched_segments == (FIRST + 7,)
    assert report.lost_segments == ()  # a and c still agree on it
    assert not report.clean


def test_a_paused_encoders_window_is_exempt_and_its_relock_counted(tmp_path: Path) -> None:
    # b is paused from second FIRST+5.5 to FIRST+8.2; its copies differ up to FIRST+10.
    differing = {n: b"frozen" + bytes([n % 256]) for n in range(FIRST + 5, FIRST + 11)}
    fault = FaultRecord(FaultKind.PAUSE_ENCODER, "b", FIRST + 5.5, FIRST + 8.2)
    report = _judge(
        tmp_path,
        {"a": run_of(count=20), "b": run_of(count=20, different=differing), "c": run_of(count=20)},
        faults=[fault],
        origin=run_of(count=20),
    )
    assert report.mismatched_segments == ()
    (relock,) = report.relocks
    # The first segment after the fault is FIRST+9; b is identical from FIRST+11 on.
    assert relock.first_good == FIRST + 11
    assert relock.segments == 2
    assert report.max_relock_segments == 2
    assert report.clean


def test_a_copy_that_differs_after_the_relock_is_judged(tmp_path: Path) -> None:
    """b is identical again one segment after its pause, then differs once more, long after:
    its re-lock is the one segment, and the later copy is a mismatch, not more re-lock."""
    differing = {FIRST + 5: b"frozen", FIRST + 6: b"frozen too", FIRST + 15: b"slipped"}
    fault = FaultRecord(FaultKind.PAUSE_ENCODER, "b", FIRST + 5.5, FIRST + 6.2)
    report = _judge(
        tmp_path,
        {"a": run_of(count=20), "b": run_of(count=20, different=differing), "c": run_of(count=20)},
        faults=[fault],
    )
    (relock,) = report.relocks
    assert (relock.first_good, relock.segments) == (FIRST + 7, 0)
    assert report.mismatched_segments == (FIRST + 15,)
    assert report.lost_segments == ()
    assert not report.clean


def test_a_copy_written_aside_is_no_copy(tmp_path: Path) -> None:
    """c wrote one segment aside (it could not vouch for it): nobody could be served it, so
    it is neither one of the segment's copies nor judged. With b's copy corrupted, a's is the
    only good one left: the segment is lost, and mismatched, though c's bytes are right."""
    bad = {FIRST + 4: b"corrupted"}
    c = run_of(count=20)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / aside_name(FIRST + 4)).write_bytes(c.pop(FIRST + 4))
    report = _judge(tmp_path, {"a": run_of(count=20), "b": run_of(count=20, different=bad), "c": c})
    assert report.mismatched_segments == (FIRST + 4,)
    assert report.lost_segments == (FIRST + 4,)
    # Under its shared name, c's copy would have been the second good one.
    (tmp_path / "c" / aside_name(FIRST + 4)).rename(tmp_path / "c" / segment_name(FIRST + 4))
    report = _judge(tmp_path, {"a": run_of(count=20), "b": run_of(count=20, different=bad), "c": c})
    assert report.lost_segments == ()


def test_an_origin_served_bytes_the_mesh_did_not_agree_on(tmp_path: Path) -> None:
    """A resumed encoder PUT its differing copy under the shared name: its own folder's copy
    is exempt (it was paused), but the origin's copy is judged."""
    differing = {FIRST + 6: b"frozen"}
    fault = FaultRecord(FaultKind.PAUSE_LEADER, "b", FIRST + 5.5, FIRST + 6.5)
    report = _judge(
        tmp_path,
        {"a": run_of(count=20), "b": run_of(count=20, different=differing), "c": run_of(count=20)},
        faults=[fault],
        origin=run_of(count=20, different=differing),
    )
    assert report.origin_mismatched == (FIRST + 6,)
    assert report.mismatched_segments == (FIRST + 6,)


def test_segments_too_few_wrote_or_the_origin_lacks_are_lost(tmp_path: Path) -> None:
    only_a = {n: d for n, d in run_of(count=20).items() if n != FIRST + 3}
    origin = {n: d for n, d in run_of(count=20).items() if n != FIRST + 12}
    report = _judge(
        tmp_path,
        {
            "a": run_of(count=20),
            "b": {n: d for n, d in only_a.items() if n != FIRST + 3},
            "c": {n: d for n, d in only_a.items() if n != FIRST + 3},
        },
        origin=origin,
    )
    assert report.lost_segments == (FIRST + 3, FIRST + 12)
    assert report.mismatched_segments == ()


def test_a_split_no_two_agree_on_is_mismatched_and_lost(tmp_path: Path) -> None:
    report = _judge(
        tmp_path,
        {
            "a": run_of(count=20, different={FIRST + 4: b"x"}),
            "b": run_of(count=20, different={FIRST + 4: b"y"}),
        },
    )
    assert report.mismatched_segments == (FIRST + 4,)
    assert report.lost_segments == (FIRST + 4,)


def test_dual_leaders_and_crashes_make_a_run_unclean(tmp_path: Path) -> None:
    folders = {"a": run_of(count=20), "b": run_of(count=20)}
    dual = _judge(tmp_path / "1", folders, groups=[GroupLeadership("g", 3, 1, 0)])
    assert dual.dual_leader_intervals == 1 and not dual.clean
    crashed = _judge(tmp_path / "2", folders, crashes=["e1 exited by itself"])
    assert crashed.to_json()["crashes"] == ["e1 exited by itself"] and not crashed.clean


def test_an_encoder_never_identical_again_is_not_relocked(tmp_path: Path) -> None:
    differing = {n: b"off" + bytes([n % 256]) for n in range(FIRST + 5, FIRST + 20)}
    fault = FaultRecord(FaultKind.CUT_INPUT, "c", FIRST + 5.0, FIRST + 7.0)
    report = _judge(
        tmp_path,
        {"a": run_of(count=20), "b": run_of(count=20), "c": run_of(count=20, different=differing)},
        faults=[fault],
    )
    (relock,) = report.relocks
    assert not relock.recovered and relock.segments == 12
    assert not report.clean


def test_a_fault_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError, match="ends after"):
        FaultRecord(FaultKind.STOP_ETCD, "etcd", 10.0, 9.0)
