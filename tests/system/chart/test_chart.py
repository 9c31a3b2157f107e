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

import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml  # type: ignore[import-untyped]

from meshenc.cli.main import cli
from services.manager.settings import ActuatorKind, ManagerSettings

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
            "MESHENC_SEGMENT",
            "MESHENC_FORMAT",
            # Set in ci/origin-values.yaml.
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
            "MESHENC_AUTOSCALE_FRAME_BUDGET",
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
    encoder = api_calls(ROOT / "services" / "encoder" / "topology_source.py")
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
def test_services_run_mutual_tls_with_the_secret_or_plaintext_when_asked(values: str) -> None:
    """tls.enabled: each service's certificate from the mounted Secret (an encoder's named by
    its pod, which is its id); otherwise --insecure, explicitly."""
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
        if tls.get("enabled"):
            identity = environment["MESHENC_ID"] if command == "encoder" else command
            assert environment["MESHENC_TLS_CA"] == "/etc/meshenc/tls/ca.crt"
            assert environment["MESHENC_TLS_CERT"] == f"/etc/meshenc/tls/{identity}.crt"
            assert environment["MESHENC_TLS_KEY"] == f"/etc/meshenc/tls/{identity}.key"
            assert "MESHENC_INSECURE" not in environment
            assert volumes["tls"]["secret"]["secretName"] == tls["existingSecret"]
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["tls"]["mountPath"] == "/etc/meshenc/tls" and mounts["tls"]["readOnly"]
        else:
            assert environment["MESHENC_INSECURE"] == "true"
            assert not any(name.startswith("MESHENC_TLS_") for name in environment)
            assert "tls" not in volumes
        checked.add(command)
    assert checked == {"encoder", "registry", "manager"}


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
    assert (policy.high_water, policy.low_water, policy.cooldown, policy.frame_budget) == (
        values["highWater"],
        values["lowWater"],
        values["cooldownSeconds"],
        values["frameBudgetSeconds"],
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
    "no-streams-per-peer": ("encoder.maxStreamsPerPeer=0", "'/encoder/maxStreamsPerPeer': minimum"),
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
