"""Autoscaling: when to add encoders, and which one to drain and remove, from their load.

Theory of operation
-------------------
:class:`Autoscaler` has the shape of every core (:mod:`meshenc.core.machine`). The manager
steps it on each tick with :class:`FleetObserved` — every member's *pressure* and which members
still hold work in the current placement — and carries out what :meth:`Autoscaler.ready`
returns. An encoder's pressure is the larger of its CPU load and its encode time per frame
over the frame budget, smoothed over its reports (:mod:`.load`, which the placement's
capacities come from too): either one saturating means the encoder is full. The fleet's load
is the mean pressure of the members that have reported.

- **Scale out** when the fleet's load is at or above ``high_water`` and the fleet is below
  ``max_replicas``: to ``ceil(n x load / target)`` encoders (``target`` halfway between the
  marks, as the Horizontal Pod Autoscaler sizes), at least one more, at most as many as keep
  the load at or above ``low_water`` (so the new fleet is not one that would shrink at once),
  and within ``[min_replicas, max_replicas]``.
- **Scale in**, one encoder at a time, when the load is below ``low_water``, every member has
  reported, one encoder fewer is within ``[min_replicas, max_replicas]``, and the same total
  load on one encoder fewer would stay below ``high_water`` (so the smaller fleet is not one
  that would grow at once).
  The encoder with the highest ordinal (the number its name ends in: a StatefulSet pod's
  ``<name>-<n>``, the one a StatefulSet removes first; ``meshenc up``'s ``e<n>``) is
  *drained* first (:class:`DrainStarted`: the manager gives it no capacity, so the placement
  moves its units away). Once it holds nothing and ``drain_grace`` seconds
  have passed (time for the new holders to start at a GOP boundary), :class:`ScaleIn` asks for
  one encoder fewer. A drain is cancelled (:class:`DrainCancelled`) if the encoder leaves, if
  the load on the others would reach ``high_water``, or if it still holds work after
  ``drain_timeout`` seconds (the others have no room).
- **Cool-down**: a scale-out or the start of a drain happens only ``cooldown`` seconds after
  the previous scale-out, drain start or scale-in, and the first one ``cooldown`` seconds after
  the first observation (a manager that just started does not know its fleet yet).
- :class:`ScaleFailed` (the actuator could not apply a decision) cancels a drain; a permanent
  failure (no permission, scaling not possible) stops autoscaling for good.

Invariants (property-tested with Hypothesis):

1. Every :class:`ScaleOut` and :class:`ScaleIn` asks for a number of replicas within
   ``[min_replicas, max_replicas]``; a scale-out asks for more than the members present, a
   scale-in for one fewer.
2. Two decisions among scale-out, drain start and scale-in are never closer than ``cooldown``,
   except a scale-in completing its own drain.
3. A :class:`ScaleIn` names the encoder of the :class:`DrainStarted` before it, with no
   :class:`DrainCancelled` between; that encoder held no work when it was decided.
4. With a constant total load the fleet moves in one direction only (no flapping).
5. Deterministic: the same observations at the same times give the same decisions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from meshenc.core.machine import check_time

__all__ = [
    "AutoscaleConfig",
    "AutoscaleDecision",
    "AutoscaleEvent",
    "Autoscaler",
    "DrainCancelled",
    "DrainStarted",
    "EncoderLoad",
    "FleetObserved",
    "ScaleFailed",
    "ScaleIn",
    "ScaleOut",
    "ordinal",
]

_ORDINAL = re.compile(r".*?(\d+)")


def ordinal(encoder_id: str) -> int | None:
    """The number an encoder's name ends in: a StatefulSet pod's ordinal (``meshenc-encoder-3``
    → 3), ``meshenc up``'s ``e3`` → 3; None for a name without one."""
    found = _ORDINAL.fullmatch(encoder_id)
    return int(found.group(1)) if found else None


def _by_ordinal(encoder_id: str) -> tuple[int, str]:
    number = ordinal(encoder_id)
    return (-1 if number is None else number, encoder_id)


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """Bounds, marks and timers of the autoscaler (see the module docstring)."""

    min_replicas: int
    max_replicas: int
    high_water: float = 0.75
    low_water: float = 0.30
    cooldown: float = 120.0
    drain_grace: float = 10.0
    drain_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                "replica bounds must be 0 <= min <= max and max >= 1, got "
                f"{self.min_replicas}..{self.max_replicas}"
            )
        if not 0.0 < self.low_water < self.high_water <= 1.0:  # NaN fails too
            raise ValueError(
                "marks must be 0 < low water < high water <= 1, got "
                f"{self.low_water!r} and {self.high_water!r}"
            )
        for name in ("cooldown", "drain_grace", "drain_timeout"):
            _positive(name, getattr(self, name))
        if self.drain_timeout <= self.drain_grace:
            raise ValueError("drain_timeout must be longer than drain_grace")

    @property
    def target(self) -> float:
        """The load a scale-out aims at: halfway between the marks."""
        return (self.high_water + self.low_water) / 2


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncoderLoad:
    """One member's pressure (None: it has not reported yet)."""

    encoder_id: str
    pressure: float | None = None

    def __post_init__(self) -> None:
        if not self.encoder_id:
            raise ValueError("encoder_id must not be empty")
        if self.pressure is not None and not (math.isfinite(self.pressure) and self.pressure >= 0):
            raise ValueError(f"pressure must be finite and >= 0, got {self.pressure!r}")


@dataclass(frozen=True, slots=True)
class FleetObserved:
    """The members now, with their pressure, and the members that hold work."""

    encoders: tuple[EncoderLoad, ...]
    holding: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        ids = [e.encoder_id for e in self.encoders]
        if len(set(ids)) != len(ids):
            raise ValueError("an encoder is listed twice")


@dataclass(frozen=True, slots=True)
class ScaleFailed:
    """The actuator could not apply the last scale decision; ``permanent``: it never will."""

    reason: str
    permanent: bool = False


AutoscaleEvent = FleetObserved | ScaleFailed


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScaleOut:
    """Ask for ``replicas`` encoders (there are ``members``)."""

    replicas: int
    members: int
    load: float
    reason: str


@dataclass(frozen=True, slots=True)
class DrainStarted:
    """Move every unit off ``encoder_id``: it is the next to go."""

    encoder_id: str
    load: float
    reason: str


@dataclass(frozen=True, slots=True)
class DrainCancelled:
    """``encoder_id`` stays: give it its capacity back."""

    encoder_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScaleIn:
    """``encoder_id`` is drained: ask for ``replicas`` encoders (one fewer)."""

    replicas: int
    encoder_id: str
    reason: str


AutoscaleDecision = ScaleOut | DrainStarted | DrainCancelled | ScaleIn


# --- the state machine ----------------------------------------------------------------------


class Autoscaler:
    """Decides scale-outs, drains and scale-ins from observations (see the module docstring)."""

    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config
        self._now = -math.inf
        self._last_decision: float | None = None  # the first observation starts the cool-down
        self._draining: tuple[str, float] | None = None
        self._disabled = ""
        self._decisions: list[AutoscaleDecision] = []

    @property
    def draining(self) -> str | None:
        """The encoder being drained, if any."""
        return None if self._draining is None else self._draining[0]

    @property
    def disabled(self) -> str:
        """Why autoscaling stopped for good ("" while it runs)."""
        return self._disabled

    def ready(self) -> list[AutoscaleDecision]:
        """The decisions made since the last call, in order."""
        decisions, self._decisions = self._decisions, []
        return decisions

    def step(self, now: float, event: AutoscaleEvent) -> None:
        """Apply one observation or failure at ``now`` (the manager's clock, seconds)."""
        check_time(now)
        self._now = now = max(self._now, now)
        if isinstance(event, ScaleFailed):
            self._failed(event)
        elif not self._disabled:
            if self._last_decision is None:
                self._last_decision = now
            self._observe(now, event)

    def _failed(self, event: ScaleFailed) -> None:
        if self._draining is not None:
            self._cancel(f"scaling failed: {event.reason}")
        if event.permanent and not self._disabled:
            self._disabled = event.reason

    def _cancel(self, why: str) -> None:
        assert self._draining is not None
        self._decisions.append(DrainCancelled(self._draining[0], why))
        self._draining = None

    def _observe(self, now: float, fleet: FleetObserved) -> None:
        config = self.config
        members = [e.encoder_id for e in fleet.encoders]
        n = len(members)
        reported = [e.pressure for e in fleet.encoders if e.pressure is not None]
        total = math.fsum(reported)
        if self._draining is not None:
            self._follow_drain(now, fleet, members, total)
            return
        assert self._last_decision is not None
        if not reported or now - self._last_decision < config.cooldown:
            return
        load = total / len(reported)
        if load >= config.high_water and n < config.max_replicas:
            wanted = math.ceil(n * load / config.target)
            keeps_low = math.floor(n * load / config.low_water)
            replicas = min(
                config.max_replicas, max(config.min_replicas, n + 1, min(wanted, keeps_low))
            )
            self._decisions.append(
                ScaleOut(
                    replicas,
                    n,
                    load,
                    f"load {load:.2f} >= high water {config.high_water:g} on {n} encoders",
                )
            )
            self._last_decision = now
        elif (
            load < config.low_water
            and len(reported) == n
            and max(config.min_replicas, 1) < n <= config.max_replicas + 1
            and total / (n - 1) < config.high_water
        ):
            victim = max(members, key=_by_ordinal)
            self._draining = (victim, now)
            self._last_decision = now
            self._decisions.append(
                DrainStarted(
                    victim,
                    load,
                    f"load {load:.2f} < low water {config.low_water:g} on {n} encoders; "
                    f"{n - 1} would carry {total / (n - 1):.2f}",
                )
            )

    def _follow_drain(
        self, now: float, fleet: FleetObserved, members: Sequence[str], total: float
    ) -> None:
        assert self._draining is not None
        config = self.config
        victim, started = self._draining
        n = len(members)
        if victim not in members:
            self._cancel("it left the mesh")
        elif not max(config.min_replicas, 1) < n <= config.max_replicas + 1:
            self._cancel(
                f"{n} encoders: one fewer is outside {config.min_replicas}..{config.max_replicas}"
            )
        elif total / (n - 1) >= config.high_water:
            self._cancel(f"{n - 1} encoders would carry {total / (n - 1):.2f}")
        elif victim not in fleet.holding and now - started >= config.drain_grace:
            self._draining = None
            self._last_decision = now
            self._decisions.append(
                ScaleIn(n - 1, victim, f"{victim} drained in {now - started:.1f} s")
            )
        elif now - started >= config.drain_timeout:
            self._cancel(f"still holds work after {config.drain_timeout:g} s")
