"""An encoder's neighbours from its ConfigMap, through the Kubernetes API (cluster mode).

Theory of operation: as every source of :mod:`services.encoder.topology_source` (whose rules
it follows: only new texts, never a lower epoch, invalid or deleted documents ignored), read
from ConfigMap ``<pod>-adjacency`` by a list with a ``metadata.name`` field selector, then a
watch with ``timeoutSeconds`` and a client read timeout a little longer; every new watch
starts from the last ``resourceVersion`` seen (bookmarks included), after a clean end, a
dropped connection or a silent one alike; 410 Gone lists again. A module of its own so that
only cluster mode imports the Kubernetes client, which takes a good part of a second to
import: an encoder restarted after a crash waited for it before its first picture.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from meshenc.wire.adjacency import ADJACENCY_DATA_KEY, AdjacencyDocument, configmap_name
from services.common.kubernetes import (
    DEFAULT_WATCH_TIMEOUT,
    WATCH_READ_GRACE,
    WatchCursor,
    watch_once,
)
from services.common.streams import Emit, drain
from services.encoder.topology_source import (
    LatestDocument,
    TopologySourceError,
    follow,
    transient,
)

__all__ = ["KubernetesTopologySource"]


def _transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return error.status in (0, 409, 429) or error.status >= 500
    return transient(error)


class KubernetesTopologySource:
    """This encoder's ConfigMap through the Kubernetes API (see the module docstring).

    Args:
        api: a configured API client (the caller closes it).
        namespace: the pod's namespace.
        pod: the pod's name, which is the encoder's id.
        watch_timeout: ``timeoutSeconds`` of each watch.
        watch_read_grace: extra seconds of silence before a watch is given up.
        request_timeout: seconds for a list.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        pod: str,
        *,
        watch_timeout: int = DEFAULT_WATCH_TIMEOUT,
        watch_read_grace: float = WATCH_READ_GRACE,
        request_timeout: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.pod = pod
        self.name = configmap_name(pod)
        self.watch_timeout = watch_timeout
        self.watch_read_grace = watch_read_grace
        self.request_timeout = request_timeout
        self._core = k8s.CoreV1Api(api)
        self._latest = LatestDocument(pod, f"ConfigMap {namespace}/{self.name}")
        self._cursor = WatchCursor()
        #: Lists made (the first, and after 410 Gone), and watches started.
        self.lists = 0
        self.watches = 0

    def __aiter__(self) -> AsyncIterator[AdjacencyDocument]:
        return drain(self._run)

    async def _run(self, emit: Emit[AdjacencyDocument]) -> None:
        await follow(
            f"watching ConfigMap {self.name}", self._session, emit, self._refused, _transient
        )

    def _refused(self, exc: BaseException) -> BaseException:
        """An API refusal as the error that names what the encoder's Role lacks."""
        if not isinstance(exc, ApiException):
            return exc
        try:
            detail = json.loads(exc.body or "{}").get("message", "") or exc.reason
        except (ValueError, AttributeError):
            detail = exc.reason
        return TopologySourceError(
            f"reading ConfigMap {self.name} in namespace {self.namespace!r} failed with HTTP "
            f"{exc.status}: {detail} (the encoder's Role needs get, list and watch on "
            "configmaps)"
        )

    def _offer(self, cm: k8s.V1ConfigMap | None, emit: Emit[AdjacencyDocument]) -> None:
        text = None if cm is None else (cm.data or {}).get(ADJACENCY_DATA_KEY)
        document = self._latest.offer(text)
        if document is not None:
            emit(document)

    async def _session(self, emit: Emit[AdjacencyDocument]) -> None:
        selector = f"metadata.name={self.name}"
        if self._cursor.resource_version is None:
            listing = await self._core.list_namespaced_config_map(
                self.namespace, field_selector=selector, _request_timeout=self.request_timeout
            )
            self.lists += 1
            self._offer(listing.items[0] if listing.items else None, emit)
            self._cursor.resource_version = listing.metadata.resource_version
        self.watches += 1
        await watch_once(
            self._core.list_namespaced_config_map,
            self.namespace,
            cursor=self._cursor,
            on_event=lambda kind, cm: self._offer(None if kind == "DELETED" else cm, emit),
            what=f"ConfigMap {self.name}",
            watch_timeout=self.watch_timeout,
            read_grace=self.watch_read_grace,
            request_timeout=self.request_timeout,
            field_selector=selector,
        )
