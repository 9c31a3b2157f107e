"""Scenarios: readable TOML files that describe a simulated world.

A scenario names everything a run depends on except the strategy: mesh size and degree,
clock faults, ingest delays, network, liars, warm-up, seed. Files are validated on load
(unknown keys, wrong types and out-of-range values are errors that name the field), so a typo
never silently falls back to a default. The optional ``[expect]`` table states the properties
the scenario tests assert; the simulator itself ignores it.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshenc.core.timecode import FrameRate

__all__ = [
    "DEFAULT_JITTER_MS",
    "ClockStepFault",
    "Scenario",
    "ScenarioError",
    "packaged_scenario",
    "packaged_scenarios",
]


class ScenarioError(ValueError):
    """A scenario file or override is invalid; the message names the field."""


Milliseconds = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClockStepFault(_Strict):
    """Encoder ``encoder``'s clock jumps by ``step_ms`` at ``at_s`` seconds into the run."""

    encoder: Annotated[int, Field(ge=0)]
    at_s: Annotated[float, Field(ge=0.0)]
    step_ms: Annotated[float, Field(ge=-10_000.0, le=10_000.0)]


class MeshSection(_Strict):
    encoders: Annotated[int, Field(ge=2, le=100_000)] = 10
    neighbors: Annotated[int, Field(ge=1, le=16)] = 4
    fps: str = "30"
    duration_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 120.0
    warmup_s: Annotated[float, Field(ge=0.0)] = 10.0
    #: One segment (= one GOP) in seconds; the engines' GOP is this many seconds of frames.
    segment_s: Annotated[float, Field(gt=0.0, le=60.0)] = 2.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        FrameRate.parse(self.fps)
        if self.warmup_s >= self.duration_s:
            raise ValueError("warmup_s must be shorter than duration_s")
        return self


#: Capture jitter when a scenario states none (standard deviation, ms).
DEFAULT_JITTER_MS = 2.0


class ClocksSection(_Strict):
    drift_ppm: Annotated[float, Field(ge=0.0, le=1000.0)] = 100.0
    offset_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 200.0
    #: Standard deviation of every capture timestamp's noise (the measured arrival of a
    #: picture), in milliseconds or in frame periods; at most one of the two.
    jitter_ms: Milliseconds | None = None
    jitter_frames: Annotated[float, Field(ge=0.0, le=0.5)] | None = None
    steps: tuple[ClockStepFault, ...] = ()

    @model_validator(mode="after")
    def _one_jitter(self) -> Self:
        if self.jitter_ms is not None and self.jitter_frames is not None:
            raise ValueError("give jitter_ms or jitter_frames, not both")
        return self


class SourceSection(_Strict):
    #: Whether encoders get the source's own timestamps (PTS) and pass the number of frame
    #: periods between pictures to the engine, as a real encoder reading a stream does;
    #: without them the engine counts periods from arrival times.
    timestamps: bool = True


class IngestSection(_Strict):
    delay_ms: tuple[Milliseconds, Milliseconds] = (20.0, 120.0)
    swing_ms: Milliseconds = 25.0
    period_s: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] = (
        60.0,
        180.0,
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.delay_ms[0] > self.delay_ms[1] or self.period_s[0] > self.period_s[1]:
            raise ValueError("ranges must be [low, high]")
        return self


class RegionCut(_Strict):
    """Every link between one region and the others carries nothing for a while."""

    region: Annotated[int, Field(ge=0)]
    at_s: Annotated[float, Field(ge=0.0)]
    duration_s: Annotated[float, Field(gt=0.0)]


class NetworkSection(_Strict):
    #: One-way delay of each mesh link (inside a region, when there are several).
    delay_ms: tuple[Milliseconds, Milliseconds] = (1.0, 10.0)
    jitter_ms: Milliseconds = 1.0
    loss: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    #: Encoders are split into this many regions of consecutive indices...
    regions: Annotated[int, Field(ge=1, le=64)] = 1
    #: ...whose links to each other have this one-way delay...
    between_delay_ms: tuple[Milliseconds, Milliseconds] = (40.0, 150.0)
    #: ...and of which there are this many between any two regions, each from a different
    #: encoder on either side (independent bridges).
    bridges: Annotated[int, Field(ge=1, le=16)] = 2
    cuts: tuple[RegionCut, ...] = ()

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if (
            self.delay_ms[0] > self.delay_ms[1]
            or self.between_delay_ms[0] > self.between_delay_ms[1]
        ):
            raise ValueError("delay_ms and between_delay_ms must be [low, high]")
        for cut in self.cuts:
            if cut.region >= self.regions:
                raise ValueError(f"a cut names region {cut.region} of {self.regions}")
        return self


class LiarsSection(_Strict):
    count: Annotated[int, Field(ge=0)] = 0
    #: How far (frames) a liar shifts the labels it reports; the sign flips every few seconds.
    lie_frames: Annotated[float, Field(ge=0.0, le=100.0)] = 3.0


class Scenario(_Strict):
    name: str = "custom"
    description: str = ""
    seed: int = 1
    mesh: MeshSection = MeshSection()
    source: SourceSection = SourceSection()
    clocks: ClocksSection = ClocksSection()
    ingest: IngestSection = IngestSection()
    network: NetworkSection = NetworkSection()
    liars: LiarsSection = LiarsSection()
    expect: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        n = self.mesh.encoders
        if self.liars.count >= n:
            raise ValueError("liars.count must leave at least one honest encoder")
        if self.mesh.neighbors >= n:
            raise ValueError("mesh.neighbors must be smaller than mesh.encoders")
        net = self.network
        if net.regions > 1 and n // net.regions < max(2, net.bridges):
            raise ValueError(
                f"{net.regions} regions of {n} encoders leave fewer than "
                f"{max(2, net.bridges)} (and network.bridges) in a region"
            )
        for step in self.clocks.steps:
            if step.encoder >= n:
                raise ValueError(f"clock step names encoder {step.encoder} of {n}")
        return self

    @property
    def frame_rate(self) -> FrameRate:
        return FrameRate.parse(self.mesh.fps)

    @property
    def gop(self) -> int:
        """Frames per GOP (= per segment): ``segment_s`` of frames, at least one."""
        fr = self.frame_rate
        return max(1, round(self.mesh.segment_s * fr.num / fr.den))

    @property
    def capture_jitter_s(self) -> float:
        """Standard deviation (s) of capture timestamp noise, however the file states it."""
        c = self.clocks
        if c.jitter_frames is not None:
            return c.jitter_frames * self.frame_rate.period
        return (DEFAULT_JITTER_MS if c.jitter_ms is None else c.jitter_ms) / 1000.0

    @classmethod
    def from_toml(cls, text: str, *, source: str = "scenario") -> Scenario:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "scenario") -> Scenario:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ScenarioError(_describe(source, exc)) from exc

    def with_overrides(self, **changes: Any) -> Scenario:
        """A copy with dotted-path overrides, e.g. ``{"mesh.encoders": 100}``; validated."""
        data = self.model_dump()
        # One way of stating the capture jitter replaces the other.
        if changes.get("clocks.jitter_ms") is not None:
            data["clocks"]["jitter_frames"] = None
        if changes.get("clocks.jitter_frames") is not None:
            data["clocks"]["jitter_ms"] = None
        for dotted, value in changes.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise ScenarioError(f"unknown scenario field {dotted!r}")
            node[leaf] = value
        return Scenario.from_mapping(data, source=f"{self.name} with overrides")


def packaged_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``meshenc/sim/scenarios/``, sorted."""
    folder = resources.files("meshenc.sim") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def packaged_scenario(name: str) -> Scenario:
    """The shipped scenario ``name`` (``standard``, ...).

    Raises:
        ScenarioError: no scenario has that name (the message lists those that do), or it
            does not validate.
    """
    entry = resources.files("meshenc.sim") / "scenarios" / f"{name}.toml"
    if not entry.is_file():
        known = ", ".join(packaged_scenarios())
        raise ScenarioError(f"no scenario {name!r} (packaged: {known})")
    return Scenario.from_toml(entry.read_text(encoding="utf-8"), source=f"scenario {name}")


def _describe(source: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        problems.append(f"{where}: {error['msg']}")
    return f"{source}: " + "; ".join(problems)
