"""The Helm chart, checked with the real ``helm`` binary and the Kubernetes 1.30 API schemas.

`make tools` fetches helm into .tools/bin (scripts/fetch-helm.sh). Every test works on what
``helm template`` renders from deploy/helm/meshenc with the default values and with each
values file in its ci/ folder; nothing is installed, since no cluster runs here. What a
cluster would check at admission, kubernetes-validate checks offline against the 1.30 schemas.

The chart's side of the contract with the services is written down once, in
:data:`CHART_VARIABLES`: the MESHENC_* variables the chart sets per ``meshenc`` subcommand.
The tests hold the rendered manifests to it, and it to the command line: a subcommand the
chart runs must exist, parse the container's arguments and variables, and read every
variable. The Roles are held to the Kubernetes API calls the code makes.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import grpc
import pytest
import yaml  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshenc.cli.main import cli
from meshenc.core.timecode import FrameRate
from meshenc.local.demo import DemoConfig, DemoRun
from meshenc.v1 import registry_pb2, registry_pb2_grpc
from services.common.certs import CA_CERT, CA_KEY, certificate_identity, make_certificates
from services.common.grpc_server import GrpcServer, open_channel
from services.common.registry_client import SERVICE_NAME as REGISTRY_SERVICE
from services.common.tls import (
    MANAGER,
    REGISTRY,
    TlsFiles,
    peer_identity,
    record_signer,
    record_verifier,
)
from services.encoder.media.ladder import parse_ladder, top_rung
from services.manager.settings import ActuatorKind, ManagerSettings, parse_work_units

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "meshenc"
HELM = ROOT / ".tools" / "bin" / "helm"
KUBERNETES_VALIDATE = ROOT / ".venv" / "bin" / "kubernetes-validate"
RELEASE, NAMESPACE = "meshenc", "media"
VALUES_FILES = ["default", *sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))]

TLS_VARIABLES = (
    "MESHENC_HEALTH_LISTEN",
    "MESHENC_INSECURE",
    "MESHENC_TLS_CA",
    "MESHENC_TLS_CERT",
    "MESHENC_TLS_KEY",
)
"""What every meshenc service gets for mutual TLS (or plaintext) and its health-only port."""
PEER_LIMITS = {
    "maxStreamsPerPeer": "MESHENC_MAX_STREAMS_PER_PEER",
    "maxMessagesPerPeer": "MESHENC_MAX_MESSAGES_PER_PEER",
}
"""A service's per-peer limit values and the variables they become (set in ci/mtls-values.yaml)."""

CHART_VARIABLES: dict[str, frozenset[str]] = {
    "encoder": frozenset(
        {
            "MESHENC_ID",
            "MESHENC_NAMESPACE",
            "MESHENC_LISTEN",
            "MESHENC_ADVERTISE",
            "MESHENC_OUT",
            "MESHENC_SOURCE",
            "MESHENC_SIZE",
            "MESHENC_FPS",
            "MESHENC_GOP",
            "MESHENC_BITRATE_KBPS",
            # Set in ci/autoscaling-values.yaml (work.ladder), instead of the size and bitrate.
            "MESHENC_LADDER",
            "MESHENC_RUNG_THREADS",
            "MESHENC_SEGMENT",
            "MESHENC_FORMAT",
            # Set in ci/origin-values.yaml.
            "MESHENC_CHANNELS",
            "MESHENC_REGION",
            "MESHENC_PUBLISH",
            "MESHENC_SERVE_OUTPUT",
            "MESHENC_TOPOLOGY",
            "MESHENC_REGISTRY",
            "MESHENC_MANAGER",
            "MESHENC_ETCD_ENDPOINTS",
            "MESHENC_ETCD_PREFIX",
            "MESHENC_ETCD_CA",
            "MESHENC_ETCD_CERT",
            "MESHENC_ETCD_KEY",
            "MESHENC_METRICS_LISTEN",
            *TLS_VARIABLES,
            *PEER_LIMITS.values(),
            # Set through encoder.extraEnv in ci/quickstart-tracing-values.yaml.
            "MESHENC_LOG_LEVEL",
        }
    ),
    "registry": frozenset(
        {
            "MESHENC_LISTEN",
            "MESHENC_ADVERTISE",
            "MESHENC_SEEDS",
            "MESHENC_METRICS_LISTEN",
            *TLS_VARIABLES,
            *PEER_LIMITS.values(),
        }
    ),
    "manager": frozenset(
        {
            "MESHENC_LISTEN",
            "MESHENC_ACTUATOR",
            "MESHENC_NAMESPACE",
            "MESHENC_ENCODER_STATEFULSET",
            "MESHENC_AUTOSCALE_MIN",
            "MESHENC_AUTOSCALE_MAX",
            "MESHENC_AUTOSCALE_HIGH_WATER",
            "MESHENC_AUTOSCALE_LOW_WATER",
            "MESHENC_AUTOSCALE_COOLDOWN",
            "MESHENC_AUTOSCALE_DRAIN_GRACE",
            "MESHENC_AUTOSCALE_DRAIN_TIMEOUT",
            "MESHENC_FRAME_BUDGET",
            # Set in ci/autoscaling-values.yaml (work.ladder).
            "MESHENC_WORK_UNITS",
            "MESHENC_REDUNDANCY",
            "MESHENC_ETCD_ENDPOINTS",
            "MESHENC_ETCD_PREFIX",
            "MESHENC_ETCD_CA",
            "MESHENC_ETCD_CERT",
            "MESHENC_ETCD_KEY",
            "MESHENC_METRICS_LISTEN",
            *TLS_VARIABLES,
            *PEER_LIMITS.values(),
        }
    ),
    "health-check": frozenset(),
}
"""The MESHENC_* variables the chart sets, per ``meshenc`` subcommand (across all values)."""

SERVICE_OF = {
    "encoder": "meshenc.v1.EncoderMesh",
    "registry": "meshenc.v1.Registry",
    "manager": "meshenc.v1.MeshManager",
}
"""The gRPC service whose health a component's readiness probe asks for."""

RECOMMENDED_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
}

Manifest = dict[str, Any]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), "helm missing: run `make tools` (make test and make chart-check do)"
    return subprocess.run(
        [str(HELM), *args], check=False, capture_output=True, text=True, timeout=60
    )


def values_args(values: str) -> list[str]:
    return [] if values == "default" else ["--values", str(CHART / "ci" / values)]


def template(*args: str) -> subprocess.CompletedProcess[str]:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


@cache
def rendered_text(values: str) -> str:
    result = template(*values_args(values))
    assert result.returncode == 0, result.stderr
    return result.stdout


@cache
def rendered(values: str, *extra: str) -> tuple[Manifest, ...]:
    """The manifests ``helm template`` renders with a values file and extra ``--set`` flags."""
    if extra:
        result = template(*values_args(values), *extra)
        assert result.returncode == 0, result.stderr
        text = result.stdout
    else:
        text = rendered_text(values)
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def find(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs(manifests: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, Manifest]]:
    """(manifest, pod spec) of every workload and bare pod."""
    for manifest in manifests:
        if manifest["kind"] == "Pod":
            yield manifest, manifest["spec"]
        elif manifest["kind"] in {"Deployment", "StatefulSet"}:
            yield manifest, manifest["spec"]["template"]["spec"]


def meshenc_containers(manifests: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, Manifest]]:
    """(manifest, container) of every container running the meshenc image."""
    for manifest, spec in pod_specs(manifests):
        for container in spec["containers"]:
            if container["image"].split(":")[0] == "meshenc":
                yield manifest, container


def env_names(container: Manifest) -> list[str]:
    return [item["name"] for item in container.get("env", [])]


def env_value(container: Manifest, name: str) -> str:
    (value,) = [item["value"] for item in container["env"] if item["name"] == name]
    return str(value)


# --- helm lint, rendering, Kubernetes schemas ----------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint_is_clean(values: str) -> None:
    result = helm("lint", "--strict", str(CHART), *values_args(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_manifests_pass_kubernetes_1_30_strict_schemas(
    values: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(rendered_text(values))
    result = subprocess.run(
        [str(KUBERNETES_VALIDATE), "-k", "1.30.0", "--strict", "--quiet", str(manifests)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_schema_validation_rejects_a_field_kubernetes_does_not_know(
    tmp_path: Path,
) -> None:
    """The check above can fail: one misspelt field in one rendered StatefulSet is caught."""
    manifests = list(rendered("default"))
    encoder = find(tuple(manifests), "StatefulSet", f"{RELEASE}-encoder")
    broken = {**encoder, "spec": {**encoder["spec"], "replica": 3}}
    manifests[manifests.index(encoder)] = broken
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    result = subprocess.run(
        [str(KUBERNETES_VALIDATE), "-k", "1.30.0", "--strict", "--quiet", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "'replica' was unexpected" in result.stdout + result.stderr


def test_default_values_render_the_whole_mesh() -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in rendered("default"))
    assert kinds == sorted(
        [
            ("StatefulSet", "meshenc-encoder"),
            ("Service", "meshenc-encoder"),
            ("ServiceAccount", "meshenc-encoder"),
            ("Role", "meshenc-encoder"),
            ("RoleBinding", "meshenc-encoder"),
            ("PodDisruptionBudget", "meshenc-encoder"),
            ("StatefulSet", "meshenc-registry"),
            ("Service", "meshenc-registry"),
            ("PodDisruptionBudget", "meshenc-registry"),
            ("Deployment", "meshenc-manager"),
            ("Service", "meshenc-manager"),
            ("ServiceAccount", "meshenc-manager"),
            ("Role", "meshenc-manager"),
            ("RoleBinding", "meshenc-manager"),
            ("StatefulSet", "meshenc-etcd"),
            ("Service", "meshenc-etcd"),
            ("Service", "meshenc-etcd-client"),
            ("Pod", "meshenc-test-health"),
        ]
    )


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_resource_carries_the_recommended_labels(values: str) -> None:
    for manifest in rendered(values):
        labels = manifest["metadata"].get("labels", {})
        assert labels.keys() >= RECOMMENDED_LABELS, manifest["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert manifest["metadata"]["namespace"] == NAMESPACE


# --- RBAC: least privilege ------------------------------------------------------------------


def role_rules(manifests: tuple[Manifest, ...], name: str) -> set[tuple[str, str, str]]:
    """A Role's rules as (apiGroup, resource, verb) triples, with resourceNames left aside."""
    rules = find(manifests, "Role", name)["rules"]
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


MANAGER_RULES = {
    *(("", "configmaps", v) for v in ("get", "list", "create", "patch", "delete")),
    *(("", "pods", v) for v in ("list", "watch")),
    ("apps", "statefulsets", "get"),
}
"""Exactly the calls the Kubernetes actuator makes (docs/actuators.md, "RBAC")."""
SCALE_RULES = {("apps", "statefulsets/scale", v) for v in ("get", "patch")}


_API_CALL = re.compile(
    r"(?P<watch>(?:\.stream|\bwatch_once)\(\s*)?self\._(?P<api>core|apps)\."
    r"(?P<verb>read|list|create|patch|replace|delete)_namespaced_(?P<kind>\w+?)\b"
)
_VERBS = {"read": "get", "replace": "update"}
_RESOURCES = {
    "config_map": "configmaps",
    "pod": "pods",
    "stateful_set": "statefulsets",
    "stateful_set_scale": "statefulsets/scale",
}


def api_calls(source: Path) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every Kubernetes API call in ``source`` (a
    ``kubernetes_asyncio`` method on ``self._core``/``self._apps``; a watch is a list method
    handed to ``Watch.stream`` or to ``services.common.kubernetes.watch_once``)."""
    calls = set()
    for match in _API_CALL.finditer(source.read_text()):
        verb = "watch" if match["watch"] else _VERBS.get(match["verb"], match["verb"])
        group = "" if match["api"] == "core" else match["api"]
        calls.add((group, _RESOURCES[match["kind"]], verb))
    return calls


def test_the_roles_grant_exactly_the_calls_the_code_makes() -> None:
    """Read from the code, so that a new API call without its rule (or a rule the code no
    longer needs) fails here."""
    manager = api_calls(ROOT / "services" / "manager" / "kubernetes_actuator.py")
    encoder = api_calls(ROOT / "services" / "encoder" / "kubernetes_topology.py")
    assert manager == MANAGER_RULES | SCALE_RULES
    assert encoder == {("", "configmaps", "list"), ("", "configmaps", "watch")}
    # Both the list and the watch of the pods are found, so a dropped watch would show.
    assert {("", "pods", "list"), ("", "pods", "watch")} <= manager


@pytest.mark.parametrize("values", VALUES_FILES)
def test_manager_role_has_exactly_the_verbs_it_uses(values: str) -> None:
    manifests = rendered(values)
    autoscaling = values == "autoscaling-values.yaml"
    expected = MANAGER_RULES | (SCALE_RULES if autoscaling else set())
    assert role_rules(manifests, f"{RELEASE}-manager") == expected


def test_scale_permission_follows_autoscaling_and_names_the_encoder_statefulset() -> None:
    off = rendered("default", "--set", "autoscaling.enabled=false")
    on = rendered("default", "--set", "autoscaling.enabled=true")
    assert not role_rules(off, f"{RELEASE}-manager") & SCALE_RULES
    assert role_rules(on, f"{RELEASE}-manager") - role_rules(off, f"{RELEASE}-manager") == (
        SCALE_RULES
    )
    (scale_rule,) = [
        r
        for r in find(on, "Role", f"{RELEASE}-manager")["rules"]
        if "statefulsets/scale" in r["resources"]
    ]
    assert scale_rule["resourceNames"] == [f"{RELEASE}-encoder"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_encoder_role_only_reads_configmaps(values: str) -> None:
    """An encoder lists and watches its ConfigMap (KubernetesTopologySource), nothing else."""
    assert role_rules(rendered(values), f"{RELEASE}-encoder") == {
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
    }


@pytest.mark.parametrize("values", VALUES_FILES)
def test_only_encoders_and_manager_hold_api_credentials_each_their_own(values: str) -> None:
    manifests = rendered(values)
    for manifest, spec in pod_specs(manifests):
        component = manifest["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in {"encoder", "manager"}:
            account = f"{RELEASE}-{component}"
            assert spec["serviceAccountName"] == account
            binding = find(manifests, "RoleBinding", account)
            assert binding["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": account,
            }
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
            ]
        else:
            assert spec["automountServiceAccountToken"] is False, manifest["metadata"]["name"]
            assert "serviceAccountName" not in spec


# --- probes and security --------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES)
def test_probes_are_native_grpc_on_the_plaintext_health_port(values: str) -> None:
    """The kubelet cannot present a client certificate: probes ask the health-only port, which
    the service serves in plaintext (MESHENC_HEALTH_LISTEN), never its own (maybe TLS) port."""
    checked = set()
    for manifest, container in meshenc_containers(rendered(values)):
        command = container["args"][0]
        if command == "health-check":
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        grpc_port, health_port = ports["grpc"], ports["health"]
        assert isinstance(health_port, int) and health_port != grpc_port
        assert env_value(container, "MESHENC_LISTEN") == f"0.0.0.0:{grpc_port}"
        assert env_value(container, "MESHENC_HEALTH_LISTEN") == f"0.0.0.0:{health_port}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, (manifest["kind"], probe)
            assert isinstance(container[probe]["grpc"]["port"], int)
            assert {"httpGet", "exec", "tcpSocket"}.isdisjoint(container[probe])
        assert container["readinessProbe"]["grpc"]["service"] == SERVICE_OF[command]
        assert container["livenessProbe"]["grpc"].get("service", "") == ""
        checked.add(command)
    assert checked == {"encoder", "registry", "manager"}


def test_probe_ports_follow_the_configured_ports() -> None:
    manifests = rendered("default", "--set", "encoder.port=8400", "--set", "health.port=8700")
    ports = {
        c["args"][0]: (env_value(c, "MESHENC_LISTEN"), c["readinessProbe"]["grpc"]["port"])
        for _m, c in meshenc_containers(manifests)
        if c["args"][0] != "health-check"
    }
    assert ports == {
        "encoder": ("0.0.0.0:8400", 8700),
        "registry": ("0.0.0.0:7500", 8700),
        "manager": ("0.0.0.0:7600", 8700),
    }


@pytest.mark.parametrize("values", VALUES_FILES)
def test_services_run_mutual_tls_with_the_secret_cert_manager_or_plaintext_when_asked(
    values: str,
) -> None:
    """tls.enabled: each service's certificate from the mounted Secret (an encoder's named by
    its pod, which is its id) or, with tls.certManager.enabled, from the csi-driver volume the
    pod mounts (the files the volume is asked to write); otherwise --insecure, explicitly."""
    manifests = rendered(values)
    given = {} if values == "default" else yaml.safe_load((CHART / "ci" / values).read_text())
    tls = given.get("tls", {})
    checked = set()
    for manifest, container in meshenc_containers(manifests):
        command = container["args"][0]
        if command == "health-check":
            continue
        environment = container_environment(container)
        spec = manifest["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        if tls.get("enabled"):
            assert mounts["tls"]["mountPath"] == "/etc/meshenc/tls" and mounts["tls"]["readOnly"]
            assert "MESHENC_INSECURE" not in environment
        if tls.get("enabled") and tls.get("certManager", {}).get("enabled"):
            assert set(volumes["tls"]) == {"name", "csi"}, "a csi volume, no Secret"
            attributes = volumes["tls"]["csi"]["volumeAttributes"]
            for variable, attribute in (
                ("MESHENC_TLS_CA", "ca-file"),
                ("MESHENC_TLS_CERT", "certificate-file"),
                ("MESHENC_TLS_KEY", "privatekey-file"),
            ):
                path = Path(environment[variable])
                assert str(path.parent) == mounts["tls"]["mountPath"]
                assert path.name == attributes[f"csi.cert-manager.io/{attribute}"]
        elif tls.get("enabled"):
            identity = environment["MESHENC_ID"] if command == "encoder" else command
            assert environment["MESHENC_TLS_CA"] == "/etc/meshenc/tls/ca.crt"
            assert environment["MESHENC_TLS_CERT"] == f"/etc/meshenc/tls/{identity}.crt"
            assert environment["MESHENC_TLS_KEY"] == f"/etc/meshenc/tls/{identity}.key"
            assert volumes["tls"]["secret"]["secretName"] == tls["existingSecret"]
        else:
            assert environment["MESHENC_INSECURE"] == "true"
            assert not any(name.startswith("MESHENC_TLS_") for name in environment)
            assert "tls" not in volumes
        checked.add(command)
    assert checked == {"encoder", "registry", "manager"}


# --- certificates from cert-manager's csi-driver ---------------------------------------------

CSI = "csi.cert-manager.io"
CERT_MANAGER_VALUES = "cert-manager-values.yaml"
SAMPLE_PODS = {
    "encoder": f"{RELEASE}-sample-0",  # what container_environment gives MESHENC_ID
    "registry": f"{RELEASE}-registry-0",
    "manager": f"{RELEASE}-manager-5d8f9c7b6-x2k4q",
}
"""A pod name per component, as the kubelet tells the csi-driver (``${POD_NAME}``)."""


def csi_volumes(manifests: tuple[Manifest, ...]) -> dict[str, tuple[Manifest, dict[str, str]]]:
    """Per meshenc service, (its container, the attributes of its csi-driver volume)."""
    found = {}
    for _manifest, spec in pod_specs(manifests):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if "csi" in volumes.get("tls", {}):
            (container,) = spec["containers"]
            csi = volumes["tls"]["csi"]
            assert csi["driver"] == CSI and csi["readOnly"] is True  # the driver requires it
            found[container["args"][0]] = (container, csi["volumeAttributes"])
    return found


def test_cert_manager_asks_for_each_pods_own_identity() -> None:
    """An encoder's certificate names its pod (its encoder id), the registry's ``registry``,
    the manager's ``manager``: as the URI the services read, the DNS name their clients check
    and the common name; signed by the issuer named, readable by the pods' group."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    given = yaml.safe_load((CHART / "ci" / CERT_MANAGER_VALUES).read_text())["tls"]["certManager"]
    volumes = csi_volumes(rendered(CERT_MANAGER_VALUES))
    assert set(volumes) == {"encoder", "registry", "manager"}
    domain = "${POD_NAMESPACE}.svc.cluster.local"
    hostnames = {
        "encoder": f"${{POD_NAME}}.{RELEASE}-encoder.{domain}",
        "registry": f"${{POD_NAME}}.{RELEASE}-registry.{domain}",
        "manager": f"{RELEASE}-manager.{domain}",
    }
    for command, identity in (
        ("encoder", "${POD_NAME}"),
        ("registry", "registry"),
        ("manager", "manager"),
    ):
        _container, attributes = volumes[command]
        assert attributes == {
            f"{CSI}/issuer-name": "meshenc-ca",
            f"{CSI}/issuer-kind": "Issuer",
            f"{CSI}/issuer-group": "cert-manager.io",
            f"{CSI}/common-name": identity,
            f"{CSI}/uri-sans": f"meshenc://{identity}",
            f"{CSI}/dns-names": f"{identity},{hostnames[command]},localhost",
            f"{CSI}/ip-sans": "127.0.0.1,::1",
            f"{CSI}/key-usages": "digital signature,server auth,client auth",
            f"{CSI}/key-algorithm": "ECDSA",
            f"{CSI}/duration": given["duration"],
            f"{CSI}/renew-before": given["renewBefore"],
            f"{CSI}/ca-file": "ca.crt",
            f"{CSI}/certificate-file": "tls.crt",
            f"{CSI}/privatekey-file": "tls.key",
            f"{CSI}/fs-group": str(values["podSecurityContext"]["fsGroup"]),
        }, command


def test_cert_manager_settings_reach_every_volume() -> None:
    """An external issuer (another kind and group), RSA keys of a given size (which also need
    key encipherment), the driver's own renewal time, another group for the files."""
    manifests = rendered(
        CERT_MANAGER_VALUES,
        "--set",
        "tls.certManager.issuerRef.kind=AWSPCAClusterIssuer,"
        "tls.certManager.issuerRef.name=mesh-pki,"
        "tls.certManager.issuerRef.group=awspca.cert-manager.io,"
        "tls.certManager.keyAlgorithm=RSA,tls.certManager.keySize=3072,"
        "tls.certManager.renewBefore=,tls.certManager.duration=2h30m,"
        "podSecurityContext.fsGroup=20002",
    )
    volumes = csi_volumes(manifests)
    assert set(volumes) == {"encoder", "registry", "manager"}
    for command, (_container, attributes) in volumes.items():
        assert attributes[f"{CSI}/issuer-name"] == "mesh-pki", command
        assert attributes[f"{CSI}/issuer-kind"] == "AWSPCAClusterIssuer"
        assert attributes[f"{CSI}/issuer-group"] == "awspca.cert-manager.io"
        assert attributes[f"{CSI}/key-algorithm"] == "RSA"
        assert attributes[f"{CSI}/key-size"] == "3072"
        assert attributes[f"{CSI}/key-usages"] == (
            "digital signature,key encipherment,server auth,client auth"
        )
        assert attributes[f"{CSI}/duration"] == "2h30m"
        assert f"{CSI}/renew-before" not in attributes
        assert attributes[f"{CSI}/fs-group"] == "20002"


def test_cert_manager_leaves_probes_and_helm_test_on_the_plaintext_health_port() -> None:
    """The probes and the test pod are the same as without TLS: they present no certificate."""

    def health_checks(manifests: tuple[Manifest, ...]) -> list[Any]:
        found = []
        for manifest, container in meshenc_containers(manifests):
            probes = [container.get(p) for p in ("startupProbe", "livenessProbe", "readinessProbe")]
            found.append((manifest["metadata"]["name"], container["args"], probes))
        return found

    plain = rendered("default")
    assert health_checks(rendered(CERT_MANAGER_VALUES)) == health_checks(plain)
    hook = find(rendered(CERT_MANAGER_VALUES), "Pod", f"{RELEASE}-test-health")
    assert hook == find(plain, "Pod", f"{RELEASE}-test-health")


def expand(text: str, pod: str) -> str:
    """The csi-driver's variable expansion (Go's ``os.Expand``) for one pod."""
    variables = {"POD_NAME": pod, "POD_NAMESPACE": NAMESPACE}
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m[1] or m[2]], text)


def stand_in_issue(attributes: dict[str, str], pod: str, ca: Path, volume: Path) -> TlsFiles:
    """A STAND-IN for cert-manager's csi-driver and a CA Issuer (no cluster runs here): a key
    and a certificate for ``pod`` made as the volume's attributes ask (names, usages, key
    algorithm and size), signed by the CA in ``ca`` (``meshenc certs``), written into ``volume``
    under the file names the attributes give, as the driver writes them (issued again into the
    same volume: renewed as the driver renews)."""
    csi = {k.removeprefix(f"{CSI}/"): v for k, v in attributes.items()}
    size = int(csi["key-size"]) if "key-size" in csi else None
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if csi["key-algorithm"] == "ECDSA":
        curves = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
        key = ec.generate_private_key(curves[size or 256])
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)
    ca_key = serialization.load_pem_private_key((ca / CA_KEY).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((ca / CA_CERT).read_bytes())
    names: list[x509.GeneralName] = [
        *(x509.DNSName(expand(n, pod)) for n in csi["dns-names"].split(",")),
        *(x509.IPAddress(ipaddress.ip_address(a)) for a in csi["ip-sans"].split(",")),
        *(x509.UniformResourceIdentifier(expand(u, pod)) for u in csi["uri-sans"].split(",")),
    ]
    usages = set(csi["key-usages"].split(","))
    extended = {
        "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
        "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, expand(csi["common-name"], pod))])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature="digital signature" in usages,
                content_commitment=False,
                key_encipherment="key encipherment" in usages,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([extended[u] for u in sorted(usages) if u in extended]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    # The driver's default encodings: PKCS#8 for ECDSA keys, PKCS#1 for RSA keys.
    encoding = (
        serialization.PrivateFormat.PKCS8
        if csi["key-algorithm"] == "ECDSA"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    write_as_csi_driver(
        volume,
        {
            csi["ca-file"]: (ca / CA_CERT).read_bytes(),
            csi["certificate-file"]: certificate.public_bytes(serialization.Encoding.PEM),
            csi["privatekey-file"]: key.private_bytes(
                serialization.Encoding.PEM, encoding, serialization.NoEncryption()
            ),
        },
    )
    return TlsFiles(
        ca=volume / csi["ca-file"],
        cert=volume / csi["certificate-file"],
        key=volume / csi["privatekey-file"],
    )


def write_as_csi_driver(volume: Path, contents: dict[str, bytes]) -> None:
    """Write (or renew) files the way the csi-driver does, with the atomic writer Kubernetes
    uses for Secret volumes: the files go into a new directory, one rename points ``..data`` at
    it, and each file is a link through ``..data``; so all of them change at once."""
    volume.mkdir(exist_ok=True)
    version = volume / f"..{time.time_ns()}"
    version.mkdir()
    for name, data in contents.items():
        (version / name).write_bytes(data)
    (volume / "..data_tmp").symlink_to(version.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in contents:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(Path("..data") / name)


def served_serial(port: int, client: TlsFiles) -> int:
    """The serial of the certificate the server on ``port`` presents to a new connection."""
    context = ssl.create_default_context(cafile=str(client.ca))
    context.check_hostname = False
    context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


class _CallerProbe:
    """``Registry/Ping`` that keeps the identity the server read from each caller."""

    def __init__(self) -> None:
        self.callers: list[str | None] = []

    def register(self, server: Any) -> None:
        ping = grpc.unary_unary_rpc_method_handler(
            self._ping,
            request_deserializer=registry_pb2.PingRequest.FromString,
            response_serializer=registry_pb2.PingResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(REGISTRY_SERVICE, {"Ping": ping}),)
        )

    async def _ping(self, _request: Any, context: Any) -> registry_pb2.PingResponse:
        self.callers.append(peer_identity(context))
        return registry_pb2.PingResponse()


@pytest.mark.parametrize(
    "settings",
    [(), ("--set", "tls.certManager.keyAlgorithm=RSA,tls.certManager.keySize=2048")],
    ids=["ecdsa", "rsa"],
)
def test_a_stand_in_issuing_what_the_csi_volumes_ask_gives_certificates_the_services_take(
    settings: tuple[str, ...], tmp_path: Path
) -> None:
    """With a STAND-IN for cert-manager (:func:`stand_in_issue`; no cluster here), the services'
    own code reads each certificate as the identity its service runs as: an encoder's is its
    MESHENC_ID, and it signs registry records the CA's verifier accepts. Over real mutual TLS
    on 127.0.0.1 an encoder dials each server as the services dial it (a neighbour by its id,
    the registry and manager by their names, a port-forward by localhost), and the server reads
    the caller's encoder id; dialling the encoder as another id fails. Renewed the way the
    driver renews, the encoder's certificate is served to the next connection."""
    volumes = csi_volumes(rendered(CERT_MANAGER_VALUES, *settings))
    ca = make_certificates(tmp_path / "ca", []).folder
    issued = {
        command: stand_in_issue(attributes, SAMPLE_PODS[command], ca, tmp_path / command)
        for command, (_container, attributes) in volumes.items()
    }
    encoder_id = container_environment(volumes["encoder"][0])["MESHENC_ID"]
    expected = {"encoder": encoder_id, "registry": REGISTRY, "manager": MANAGER}
    for command, files in issued.items():
        files.read()  # parses, and the key is the certificate's
        assert certificate_identity(files.cert) == expected[command], command
    neighbour = stand_in_issue(
        volumes["encoder"][1], f"{RELEASE}-encoder-1", ca, tmp_path / "neighbour"
    )
    neighbour_id = f"{RELEASE}-encoder-1"

    signer = record_signer(neighbour)
    record = registry_pb2.EncoderRecord(encoder_id=neighbour_id, address="10.0.0.7:7400", version=1)
    signer.sign(record)
    record_verifier(issued["encoder"]).check(record, datetime.datetime.now(datetime.UTC))

    async def ping(port: int, server_name: str | None, host: str = "127.0.0.1") -> None:
        async with open_channel(f"{host}:{port}", tls=neighbour, server_name=server_name) as ch:
            await registry_pb2_grpc.RegistryStub(ch).Ping(registry_pb2.PingRequest(), timeout=10.0)

    async def main() -> None:
        for command, server_name in (
            ("encoder", encoder_id),
            ("registry", REGISTRY),
            ("manager", MANAGER),
        ):
            probe = _CallerProbe()
            server = GrpcServer({REGISTRY_SERVICE: probe.register}, tls=issued[command])
            port = await server.start("127.0.0.1:0")
            try:
                await ping(port, server_name)
                assert probe.callers == [neighbour_id], command
                if command != "encoder":
                    continue
                await ping(port, None, host="localhost")  # as through a port-forward
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ping(port, f"{RELEASE}-encoder-9")
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                # Renewed as the driver renews, under the running server.
                first = file_serial(issued[command].cert)
                stand_in_issue(volumes[command][1], SAMPLE_PODS[command], ca, tmp_path / command)
                renewed = file_serial(issued[command].cert)
                assert renewed != first
                assert await asyncio.to_thread(served_serial, port, neighbour) == renewed
                await ping(port, server_name)
                assert probe.callers == [neighbour_id] * 3
            finally:
                await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 60.0))


def peer_limits_rendered(manifests: tuple[Manifest, ...]) -> dict[str, dict[str, float]]:
    """Per service, the per-peer limit variables its container gets, as numbers."""
    found: dict[str, dict[str, float]] = {}
    for _manifest, container in meshenc_containers(manifests):
        command, environment = container["args"][0], container_environment(container)
        if command != "health-check":
            found[command] = {
                v: float(environment[v]) for v in PEER_LIMITS.values() if v in environment
            }
    return found


@pytest.mark.parametrize("values", VALUES_FILES)
def test_per_peer_limits_reach_each_service_only_when_set(values: str) -> None:
    """A service's maxStreamsPerPeer / maxMessagesPerPeer become its MESHENC_MAX_*_PER_PEER;
    a limit not set is no variable at all (the service's default holds)."""
    given = {} if values == "default" else yaml.safe_load((CHART / "ci" / values).read_text())
    expected = {
        command: {
            variable: float(given[command][key])
            for key, variable in PEER_LIMITS.items()
            if given.get(command, {}).get(key) is not None
        }
        for command in ("encoder", "registry", "manager")
    }
    assert peer_limits_rendered(rendered(values)) == expected


def test_one_per_peer_limit_set_alone_is_rendered_alone() -> None:
    manifests = rendered("default", "--set", "registry.maxStreamsPerPeer=16")
    assert peer_limits_rendered(manifests) == {
        "encoder": {},
        "registry": {"MESHENC_MAX_STREAMS_PER_PEER": 16.0},
        "manager": {},
    }


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_pod_is_non_root_read_only_without_capabilities(values: str) -> None:
    components = set()
    for manifest, spec in pod_specs(rendered(values)):
        name = manifest["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert "add" not in security["capabilities"], (name, container["name"])
            assert "resources" in container and container["resources"]["requests"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, (name, container["name"])
        components.add(manifest["metadata"]["labels"]["app.kubernetes.io/component"])
    assert components >= {"encoder", "registry", "manager", "test"}


def test_the_image_user_is_the_chart_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = values["podSecurityContext"]["runAsUser"]
    gid = values["podSecurityContext"]["runAsGroup"]
    assert re.search(rf"^USER {uid}:{gid}$", dockerfile, re.MULTILINE)


# --- workloads, services, addresses ---------------------------------------------------------


def test_encoders_are_a_statefulset_behind_a_headless_service() -> None:
    manifests = rendered("default")
    encoders = find(manifests, "StatefulSet", f"{RELEASE}-encoder")
    service = find(manifests, "Service", encoders["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = encoders["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert encoders["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = encoders["spec"]["template"]["spec"]["containers"]
    assert env_value(container, "MESHENC_ADVERTISE") == (
        f"$(MESHENC_ID).{RELEASE}-encoder.{NAMESPACE}.svc.cluster.local:7400"
    )
    (pod_name,) = [e for e in container["env"] if e["name"] == "MESHENC_ID"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_names(container).index("MESHENC_ID") < env_names(container).index(
        "MESHENC_ADVERTISE"
    ), "Kubernetes expands $(MESHENC_ID) only when it is defined earlier"


def test_encoders_publish_to_the_origins_and_serve_their_output_where_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each origin URL reaches the real `meshenc encoder` as one --publish; the output port is
    the container's and the headless Service's, and nothing of it is there by default."""
    default = find(rendered("default"), "StatefulSet", f"{RELEASE}-encoder")
    (plain,) = default["spec"]["template"]["spec"]["containers"]
    assert not {"MESHENC_PUBLISH", "MESHENC_SERVE_OUTPUT"} & set(env_names(plain))
    assert "output" not in {p["name"] for p in plain["ports"]}

    manifests = rendered("origin-values.yaml")
    encoders = find(manifests, "StatefulSet", f"{RELEASE}-encoder")
    (container,) = encoders["spec"]["template"]["spec"]["containers"]
    command = subcommand("encoder")
    assert command is not None
    for variable in [v for v in os.environ if v.startswith("MESHENC_")]:
        monkeypatch.delenv(variable)
    for variable, value in container_environment(container).items():
        monkeypatch.setenv(variable, value)
    context = command.make_context("encoder", list(container["args"][1:]))
    assert context.params["publish"] == (
        "http://origin-a.example/live/ch1",
        "https://origin-b.example/live/ch1",
    )
    assert context.params["channels"] == {
        "news": "udp://239.0.0.1:5000",
        "sport": "udp://239.0.0.2:5000",
    }
    assert env_value(container, "MESHENC_SERVE_OUTPUT") == "0.0.0.0:8080"
    assert {"name": "output", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    service = find(manifests, "Service", encoders["spec"]["serviceName"])
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "output"]
    assert (port["port"], port["targetPort"]) == (8080, "output")


@pytest.mark.parametrize("values", VALUES_FILES)
def test_disruption_budgets_select_existing_pods(values: str) -> None:
    manifests = rendered(values)
    workloads = [m for m, _spec in pod_specs(manifests) if m["kind"] != "Pod"]
    budgets = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} >= {f"{RELEASE}-encoder", f"{RELEASE}-registry"}
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(
            selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in workloads
        ), budget["metadata"]["name"]


def test_addresses_name_every_registry_replica_and_the_manager_service() -> None:
    manifests = rendered("default", "--set", "registry.replicaCount=5")
    encoders = find(manifests, "StatefulSet", f"{RELEASE}-encoder")
    (container,) = encoders["spec"]["template"]["spec"]["containers"]
    suffix = f"{RELEASE}-registry.{NAMESPACE}.svc.cluster.local:7500"
    assert env_value(container, "MESHENC_REGISTRY").split(",") == [
        f"{RELEASE}-registry-{i}.{suffix}" for i in range(5)
    ]
    manager = find(manifests, "Service", f"{RELEASE}-manager")
    assert env_value(container, "MESHENC_MANAGER") == (
        f"{manager['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{manager['spec']['ports'][0]['port']}"
    )
    registry = find(manifests, "StatefulSet", f"{RELEASE}-registry")
    (registry_container,) = registry["spec"]["template"]["spec"]["containers"]
    assert env_value(registry_container, "MESHENC_SEEDS") == env_value(
        container, "MESHENC_REGISTRY"
    )


def test_manager_is_told_the_encoder_statefulset_and_its_autoscaling_policy() -> None:
    """With autoscaling the manager gets the bounds, marks and timers, and they are settings
    it accepts (parsed as the manager parses its environment); without, none of them."""
    manifests = rendered("autoscaling-values.yaml")
    manager = find(manifests, "Deployment", f"{RELEASE}-manager")
    (container,) = manager["spec"]["template"]["spec"]["containers"]
    statefulset = env_value(container, "MESHENC_ENCODER_STATEFULSET")
    assert find(manifests, "StatefulSet", statefulset)["spec"]["replicas"] == 4
    assert (
        env_value(container, "MESHENC_AUTOSCALE_MIN"),
        env_value(container, "MESHENC_AUTOSCALE_MAX"),
    ) == ("3", "12")
    assert env_value(container, "MESHENC_ACTUATOR") == "kubernetes"
    policy = ManagerSettings.model_validate(
        {
            "actuator": ActuatorKind.KUBERNETES,
            "encoder_statefulset": statefulset,
            **{
                name.removeprefix("MESHENC_").lower(): env_value(container, name)
                for name in env_names(container)
                if name.startswith("MESHENC_AUTOSCALE_")
            },
        }
    ).autoscale_config()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]
    assert policy is not None
    assert (policy.high_water, policy.low_water, policy.cooldown) == (
        values["highWater"],
        values["lowWater"],
        values["cooldownSeconds"],
    )
    default = find(rendered("default"), "Deployment", f"{RELEASE}-manager")
    assert not {n for n in env_names(default["spec"]["template"]["spec"]["containers"][0])} & {
        n for n in CHART_VARIABLES["manager"] if n.startswith("MESHENC_AUTOSCALE_")
    }


def test_autoscaling_marks_out_of_order_fail_the_render() -> None:
    result = template("--set", "autoscaling.enabled=true", "--set-json", "autoscaling.lowWater=0.8")
    assert result.returncode != 0
    assert "autoscaling.lowWater (0.8) must be below autoscaling.highWater (0.75)" in (
        result.stderr
    )


def test_work_values_reach_the_manager_and_encoders_as_meshenc_up_passes_them(
    tmp_path: Path,
) -> None:
    """work.channels, work.ladder and work.redundancy become the manager's work units (each
    rung of each channel, named by the channel, the rungs those ``meshenc up --ladder ...``
    gives its manager) and redundancy; every encoder gets the whole ladder instead of a size
    and bitrate, and every channel with its source; the manager reads encode times against
    one frame interval of encoder.fps, with or without work."""
    work = yaml.safe_load((CHART / "ci" / "autoscaling-values.yaml").read_text())["work"]
    manifests = rendered("autoscaling-values.yaml")
    (manager,) = find(manifests, "Deployment", f"{RELEASE}-manager")["spec"]["template"]["spec"][
        "containers"
    ]
    (encoder,) = find(manifests, "StatefulSet", f"{RELEASE}-encoder")["spec"]["template"]["spec"][
        "containers"
    ]
    ladder = ",".join(work["ladder"])
    up = DemoRun(
        DemoConfig(
            out=tmp_path,
            tls=False,
            manager=True,
            encoder_options=frozenset({"--manager", "--topology"}),
            ladder=ladder,
            size=top_rung(parse_ladder(ladder)).name,
            redundancy=work["redundancy"],
        )
    ).manager_args("http://127.0.0.1:2379")
    assert env_value(manager, "MESHENC_REDUNDANCY") == up[up.index("--redundancy") + 1]
    settings = ManagerSettings.model_validate(
        {
            "actuator": ActuatorKind.KUBERNETES,
            "encoder_statefulset": f"{RELEASE}-encoder",
            "work_units": parse_work_units(env_value(manager, "MESHENC_WORK_UNITS")),
            "redundancy": env_value(manager, "MESHENC_REDUNDANCY"),
            "frame_budget": env_value(manager, "MESHENC_FRAME_BUDGET"),
        }
    )
    (channel,) = work["channels"]
    assert [u.unit_id for u in settings.work_units] == [
        f"{channel['name']}/{rung.split('@')[0]}" for rung in work["ladder"]
    ]
    # meshenc up names its one channel 0; the rungs are the same units, in the same order.
    assert [u.split("/")[1] for u in up[up.index("--work-units") + 1].split(",")] == [
        u.rendition for u in settings.work_units
    ]
    assert settings.core_config().planner.placement.redundancy == work["redundancy"]
    assert parse_ladder(env_value(encoder, "MESHENC_LADDER")) == parse_ladder(ladder)
    assert env_value(encoder, "MESHENC_RUNG_THREADS") == str(work["rungThreads"])
    assert not {"MESHENC_SIZE", "MESHENC_BITRATE_KBPS"} & set(env_names(encoder))
    assert env_value(encoder, "MESHENC_CHANNELS") == f"{channel['name']}={channel['source']}"
    assert "MESHENC_SOURCE" not in env_names(encoder)
    for extra, fps in (((), "30"), (("--set", "encoder.fps=30000/1001"), "30000/1001")):
        (plain,) = find(rendered("default", *extra), "Deployment", f"{RELEASE}-manager")["spec"][
            "template"
        ]["spec"]["containers"]
        budget = float(env_value(plain, "MESHENC_FRAME_BUDGET"))
        assert budget == pytest.approx(1 / FrameRate.parse(fps).fps, abs=1e-6)
        assert "MESHENC_WORK_UNITS" not in env_names(plain)


def _notes(*extra: str) -> str:
    """The NOTES ``helm install`` would print, rendered offline (``--dry-run=client``)."""
    result = helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *extra
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize(
    ("threads", "resources", "advice"),
    [
        (2, [], "its pods request 1 CPU (encoder.resources.requests.cpu): request 2 for them"),
        (3, ["--set-string", "encoder.resources.requests.cpu=2"], "request 3 for them"),
        (2, ["--set-string", "encoder.resources.requests.cpu=2500m"], None),
        (2, ["--set", "encoder.resources=null"], "its pods request no CPU"),
    ],
)
def test_the_notes_say_when_rung_threads_want_more_cpu_than_an_encoder_requests(
    threads: int, resources: list[str], advice: str | None
) -> None:
    """The default request is one CPU; rung threads only run at once on as many cores."""
    ladder = ["--set", "work.ladder={640x360@800,320x180@300}"]
    notes = _notes(*ladder, "--set", f"work.rungThreads={threads}", *resources)
    assert f"up to {threads} rungs of a picture at once" in notes
    if advice is None:
        assert "its pods request 2500m CPU." in notes and "for them to run" not in notes
    else:
        assert advice in notes
    assert "rungs of a picture at once" not in _notes(*ladder, *resources)  # one thread


def test_bundled_etcd_is_what_the_services_dial() -> None:
    manifests = rendered("quickstart-tracing-values.yaml")
    etcd = find(manifests, "StatefulSet", f"{RELEASE}-etcd")
    assert etcd["spec"]["replicas"] == 3
    client = find(manifests, "Service", f"{RELEASE}-etcd-client")
    assert (
        client["spec"]["selector"].items() <= etcd["spec"]["template"]["metadata"]["labels"].items()
    )
    budget = find(manifests, "PodDisruptionBudget", f"{RELEASE}-etcd")
    assert budget["spec"]["minAvailable"] == 2
    for _m, container in meshenc_containers(manifests):
        if "MESHENC_ETCD_ENDPOINTS" in env_names(container):
            assert env_value(container, "MESHENC_ETCD_ENDPOINTS") == (
                f"http://{RELEASE}-etcd-client.{NAMESPACE}.svc.cluster.local:2379"
            )


def test_external_etcd_replaces_the_bundled_one() -> None:
    manifests = rendered("external-etcd-values.yaml")
    assert not [m for m in manifests if m["metadata"]["name"].startswith(f"{RELEASE}-etcd")]
    external = yaml.safe_load((CHART / "ci" / "external-etcd-values.yaml").read_text())
    endpoints = ",".join(external["etcd"]["external"]["endpoints"])
    users = [
        c for _m, c in meshenc_containers(manifests) if "MESHENC_ETCD_ENDPOINTS" in env_names(c)
    ]
    assert {c["args"][0] for c in users} == {"encoder", "manager"}
    for container in users:
        assert env_value(container, "MESHENC_ETCD_ENDPOINTS") == endpoints
        assert env_value(container, "MESHENC_ETCD_PREFIX") == "/meshenc/channel-1"
        assert "MESHENC_ETCD_CA" not in env_names(container)


def test_etcd_tls_files_come_from_the_named_secret() -> None:
    manifests = rendered("tls-values.yaml")
    for manifest, spec in pod_specs(manifests):
        for container in spec["containers"]:
            if "MESHENC_ETCD_ENDPOINTS" not in env_names(container):
                continue
            assert env_value(container, "MESHENC_ETCD_ENDPOINTS").startswith("https://")
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            for variable, key in (
                ("MESHENC_ETCD_CA", "ca.crt"),
                ("MESHENC_ETCD_CERT", "tls.crt"),
                ("MESHENC_ETCD_KEY", "tls.key"),
            ):
                path = Path(env_value(container, variable))
                assert path.name == key
                mount = mounts[str(path.parent)]
                assert mount["readOnly"] is True
                secret = volumes[mount["name"]]["secret"]
                assert secret["secretName"] == "meshenc-etcd-client-tls", manifest["metadata"]
                assert "items" not in secret  # every key of the Secret, under its own name


def test_tracing_goes_to_the_configured_collector_or_the_bundled_jaeger() -> None:
    def endpoints(values: str) -> set[str]:
        return {
            env_value(c, "OTEL_EXPORTER_OTLP_ENDPOINT")
            for _m, c in meshenc_containers(rendered(values))
            if c["args"][0] != "health-check"
        }

    jaeger = rendered("quickstart-tracing-values.yaml")
    service = find(jaeger, "Service", f"{RELEASE}-jaeger")
    otlp = next(p for p in service["spec"]["ports"] if p["name"] == "otlp-grpc")["port"]
    assert endpoints("quickstart-tracing-values.yaml") == {
        f"http://{RELEASE}-jaeger.{NAMESPACE}.svc.cluster.local:{otlp}"
    }
    assert endpoints("tls-values.yaml") == {
        "http://otel-collector.observability.svc.cluster.local:4317"
    }
    for _m, container in meshenc_containers(rendered("default")):
        if container["args"][0] != "health-check":
            assert env_value(container, "OTEL_TRACES_EXPORTER") == "none"
            assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_names(container)


# --- values the schema or validateValues must reject ----------------------------------------

REJECTED = {
    "one-channel-name-twice": (
        "work.channels[0].name=a,work.channels[0].source=udp://h:1,"
        "work.channels[1].name=a,work.channels[1].source=udp://h:2",
        "work.channels: the name a is given twice",
    ),
    "two-rungs-of-one-size": (
        "work.ladder={640x360@800,640x360@400}",
        "work.ladder: the ladder already has a 640x360 rung (640x360@400)",
    ),
    "odd-rung-width": (
        "work.ladder={641x360@800}",
        "work.ladder: rung 641x360@800 needs an even width in 16..3840",
    ),
    "more-copies-than-encoders": (
        "work.ladder={640x360@800},work.redundancy=4",
        "work.redundancy (4) must not exceed encoder.replicaCount (3)",
    ),
    "zero-encoders": ("encoder.replicaCount=0", "/encoder/replicaCount"),
    "encoders-as-words": ("encoder.replicaCount=three", "/encoder/replicaCount"),
    "misspelt-key": ("encoder.replicas=3", "additional properties 'replicas'"),
    "port-out-of-range": ("manager.port=70000", "/manager/port"),
    "even-etcd-cluster": ("etcd.replicaCount=2", "/etcd/replicaCount"),
    "root-user": ("podSecurityContext.runAsNonRoot=false", "/podSecurityContext"),
    "writable-root": (
        "containerSecurityContext.readOnlyRootFilesystem=false",
        "/containerSecurityContext/readOnlyRootFilesystem",
    ),
    "bad-pull-policy": ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    "endpoint-without-scheme": (
        "etcd.bundled=false,etcd.external.endpoints={etcd:2379}",
        "/etcd/external/endpoints/0",
    ),
    "external-etcd-without-endpoints": (
        "etcd.bundled=false",
        "etcd.external.endpoints: give at least one client URL when etcd.bundled is false",
    ),
    "both-etcds": (
        "etcd.external.endpoints={http://etcd:2379}",
        "set etcd.bundled=false to use external endpoints",
    ),
    "tls-without-secret": (
        "etcd.bundled=false,etcd.external.endpoints={https://etcd:2379},"
        "etcd.external.tls.enabled=true",
        "etcd.external.tls.existingSecret: name the Secret",
    ),
    "tls-over-http": (
        "etcd.bundled=false,etcd.external.endpoints={http://etcd:2379},"
        "etcd.external.tls.enabled=true,etcd.external.tls.existingSecret=etcd-tls",
        "http://etcd:2379 must be https://",
    ),
    "autoscaling-min-above-max": (
        "autoscaling.enabled=true,autoscaling.minReplicas=8,autoscaling.maxReplicas=4,"
        "encoder.replicaCount=4",
        "autoscaling.minReplicas (8) must not exceed autoscaling.maxReplicas (4)",
    ),
    "drain-timeout-within-grace": (
        "autoscaling.enabled=true,autoscaling.drainTimeoutSeconds=5",
        "autoscaling.drainTimeoutSeconds (5) must be longer than autoscaling.drainGraceSeconds",
    ),
    "replicas-outside-autoscaling": (
        "autoscaling.enabled=true,encoder.replicaCount=20",
        "encoder.replicaCount (20) must lie within autoscaling.minReplicas..maxReplicas (3..12)",
    ),
    "tracing-nowhere": ("tracing.enabled=true", "set tracing.otlpEndpoint or jaeger.enabled=true"),
    "metrics-on-the-grpc-port": (
        "metrics.port=7400",
        "metrics.port (7400) must differ from encoder.port",
    ),
    "mtls-without-secret": ("tls.enabled=true", "tls.existingSecret: name the Secret"),
    "mtls-from-secret-and-cert-manager": (
        "tls.enabled=true,tls.existingSecret=meshenc-tls,tls.certManager.enabled=true,"
        "tls.certManager.issuerRef.name=meshenc-ca",
        "tls.existingSecret (meshenc-tls) and tls.certManager.enabled: the certificates come "
        "from the Secret or from cert-manager, not both",
    ),
    "cert-manager-without-issuer": (
        "tls.enabled=true,tls.certManager.enabled=true",
        "tls.certManager.issuerRef.name: name the Issuer or ClusterIssuer",
    ),
    "cert-manager-without-tls": (
        "tls.certManager.enabled=true,tls.certManager.issuerRef.name=meshenc-ca",
        "tls.certManager.enabled: set tls.enabled=true too",
    ),
    "cert-manager-without-group": (
        "tls.enabled=true,tls.certManager.enabled=true,tls.certManager.issuerRef.name=ca,"
        "podSecurityContext.fsGroup=null,podSecurityContext.runAsGroup=null",
        "tls.certManager.enabled: set podSecurityContext.fsGroup or runAsGroup",
    ),
    "ed25519-keys": ("tls.certManager.keyAlgorithm=Ed25519", "/tls/certManager/keyAlgorithm"),
    "ecdsa-key-of-rsa-size": (
        "tls.certManager.keySize=2048",
        "tls.certManager.keySize (2048) must be 256, 384 or 521 for ECDSA keys",
    ),
    "short-rsa-key": (
        "tls.certManager.keyAlgorithm=RSA,tls.certManager.keySize=1024",
        "tls.certManager.keySize (1024) must be 2048 to 8192 for RSA keys",
    ),
    "renewal-at-or-before-issue": (
        "tls.certManager.renewBefore=1440m",
        "tls.certManager.renewBefore (1440m) must be shorter than tls.certManager.duration (24h)",
    ),
    "duration-in-days": ("tls.certManager.duration=30d", "/tls/certManager/duration"),
    "issuer-kind-in-lower-case": (
        "tls.certManager.issuerRef.kind=issuer",
        "/tls/certManager/issuerRef/kind",
    ),
    "no-streams-per-peer": ("encoder.maxStreamsPerPeer=0", "'/encoder/maxStreamsPerPeer': minimum"),
    "channels-beside-source": (
        "encoder.source=udp://239.0.0.1:5000,"
        "work.channels[0].name=news,work.channels[0].source=udp://239.0.0.2:5000",
        "encoder.source: leave it empty when work.channels names the channel's source",
    ),
    "channel-named-dot-dot": (
        "work.channels[0].name=..,work.channels[0].source=udp://239.0.0.2:5000",
        "/work/channels/0/name",
    ),
    "health-on-the-metrics-port": (
        "health.port=9464",
        "health.port (9464) must differ from encoder.port",
    ),
}
"""``--set`` flags helm must refuse to render, and the message it must say why with."""


@pytest.mark.parametrize(("settings", "message"), REJECTED.values(), ids=REJECTED.keys())
def test_bad_values_fail_the_render_with_a_clear_message(settings: str, message: str) -> None:
    result = template("--set", settings)
    assert result.returncode != 0, f"rendered although {settings} is invalid"
    assert message in result.stderr


def test_a_size_without_height_is_rejected() -> None:
    result = template("--set-string", "encoder.size=640")
    assert result.returncode != 0
    assert "/encoder/size" in result.stderr and "does not match pattern" in result.stderr


# --- the helm test hook ---------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_test_hook_checks_every_encoder_registry_replica_and_the_manager(values: str) -> None:
    manifests = rendered(values)
    hook = find(manifests, "Pod", f"{RELEASE}-test-health")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert hook["spec"]["restartPolicy"] == "Never"
    checked = {tuple(c["args"][1:3]) for c in hook["spec"]["containers"]}
    expected = set()
    for component in ("encoder", "registry"):
        statefulset = find(manifests, "StatefulSet", f"{RELEASE}-{component}")
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        port = container["readinessProbe"]["grpc"]["port"]  # the plaintext health port
        service = statefulset["spec"]["serviceName"]
        expected |= {
            (
                f"{RELEASE}-{component}-{i}.{service}.{NAMESPACE}.svc.cluster.local:{port}",
                SERVICE_OF[component],
            )
            for i in range(statefulset["spec"]["replicas"])
        }
    manager = find(manifests, "Service", f"{RELEASE}-manager")
    (health,) = [p["port"] for p in manager["spec"]["ports"] if p["name"] == "health"]
    expected.add(
        (f"{RELEASE}-manager.{NAMESPACE}.svc.cluster.local:{health}", SERVICE_OF["manager"])
    )
    assert checked == expected


# --- the contract with the command line -----------------------------------------------------


def container_environment(container: Manifest) -> dict[str, str]:
    """The container's variables as the kubelet would set them: downward-API fields filled in
    with sample values, ``$(VAR)`` references to earlier variables expanded."""
    sample_fields = {"metadata.name": f"{RELEASE}-sample-0", "metadata.namespace": NAMESPACE}
    environment: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            environment[item["name"]] = sample_fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            environment[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: environment.get(m[1], m[0]), str(item["value"])
            )
    return environment


def subcommand(name: str) -> click.Command | None:
    return cli.get_command(click.Context(cli), name)


def variables_read(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def test_the_image_entry_point_is_meshenc() -> None:
    """The chart passes only the subcommand and its arguments; the image supplies ``meshenc``."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["meshenc"\]$', dockerfile, re.MULTILINE)
    for values in VALUES_FILES:
        for _m, container in meshenc_containers(rendered(values)):
            assert "command" not in container


@pytest.mark.parametrize("values", VALUES_FILES)
def test_chart_sets_only_the_variables_of_the_contract(values: str) -> None:
    for manifest, container in meshenc_containers(rendered(values)):
        command = container["args"][0]
        assert command in CHART_VARIABLES, f"{manifest['metadata']['name']} runs meshenc {command}"
        names = env_names(container)
        assert len(names) == len(set(names)), f"a variable is set twice in {command}"
        meshenc_names = {n for n in names if n.startswith("MESHENC_")}
        assert meshenc_names <= CHART_VARIABLES[command], meshenc_names - CHART_VARIABLES[command]


def test_contract_lists_no_variable_the_chart_never_sets() -> None:
    seen: dict[str, set[str]] = {command: set() for command in CHART_VARIABLES}
    for values in VALUES_FILES:
        for _m, container in meshenc_containers(rendered(values)):
            seen[container["args"][0]].update(
                n for n in env_names(container) if n.startswith("MESHENC_")
            )
    assert seen == {command: set(names) for command, names in CHART_VARIABLES.items()}


def chart_invocations() -> list[tuple[str, str, list[str], dict[str, str]]]:
    """(values file, subcommand, arguments, environment) of every meshenc container."""
    found = []
    for values in VALUES_FILES:
        for manifest, container in meshenc_containers(rendered(values)):
            found.append(
                (
                    f"{values}:{manifest['metadata']['name']}/{container['name']}",
                    container["args"][0],
                    container["args"][1:],
                    container_environment(container),
                )
            )
    return found


@pytest.mark.parametrize("name", sorted(CHART_VARIABLES))
def test_each_subcommand_the_chart_runs_parses_its_arguments_and_variables(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real click command takes each container's arguments and environment as given."""
    command = subcommand(name)
    assert command is not None, f"the chart runs `meshenc {name}`, which does not exist"
    invocations = [i for i in chart_invocations() if i[1] == name]
    assert invocations
    for where, _name, args, environment in invocations:
        for variable in [v for v in os.environ if v.startswith("MESHENC_")]:
            monkeypatch.delenv(variable)
        for variable, value in environment.items():
            monkeypatch.setenv(variable, value)
        try:
            command.make_context(name, list(args))
        except click.ClickException as exc:
            pytest.fail(f"{where}: meshenc {name} rejects what the chart gives it: {exc}")


@pytest.mark.parametrize("name", sorted(CHART_VARIABLES))
def test_each_subcommand_reads_every_variable_the_chart_sets(name: str) -> None:
    command = subcommand(name)
    assert command is not None, f"the chart runs `meshenc {name}`, which does not exist"
    unread = CHART_VARIABLES[name] - variables_read(command)
    assert not unread, f"the chart sets {', '.join(sorted(unread))}, which `meshenc {name}` ignores"


def test_the_contract_check_catches_a_variable_no_command_reads() -> None:
    """The check above can fail: a command that reads only some variables leaves the rest."""
    partial = click.Command("encoder", params=[click.Option(["--listen"], envvar="MESHENC_LISTEN")])
    assert variables_read(partial) == {"MESHENC_LISTEN"}
    assert CHART_VARIABLES["encoder"] - variables_read(partial) >= {"MESHENC_REGISTRY"}


def test_dockerfile_builds_the_project_as_the_brief_says() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.MULTILINE)
    assert "scripts/gen_proto.sh" in dockerfile and "grpcio-tools" in dockerfile
    assert dockerfile.count("--constraint constraints.txt") == 2
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"*", "meshenc/v1/"} <= set(ignored)
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE)
    for source in " ".join(copied).split():
        assert f"!{source}" in ignored, f"{source} is copied but excluded from the build context"
        assert (ROOT / source).exists(), source


def test_templates_follow_the_chart_house_style() -> None:
    """One resource per template file; named templates only in _helpers.tpl, each prefixed with
    the chart name and introduced by a one-line comment."""
    for values in VALUES_FILES:
        sources = re.findall(r"^# Source: (\S+)$", rendered_text(values), re.MULTILINE)
        assert len(sources) == len(set(sources)), f"a template renders two resources ({values})"
    helpers = (CHART / "templates" / "_helpers.tpl").read_text().splitlines()
    defines = [(i, line) for i, line in enumerate(helpers) if "define " in line]
    assert defines
    for index, line in defines:
        (name,) = re.findall(r'define "([^"]+)"', line)
        assert name.startswith("meshenc."), name
        assert re.fullmatch(rf"{{{{/\* {re.escape(name)}: .+ \*/}}}}", helpers[index - 1]), name
    for template_file in (CHART / "templates").rglob("*"):
        if template_file.is_file() and template_file.name != "_helpers.tpl":
            assert "define " not in template_file.read_text(), template_file.name
