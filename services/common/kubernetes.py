"""How a meshenc service reaches the Kubernetes API: in-cluster credentials, else a kubeconfig.

The manager (its actuator) and the encoders (their ConfigMap watch) connect the same way: inside
a pod with the pod's service account, outside one (a developer's machine, a test) with a
kubeconfig file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

__all__ = ["connect_api"]


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
