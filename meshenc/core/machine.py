"""The one shape of every core: events in through ``step(now, event)``, actions out of ``ready()``.

The sync engine, the leader election and the manager's planner are state machines driven by
thin shells. All three keep the same conventions, so a reader who knows one knows the others
and a shell, the simulator and a test drive them the same way:

- **One way in.** ``step(now, event)`` applies one typed event. ``now`` is seconds on the
  caller's own clock (monotonic, finite); it is always the first argument and never part of
  the event. Letting time pass with nothing else happening is the event :class:`Tick`.
- **One way out.** ``ready()`` returns everything decided since the last call, in the order it
  must be carried out, and forgets it. A shell calls it after each ``step`` (or a batch of
  steps) and carries out every action; nothing leaves a core any other way.
- **Reading is free.** Properties and ``snapshot`` only read; they never change state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["StateMachine", "Tick", "check_time"]

EventT_contra = TypeVar("EventT_contra", contravariant=True)
ActionT = TypeVar("ActionT")


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed with nothing else happening: deadlines, silences, periodic work."""


class StateMachine(Protocol[EventT_contra, ActionT]):
    """What every core offers its shell."""

    def step(self, now: float, event: EventT_contra) -> None:
        """Apply one event observed at ``now``."""
        ...

    def ready(self) -> list[ActionT]:
        """The actions decided since the last call, in order."""
        ...


def check_time(now: float) -> None:
    """Refuse a time that is not a finite number (a NaN would poison every comparison)."""
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now!r}")
