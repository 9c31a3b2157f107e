"""Clocks as the mesh sees them: a virtual oscillator for fault injection.

Theory of operation: an encoder never sees true time, only its own clock. In the simulator,
tests and the demo that clock is a ``VirtualOscillator`` laid over a reference time (true time
in the simulator, the host's monotonic clock in a service): a constant offset, a frequency
error in parts per million accumulating from ``origin``, optional steps, and a read jitter that
the caller samples from its own seeded random source (the core owns no randomness). In
production the injection is switched off (all parameters zero) and the host clock supplies
whatever drift it really has.

Invariant: with no jitter, ``read`` is strictly increasing in ``reference`` between steps
whenever ``drift_ppm > -1e6``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClockStep", "VirtualOscillator"]

PPM = 1e-6


@dataclass(frozen=True, slots=True)
class ClockStep:
    """From reference time ``at`` on, the clock reads ``step`` seconds more (negative: less)."""

    at: float
    step: float


@dataclass(frozen=True, slots=True)
class VirtualOscillator:
    """An injectable clock error: offset, drift and steps over a reference time."""

    offset: float = 0.0
    drift_ppm: float = 0.0
    origin: float = 0.0
    steps: tuple[ClockStep, ...] = ()

    def __post_init__(self) -> None:
        if not -1e5 < self.drift_ppm < 1e5:
            raise ValueError(f"drift of {self.drift_ppm} ppm is not a clock")

    def error(self, reference: float) -> float:
        """How far (s) this clock is ahead of the reference at ``reference``, jitter aside."""
        error = self.offset + self.drift_ppm * PPM * (reference - self.origin)
        if self.steps:
            error += sum(s.step for s in self.steps if reference >= s.at)
        return error

    def read(self, reference: float, jitter: float = 0.0) -> float:
        """The clock's reading at ``reference``; ``jitter`` is a noise sample from the caller."""
        return reference + self.error(reference) + jitter
