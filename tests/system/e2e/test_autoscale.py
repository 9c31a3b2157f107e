"""``meshenc up --autoscale-max``: the manager's autoscaler asks for another encoder, the run
starts a spare, and the spare writes the mesh's segments.

One real run (etcd, the manager, the live source and the encoders as processes, mutual TLS):
two encoders and a high-water mark below any pressure an encoding process reports (its CPU
share of a core), so after its cool-down the manager asks for a third encoder
(``P/manager/replicas`` in etcd) and ``meshenc up`` starts the planned spare ``e2``. The
verdicts come from the run's files: the manager's log says it scaled, the run's events record
``e2`` joining, and ``e2``'s segments are byte-identical to the others' once it is locked in.
Scaling in is the core's (``tests/core/planner/test_autoscale.py``) and the Kubernetes
actuator's (``tests/services/manager/test_autoscaling.py``); here the load never falls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshenc.report.recorder import EVENTS_NAME
from meshenc.report.verify import verify

from .support import left_behind, meshenc_up

pytestmark = pytest.mark.slow

UP_ARGS = (
    "--encoders", "2", "--no-faults", "--size", "160x96", "--gop", "30", "--registries", "0",
    "--no-origin", "--no-player", "--duration", "30", "--autoscale-max", "3",
    "--autoscale-high-water", "0.01", "--autoscale-low-water", "0.005",
    "--autoscale-cooldown", "5",
)  # fmt: skip


def test_the_manager_asks_for_a_spare_and_it_writes_the_meshs_segments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with meshenc_up(out, *UP_ARGS) as up:
        output = up.communicate(timeout=180.0)[0]
    assert up.returncode == 0, output
    assert not left_behind(out)

    manager_log = (out / "logs" / "manager.log").read_text()
    assert "scaling to 3 encoders" in manager_log, manager_log[-2000:]
    events = [json.loads(line) for line in (out / EVENTS_NAME).read_text().splitlines()]
    joined = [e for e in events if e.get("kind") == "joined"]
    assert [e.get("encoder") for e in joined] == ["e2"], joined
    assert "starting e2" in output

    verdict = verify([out / "e0", out / "e1", out / "e2"])
    spare = next(e for e in verdict.encoders if e.name == "e2")
    shared = [
        s
        for s in verdict.segments
        if s.judged and any(c.encoder == "e2" and not c.lock_in for c in s.copies)
    ]
    print(f"e2 wrote {len(spare.digests)} segments, {len(shared)} judged beside the others")
    assert len(shared) >= 3, "the spare wrote too few segments to judge"
    assert all(s.agreed for s in shared), [s.segment for s in shared if not s.agreed]
