"""The Mesh Manager's planning core: health, coordinates, topology, segments, placement.

Pure and deterministic like the rest of :mod:`meshenc.core`: inputs in, a plan and decisions
out. :class:`~meshenc.core.planner.manager.MeshManager` is the state machine a manager
service drives; :func:`~meshenc.core.planner.manager.plan_mesh` is the planning step on its
own (the benchmark and the property tests call it directly). The algorithms and their
invariants are described in each module's docstring and in ``docs/manager.md``.
"""

from meshenc.core.planner.manager import (
    CapacityMeasured,
    EncoderIsolated,
    EncoderJoined,
    EncoderLeft,
    EncoderRemoved,
    Escalated,
    EscalationJudged,
    EscalationVerdict,
    LeaderElected,
    LinkAvoided,
    ManagerConfig,
    MeshManager,
    MeshPlan,
    MeshView,
    PlacementChanged,
    PlannerConfig,
    SegmentInfo,
    SegmentsChanged,
    TopologyChanged,
    WorkUnitsSet,
    plan_mesh,
)

__all__ = [
    "CapacityMeasured",
    "EncoderIsolated",
    "EncoderJoined",
    "EncoderLeft",
    "EncoderRemoved",
    "Escalated",
    "EscalationJudged",
    "EscalationVerdict",
    "LeaderElected",
    "LinkAvoided",
    "ManagerConfig",
    "MeshManager",
    "MeshPlan",
    "MeshView",
    "PlacementChanged",
    "PlannerConfig",
    "SegmentInfo",
    "SegmentsChanged",
    "TopologyChanged",
    "WorkUnitsSet",
    "plan_mesh",
]
