"""How a meshenc service reaches the Kubernetes API: in-cluster credentials, else a kubeconfig.

The manager (its actuator) and the encoders (their ConfigMap watch) connect the same way: inside
a pod with the pod's service account, outside one (a developer's machine, a test) with a
kubeconfig file. Both also follow a resource the same way: a list, then watches that each
resume from the last ``resourceVersion`` seen (:func:`watch_once`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

__all__ = [
    "DEFAULT_WATCH_TIMEOUT",
    "WATCH_READ_GRACE",
    "WatchCursor",
    "connect_api",
    "watch_once",
]

log = logging.getLogger("meshenc.kubernetes")

DEFAULT_WATCH_TIMEOUT: Final = 240
"""Seconds the server keeps one watch open (``timeoutSeconds``) before the next one starts."""
WATCH_READ_GRACE: Final = 15.0
"""Seconds of silence beyond ``timeoutSeconds`` after which the client gives a watch up."""


async def connect_api(kubeconfig: Path | None = None) -> k8s.ApiClient:
    """An API client: in-cluster credentials inside a pod, else ``kubeconfig`` (or the
    default kubeconfig). The caller closes it.

    Raises:
        kubernetes_asyncio.config.ConfigException: neither in a pod nor with a kubeconfig.
    """
    if kubeconfig is None:
        with contextlib.suppress(k8s_config.ConfigException):
            k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
            return k8s.ApiClient()
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kubeconfig) if kubeconfig else None, client_configuration=configuration
    )
    return k8s.ApiClient(configuration)


@dataclass(slots=True)
class WatchCursor:
    """Where the next watch starts: the last ``resourceVersion`` seen (bookmarks included),
    or None when the caller has to list again."""

    resource_version: str | None = None


async def watch_once(
    list_call: Callable[..., Any],
    *args: Any,
    cursor: WatchCursor,
    on_event: Callable[[str, Any], None],
    what: str,
    watch_timeout: int,
    read_grace: float,
    request_timeout: float,
    **selector: Any,
) -> None:
    """One watch of ``list_call(*args, **selector)`` from ``cursor`` until the server ends it.

    ``on_event(kind, object)`` sees each ADDED, MODIFIED and DELETED event; the cursor moves
    after each event. The client gives the connection up ``read_grace`` seconds after
    ``watch_timeout``, so a silent one ends like any broken watch (raised; the caller resumes
    from the cursor). 410 Gone (the version was compacted) clears the cursor and returns: the
    caller lists again. Other API errors are raised.
    """
    async with Watch() as watch:
        try:
            async for event in watch.stream(
                list_call,
                *args,
                resource_version=cursor.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=watch_timeout,
                _request_timeout=(request_timeout, watch_timeout + read_grace),
                **selector,
            ):
                kind = event["type"]
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    on_event(kind, event["object"])
                if watch.resource_version:
                    cursor.resource_version = watch.resource_version
        except ApiException as exc:
            if exc.status != 410:
                raise
            log.info("%s: version %s is gone; listing again", what, cursor.resource_version)
            cursor.resource_version = None
