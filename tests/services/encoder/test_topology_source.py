"""The encoders' topology sources, end to end with the manager's actuators.

Kubernetes: the real ``kubernetes_asyncio`` client over HTTP against the API server stand-in
(:mod:`tests.services.k8s_standin`; names say "standin"). etcd: the real binary. Each test
shows what an encoder receives when the manager publishes, when the connection drops or
stalls, when the stored document is bad or stale, and when the version to resume from is gone.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from kubernetes_asyncio import client as k8s

from meshenc.local.etcd import EtcdProcess
from meshenc.wire.adjacency import (
    ADJACENCY_DATA_KEY,
    AdjacencyDocument,
    EtcdLayout,
    InvalidDocument,
    adjacency_labels,
)
from services.encoder.kubernetes_topology import KubernetesTopologySource
from services.encoder.topology_source import (
    EtcdTopologySource,
    TopologySourceError,
    static_topology,
)
from services.manager.etcd_actuator import EtcdActuator
from services.manager.kubernetes_actuator import KubernetesActuator
from tests.services.k8s_standin import KubernetesStandIn
from tests.services.support import NAMESPACE, STATEFULSET, Collector, etcd_client

pytestmark = pytest.mark.asyncio

ME = f"{STATEFULSET}-0"
PEER = f"{STATEFULSET}-1"


def doc(
    epoch: int,
    segment: str = "s1",
    leader: str = "",
    work: tuple[str, ...] | None = None,
    version: int = 0,
) -> AdjacencyDocument:
    return AdjacencyDocument(
        epoch, ME, {PEER: f"{PEER}.{STATEFULSET}:7400"}, segment, leader, work, version
    )


def other(epoch: int, segment: str = "s1") -> AdjacencyDocument:
    return AdjacencyDocument(epoch, PEER, {ME: f"{ME}.{STATEFULSET}:7400"}, segment)


async def test_static_topology_is_one_document() -> None:
    """``--peers`` gives one epoch-1 document, then ends; bad peers are refused."""
    docs = [d async for d in static_topology("a", {"b": "127.0.0.1:7401"}, segment="s")]
    assert docs == [AdjacencyDocument(1, "a", {"b": "127.0.0.1:7401"}, "s")]
    with pytest.raises(InvalidDocument):
        _ = [d async for d in static_topology("a", {"a": "127.0.0.1:7401"})]


async def test_configmap_source_follows_the_manager_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """The encoder receives what the actuator publishes, once per change; its neighbour's
    ConfigMap is not its business; an invalid or older document is ignored, a deleted one
    keeps the last topology."""
    manager = KubernetesActuator(api, namespace=NAMESPACE, statefulset=STATEFULSET)
    await manager.publish({ME: doc(1), PEER: other(1)})
    source = KubernetesTopologySource(api, NAMESPACE, ME, watch_timeout=30)
    received = Collector(aiter(source))
    try:
        assert await received.take(1) == [doc(1)]
        await manager.publish({ME: doc(1, leader=PEER), PEER: other(1)})
        assert await received.take(1) == [doc(1, leader=PEER)]
        await manager.publish({ME: doc(1, leader=PEER), PEER: other(1, "s2")})  # not ours
        name = f"{ME}-adjacency"
        standin.put_configmap(name, {ADJACENCY_DATA_KEY: '{"epoch": 0}'}, adjacency_labels(ME))
        standin.put_configmap(name, {ADJACENCY_DATA_KEY: other(9).to_json()}, {})
        await received.quiet()
        assert received.items[-1] == doc(1, leader=PEER)
        standin.put_configmap(name, {ADJACENCY_DATA_KEY: doc(3).to_json()}, {})
        assert await received.take(1) == [doc(3)]
        standin.put_configmap(name, {ADJACENCY_DATA_KEY: doc(2).to_json()}, {})
        await manager.publish({PEER: other(4)})  # deletes our ConfigMap
        await received.quiet()
        assert len(received.items) == 3
    finally:
        await received.close()


async def test_configmap_source_resumes_and_relists_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """A dropped watch resumes from the last resourceVersion (no new list); a stalled one is
    given up after the read timeout and resumed; a compacted version (410) lists again."""
    manager = KubernetesActuator(api, namespace=NAMESPACE, statefulset=STATEFULSET)
    await manager.publish({ME: doc(1)})
    source = KubernetesTopologySource(api, NAMESPACE, ME, watch_timeout=1, watch_read_grace=0.5)
    received = Collector(aiter(source))
    try:
        await received.take(1)
        async with asyncio.timeout(5):
            while standin.open_watches == 0:
                await asyncio.sleep(0.01)
        standin.drop_watches()
        await manager.publish({ME: doc(2)})
        assert await received.take(1) == [doc(2)]
        assert source.lists == 1

        standin.stall_watches = True
        standin.drop_watches()
        await manager.publish({ME: doc(3)})
        await received.quiet(0.3)
        standin.stall_watches = False
        assert await received.take(1, timeout=10) == [doc(3)]
        assert source.lists == 1

        standin.stall_watches = True
        standin.drop_watches()
        await manager.publish({ME: doc(4)})
        standin.compact()
        standin.stall_watches = False
        standin.drop_watches()
        assert await received.take(1, timeout=10) == [doc(4)]
        assert source.lists == 2
    finally:
        await received.close()


async def test_configmap_source_forbidden_standin(
    standin: KubernetesStandIn, api: k8s.ApiClient
) -> None:
    """Without ``list`` on ConfigMaps the source ends with an error naming what is needed."""
    standin.forbid("list", "configmaps")
    received = Collector(aiter(KubernetesTopologySource(api, NAMESPACE, ME)))
    try:
        error = await received.failure()
        assert isinstance(error, TopologySourceError)
        assert "HTTP 403" in str(error) and "get, list and watch on configmaps" in str(error)
    finally:
        await received.close()


async def test_etcd_source_follows_the_manager(
    etcd: EtcdProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The encoder's key as the etcd actuator writes it, created after the source started:
    changes arrive once each (a change within the same epoch too, a new placement too); an
    invalid value, an older epoch or an older placement within the epoch is ignored, with one
    log line per kind however many come."""
    caplog.set_level(logging.WARNING, logger="meshenc.encoder.topology")
    client = etcd_client(etcd)
    layout = EtcdLayout()
    source = EtcdTopologySource(client, ME, layout=layout)
    received = Collector(aiter(source))
    manager = EtcdActuator(client, layout=layout)
    try:
        await received.quiet(0.2)
        await manager.publish({ME: doc(1), PEER: other(1)})
        assert await received.take(1) == [doc(1)]
        await manager.publish({ME: doc(1), PEER: other(1, "s2")})  # not ours
        await client.put(layout.document(ME), b"not json")
        await received.quiet()
        await client.put(layout.document(ME), doc(1, segment="moved").to_json().encode())
        assert await received.take(1) == [doc(1, segment="moved")]  # same epoch: applied
        await manager.publish({ME: doc(5, segment="s5"), PEER: other(5)})
        assert await received.take(1) == [doc(5, segment="s5")]
        await client.put(layout.document(ME), doc(4).to_json().encode())
        await received.quiet()
        # The placement moves within epoch 5: version 2 arrives, version 1 after it is stale;
        # a document whose work breaks a rule is ignored, the placement applied is kept.
        placed = doc(5, segment="s5", work=("0/320x180",), version=2)
        await manager.publish({ME: placed, PEER: other(5)})
        assert await received.take(1) == [placed]
        stale = doc(5, segment="s5", work=("0/640x360",), version=1)
        await client.put(layout.document(ME), stale.to_json().encode())
        bad = placed.to_json().replace('"0/320x180"', '"0/../x y"')
        await client.put(layout.document(ME), bad.encode())
        await client.put(layout.document(ME), b'{"epoch": 5, "encoder": 7}')
        await received.quiet()
        assert source.reads == 1
        lines = [r.getMessage() for r in caplog.records]
        assert sum("ignoring an invalid document" in line for line in lines) == 1
        assert sum("older than the applied epoch" in line for line in lines) == 1
    finally:
        await received.close()
        await client.close()


@pytest.mark.slow
async def test_etcd_source_survives_an_etcd_restart(etcd: EtcdProcess) -> None:
    """etcd restarts under a watching encoder: the watch resumes from the last revision and
    the next document arrives."""
    client = etcd_client(etcd)
    source = EtcdTopologySource(client, ME)
    received = Collector(aiter(source))
    writer = etcd_client(etcd)
    try:
        await EtcdActuator(writer).publish({ME: doc(1)})
        assert await received.take(1) == [doc(1)]
        etcd.stop()
        await asyncio.sleep(0.5)
        etcd.start()
        await EtcdActuator(writer).publish({ME: doc(2)})
        assert await received.take(1, timeout=20) == [doc(2)]
        assert source.reads == 1
    finally:
        await received.close()
        await client.close()
        await writer.close()
