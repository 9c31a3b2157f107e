"""Autoscaling end to end: the manager shell, its core's policy, and the Kubernetes actuator
calling ``statefulsets/scale`` on a Kubernetes API server stand-in, with the real client.

What is real: the manager shell and core, ``kubernetes_asyncio`` over HTTP on 127.0.0.1, the
pod watch that turns scaled pods into members. What is a stand-in: the API server
(:mod:`tests.services.k8s_standin`, which also plays the StatefulSet controller), and the
encoders, whose health reports the test hands to the shell as the ``ReportHealth`` servicer
would. Every test says "standin" in its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes_asyncio import client as k8s

from meshenc.core.planner import ManagerConfig
from meshenc.core.planner.autoscale import AutoscaleConfig
from meshenc.core.planner.placement import WorkUnit
from meshenc.v1 import manager_pb2
from meshenc.wire.adjacency import ADJACENCY_DATA_KEY, AdjacencyDocument, parse_adjacency
from services.common.telemetry import REGISTRY
from services.manager.kubernetes_actuator import KubernetesActuator
from services.manager.service import ManagerShell
from tests.services.k8s_standin import KubernetesStandIn, Recorded
from tests.services.support import NAMESPACE, POD_LABELS, STATEFULSET

pytestmark = pytest.mark.asyncio

BOUNDS = (2, 5)
REFUSED = "meshenc_manager_scale_requests_total"
UNITS = tuple(WorkUnit(f"ch{c}", r) for c in range(2) for r in ("360p", "180p"))


def pod(index: int) -> str:
    return f"{STATEFULSET}-{index}"


def replicas(standin: KubernetesStandIn) -> int:
    return int(standin.objects[("statefulsets", NAMESPACE, STATEFULSET)]["spec"]["replicas"])


@contextlib.asynccontextmanager
async def autoscaled(
    standin: KubernetesStandIn, api: k8s.ApiClient, start: int, attempts: int = 6
) -> AsyncIterator[tuple[ManagerShell, KubernetesActuator, dict[str, float]]]:
    """A StatefulSet of ``start`` encoders, an active manager that autoscales it, and encoders
    reporting every 50 ms the CPU load the test puts in the yielded dict (``"*"``: all) and,
    as served, the units the placement gives them (a real encoder says so once a segment of
    the unit is confirmed: what lets a drained encoder's units go)."""
    standin.add_statefulset(STATEFULSET, start, POD_LABELS)
    act = KubernetesActuator(
        api,
        namespace=NAMESPACE,
        statefulset=STATEFULSET,
        scale_bounds=BOUNDS,
        watch_timeout=30,
        attempts=attempts,
    )
    policy = AutoscaleConfig(
        min_replicas=BOUNDS[0],
        max_replicas=BOUNDS[1],
        cooldown=0.6,
        drain_grace=0.3,
        drain_timeout=5.0,
    )
    shell = ManagerShell(act, ManagerConfig(autoscale=policy), work_units=UNITS, tick_interval=0.05)
    load = {"*": 0.5}

    async def report() -> None:
        while True:
            # As the ReportHealth servicer does: a standby takes no reports.
            for member in shell.members if shell.active else ():
                # Epoch 0: no links are expected of these stand-in encoders.
                shell.report(
                    manager_pb2.HealthReport(
                        encoder_id=member,
                        confidence=0.9,
                        cpu_load=load.get(member, load["*"]),
                        encode_latency_us=2000,
                        units=sorted(u for u, h in shell.placement.items() if member in h),
                    )
                )
            await asyncio.sleep(0.05)

    await shell.activate()
    reporter = asyncio.create_task(report())
    try:
        await until(lambda: len(shell.members) == start)
        yield shell, act, load
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await shell.deactivate()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_rising_load_scales_out_once_within_bounds_despite_a_conflict_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Load above the high-water mark on 3 encoders: one ``/scale`` GET-then-PATCH to the
    maximum, 5 (the policy wants 6). Another client rewrites the StatefulSet just as the
    PATCH arrives (after the actuator's GET): the patch meets 409, the actuator reads again
    and retries. The new pods join the mesh and take work; nothing else is patched while the
    load stays."""

    def interfere(request: Recorded) -> None:
        if request.method == "PATCH" and request.resource == "statefulsets/scale":
            standin.observers.remove(interfere)
            standin.touch("statefulsets", STATEFULSET)

    standin.observers.append(interfere)
    async with autoscaled(standin, api, start=3) as (shell, act, load):
        load["*"] = 0.95
        await until(lambda: replicas(standin) == 5)
        await until(lambda: len(shell.members) == 5)
        load["*"] = 0.6  # 5 encoders now carry the load
        await asyncio.sleep(1.5)  # more than two cool-downs
        patches = standin.recorded("PATCH", "statefulsets/scale")
        assert len(patches) == 2  # the one that met 409, and its retry
        assert act.conflicts == 1
        assert len(standin.recorded("GET", "statefulsets/scale")) == 2  # read again after 409
        assert replicas(standin) == 5
        assert shell.scaling.applied == 5 and shell.scaling.error == ""
        hosts = {h for holders in shell.placement.values() for h in holders}
        assert hosts & {pod(3), pod(4)}, "the new encoders took work"


async def test_falling_load_drains_then_scales_in_never_below_the_minimum_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Idle encoders, 4 of them: the highest ordinal is drained first — when each ``/scale``
    PATCH arrives, the encoder it removes holds no work in the manager's placement, and the
    ConfigMaps the encoders read say so (its document's ``work`` is empty, every unit is in
    two others') — then scaled in, one at a time, down to the minimum of 2 and no further."""
    holding_at_patch: list[tuple[int, set[str]]] = []
    documents_at_patch: list[dict[str, AdjacencyDocument]] = []
    shell_ref: list[ManagerShell] = []

    def note(request: Recorded) -> None:
        if request.method == "PATCH" and request.resource == "statefulsets/scale":
            placement = shell_ref[0].placement
            holding_at_patch.append(
                (replicas(standin), {h for holders in placement.values() for h in holders})
            )
            documents_at_patch.append(
                {
                    name.removesuffix("-adjacency"): parse_adjacency(cm["data"][ADJACENCY_DATA_KEY])
                    for name, cm in standin.configmaps().items()
                }
            )

    standin.observers.append(note)
    async with autoscaled(standin, api, start=4) as (shell, _, load):
        shell_ref.append(shell)
        load["*"] = 0.05
        await until(lambda: replicas(standin) == 2 and len(shell.members) == 2)
        await asyncio.sleep(1.5)  # more than two cool-downs: nothing below the minimum
        assert replicas(standin) == 2
        assert [before for before, _ in holding_at_patch] == [4, 3]
        for before, holding in holding_at_patch:
            assert pod(before - 1) not in holding, f"{pod(before - 1)} still held work"
        for (before, _), documents in zip(holding_at_patch, documents_at_patch, strict=True):
            assert documents[pod(before - 1)].work == ()
            held = [u for i in range(before - 1) for u in documents[pod(i)].work or ()]
            assert sorted(held) == sorted(u.unit_id for u in UNITS for _ in range(2))
        assert {h for holders in shell.placement.values() for h in holders} <= {pod(0), pod(1)}
        assert all(len(holders) == 2 for holders in shell.placement.values())


async def test_forbidden_scale_is_logged_once_and_the_manager_keeps_running_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The Role lacks ``statefulsets/scale`` patch: the first scale-out is refused with 403,
    logged once naming what is missing, reported in the shell's scaling status; autoscaling
    stops (no drain follows when the load falls) and the manager keeps planning."""
    standin.forbid("patch", "statefulsets/scale")
    caplog.set_level(logging.INFO, logger="meshenc.manager")
    refused = REGISTRY.get_sample_value(REFUSED, {"outcome": "refused"}) or 0.0
    async with autoscaled(standin, api, start=3) as (shell, _, load):
        load["*"] = 0.95
        await until(lambda: bool(shell.scaling.stopped))
        assert "may not patch statefulsets/scale" in shell.scaling.stopped
        assert REGISTRY.get_sample_value(REFUSED, {"outcome": "refused"}) == refused + 1
        load["*"] = 0.05
        await asyncio.sleep(1.5)
        stops = [r for r in caplog.records if "autoscaling stops" in r.getMessage()]
        assert len(stops) == 1
        assert not [r for r in caplog.records if "draining" in r.getMessage()]
        assert len(standin.recorded("PATCH", "statefulsets/scale")) == 1
        assert replicas(standin) == 3
        standin.delete_pod(pod(2))  # the manager still follows the mesh
        await until(lambda: shell.members == [pod(0), pod(1)])
        assert shell.active


async def test_a_scale_in_that_keeps_failing_gives_the_work_back_and_scaling_goes_on_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """The API server answers 500 to every ``/scale`` read while it is failing: the actuator's
    retries run out, the shell reports the failure (status and metric), the drained encoder
    gets its capacity back, and autoscaling carries on — once the server recovers, the next
    drain and scale-in go through."""
    failing = [True]

    def fail(request: Recorded) -> None:
        if failing[0] and request.method == "GET" and request.resource == "statefulsets/scale":
            standin.fail_next(500)

    standin.observers.append(fail)
    failed = REGISTRY.get_sample_value(REFUSED, {"outcome": "failed"}) or 0.0
    async with autoscaled(standin, api, start=3, attempts=2) as (shell, _, load):
        load["*"] = 0.05
        await until(lambda: bool(shell.scaling.error))
        assert "statefulsets/scale in namespace 'media' failed with HTTP 500" in (
            shell.scaling.error
        )
        assert REGISTRY.get_sample_value(REFUSED, {"outcome": "failed"}) == failed + 1
        assert shell.scaling.stopped == ""
        assert replicas(standin) == 3
        failing[0] = False
        await until(lambda: replicas(standin) == 2 and shell.members == [pod(0), pod(1)])
        assert shell.scaling.applied == 2 and shell.scaling.error == ""


async def test_deactivating_as_a_tick_is_woken_stops_the_ticks_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """A member's arrival or departure wakes the tick loop; ``deactivate`` cancelling it just
    as it wakes must still end it (with ``asyncio.wait_for`` as its timed wait the
    cancellation was lost on Python 3.11, and ``deactivate`` waited for ever:
    ``services.common.waiting``; checked that this test fails so)."""
    async with autoscaled(standin, api, start=2) as (shell, _, _):
        shell._wake.set()  # as a member's arrival does, just before the cancellation
        deactivating = asyncio.create_task(shell.deactivate())
        done, _ = await asyncio.wait({deactivating}, timeout=5.0)
        if not done:
            # Cancelling it cancels the tick task it awaits once more: the test fails, not hangs.
            deactivating.cancel()
            await asyncio.wait({deactivating}, timeout=5.0)
        assert done, "deactivate still waited for the tick loop after 5 s"
        assert not shell.active


async def test_a_cancelled_deactivate_is_cancelled_and_still_ends_the_watches_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """``deactivate`` awaits the tasks it cancelled; cancelled itself meanwhile, it must end
    cancelled (the cancellation was swallowed with the tasks' own, and it went on waiting) and
    still end the watch streams (checked that this test fails with the cancellation swallowed)."""
    async with autoscaled(standin, api, start=2) as (shell, _, _):
        release = asyncio.Event()

        async def slow_to_end() -> None:
            try:
                await asyncio.sleep(3600)
            finally:  # a cleanup that takes a while, like a close over the network
                async with asyncio.timeout(10):
                    await release.wait()

        async def follow() -> None:
            async for _ in shell.watch(0):
                pass

        slow = asyncio.create_task(slow_to_end())
        shell._tasks.append(slow)
        watching = asyncio.create_task(follow())
        await until(lambda: shell.watchers == 1)
        deactivating = asyncio.create_task(shell.deactivate())
        await asyncio.sleep(0.1)  # it waits for the slow task's cleanup now
        deactivating.cancel()
        await asyncio.wait({deactivating, watching}, timeout=5.0)
        try:
            assert deactivating.cancelled()
            assert watching.done() and shell.watchers == 0
            assert not shell.active
        finally:
            release.set()
            await asyncio.wait({slow, deactivating}, timeout=5.0)
