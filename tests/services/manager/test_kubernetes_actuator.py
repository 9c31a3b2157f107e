"""The Kubernetes actuator against a Kubernetes API server stand-in, with the real client.

What is real: ``kubernetes_asyncio`` (no monkey-patching) talking HTTP over a socket on
127.0.0.1. What is a stand-in: the API server, :mod:`tests.services.k8s_standin`, which
implements exactly the endpoints the actuator uses with the API server's resourceVersion,
409, 410, ``timeoutSeconds`` and 403 semantics. A real API server is the later goal; every
test here says "standin" in its name.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client as k8s

from meshenc.wire.adjacency import ADJACENCY_DATA_KEY, AdjacencyDocument, parse_adjacency
from services.manager.actuators import (
    Actuator,
    ForbiddenError,
    MemberJoined,
    MemberLeft,
    ScalingNotSupportedError,
    StalePlanError,
)
from services.manager.kubernetes_actuator import KubernetesActuator
from tests.services.k8s_standin import KubernetesStandIn
from tests.services.support import NAMESPACE, POD_LABELS, STATEFULSET, Collector

pytestmark = pytest.mark.asyncio


def plan(epoch: int, *names: str, segment: str = "s1") -> dict[str, AdjacencyDocument]:
    """Each encoder linked to the next ones in a ring."""
    docs = {}
    for index, name in enumerate(names):
        others = [names[(index + 1) % len(names)], names[index - 1]]
        neighbours = {o: f"{o}.{STATEFULSET}:7400" for o in others if o != name}
        docs[name] = AdjacencyDocument(epoch, name, neighbours, segment, names[0])
    return docs


def actuator(api: k8s.ApiClient, **kwargs: object) -> KubernetesActuator:
    options: dict[str, object] = {"namespace": NAMESPACE, "statefulset": STATEFULSET}
    options.update(kwargs)
    return KubernetesActuator(api, **options)  # type: ignore[arg-type]


def stored(standin: KubernetesStandIn, pod: str) -> AdjacencyDocument:
    cm = standin.configmap(f"{pod}-adjacency")
    assert cm is not None, f"no ConfigMap for {pod}"
    return parse_adjacency(cm["data"][ADJACENCY_DATA_KEY], expected_encoder=pod)


def resource_version(standin: KubernetesStandIn, pod: str) -> str:
    cm = standin.configmap(f"{pod}-adjacency")
    assert cm is not None
    return str(cm["metadata"]["resourceVersion"])


def pod(index: int) -> str:
    return f"{STATEFULSET}-{index}"


async def test_publish_writes_only_changes_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """First publish creates one labelled ConfigMap per encoder; an identical plan sends no
    write at all; a changed document is one patch carrying the last resourceVersion; an
    encoder dropped from the plan loses its ConfigMap."""
    act = actuator(api)
    assert isinstance(act, Actuator)
    names = [pod(i) for i in range(3)]
    first = plan(1, *names)
    await act.publish(first)
    assert {n: stored(standin, n) for n in names} == first
    cm = standin.configmap(f"{names[0]}-adjacency")
    assert cm is not None
    assert cm["metadata"]["labels"] == {
        "app.kubernetes.io/name": "meshenc",
        "app.kubernetes.io/component": "adjacency",
        "meshenc.io/encoder": names[0],
    }
    assert len(standin.recorded("POST", "configmaps")) == 3

    before = len(standin.requests)
    await act.publish(plan(1, *names))
    assert standin.requests[before:] == [], "an unchanged plan must not touch the API"

    second = dict(first)
    second[names[1]] = AdjacencyDocument(1, names[1], first[names[1]].neighbours, "s2", "")
    version = int(resource_version(standin, names[1]))
    await act.publish(second)
    patches = standin.requests[before:]
    assert [(r.method, r.name) for r in patches] == [("PATCH", f"{names[1]}-adjacency")]
    assert stored(standin, names[1]).segment == "s2"
    # The patch was made against the version the actuator had seen (checked by the stand-in:
    # a stale one would have been answered 409 and re-read).
    assert act.conflicts == 0
    assert int(resource_version(standin, names[1])) > version

    third = plan(2, *names[:2])
    await act.publish(third)
    assert set(standin.configmaps()) == {f"{n}-adjacency" for n in names[:2]}
    assert stored(standin, names[0]).epoch == 2


async def test_patch_conflict_rereads_and_retries_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Another writer changed a ConfigMap after the actuator saw it: the patch meets 409, the
    actuator reads it again and patches on top of the new version; nothing is lost."""
    act = actuator(api)
    names = [pod(i) for i in range(2)]
    await act.publish(plan(3, *names))
    name = f"{names[0]}-adjacency"
    intruder = AdjacencyDocument(3, names[0], {}, "other", "")
    standin.put_configmap(
        name, {ADJACENCY_DATA_KEY: intruder.to_json(), "note": "kept"}, {"x": "y"}
    )
    wanted = plan(4, *names)
    patches_before = len(standin.recorded("PATCH", "configmaps"))
    await act.publish(wanted)
    assert act.conflicts == 1
    # Two patches for names[0] (the refused one and the retry), one for names[1].
    assert len(standin.recorded("PATCH", "configmaps")) - patches_before == 3
    assert stored(standin, names[0]) == wanted[names[0]]
    cm = standin.configmap(name)
    assert cm is not None
    assert cm["data"]["note"] == "kept", "a merge patch must leave other keys alone"
    assert cm["metadata"]["labels"]["meshenc.io/encoder"] == names[0]


async def test_newer_plan_is_not_overwritten_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """A ConfigMap already holding a higher epoch (a newer manager wrote it) is not rolled
    back: publish raises StalePlanError and the stored document stays."""
    act = actuator(api)
    names = [pod(0), pod(1)]
    await act.publish(plan(5, *names))
    newer = AdjacencyDocument(9, names[0], {names[1]: "10.0.0.9:7400"})
    name = f"{names[0]}-adjacency"
    standin.put_configmap(name, {ADJACENCY_DATA_KEY: newer.to_json()}, {})
    with pytest.raises(StalePlanError) as raised:
        await act.publish(plan(6, *names))
    assert raised.value.stored == 9
    assert stored(standin, names[0]) == newer


async def test_restarted_manager_adopts_and_cleans_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """A new actuator (a restarted manager) reads what is published: it reports the epoch,
    writes nothing that is already right, and deletes a leftover ConfigMap."""
    names = [pod(i) for i in range(3)]
    await actuator(api).publish(plan(7, *names))
    fresh = actuator(api)
    assert await fresh.published_epoch() == 7
    before = len(standin.requests)
    kept = plan(7, *names)
    del kept[names[2]]
    await fresh.publish(kept)
    writes = [(r.method, r.name) for r in standin.requests[before:] if r.method != "GET"]
    assert writes == [("DELETE", f"{names[2]}-adjacency")]
    assert len(standin.configmaps()) == 2


async def test_transient_errors_are_retried_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """500 and 503 answers are retried with backoff; the plan lands."""
    act = actuator(api)
    await act.publish(plan(1, pod(0), pod(1)))
    standin.fail_next(500, 503)
    wanted = plan(2, pod(0), pod(1))
    await act.publish(wanted)
    assert stored(standin, pod(0)) == wanted[pod(0)]
    assert stored(standin, pod(1)) == wanted[pod(1)]


async def test_forbidden_write_is_reported_clearly_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """RBAC refuses patch on ConfigMaps: ForbiddenError names verb, resource and namespace,
    and the request is not retried."""
    act = actuator(api)
    await act.publish(plan(1, pod(0), pod(1)))
    standin.forbid("patch", "configmaps")
    with pytest.raises(ForbiddenError) as raised:
        await act.publish(plan(2, pod(0), pod(1)))
    error = raised.value
    assert (error.verb, error.resource, error.namespace) == ("patch", "configmaps", NAMESPACE)
    assert "may not patch configmaps in namespace 'media'" in str(error)
    assert len(standin.recorded("PATCH", "configmaps")) == 2  # one per ConfigMap, no retries
    standin.allow_all()
    await act.publish(plan(2, pod(0), pod(1)))
    assert stored(standin, pod(0)).epoch == 2


async def test_members_follow_the_statefulset_scale_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Pods of the StatefulSet become members with their stable DNS address; scaling up
    through the ``statefulsets/scale`` subresource joins encoders and scaling down removes
    them; the asked replicas are clamped to the bounds; pods that are not Running and pods
    of other workloads are not members."""
    standin.add_statefulset(STATEFULSET, 2, POD_LABELS)
    standin.add_pod("other-0", labels=dict(POD_LABELS))
    act = actuator(api, scale_bounds=(1, 4), watch_timeout=30)
    members = Collector(act.members())
    try:
        joined = await members.take(2)
        assert joined == [
            MemberJoined(pod(i), f"{pod(i)}.{STATEFULSET}.{NAMESPACE}.svc.cluster.local:7400")
            for i in range(2)
        ]
        await act.scale(10)
        assert standin.objects[("statefulsets", NAMESPACE, STATEFULSET)]["spec"]["replicas"] == 4
        assert {e.encoder for e in await members.take(2)} == {pod(2), pod(3)}
        await act.scale(0)
        left = await members.take(3)
        assert all(isinstance(e, MemberLeft) for e in left)
        assert {e.encoder for e in left} == {pod(1), pod(2), pod(3)}
        standin.set_pod_phase(pod(0), "Failed")
        assert await members.take(1) == [MemberLeft(pod(0))]
        standin.set_pod_phase(pod(0), "Running")
        assert [e.encoder for e in await members.take(1)] == [pod(0)]
        await members.quiet()
        assert len(standin.recorded("PATCH", "statefulsets/scale")) == 2
    finally:
        await members.close()


async def test_scale_is_refused_clearly_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Without bounds scaling is off; a Role without ``statefulsets/scale`` is named."""
    standin.add_statefulset(STATEFULSET, 1, POD_LABELS)
    with pytest.raises(ScalingNotSupportedError):
        await actuator(api).scale(3)
    standin.forbid("patch", "statefulsets/scale")
    with pytest.raises(ForbiddenError) as raised:
        await actuator(api, scale_bounds=(1, 5)).scale(3)
    assert raised.value.resource == "statefulsets/scale"
    assert standin.objects[("statefulsets", NAMESPACE, STATEFULSET)]["spec"]["replicas"] == 1


async def test_pod_watch_resumes_after_dropped_connection_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """The watch connection is cut and a pod appears meanwhile: the actuator watches again
    from the last resourceVersion it saw (no new list) and still reports the pod."""
    standin.add_statefulset(STATEFULSET, 1, POD_LABELS)
    act = actuator(api, watch_timeout=30)
    members = Collector(act.members())
    try:
        await members.take(1)
        async with asyncio.timeout(5):
            while standin.open_watches == 0:
                await asyncio.sleep(0.01)
        last_seen = standin.recorded("GET", "pods")[-1].query["resourceVersion"]
        assert standin.drop_watches() == 1
        standin.add_pod(pod(5), labels=dict(POD_LABELS))
        assert [e.encoder for e in await members.take(1)] == [pod(5)]
        watches = [r for r in standin.recorded("GET", "pods") if r.query.get("watch")]
        assert len(watches) == 2
        assert watches[1].query["resourceVersion"] >= last_seen
        assert int(watches[1].query["resourceVersion"]) < int(
            standin.objects[("pods", NAMESPACE, pod(5))]["metadata"]["resourceVersion"]
        )
        assert act.lists == 1, "a dropped connection must resume, not list again"
    finally:
        await members.close()


async def test_stalled_pod_watch_is_given_up_and_resumed_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """A watch that neither sends nor ends (``timeoutSeconds`` ignored: a silently dead
    connection) is abandoned after the client's read timeout and resumed from the last
    resourceVersion; a pod added meanwhile is reported."""
    standin.add_statefulset(STATEFULSET, 1, POD_LABELS)
    standin.stall_watches = True
    act = actuator(api, watch_timeout=1, watch_read_grace=0.5)
    members = Collector(act.members())
    try:
        await members.take(1)
        standin.add_pod(pod(7), labels=dict(POD_LABELS))
        await members.quiet(0.3)
        standin.stall_watches = False  # the next connection works
        assert [e.encoder for e in await members.take(1, timeout=10)] == [pod(7)]
        assert act.watches >= 2
        assert act.lists == 1
    finally:
        await members.close()


async def test_pod_watch_relists_after_410_gone_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """The last resourceVersion seen is compacted away while disconnected: the watch is
    answered 410 Gone, the actuator lists again and reports only the difference."""
    standin.add_statefulset(STATEFULSET, 2, POD_LABELS)
    act = actuator(api, watch_timeout=30)
    members = Collector(act.members())
    try:
        await members.take(2)
        async with asyncio.timeout(5):
            while standin.open_watches == 0:
                await asyncio.sleep(0.01)
        standin.stall_watches = True  # hold the reconnection off while history is lost
        standin.drop_watches()
        standin.delete_pod(pod(1))
        standin.add_pod(pod(3), labels=dict(POD_LABELS))
        standin.compact()
        standin.stall_watches = False
        standin.drop_watches()
        events = await members.take(2)
        assert events == [
            MemberLeft(pod(1)),
            MemberJoined(pod(3), f"{pod(3)}.{STATEFULSET}.{NAMESPACE}.svc.cluster.local:7400"),
        ]
        await members.quiet()
        assert act.lists == 2
    finally:
        await members.close()


async def test_forbidden_pod_watch_is_reported_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """RBAC refuses watching pods: members() fails with ForbiddenError naming it."""
    standin.add_statefulset(STATEFULSET, 1, POD_LABELS)
    standin.forbid("watch", "pods")
    members = Collector(actuator(api).members())
    try:
        error = await members.failure()
        assert isinstance(error, ForbiddenError)
        assert (error.verb, error.resource) == ("watch", "pods")
        assert "cannot watch resource" in str(error)
    finally:
        await members.close()


async def test_invalid_plan_is_refused_before_any_request_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Mixed epochs or a key that is not its document's encoder: ValueError, no request."""
    act = actuator(api)
    mixed = plan(1, pod(0), pod(1))
    mixed[pod(1)] = AdjacencyDocument(2, pod(1), {})
    with pytest.raises(ValueError, match="one epoch"):
        await act.publish(mixed)
    with pytest.raises(ValueError, match="holds the document"):
        await act.publish({pod(0): AdjacencyDocument(1, pod(1), {})})
    assert standin.requests == []
    assert json.loads(plan(1, pod(0), pod(1))[pod(0)].to_json())["epoch"] == 1
