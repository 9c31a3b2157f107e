"""Fixtures of the actuator tests: the Kubernetes API stand-in and a real etcd.

The Kubernetes side runs the real ``kubernetes_asyncio`` client over HTTP against
:class:`.k8s_standin.KubernetesStandIn` (a stand-in, because no API server can run here); the
etcd side runs against the real etcd binary (``EtcdProcess``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s

from meshenc.local.etcd import EtcdProcess

from .k8s_standin import KubernetesStandIn
from .support import NAMESPACE


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[KubernetesStandIn]:
    server = KubernetesStandIn(NAMESPACE)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def api(standin: KubernetesStandIn) -> AsyncIterator[k8s.ApiClient]:
    configuration = k8s.Configuration(host=standin.url)
    client = k8s.ApiClient(configuration)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    process = EtcdProcess(log_path=tmp_path / "etcd.log")
    try:
        yield process.start()
    finally:
        process.close()
