"""Fixtures of the actuator tests: the Kubernetes API stand-in and a real etcd.

The Kubernetes side runs the real ``kubernetes_asyncio`` client over HTTP against
:class:`.k8s_standin.KubernetesStandIn` (a stand-in, because no API server can run here); the
etcd side runs against the real etcd binary (the ``etcd`` fixture of ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from kubernetes_asyncio import client as k8s

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
