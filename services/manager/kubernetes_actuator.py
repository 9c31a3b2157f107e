"""The Kubernetes actuator: adjacency ConfigMaps, the encoder pods, the StatefulSet's scale.

Theory of operation
-------------------
Documents. Encoder pod ``P`` (named ``S-<ordinal>`` by its StatefulSet ``S``) reads ConfigMap
``P-adjacency`` (labels
``app.kubernetes.io/name=meshenc``, ``app.kubernetes.io/component=adjacency``,
``meshenc.io/encoder=P``; data key ``adjacency.json``). The actuator remembers, per ConfigMap,
the ``resourceVersion`` and document text it last saw. On the first publish it lists its
ConfigMaps (by label), so a restarted manager neither rewrites what is already there nor
forgets to delete leftovers. A changed document is written as a JSON merge patch that carries
that ``resourceVersion``: the API server applies it only if nobody wrote in between, and
answers 409 Conflict otherwise. On 409 the actuator reads the ConfigMap again and retries; if
what it finds already has a higher epoch, it stops with :class:`StalePlanError`. Creates that
meet 409 AlreadyExists and deletes that meet a changed version go the same way. Unchanged
documents cost no request at all. Writes run a few at a time (``concurrency``).

Members. The pods are those matching the StatefulSet's ``spec.selector.matchLabels`` whose
name is ``S-<ordinal>``. A pod is a member while it is Running and not terminating; readiness
is not required (an encoder may only become ready once it has neighbours). Its address is its
stable DNS name ``<hostname>.<subdomain>.<namespace>.svc.<cluster domain>:<grpc port>`` (the
headless Service publishes not-ready addresses), else its pod IP. The pod list is followed
by a watch with ``timeoutSeconds`` (the server ends it cleanly; the actuator starts the next
one from the last ``resourceVersion`` seen, bookmarks included) and a client-side read timeout
a little longer, so a connection that went silent is given up and resumed the same way. A
watch answered with 410 Gone (the version was compacted) lists again and yields only the
difference. So ``kubectl scale`` becomes joins and leaves.

Scaling goes through the ``statefulsets/scale`` subresource, clamped to the configured bounds,
with the same read-patch-with-``resourceVersion``-retry loop; a failure that outlives the
retries is an :class:`ActuatorError` (403: :class:`ForbiddenError`).

Errors. 403 raises :class:`ForbiddenError` naming the verb, resource and namespace at once (an
RBAC mistake does not heal by retrying); 409, 429, 5xx, timeouts and connection errors are
retried with exponential backoff and jitter (tenacity); anything else is reported as
:class:`ActuatorError` with the API's message.

Why ``kubernetes_asyncio``: it is the asyncio twin of the official client, with the same
generated API and models, so the manager's single event loop serves gRPC, etcd and the
Kubernetes API alike without threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from meshenc.wire.adjacency import (
    ADJACENCY_DATA_KEY,
    COMPONENT_LABEL,
    NAME_LABEL,
    AdjacencyDocument,
    InvalidDocument,
    adjacency_labels,
    configmap_name,
    parse_adjacency,
)
from services.common.kubernetes import (
    DEFAULT_WATCH_TIMEOUT,
    WATCH_READ_GRACE,
    WatchCursor,
    watch_once,
)
from services.common.retry import DEFAULT_ATTEMPTS, Backoff, retrying
from services.common.streams import drain
from services.manager.actuators import (
    ActuatorError,
    ForbiddenError,
    MemberEvent,
    MemberJoined,
    StalePlanError,
    check_plan,
    diff_members,
    follow_member,
    within_bounds,
)

__all__ = ["KubernetesActuator", "api_error", "is_transient"]

log = logging.getLogger("meshenc.manager.kubernetes")

MERGE_PATCH: Final = "application/merge-patch+json"
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
"""Seconds any other request may take."""
_SELECTOR: Final = f"{NAME_LABEL}=meshenc,{COMPONENT_LABEL}=adjacency"


class _Conflict(Exception):  # noqa: N818 -- a retry signal, not an error of this program
    """Someone wrote in between; read again and retry."""


def is_transient(error: BaseException) -> bool:
    """Worth retrying: conflicts, throttling, server errors, timeouts, lost connections."""
    if isinstance(error, ApiException):
        return error.status in (409, 429) or error.status >= 500 or error.status == 0
    return isinstance(error, _Conflict | aiohttp.ClientError | TimeoutError | ConnectionError)


def _detail(error: ApiException) -> str:
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return str(message or error.reason or "").strip()


def api_error(error: ApiException, verb: str, resource: str, namespace: str) -> ActuatorError:
    """The error to raise for an API answer that retrying will not fix."""
    if error.status == 403:
        return ForbiddenError(verb, resource, namespace, _detail(error))
    return ActuatorError(
        f"{verb} {resource} in namespace {namespace!r} failed with HTTP {error.status}: "
        f"{_detail(error)}"
    )


@dataclass(slots=True)
class _Seen:
    """A ConfigMap as last read or written."""

    resource_version: str
    text: str | None  # the document's text; None when the data key is missing
    epoch: int  # 0 when the document is missing or invalid


@dataclass(slots=True)
class _PodFollower(WatchCursor):
    """What the pod watch knows between its connections (and where the next one starts)."""

    known: dict[str, MemberJoined] = field(default_factory=dict)


class KubernetesActuator:
    """Publishes adjacency ConfigMaps and follows the encoder pods (see the module docstring).

    Args:
        api: a configured API client (``services.common.kubernetes.connect_api``); closed by
            :meth:`close` only when ``owns_api``.
        namespace: where the StatefulSet and the ConfigMaps live.
        statefulset: the encoder StatefulSet's name.
        scale_bounds: (min, max) replicas for :meth:`scale`; None disables scaling.
        cluster_domain: for the pods' DNS names.
        default_port: the encoders' mesh port when a pod names no ``grpc`` container port.
        watch_timeout: ``timeoutSeconds`` of each watch (the client waits
            ``WATCH_READ_GRACE`` longer for data before it gives the connection up).
        request_timeout: seconds for every other request.
        concurrency: ConfigMap writes in flight at once.
        attempts: tries per write before a transient failure is reported.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        statefulset: str,
        scale_bounds: tuple[int, int] | None = None,
        cluster_domain: str = "cluster.local",
        default_port: int = 7400,
        watch_timeout: int = DEFAULT_WATCH_TIMEOUT,
        watch_read_grace: float = WATCH_READ_GRACE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        concurrency: int = 8,
        attempts: int = DEFAULT_ATTEMPTS,
        owns_api: bool = False,
    ) -> None:
        if scale_bounds is not None and not 0 <= scale_bounds[0] <= scale_bounds[1]:
            raise ValueError(f"scale bounds must be 0 <= min <= max, got {scale_bounds}")
        if watch_timeout < 1:
            raise ValueError(f"watch_timeout must be >= 1 s, got {watch_timeout}")
        self.namespace = namespace
        self.statefulset = statefulset
        self.scale_bounds = scale_bounds
        self.cluster_domain = cluster_domain
        self.default_port = default_port
        self.watch_timeout = watch_timeout
        self.watch_read_grace = watch_read_grace
        self.request_timeout = request_timeout
        self.attempts = attempts
        self._api = api
        self._owns_api = owns_api
        self._core = k8s.CoreV1Api(api)
        self._apps = k8s.AppsV1Api(api)
        self._seen: dict[str, _Seen] | None = None
        self._writes = asyncio.Semaphore(concurrency)
        self._publishing = asyncio.Lock()
        #: Requests that wrote something (create, patch, delete), and conflicts met.
        self.writes = 0
        self.conflicts = 0
        #: Watch connections started, and lists made (the first, and after 410 Gone).
        self.watches = 0
        self.lists = 0

    # -- calls ------------------------------------------------------------------------------------

    async def _call(
        self,
        verb: str,
        resource: str,
        call: Callable[..., Awaitable[Any]],
        *args: Any,
        handled: tuple[int, ...] = (),
        **kw: Any,
    ) -> Any:
        """One API request. Statuses in ``handled`` and transient ones are raised as they
        are; any other failure becomes an :class:`ActuatorError` naming the request."""
        try:
            return await call(*args, _request_timeout=self.request_timeout, **kw)
        except ApiException as exc:
            if exc.status in handled or is_transient(exc):
                raise
            raise api_error(exc, verb, resource, self.namespace) from None

    # -- documents --------------------------------------------------------------------------------

    def _remember(self, cm: k8s.V1ConfigMap) -> _Seen:
        text = (cm.data or {}).get(ADJACENCY_DATA_KEY)
        epoch = 0
        if text is not None:
            try:
                epoch = parse_adjacency(text).epoch
            except InvalidDocument as exc:
                log.warning("ConfigMap %s holds an invalid document (%s)", cm.metadata.name, exc)
        seen = _Seen(cm.metadata.resource_version, text, epoch)
        assert self._seen is not None
        self._seen[cm.metadata.name] = seen
        return seen

    def _ours(self, name: str) -> bool:
        return name.startswith(f"{self.statefulset}-") and name.endswith("-adjacency")

    async def _list_configmaps(self) -> dict[str, _Seen]:
        answer = None
        async for attempt in retrying("listing adjacency ConfigMaps", is_transient):
            with attempt:
                answer = await self._call(
                    "list",
                    "configmaps",
                    self._core.list_namespaced_config_map,
                    self.namespace,
                    label_selector=_SELECTOR,
                )
        assert answer is not None
        self._seen = {}
        for cm in answer.items:
            if self._ours(cm.metadata.name):
                self._remember(cm)
        return self._seen

    async def published_epoch(self) -> int:
        seen = await self._list_configmaps()
        return max((s.epoch for s in seen.values()), default=0)

    async def publish(self, documents: Mapping[str, AdjacencyDocument]) -> None:
        epoch = check_plan(documents)
        async with self._publishing:
            seen = self._seen if self._seen is not None else await self._list_configmaps()
            wanted = {configmap_name(encoder): document for encoder, document in documents.items()}
            jobs = [
                self._write(name, document)
                for name, document in sorted(wanted.items())
                if name not in seen or seen[name].text != document.to_json()
            ]
            jobs += [self._delete(name, epoch) for name in sorted(seen) if name not in wanted]
            if not jobs:
                return
            results = await asyncio.gather(*jobs, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for kind in (ForbiddenError, StalePlanError):
                    for error in errors:
                        if isinstance(error, kind):
                            raise error
                raise errors[0]
            log.info("published epoch %d: %d ConfigMap writes", epoch, len(jobs))

    async def _reread(self, name: str) -> _Seen | None:
        """Read one ConfigMap again after a conflict (None: it does not exist)."""
        assert self._seen is not None
        try:
            cm = await self._call(
                "get",
                "configmaps",
                self._core.read_namespaced_config_map,
                name,
                self.namespace,
                handled=(404,),
            )
        except ApiException as exc:
            if exc.status == 404:
                self._seen.pop(name, None)
                return None
            raise
        return self._remember(cm)

    async def _write(self, name: str, document: AdjacencyDocument) -> None:
        text = document.to_json()
        async with self._writes:
            async for attempt in retrying(
                f"writing ConfigMap {name}", is_transient, attempts=self.attempts
            ):
                with attempt:
                    await self._write_once(name, document, text)

    async def _write_once(self, name: str, document: AdjacencyDocument, text: str) -> None:
        assert self._seen is not None
        seen = self._seen.get(name)
        if seen is not None and seen.text == text:
            return
        if seen is not None and seen.epoch > document.epoch:
            raise StalePlanError(document.epoch, seen.epoch, f"ConfigMap {name}")
        try:
            if seen is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "labels": adjacency_labels(document.encoder)},
                    "data": {ADJACENCY_DATA_KEY: text},
                }
                cm = await self._call(
                    "create",
                    "configmaps",
                    self._core.create_namespaced_config_map,
                    self.namespace,
                    body,
                    handled=(409,),
                )
            else:
                patch = {
                    "metadata": {
                        "resourceVersion": seen.resource_version,
                        "labels": adjacency_labels(document.encoder),
                    },
                    "data": {ADJACENCY_DATA_KEY: text},
                }
                cm = await self._call(
                    "patch",
                    "configmaps",
                    self._core.patch_namespaced_config_map,
                    name,
                    self.namespace,
                    patch,
                    handled=(404, 409),
                    _content_type=MERGE_PATCH,
                )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            # 409: created or changed by someone else; 404: deleted under us. Look again.
            self.conflicts += 1
            log.info("ConfigMap %s: %s; reading it again", name, _detail(exc) or exc.status)
            await self._reread(name)
            raise _Conflict(name) from None
        self.writes += 1
        self._remember(cm)

    async def _delete(self, name: str, epoch: int) -> None:
        async with self._writes:
            async for attempt in retrying(
                f"deleting ConfigMap {name}", is_transient, attempts=self.attempts
            ):
                with attempt:
                    await self._delete_once(name, epoch)

    async def _delete_once(self, name: str, epoch: int) -> None:
        assert self._seen is not None
        seen = self._seen.get(name)
        if seen is None:
            return
        if seen.epoch > epoch:
            raise StalePlanError(epoch, seen.epoch, f"ConfigMap {name}")
        try:
            await self._call(
                "delete",
                "configmaps",
                self._core.delete_namespaced_config_map,
                name,
                self.namespace,
                body={"preconditions": {"resourceVersion": seen.resource_version}},
                handled=(404, 409),
            )
        except ApiException as exc:
            if exc.status == 404:
                self._seen.pop(name, None)
                return
            if exc.status != 409:
                raise
            self.conflicts += 1
            await self._reread(name)
            raise _Conflict(name) from None
        self.writes += 1
        self._seen.pop(name, None)

    # -- members ----------------------------------------------------------------------------------

    def members(self) -> AsyncIterator[MemberEvent]:
        return drain(self._follow_pods, name="pod-watch")

    async def _follow_pods(self, emit: Callable[[MemberEvent | BaseException], None]) -> None:
        state = _PodFollower()
        try:
            selector = await self._pod_selector()
            while True:
                async for attempt in retrying(
                    "encoder pod watch", is_transient, attempts=None, backoff=Backoff(maximum=10.0)
                ):
                    with attempt:
                        await self._pod_session(state, selector, emit)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported to the consumer of members()
            emit(exc)

    async def _pod_selector(self) -> str:
        sts = None
        async for attempt in retrying("reading the encoder StatefulSet", is_transient):
            with attempt:
                sts = await self._call(
                    "get",
                    "statefulsets",
                    self._apps.read_namespaced_stateful_set,
                    self.statefulset,
                    self.namespace,
                )
        assert sts is not None
        labels = (sts.spec.selector.match_labels or {}) if sts.spec.selector else {}
        if not labels:
            raise ActuatorError(
                f"StatefulSet {self.statefulset!r} has no spec.selector.matchLabels "
                "to find its pods by"
            )
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def _member_of(self, pod: k8s.V1Pod) -> MemberJoined | None:
        meta, spec, status = pod.metadata, pod.spec, pod.status
        base, _, ordinal = (meta.name or "").rpartition("-")
        if base != self.statefulset or not ordinal.isdigit():
            return None
        if meta.deletion_timestamp is not None or status is None or status.phase != "Running":
            return None
        port = self.default_port
        for container in (spec.containers or []) if spec else []:
            for declared in container.ports or []:
                if declared.name == "grpc":
                    port = declared.container_port
        if spec is not None and spec.hostname and spec.subdomain:
            host = f"{spec.hostname}.{spec.subdomain}.{self.namespace}.svc.{self.cluster_domain}"
        elif status.pod_ip:
            host = status.pod_ip
        else:
            return None
        return MemberJoined(meta.name, f"{host}:{port}")

    async def _pod_session(
        self,
        state: _PodFollower,
        selector: str,
        emit: Callable[[MemberEvent | BaseException], None],
    ) -> None:
        """List if needed, then one watch until the server ends it; raises on trouble."""
        if state.resource_version is None:
            listing = await self._call(
                "list",
                "pods",
                self._core.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
            )
            self.lists += 1
            current = {}
            for pod in listing.items:
                member = self._member_of(pod)
                if member is not None:
                    current[pod.metadata.name] = member
            for event in diff_members(state.known, current):
                emit(event)
            state.known = current
            state.resource_version = listing.metadata.resource_version
        self.watches += 1
        try:
            await watch_once(
                self._core.list_namespaced_pod,
                self.namespace,
                cursor=state,
                on_event=lambda kind, pod: follow_member(
                    state.known,
                    pod.metadata.name,
                    None if kind == "DELETED" else self._member_of(pod),
                    emit,
                ),
                what="pod watch",
                watch_timeout=self.watch_timeout,
                read_grace=self.watch_read_grace,
                request_timeout=self.request_timeout,
                label_selector=selector,
            )
        except ApiException as exc:
            if is_transient(exc):
                raise
            raise api_error(exc, "watch", "pods", self.namespace) from None

    # -- scale ------------------------------------------------------------------------------------

    async def scale(self, replicas: int) -> None:
        target = within_bounds(
            replicas, self.scale_bounds, "give the actuator scale bounds (autoscaling.enabled)"
        )
        try:
            async for attempt in retrying(
                f"scaling {self.statefulset}", is_transient, attempts=self.attempts
            ):
                with attempt:
                    await self._scale_once(target)
        except ApiException as exc:  # transient, but it outlived the retries
            raise api_error(exc, "scale", "statefulsets/scale", self.namespace) from None
        except (_Conflict, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ActuatorError(
                f"scaling {self.statefulset} failed after {self.attempts} attempts: {exc!r}"
            ) from None

    async def _scale_once(self, target: int) -> None:
        resource = "statefulsets/scale"
        current = await self._call(
            "get",
            resource,
            self._apps.read_namespaced_stateful_set_scale,
            self.statefulset,
            self.namespace,
        )
        if current.spec.replicas == target:
            return
        patch = {
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"replicas": target},
        }
        try:
            await self._call(
                "patch",
                resource,
                self._apps.patch_namespaced_stateful_set_scale,
                self.statefulset,
                self.namespace,
                patch,
                handled=(409,),
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 409:
                self.conflicts += 1
                raise _Conflict(resource) from None
            raise
        self.writes += 1
        log.info(
            "scaled %s from %d to %d replicas", self.statefulset, current.spec.replicas, target
        )

    async def close(self) -> None:
        if self._owns_api:
            await self._api.close()
