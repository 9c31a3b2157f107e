"""A Kubernetes API server stand-in over real HTTP, for the actuator and topology-source tests.

Why it exists: no real API server can run here, and kmock 0.8 (tried first) cannot express
what these tests are about. It keeps no server-set ``resourceVersion``, so it can neither
answer 409 Conflict to a patch carrying a stale one nor resume a watch from a version or answer
410 Gone for a compacted one; its watches ignore ``timeoutSeconds`` and never end by
themselves; it has no PUT. This stand-in implements exactly the endpoints the actuators and
sources use, with the API server's semantics for those points, and nothing else:

- ConfigMaps: get, list (``labelSelector``, ``fieldSelector=metadata.name=``), watch, create
  (409 AlreadyExists), merge-patch (``metadata.resourceVersion`` in the body is a
  precondition: 409 Conflict when stale), delete (``preconditions.resourceVersion``);
- Pods: list and watch with ``labelSelector`` (tests add and remove pods, or scale the
  StatefulSet, as the StatefulSet controller would);
- StatefulSets: get, and the ``scale`` subresource get/patch, which creates or deletes the
  pods ``<name>-<ordinal>``;
- Leases (``coordination.k8s.io/v1``): get, create, replace (PUT with ``resourceVersion``);
- watches: resume from ``resourceVersion`` by replaying the event history after it, end
  cleanly after ``timeoutSeconds``, answer an ERROR event with code 410 for a version older
  than the retained history (:meth:`KubernetesStandIn.compact`), and send the current objects
  as ADDED first when no version is given;
- faults for tests: :meth:`touch` rewrites an object as another client would (so a write
  carrying its old ``resourceVersion`` meets 409), :meth:`forbid` answers 403 for a verb on a
  resource (as RBAC would), :meth:`drop_watches` cuts every open watch connection,
  ``stall_watches`` makes watches send nothing and never end (a silently stalled connection),
  :meth:`fail_next` answers the next requests with an error status.

Every object carries a ``resourceVersion`` from one global counter, like etcd's revision
behind a real API server. Requests are recorded in :attr:`KubernetesStandIn.requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshenc.local.ports import free_ports

__all__ = ["KubernetesStandIn", "Recorded"]

Obj = dict[str, Any]

_GROUPS = {
    "configmaps": "",
    "pods": "",
    "statefulsets": "apps",
    "leases": "coordination.k8s.io",
}
_KINDS = {
    "configmaps": "ConfigMap",
    "pods": "Pod",
    "statefulsets": "StatefulSet",
    "leases": "Lease",
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the stand-in received it."""

    method: str
    resource: str
    name: str
    query: dict[str, str]
    status: int = 0


@dataclass(slots=True, eq=False)
class _Watcher:
    resource: str
    namespace: str
    queue: asyncio.Queue[tuple[int, str, Obj] | None] = field(default_factory=asyncio.Queue)
    request: web.Request | None = None


class _Refused(Exception):  # noqa: N818 -- a control-flow signal carrying a Status
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def _merge(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _selector(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for term in filter(None, text.split(",")):
        key, _, value = term.partition("=")
        pairs[key.strip()] = value.strip().lstrip("=")
    return pairs


class KubernetesStandIn:
    """The stand-in server (see the module docstring). Use ``async with``."""

    def __init__(self, namespace: str = "media") -> None:
        self.namespace = namespace
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: list[tuple[int, str, str, Obj]] = []  # (rv, resource, type, object)
        self.requests: list[Recorded] = []
        #: Called with every request as it arrives (before it is answered).
        self.observers: list[Callable[[Recorded], None]] = []
        self.stall_watches = False
        self._revision = 100
        self._compacted = 0
        self._forbidden: set[tuple[str, str]] = set()
        self._failures: list[int] = []
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> KubernetesStandIn:
        app = web.Application()
        for prefix in ("/api/v1", "/apis/{group}/{version}"):
            app.router.add_route("*", prefix + "/namespaces/{ns}/{resource}", self._collection)
            app.router.add_route("*", prefix + "/namespaces/{ns}/{resource}/{name}", self._item)
            app.router.add_route(
                "*", prefix + "/namespaces/{ns}/{resource}/{name}/{sub}", self._item
            )
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        for attempt in range(5):
            (self.port,) = free_ports(1)
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            try:
                await site.start()
                break
            except OSError:
                if attempt == 4:
                    raise
        return self

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubernetesStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults and test helpers --------------------------------------------------------------

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 to ``verb`` (get, list, watch, create, patch, update, delete) on
        ``resource`` (``configmaps``, ``pods``, ``statefulsets/scale``, ...)."""
        self._forbidden.add((verb, resource))

    def allow_all(self) -> None:
        self._forbidden.clear()

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests (one each) with these error statuses."""
        self._failures.extend(statuses)

    def drop_watches(self) -> int:
        """Cut every open watch connection, as a load balancer or a restarting server does."""
        dropped = 0
        for watcher in list(self._watchers):
            if watcher.request is not None and watcher.request.transport is not None:
                watcher.request.transport.abort()
                dropped += 1
            watcher.queue.put_nowait(None)
        return dropped

    def compact(self) -> int:
        """Forget the event history up to now: watches from older versions get 410 Gone."""
        self._compacted = self._revision
        self.history.clear()
        return self._compacted

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def recorded(self, method: str, resource: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.resource == resource]

    def touch(self, resource: str, name: str) -> Obj:
        """Write an object again unchanged, as another client's update would: a new
        ``resourceVersion``, so a write carrying the old one meets 409 Conflict."""
        obj = copy.deepcopy(self.objects[(resource, self.namespace, name)])
        return self._store(resource, self.namespace, name, obj, "MODIFIED")

    def add_pod(
        self, name: str, *, labels: dict[str, str] | None = None, phase: str = "Running"
    ) -> Obj:
        """Create a pod as the StatefulSet controller and kubelet would."""
        sts = name.rsplit("-", 1)[0]
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels or {}},
            "spec": {
                "hostname": name,
                "subdomain": sts,
                "containers": [
                    {"name": "encoder", "ports": [{"name": "grpc", "containerPort": 7400}]}
                ],
            },
            "status": {"phase": phase, "podIP": "10.1.0.1"},
        }
        return self._store("pods", self.namespace, name, pod, "ADDED")

    def set_pod_phase(self, name: str, phase: str) -> Obj:
        pod = copy.deepcopy(self.objects[("pods", self.namespace, name)])
        pod["status"]["phase"] = phase
        return self._store("pods", self.namespace, name, pod, "MODIFIED")

    def delete_pod(self, name: str) -> None:
        self._delete("pods", self.namespace, name)

    def add_statefulset(self, name: str, replicas: int, labels: dict[str, str]) -> Obj:
        sts: Obj = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}},
            },
        }
        self._store("statefulsets", self.namespace, name, sts, "ADDED")
        self._reconcile(name)
        return sts

    def put_configmap(self, name: str, data: dict[str, str], labels: dict[str, str]) -> Obj:
        """Create or overwrite a ConfigMap as another writer would (a new resourceVersion)."""
        key = ("configmaps", self.namespace, name)
        existing = key in self.objects
        cm: Obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "data": data,
        }
        return self._store(
            "configmaps", self.namespace, name, cm, "MODIFIED" if existing else "ADDED"
        )

    def configmap(self, name: str) -> Obj | None:
        return self.objects.get(("configmaps", self.namespace, name))

    def configmaps(self) -> dict[str, Obj]:
        return {n: o for (r, _, n), o in self.objects.items() if r == "configmaps"}

    # -- state ----------------------------------------------------------------------------------

    def _store(self, resource: str, ns: str, name: str, obj: Obj, kind: str) -> Obj:
        self._revision += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})
        obj["metadata"].update({"name": name, "namespace": ns})
        obj["metadata"]["resourceVersion"] = str(self._revision)
        self.objects[(resource, ns, name)] = obj
        self._emit(resource, ns, kind, obj)
        return obj

    def _delete(self, resource: str, ns: str, name: str) -> Obj:
        obj = self.objects.pop((resource, ns, name))
        self._revision += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._revision)
        self._emit(resource, ns, "DELETED", gone)
        return gone

    def _emit(self, resource: str, ns: str, kind: str, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.append((rv, resource, kind, copy.deepcopy(obj)))
        for watcher in self._watchers:
            if watcher.resource == resource and watcher.namespace == ns:
                watcher.queue.put_nowait((rv, kind, copy.deepcopy(obj)))

    def _reconcile(self, sts_name: str) -> None:
        """The StatefulSet controller: pods <name>-0 .. <name>-(replicas-1)."""
        sts = self.objects[("statefulsets", self.namespace, sts_name)]
        replicas = int(sts["spec"]["replicas"])
        labels = sts["spec"]["selector"]["matchLabels"]
        for ordinal in range(replicas):
            name = f"{sts_name}-{ordinal}"
            if ("pods", self.namespace, name) not in self.objects:
                self.add_pod(name, labels=dict(labels))
        for resource, ns, name in list(self.objects):
            if resource != "pods" or ns != self.namespace:
                continue
            base, _, number = name.rpartition("-")
            if base == sts_name and number.isdigit() and int(number) >= replicas:
                self._delete("pods", ns, name)

    # -- HTTP -----------------------------------------------------------------------------------

    def _check(self, request: web.Request, verb: str, resource: str, name: str) -> None:
        recorded = Recorded(request.method, resource, name, dict(request.query))
        self.requests.append(recorded)
        for observer in list(self.observers):
            observer(recorded)
        if resource.split("/", maxsplit=1)[0] not in _GROUPS:
            raise _Refused(404, "NotFound", f"the server could not find resource {resource!r}")
        if self._failures:
            code = self._failures.pop(0)
            raise _Refused(code, "InternalError", f"injected failure {code}")
        if (verb, resource) in self._forbidden:
            group = _GROUPS[resource.split("/", maxsplit=1)[0]]
            target = f'{resource} "{name}"' if name else resource
            raise _Refused(
                403,
                "Forbidden",
                f'{target} is forbidden: User "system:serviceaccount:{self.namespace}:'
                f'meshenc-manager" cannot {verb} resource "{resource}" in API group '
                f'"{group}" in the namespace "{request.match_info["ns"]}"',
            )

    @staticmethod
    def _status(error: _Refused) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": error.message,
            "reason": error.reason,
            "code": error.code,
        }
        return web.json_response(body, status=error.code)

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource = request.match_info["resource"]
        ns = request.match_info["ns"]
        watching = request.query.get("watch", "").lower() == "true"
        verb = {"GET": "watch" if watching else "list", "POST": "create"}.get(request.method, "")
        try:
            self._check(request, verb, resource, "")
            if request.method == "POST":
                return await self._create(request, resource, ns)
            if request.method != "GET":
                raise _Refused(405, "MethodNotAllowed", f"{request.method} on a collection")
            if watching:
                return await self._watch(request, resource, ns)
            items = [o for o in self._select(request, resource, ns)]
            return web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": f"{_KINDS[resource]}List",
                    "metadata": {"resourceVersion": str(self._revision)},
                    "items": items,
                }
            )
        except _Refused as error:
            return self._status(error)

    def _select(self, request: web.Request, resource: str, ns: str) -> Iterator[Obj]:
        labels = _selector(request.query.get("labelSelector", ""))
        fields = _selector(request.query.get("fieldSelector", ""))
        for (r, n, _name), obj in sorted(self.objects.items()):
            if r == resource and n == ns and self._matches(obj, labels, fields):
                yield copy.deepcopy(obj)

    @staticmethod
    def _matches(obj: Obj, labels: dict[str, str], fields: dict[str, str]) -> bool:
        have = obj["metadata"].get("labels") or {}
        if any(have.get(k) != v for k, v in labels.items()):
            return False
        name = fields.get("metadata.name")
        return name is None or obj["metadata"]["name"] == name

    async def _create(self, request: web.Request, resource: str, ns: str) -> web.Response:
        body = await request.json()
        name = body.get("metadata", {}).get("name", "")
        if not name:
            raise _Refused(422, "Invalid", "metadata.name: Required value")
        if (resource, ns, name) in self.objects:
            raise _Refused(409, "AlreadyExists", f'{resource} "{name}" already exists')
        if body.get("metadata", {}).get("resourceVersion"):
            raise _Refused(422, "Invalid", "metadata.resourceVersion: must be empty on create")
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", _KINDS[resource])
        return web.json_response(self._store(resource, ns, name, body, "ADDED"), status=201)

    async def _item(self, request: web.Request) -> web.StreamResponse:
        resource = request.match_info["resource"]
        ns = request.match_info["ns"]
        name = request.match_info["name"]
        sub = request.match_info.get("sub")
        shown = f"{resource}/{sub}" if sub else resource
        verb = {"GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
            request.method, ""
        )
        try:
            self._check(request, verb, shown, name)
            key = (resource, ns, name)
            if key not in self.objects:
                raise _Refused(404, "NotFound", f'{resource} "{name}" not found')
            if sub == "scale":
                return await self._scale(request, name)
            if sub is not None:
                raise _Refused(404, "NotFound", f"no subresource {sub!r}")
            current = self.objects[key]
            if request.method == "GET":
                return web.json_response(current)
            if request.method == "DELETE":
                body = await request.json() if request.can_read_body else {}
                wanted = (body.get("preconditions") or {}).get("resourceVersion")
                self._precondition(current, wanted, resource, name)
                self._delete(resource, ns, name)
                return web.json_response({"kind": "Status", "status": "Success", "code": 200})
            body = await request.json()
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            self._precondition(current, wanted, resource, name)
            if request.method == "PUT":
                if not wanted:
                    raise _Refused(
                        422, "Invalid", "metadata.resourceVersion: must be specified for an update"
                    )
                updated = body
            elif request.method == "PATCH":
                if "merge-patch" not in request.content_type and "strategic" not in (
                    request.content_type
                ):
                    raise _Refused(415, "UnsupportedMediaType", request.content_type)
                updated = _merge(copy.deepcopy(current), body)
            else:
                raise _Refused(405, "MethodNotAllowed", request.method)
            return web.json_response(self._store(resource, ns, name, updated, "MODIFIED"))
        except _Refused as error:
            return self._status(error)

    @staticmethod
    def _precondition(current: Obj, wanted: str | None, resource: str, name: str) -> None:
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Refused(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )

    async def _scale(self, request: web.Request, name: str) -> web.Response:
        sts = self.objects[("statefulsets", self.namespace, name)]

        def view() -> Obj:
            return {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "resourceVersion": sts["metadata"]["resourceVersion"],
                },
                "spec": {"replicas": sts["spec"]["replicas"]},
                "status": {"replicas": sts["spec"]["replicas"]},
            }

        if request.method == "GET":
            return web.json_response(view())
        if request.method != "PATCH":
            raise _Refused(405, "MethodNotAllowed", request.method)
        body = await request.json()
        self._precondition(sts, (body.get("metadata") or {}).get("resourceVersion"), "scale", name)
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise _Refused(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
        updated = copy.deepcopy(sts)
        updated["spec"]["replicas"] = replicas
        sts = self._store("statefulsets", self.namespace, name, updated, "MODIFIED")
        self._reconcile(name)
        return web.json_response(view())

    async def _watch(self, request: web.Request, resource: str, ns: str) -> web.StreamResponse:
        start = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        labels = _selector(request.query.get("labelSelector", ""))
        fields = _selector(request.query.get("fieldSelector", ""))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(kind: str, obj: Obj) -> None:
            line = json.dumps({"type": kind, "object": obj}) + "\n"
            await response.write(line.encode())

        if start and start != "0" and int(start) < self._compacted:
            await send(
                "ERROR",
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {start} ({self._compacted})",
                    "reason": "Expired",
                    "code": 410,
                },
            )
            return response
        watcher = _Watcher(resource, ns, request=request)
        self._watchers.add(watcher)
        try:
            if self.stall_watches:  # a dead connection: nothing, and no end
                while await watcher.queue.get() is not None:
                    pass
                return response
            last = self._revision
            if not start or start == "0":
                for obj in list(self._select(request, resource, ns)):
                    await send("ADDED", obj)
            else:
                last = int(start)
                for rv, r, kind, obj in list(self.history):
                    in_ns = obj["metadata"].get("namespace") == ns
                    if r == resource and in_ns and rv > last and self._matches(obj, labels, fields):
                        await send(kind, obj)
                        last = rv
                last = max(last, self._revision)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while True:
                        item = await watcher.queue.get()
                        if item is None:
                            return response
                        rv, kind, obj = item
                        if rv <= last or not self._matches(obj, labels, fields):
                            continue
                        if self.stall_watches:
                            continue
                        await send(kind, obj)
                        last = rv
        except ConnectionResetError:
            return response
        finally:
            self._watchers.discard(watcher)
        return response
