"""Where the Mesh Manager's decisions go: one interface, a Kubernetes and an etcd actuator.

Theory of operation
-------------------
The planner decides, per encoder, an :class:`~meshenc.wire.adjacency.AdjacencyDocument`
(neighbours, segment, leader, under a topology epoch). An :class:`Actuator` makes those
documents visible to the encoders and tells the manager which encoders exist:

- :meth:`Actuator.publish` writes a whole plan. It is idempotent: documents whose canonical
  text is already stored are not written again, and documents of encoders that are no longer in
  the plan are deleted. Writes carry the version last seen (Kubernetes ``resourceVersion``,
  etcd ``mod_revision``), so a concurrent writer is detected instead of overwritten; after a
  conflict the actuator reads again and retries. A plan older than what is stored (a lower
  epoch) is refused with :class:`StalePlanError`: a manager that lost track must not roll the
  mesh back.
- :meth:`Actuator.members` follows the encoders: pods of the encoder StatefulSet
  (Kubernetes), or encoders' own registration keys (embedded). It yields a
  :class:`MemberJoined` for every encoder present when it starts, then changes as they happen.
  Watches resume from the last version seen after a dropped or stalled connection, and list
  again (yielding only the difference) when the server no longer has that version.
- :meth:`Actuator.scale` asks for a number of encoders (Kubernetes only).

Invariants:

1. ``publish`` never lowers a stored document's epoch, and never overwrites a write it has
   not seen (optimistic concurrency on every write).
2. ``members`` never yields a :class:`MemberLeft` for an encoder it has not announced, nor two
   :class:`MemberJoined` in a row with the same content for one encoder: a repeated join for
   a known encoder means its address, capacity or zone changed.
3. Transient failures (connection lost, timeouts, 5xx, 429, conflicts) are retried with
   exponential backoff and jitter (``services.common.retry``); permission errors are not
   retried, they surface at once with the verb, resource and namespace that were refused.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshenc.wire.adjacency import AdjacencyDocument

__all__ = [
    "Actuator",
    "ActuatorError",
    "ForbiddenError",
    "MemberEvent",
    "MemberJoined",
    "MemberLeft",
    "NotLeaderError",
    "ScalingNotSupportedError",
    "StalePlanError",
    "check_plan",
    "diff_members",
    "follow_member",
    "within_bounds",
]

log = logging.getLogger("meshenc.manager.actuator")


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """An encoder is present (or its address, capacity or zone changed)."""

    encoder: str
    address: str
    capacity: int = 4
    zone: str = ""


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """An encoder went away (pod deleted or terminating; registration lease ended)."""

    encoder: str


MemberEvent = MemberJoined | MemberLeft


class ActuatorError(RuntimeError):
    """The decisions could not be written; the message says what and why."""


class ForbiddenError(ActuatorError):
    """The API refused a request for lack of permission (HTTP 403): not retried.

    ``verb``, ``resource`` and ``namespace`` name exactly what the manager's Role lacks.
    """

    def __init__(self, verb: str, resource: str, namespace: str, detail: str = "") -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        more = f": {detail}" if detail else ""
        super().__init__(
            f"forbidden: the manager may not {verb} {resource} in namespace {namespace!r}"
            f"{more} (grant it in the manager's Role; see docs/actuators.md)"
        )


class StalePlanError(ActuatorError):
    """A newer plan (higher epoch) is already published: this one must not replace it."""

    def __init__(self, ours: int, stored: int, where: str) -> None:
        self.ours = ours
        self.stored = stored
        super().__init__(
            f"refusing to publish epoch {ours}: {where} already holds epoch {stored} "
            "(another manager is ahead; resume from published_epoch())"
        )


class NotLeaderError(ActuatorError):
    """This manager is not (or no longer) the active one, so it must not write."""


class ScalingNotSupportedError(ActuatorError, NotImplementedError):
    """This actuator cannot change the number of encoders (embedded mode; scaling off)."""


@runtime_checkable
class Actuator(Protocol):
    """What the manager needs from wherever its decisions go (see the module docstring)."""

    async def published_epoch(self) -> int:
        """The highest epoch already published (0 when nothing is), so that a manager that
        starts or takes over continues above it."""
        ...

    async def publish(self, documents: Mapping[str, AdjacencyDocument]) -> None:
        """Make ``documents`` (encoder id → its document, one epoch) the published plan.

        Raises:
            ValueError: the plan is inconsistent (a key differs from its document's encoder,
                or epochs differ).
            StalePlanError: a newer plan is stored.
            ForbiddenError, NotLeaderError, ActuatorError: nothing or part of the plan was
                written; publishing the same plan again completes it.
        """
        ...

    def members(self) -> AsyncIterator[MemberEvent]:
        """Encoders present now, then as they join and leave, until the iterator is closed."""
        ...

    async def scale(self, replicas: int) -> None:
        """Ask for ``replicas`` encoders (clamped to the configured bounds).

        Raises:
            ScalingNotSupportedError: when this actuator cannot scale.
        """
        ...

    async def close(self) -> None:
        """Release what the actuator holds (it cannot be used afterwards)."""
        ...


def within_bounds(replicas: int, bounds: tuple[int, int] | None, how_to_enable: str) -> int:
    """``replicas`` clamped to the scale ``bounds`` (min, max): what a scale request asks for
    (logged when it differs from the wish).

    Raises:
        ScalingNotSupportedError: no bounds: scaling is off (the message says
            ``how_to_enable`` it).
    """
    if bounds is None:
        raise ScalingNotSupportedError(f"scaling is off: {how_to_enable}")
    low, high = bounds
    target = min(max(replicas, low), high)
    if target != replicas:
        log.info("scale: %d replicas asked, %d within bounds [%d, %d]", replicas, target, low, high)
    return target


def check_plan(documents: Mapping[str, AdjacencyDocument]) -> int:
    """The plan's epoch (0 for an empty plan).

    Raises:
        ValueError: a key is not its document's encoder, or the documents' epochs differ.
    """
    epochs = set()
    for encoder, document in documents.items():
        if document.encoder != encoder:
            raise ValueError(f"plan entry {encoder!r} holds the document of {document.encoder!r}")
        epochs.add(document.epoch)
    if len(epochs) > 1:
        raise ValueError(f"a plan has one epoch, got {sorted(epochs)}")
    return epochs.pop() if epochs else 0


def diff_members(
    known: Mapping[str, MemberJoined], current: Mapping[str, MemberJoined]
) -> list[MemberEvent]:
    """Events that turn ``known`` into ``current`` (leaves first, then joins, each sorted)."""
    events: list[MemberEvent] = [MemberLeft(e) for e in sorted(known) if e not in current]
    events.extend(current[e] for e in sorted(current) if known.get(e) != current[e])
    return events


def follow_member(
    known: dict[str, MemberJoined],
    encoder: str,
    member: MemberJoined | None,
    emit: Callable[[MemberEvent], None],
) -> None:
    """Record what a watch saw of ``encoder`` (None: gone) in ``known``, emitting the change."""
    if member is None:
        if known.pop(encoder, None) is not None:
            emit(MemberLeft(encoder))
    elif known.get(encoder) != member:
        known[encoder] = member
        emit(member)
