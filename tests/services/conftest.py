"""Fixtures of the services' tests: the Kubernetes API stand-in, and a tracer provider.

The Kubernetes side runs the real ``kubernetes_asyncio`` client over HTTP against
:class:`.k8s_standin.KubernetesStandIn` (a stand-in, because no API server can run here); the
etcd side runs against the real etcd binary (the ``etcd`` fixture of ``tests/conftest.py``).

The process-wide tracer provider is never installed in the telemetry tests (OpenTelemetry allows
one per process): every test that looks at spans gets its own provider (``spans``), recording
into the SDK's in-memory exporter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()
