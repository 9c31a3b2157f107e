"""``meshenc bench scale``'s reading of the files: what counts as recovered, and which copies
are counted. Digests stand in for segment files (the comparison reads nothing else)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshenc.bench.scale import _stop_stats, count_copies, last_frame_move, recovered_after
from meshenc.report.recorder import CorrectionRecord
from meshenc.report.verify import EncoderOutput, compare
from services.encoder.runtime import RunStats


def _output(name: str, digests: dict[int, str]) -> EncoderOutput:
    return EncoderOutput(name, Path(name), digests)


def _mesh() -> list[EncoderOutput]:
    """Segments 10-20: e0 and e1 agree on every one; e2 differs at 11 and 12, gives up 13
    (sheds it), and holds the others' bytes from 14 on."""
    good = {n: f"d{n}" for n in range(10, 21)}
    behind = dict(good) | {11: "x11", 12: "x12"}
    del behind[13]
    return [_output("e0", good), _output("e1", dict(good)), _output("e2", behind)]


def test_recovered_counts_segments_after_the_relief_until_every_later_one_is_written_alike() -> (
    None
):
    outcome = compare(_mesh(), lock_in=2, frames=1)
    assert recovered_after(outcome, "e0", 11) == 0
    # 11 and 12 differ, 13 is missing: whole and alike from 14 on.
    assert recovered_after(outcome, "e2", 11) == 3
    assert recovered_after(outcome, "e2", 13) == 1


def test_a_last_copy_that_differs_or_none_after_the_relief_is_never_recovered() -> None:
    outputs = _mesh()
    outputs[2] = _output("e2", dict(outputs[2].digests) | {20: "x20"})
    outcome = compare(outputs, lock_in=2, frames=1)
    assert recovered_after(outcome, "e2", 11) is None
    assert recovered_after(outcome, "e0", 21) is None


def _correction(encoder: str, at: float, kind: str) -> CorrectionRecord:
    return CorrectionRecord(
        t=at + 1.0, kind="correction", encoder=encoder, at=at, correction=kind,
        shift_ns=33_000_000, rate_ppb=0, lead_ns=0, proposal_id=1,
    )  # fmt: skip


def test_the_last_frame_move_is_a_survivors_last_drop_or_duplicate_after_the_relief() -> None:
    corrections = [
        _correction("e1", 99.0, "duplicate"),  # before the relief
        _correction("e1", 100.4, "duplicate"),
        _correction("e1", 100.9, "drop"),
        _correction("e1", 102.0, "slew"),  # no other picture in any slot
        _correction("e2", 100.3, "drop"),
        _correction("e3", 99.5, "drop"),
    ]
    assert last_frame_move(corrections, "e1", 100.0) == pytest.approx(0.9)
    assert last_frame_move(corrections, "e2", 100.0) == pytest.approx(0.3)
    assert last_frame_move(corrections, "e3", 100.0) is None
    assert last_frame_move(corrections, "e4", 100.0) is None


def test_copies_are_counted_from_each_encoders_start_not_from_each_run() -> None:
    """``verify`` exempts the first segments of every run, so after a segment it gave up an
    encoder's next two copies would not be judged; here they are."""
    outcome = compare(_mesh(), lock_in=2, frames=1)
    copies, matching, missing = count_copies(outcome)
    # 9 copies past the first two for e0 and e1; 8 for e2 (13 missing), of which 12 differs
    # (11 is one of its first two).
    assert (copies, matching, missing) == (26, 25, 1)


def test_the_stop_line_an_encoder_logs_is_read_field_by_field(tmp_path: Path) -> None:
    """The bench reads what ran out from the runtime's own stop line (``RunStats``' repr)."""
    stats = RunStats(frames=1800, skipped=12, dropped_esps=40, mesh_messages=900, mesh_writes=300)
    log = tmp_path / "e3.log"
    log.write_text(
        f"12:00:00 e3 INFO meshenc.encoder: other line\n12:01:00 e3 INFO "
        f"meshenc.encoder: encoder e3 stopped: {stats}\n"
    )
    read = _stop_stats(log)
    assert read is not None
    assert {k: read[k] for k in ("skipped", "dropped_esps", "mesh_messages", "mesh_writes")} == {
        "skipped": "12",
        "dropped_esps": "40",
        "mesh_messages": "900",
        "mesh_writes": "300",
    }
    assert _stop_stats(tmp_path / "none.log") is None
