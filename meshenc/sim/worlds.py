"""Seeded worlds at every broadcast frame rate, for the lock-in bench (``meshenc bench lockin
--rates``).

Each world is the standard mesh (10 encoders, degree 4) at one frame rate, with everything a
live ingest throws at it set wide: capture jitter up to a quarter of the frame period (spread
evenly over the worlds of a rate, the last at exactly a quarter), clock drift in ±200 ppm,
clock offsets in ±1 s, mean ingest delays spread over 300 ms with their slow swing, and the
source's timestamps passed to the engine as a real encoder reading a stream does. The warm-up
is two segments: a world passes when no picture is misaligned after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshenc.sim.scenario import Scenario

__all__ = ["BROADCAST_RATES", "SEGMENT_S", "RateWorld", "rate_worlds"]

#: The frame rates of the sweep: PAL and NTSC families, progressive.
BROADCAST_RATES: tuple[str, ...] = ("25", "30000/1001", "50", "60000/1001", "60")
#: One segment (= one GOP) in seconds; lock-in must finish within two.
SEGMENT_S = 2.0


@dataclass(frozen=True, slots=True)
class RateWorld:
    fps: str
    seed: int
    jitter_frames: float
    scenario: Scenario


def rate_worlds(
    rates: Sequence[str] = BROADCAST_RATES,
    worlds: int = 8,
    *,
    duration_s: float = 30.0,
    max_jitter_frames: float = 0.25,
    encoders: int = 10,
) -> list[RateWorld]:
    """``worlds`` seeded worlds per rate (seeds 1..worlds), jitter spread up to the maximum."""
    out = []
    for fps in rates:
        for seed in range(1, worlds + 1):
            jitter = round(max_jitter_frames * seed / worlds, 4)
            scenario = Scenario.from_mapping(
                {
                    "name": f"{fps} fps world {seed}",
                    "seed": seed,
                    "mesh": {
                        "encoders": encoders,
                        "neighbors": 4,
                        "fps": fps,
                        "duration_s": duration_s,
                        "warmup_s": 2 * SEGMENT_S,
                        "segment_s": SEGMENT_S,
                    },
                    "source": {"timestamps": True},
                    "clocks": {"drift_ppm": 200.0, "offset_ms": 1000.0, "jitter_frames": jitter},
                    "ingest": {"delay_ms": [20.0, 320.0], "swing_ms": 25.0},
                },
                source=f"{fps} fps world {seed}",
            )
            out.append(RateWorld(fps, seed, jitter, scenario))
    return out
