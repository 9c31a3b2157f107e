"""The Mesh Manager's planning, timed, counted and traced (``manager.plan``); its scale requests
counted by outcome."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram

from services.common.telemetry import TRACER, enable_metrics

__all__ = ["Plan", "planning", "scale_requested"]

MANAGER_PLAN_SECONDS: Final = Histogram(
    "meshenc_manager_plan_seconds",
    "Time the Mesh Manager took to compute one plan (topology, segments, placement).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
    registry=None,
)
MANAGER_PLANS: Final = Counter(
    "meshenc_manager_plans_total",
    "Plans the Mesh Manager computed, by outcome (ok, error).",
    ["outcome"],
    registry=None,
)
MANAGER_DECISIONS: Final = Counter(
    "meshenc_manager_decisions_total",
    "Decisions the Mesh Manager's plans produced, by kind (TopologyChanged, ...).",
    ["kind"],
    registry=None,
)
MANAGER_SCALE_REQUESTS: Final = Counter(
    "meshenc_manager_scale_requests_total",
    "Autoscaling requests the Mesh Manager made of its actuator, by outcome (ok, failed, "
    "refused: no permission or no way to scale, which stops autoscaling).",
    ["outcome"],
    registry=None,
)
_COLLECTORS: Final = (
    MANAGER_PLAN_SECONDS,
    MANAGER_PLANS,
    MANAGER_DECISIONS,
    MANAGER_SCALE_REQUESTS,
)


def scale_requested(outcome: str) -> None:
    """Count one scale request (``ok``, ``failed`` or ``refused``)."""
    enable_metrics("manager", *_COLLECTORS)
    MANAGER_SCALE_REQUESTS.labels(outcome).inc()


_D = TypeVar("_D", bound=Sequence[object])


class Plan:
    """One planning step in progress; :meth:`record` notes what it decided."""

    __slots__ = ("decisions",)

    def __init__(self) -> None:
        self.decisions: tuple[str, ...] = ()

    def record(self, decisions: _D) -> _D:
        """Note the decisions (by type name) and hand them back unchanged."""
        self.decisions = tuple(type(decision).__name__ for decision in decisions)
        return decisions


@contextlib.contextmanager
def planning(trigger: str) -> Iterator[Plan]:
    """Time one Mesh Manager planning step (``trigger``: ``tick``, ``escalation``, ...).

    Every step is timed and counted; a step that decided something, or failed, is also a
    ``manager.plan`` span (a tick that changes nothing every second would only be noise).
    """
    enable_metrics("manager", *_COLLECTORS)
    plan = Plan()
    started_ns = time.time_ns()
    started = time.perf_counter()
    outcome = "error"
    try:
        yield plan
        outcome = "ok"
    finally:
        MANAGER_PLAN_SECONDS.observe(time.perf_counter() - started)
        MANAGER_PLANS.labels(outcome).inc()
        for kind in plan.decisions:
            MANAGER_DECISIONS.labels(kind).inc()
        if plan.decisions or outcome == "error":
            span = TRACER.start_span(
                "manager.plan",
                context=otel_context.Context(),
                start_time=started_ns,
                attributes={
                    "meshenc.plan.trigger": trigger,
                    "meshenc.plan.decisions": list(plan.decisions),
                },
            )
            if outcome == "error":
                span.set_status(Status(StatusCode.ERROR, "the planning step raised"))
            span.end()
