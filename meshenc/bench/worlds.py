"""Seeded worlds for the lock-in benches: every broadcast frame rate (``meshenc bench lockin
--rates``) and mesh links of every kind, LAN to long-haul and regions (``meshenc bench wan``).

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

__all__ = [
    "BROADCAST_RATES",
    "LINK_PROFILES",
    "SEGMENT_S",
    "LinkProfile",
    "RateWorld",
    "WanWorld",
    "rate_worlds",
    "wan_worlds",
]

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


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """The mesh links of a world: one-way delay, jitter and loss, and regions if any (their
    inside links then take ``delay_ms``, the links between them ``between_delay_ms``)."""

    name: str
    delay_ms: tuple[float, float]
    jitter_ms: float
    loss: float
    regions: int = 1
    between_delay_ms: tuple[float, float] = (40.0, 150.0)

    def network(self) -> dict[str, object]:
        return {
            "delay_ms": list(self.delay_ms),
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "regions": self.regions,
            "between_delay_ms": list(self.between_delay_ms),
        }


#: From a LAN to long-haul links everywhere, and meshes of regions.
LINK_PROFILES: tuple[LinkProfile, ...] = (
    LinkProfile("lan", (1.0, 10.0), 1.0, 0.0),
    LinkProfile("metro", (20.0, 60.0), 10.0, 0.01),
    LinkProfile("long-haul", (40.0, 160.0), 1.0, 0.0),
    LinkProfile("long-haul-lossy", (40.0, 160.0), 10.0, 0.01),
    LinkProfile("worst", (150.0, 200.0), 20.0, 0.02),
    LinkProfile("3-regions", (1.0, 5.0), 10.0, 0.01, 3, (40.0, 150.0)),
    LinkProfile("4-regions-far", (1.0, 5.0), 20.0, 0.02, 4, (100.0, 200.0)),
)


@dataclass(frozen=True, slots=True)
class WanWorld:
    links: LinkProfile
    seed: int
    scenario: Scenario


def wan_worlds(
    profiles: Sequence[LinkProfile] = LINK_PROFILES,
    worlds: int = 4,
    *,
    duration_s: float = 60.0,
    encoders: int = 30,
) -> list[WanWorld]:
    """``worlds`` seeded worlds (seeds 1..worlds) per link profile: ``encoders`` encoders of
    degree 5 at 30 fps, ±150 ppm, ±500 ms offsets, ingest delays 20–220 ms, 2 ms of capture
    jitter; the warm-up is two segments."""
    out = []
    for links in profiles:
        for seed in range(1, worlds + 1):
            scenario = Scenario.from_mapping(
                {
                    "name": f"{links.name} world {seed}",
                    "seed": seed,
                    "mesh": {
                        "encoders": encoders,
                        "neighbors": 5,
                        "duration_s": duration_s,
                        "warmup_s": 2 * SEGMENT_S,
                        "segment_s": SEGMENT_S,
                    },
                    "clocks": {"drift_ppm": 150.0, "offset_ms": 500.0, "jitter_ms": 2.0},
                    "ingest": {"delay_ms": [20.0, 220.0], "swing_ms": 25.0},
                    "network": links.network(),
                },
                source=f"{links.name} world {seed}",
            )
            out.append(WanWorld(links, seed, scenario))
    return out
