"""What the engines of a simulated mesh send is what the wire accepts.

A real encoder checks every message a neighbour sends (``meshenc.wire.validation``) and ends
the stream on the first it refuses, so an ESP the engine builds but the wire refuses would cut
a link. Here every ESP the engines of a simulated world send, through lock-in, beacons and a
merge of two timelines, goes through the wire's conversion and validation.
"""

from __future__ import annotations

import pytest

from meshenc.core.engine import Action, SendEsp, SyncEngine
from meshenc.core.policy import Strategy
from meshenc.sim import runner
from meshenc.sim.scenario import Scenario, packaged_scenario
from meshenc.wire import convert, validation


@pytest.mark.slow
def test_every_esp_a_simulated_mesh_sends_passes_the_wires_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = {"esps": 0, "merge routes": 0, "beacons heard of": 0}

    class CheckedEngine(SyncEngine):
        def ready(self) -> list[Action]:
            actions = super().ready()
            for action in actions:
                if isinstance(action, SendEsp):
                    esp = action.esp
                    validation.validate_esp(convert.esp_to_proto(esp))
                    sent["esps"] += 1
                    sent["merge routes"] += bool(esp.merge_timeline)
                    sent["beacons heard of"] += bool(esp.beacon_hops)
            return actions

    monkeypatch.setattr(runner, "SyncEngine", CheckedEngine)
    # Two regions that lock apart, each on its own anchor, and merge once the cut between
    # them heals (tests/sim/test_merge.py).
    data = packaged_scenario("region-split-start").model_dump()
    data["mesh"].update(encoders=12, neighbors=3, duration_s=40.0)
    data["network"].update(regions=2, bridges=2)
    data["network"]["cuts"] = [{"region": 1, "at_s": 0.0, "duration_s": 15.0}]
    runner.run(Scenario.from_mapping(data), Strategy.PREDICTIVE)
    assert sent["esps"] > 12 * 30 * 40, sent
    assert sent["merge routes"] and sent["beacons heard of"], sent  # what this is about was sent
