"""The image, built and run: the chart's containers started for real with podman, no cluster.

`make image` builds ``meshenc:<appVersion>`` (make test does, where podman is present or can be
installed); this test starts the services from it exactly as the chart runs them. The chart is
rendered with the real ``helm template`` (as tests/system/chart does) and every container's image,
arguments, environment, user, capabilities and read-only root file system are taken from the
rendered manifests, never retyped. ``podman kube play`` runs what it supports of them on a podman
network of their own, internal (no route off this machine, no published port):

- the manager's **Deployment** and the ``helm test`` **Pod**, as rendered;
- each **StatefulSet** (etcd, the registry, the encoders) as the Pods its controller would make:
  ``<name>-<ordinal>`` with the template's spec, hostname and subdomain, and each volume claim
  template as a claim ``<template>-<pod>``, which podman binds to a named volume that the test
  creates and hands to the pods' group, as the cluster's fsGroup would.

What a cluster does and podman does not is done ahead, and written down here as data: the
kubelet's variable expansion (downward-API fields and ``$(VAR)`` references, resolved into plain
values), the cluster's DNS (``hostAliases`` naming each pod and Service at its fixed address
on the network), and the image of the bundled etcd (the etcd project's image is not reachable
here: :data:`ETCD_STAND_IN` puts the machine's own ``etcd`` at the same path in the meshenc
image). With no API server, the manager runs in embedded mode and the encoders take their
neighbours from its etcd keys (:data:`NO_API_SERVER`). Probes, resources and affinity are the
cluster's business and are dropped, and so are container ports, which podman would publish on
the host. The chart is shaped by its own values only (:data:`CHART_SETTINGS`).

A live source, which the chart leaves to the user, is added as a pod secured like the chart's:
``meshenc source`` sending the test pattern to each encoder's UDP port over a path of its own.

Checks, in order: the containers run as the chart says (its user, a root file system the
service cannot write, no capability even in the bounding set, no new privileges, nothing
published), seen from inside each container; every service answers gRPC health through
``meshenc health-check``, and the chart's ``helm test`` pod, played as rendered, passes; and the
three encoders lock: past their lock-in, the segments they write to their volumes are
byte-identical (SHA-256); and they run the mesh's hot path compiled where this tree's
build/compiled holds it (each encoder's start-up line says which). Everything the test made is
removed at the end, also on failure.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "meshenc"
HELM = ROOT / ".tools" / "bin" / "helm"
PODMAN = shutil.which("podman")
NAMESPACE = "media"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
IMAGE = f"meshenc:{APP_VERSION}"

SOURCE_PORT = 5000
"""UDP port each encoder receives the live stream on."""

CHART_SETTINGS = [
    # One registry replica is enough for a mesh of three encoders.
    "registry.replicaCount=1",
    # Segments on a claim per encoder: volumes the test can read after the run.
    "encoder.output.persistence.enabled=true",
    # Every encoder ingests the live stream arriving on its own UDP port.
    f"encoder.source=udp://0.0.0.0:{SOURCE_PORT}",
    # Three encoders and the source encoding live at the default 640x360 load two shared cores
    # so far that arrival jitter, not the mesh, decides the timecodes; a quarter of the pixels
    # leaves the machine the headroom a cluster node would have.
    "encoder.size=320x180",
]
"""``--set`` flags the chart is rendered with: its own way of shaping the mesh."""

NO_API_SERVER = {
    # Decisions go to etcd keys instead of per-encoder ConfigMaps ...
    "manager": {"MESHENC_ACTUATOR": "embedded"},
    # ... and the encoders take their neighbours from those keys.
    "encoder": {"MESHENC_TOPOLOGY": "etcd"},
}
"""The only variables changed from the rendered ones, per ``meshenc`` subcommand: no Kubernetes
API here."""

ETCD_STAND_IN = f"localhost/meshenc-test-etcd:{uuid.uuid4().hex[:8]}"
"""Image run in place of the chart's etcd image: the meshenc image with this machine's etcd
at the path the chart's command names (tagged for this test run alone, and removed after)."""

LOCKED_AFTER = 5
"""Segments written by all three encoders that are not judged: the lock-in (docs/sync.md: two
segments per encoder, measured here at three), with margin for the encoders' staggered starts."""
IDENTICAL_SEGMENTS = 6
"""Segments past the lock-in, written by all three encoders, that must be byte-identical (and
none of them may differ)."""
DEADLINE = 150.0
"""Seconds the whole mesh gets to become healthy and write the identical segments."""

Manifest = dict[str, Any]

SOURCE_PATHS = ["delay_ms=20&jitter_ms=2", "delay_ms=65&jitter_ms=2", "delay_ms=110&jitter_ms=2"]
"""Each encoder's path from the source: its own delay and jitter (``meshenc source --to``)."""


# --- podman ----------------------------------------------------------------------------------


class Podman:
    """The podman command with a configuration of its own: runc (crun cannot start containers
    on hosts with mixed cgroup hierarchies) and the ulimits this shell may grant (podman's
    defaults can exceed them, and then no container starts)."""

    def __init__(self, workdir: Path) -> None:
        hard_nofile = _hard_limit("-Hn", 1_048_576)
        hard_nproc = min(_hard_limit("-Hu", 32_768), 32_768)
        lines = [
            "[containers]",
            f'default_ulimits = ["nofile={hard_nofile}:{hard_nofile}",'
            f' "nproc={hard_nproc}:{hard_nproc}"]',
        ]
        if shutil.which("runc"):
            lines += ["[engine]", 'runtime = "runc"']
        conf = workdir / "containers.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        assert PODMAN is not None
        result = subprocess.run(
            [PODMAN, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def returncode(self, *args: str, timeout: float = 60) -> int:
        assert PODMAN is not None
        return subprocess.run(
            [PODMAN, *args], env=self.env, capture_output=True, timeout=timeout, check=False
        ).returncode


def _hard_limit(flag: str, unlimited: int) -> int:
    value = subprocess.run(
        ["bash", "-c", f"ulimit {flag}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return unlimited if value == "unlimited" else int(value)


# --- the chart, rendered and made into what podman plays --------------------------------------


def render(release: str, *settings: str) -> list[Manifest]:
    assert HELM.exists(), "helm missing: run `make tools` (make test does)"
    flags = [arg for setting in settings for arg in ("--set", setting)]
    result = subprocess.run(
        [str(HELM), "template", release, str(CHART), "--namespace", NAMESPACE, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(manifests: list[Manifest], kind: str, component: str) -> Manifest:
    (found,) = [
        m
        for m in manifests
        if m["kind"] == kind
        and m["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return found


def kubelet_environment(container: Manifest, pod: str, overrides: dict[str, str]) -> None:
    """Resolve the container's variables as the kubelet would, in place: downward-API fields
    filled in, ``$(VAR)`` references to earlier variables expanded; then apply ``overrides``."""
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    resolved: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            resolved[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            resolved[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: resolved.get(m[1], m[0]), str(item["value"])
            )
    for name, value in overrides.items():
        assert name in resolved, f"{container['name']}: the chart no longer sets {name}"
        resolved[name] = value
    container["env"] = [{"name": name, "value": value} for name, value in resolved.items()]


def for_podman(spec: Manifest, pod: str, hosts: list[Manifest]) -> Manifest:
    """A pod spec as podman runs it: variables resolved, the cluster's DNS as host aliases,
    and what only a cluster acts on (probes, resources, scheduling) left out."""
    spec = copy.deepcopy(spec)
    spec["hostAliases"] = hosts
    for key in ("affinity", "serviceAccountName", "automountServiceAccountToken"):
        spec.pop(key, None)
    for container in spec["containers"]:
        subcommand = (container.get("args") or [""])[0]
        kubelet_environment(container, pod, NO_API_SERVER.get(subcommand, {}))
        # podman would publish each containerPort on the host; a pod's ports stay in the pod.
        for key in ("startupProbe", "livenessProbe", "readinessProbe", "resources", "ports"):
            container.pop(key, None)
        if container["name"] == "etcd":
            container["image"] = ETCD_STAND_IN
    return spec


def statefulset_pods(statefulset: Manifest) -> Iterator[tuple[Manifest, list[str]]]:
    """The Pods a StatefulSet controller makes, each with the claims it binds."""
    name = statefulset["metadata"]["name"]
    template = statefulset["spec"]["template"]
    for ordinal in range(statefulset["spec"]["replicas"]):
        pod = f"{name}-{ordinal}"
        spec = copy.deepcopy(template["spec"])
        spec["hostname"] = pod
        spec["subdomain"] = statefulset["spec"]["serviceName"]
        claims = []
        for claim_template in statefulset["spec"].get("volumeClaimTemplates", []):
            volume = claim_template["metadata"]["name"]
            claims.append(f"{volume}-{pod}")
            spec.setdefault("volumes", []).append(
                {"name": volume, "persistentVolumeClaim": {"claimName": claims[-1]}}
            )
        labels = {**template["metadata"]["labels"], "statefulset.kubernetes.io/pod-name": pod}
        metadata = {"name": pod, "namespace": NAMESPACE, "labels": labels}
        yield {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}, claims


# --- the mesh on podman ----------------------------------------------------------------------


@dataclass
class Mesh:
    """What the test started, so that all of it is removed again."""

    podman: Podman
    release: str
    workdir: Path
    network: str = ""
    volumes: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    hosts: list[Manifest] = field(default_factory=list)
    free: Iterator[str] = field(default_factory=lambda: iter(()))
    played: list[Path] = field(default_factory=list)

    def play(self, manifest: Manifest, address: str) -> None:
        path = self.workdir / f"{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        self.played.append(path)
        self.podman.run(
            "kube", "play", "--quiet", "--network", self.network, "--ip", address, str(path)
        )

    def containers(self) -> list[dict[str, Any]]:
        label = f"label=app.kubernetes.io/instance={self.release}"
        listed = self.podman.run("ps", "--all", "--filter", label, "--format", "json")
        return [c for c in json.loads(listed or "[]") if not c.get("IsInfra")]

    def logs(self, pods: list[str], lines: int | None = 15) -> str:
        """The last lines (all: None) each pod's main container logged, to say why a check
        failed or what a service said."""
        assert PODMAN is not None
        found = []
        for pod in pods:
            container = f"{pod}-{pod.rsplit('-', 2)[-2]}"
            tail = [] if lines is None else ["--tail", str(lines)]
            result = subprocess.run(
                [PODMAN, "logs", *tail, container],
                env=self.podman.env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            found.append(f"--- {container}:\n{result.stdout}{result.stderr}")
        return "\n".join(found)

    def close(self) -> None:
        label = f"label=app.kubernetes.io/instance={self.release}"
        pods = self.podman.run("pod", "ls", "--quiet", "--filter", label, check=False).split()
        if pods:
            self.podman.run("pod", "rm", "--force", "--time", "2", *pods, check=False)
        for volume in self.volumes:
            self.podman.run("volume", "rm", "--force", volume, check=False)
        if self.network:
            self.podman.run("network", "rm", "--force", self.network, check=False)


def build_etcd_stand_in(podman: Podman, workdir: Path, command: str) -> None:
    etcd = shutil.which("etcd")
    assert etcd, "etcd missing: `make test` installs it (scripts/ensure-system-deps.sh)"
    context = workdir / "etcd-image"
    context.mkdir()
    shutil.copy2(etcd, context / "etcd")
    (context / "Containerfile").write_text(
        f"FROM {IMAGE}\nCOPY etcd {command}\nENTRYPOINT []\nCMD [{json.dumps(command)}]\n"
    )
    podman.run("build", "--quiet", "--tag", ETCD_STAND_IN, str(context), timeout=120)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    if PODMAN is None:
        pytest.skip("no podman here: `make image` installs it where apt-get can")
    podman = Podman(tmp_path)
    if podman.returncode("image", "exists", IMAGE) != 0:
        pytest.fail(f"image {IMAGE} missing: run `make image`")
    release = f"meshenc-t{uuid.uuid4().hex[:6]}"
    started = Mesh(podman, release, tmp_path)
    try:
        yield started
    finally:
        started.close()
        podman.run("rmi", "--force", ETCD_STAND_IN, check=False)


def start_mesh(mesh: Mesh) -> list[Manifest]:
    """Render the chart, then start etcd, the registry, the manager and three encoders."""
    manifests = render(mesh.release, *CHART_SETTINGS)
    podman = mesh.podman
    mesh.network = mesh.release
    podman.run("network", "create", "--internal", "--label", "meshenc-test", mesh.network)
    (network,) = json.loads(podman.run("network", "inspect", mesh.network))
    subnet = ipaddress.ip_network(network["subnets"][0]["subnet"])
    mesh.free = free = iter([str(host) for host in list(subnet.hosts())[9:]])

    pods: list[tuple[Manifest, list[str]]] = []
    for component in ("etcd", "registry", "encoder"):
        pods += statefulset_pods(find(manifests, "StatefulSet", component))
    manager = find(manifests, "Deployment", "manager")
    domain = f"{NAMESPACE}.svc.cluster.local"
    for pod, _claims in pods:
        mesh.addresses[pod["metadata"]["name"]] = next(free)
    mesh.addresses[manager["metadata"]["name"]] = next(free)
    hosts = mesh.hosts
    for pod, _claims in pods:
        name, service = pod["metadata"]["name"], pod["spec"]["subdomain"]
        hosts.append({"ip": mesh.addresses[name], "hostnames": [f"{name}.{service}.{domain}"]})
    for service in (m for m in manifests if m["kind"] == "Service"):
        selector = service["spec"]["selector"]["app.kubernetes.io/component"]
        if service["spec"].get("clusterIP") == "None":
            continue
        # A Service with a virtual address: its name resolves to its (first) pod.
        (target,) = [
            name
            for name in mesh.addresses
            if name.startswith(f"{mesh.release}-{selector}")
            and (selector != "etcd" or name.endswith("-0"))
        ]
        hosts.append(
            {
                "ip": mesh.addresses[target],
                "hostnames": [f"{service['metadata']['name']}.{domain}"],
            }
        )

    etcd = find(manifests, "StatefulSet", "etcd")
    (etcd_container,) = etcd["spec"]["template"]["spec"]["containers"]
    build_etcd_stand_in(podman, mesh.workdir, etcd_container["command"][0])
    for pod, claims in pods:
        for claim in claims:
            podman.run("volume", "create", "--label", "meshenc-test", claim)
            mesh.volumes.append(claim)
            # What the pods' fsGroup does in a cluster: the volume belongs to their group.
            group = pod["spec"]["securityContext"]["fsGroup"]
            user = pod["spec"]["securityContext"]["runAsUser"]
            os.chown(volume_path(podman, claim), user, group)
    for pod, _claims in pods:
        name = pod["metadata"]["name"]
        pod["spec"] = for_podman(pod["spec"], name, hosts)
        mesh.play(pod, mesh.addresses[name])
    manager = copy.deepcopy(manager)
    name = manager["metadata"]["name"]
    manager["spec"]["template"]["spec"] = for_podman(
        manager["spec"]["template"]["spec"], name, hosts
    )
    mesh.play(manager, mesh.addresses[name])
    source = source_pod(mesh, find(manifests, "StatefulSet", "encoder"))
    mesh.play(source, next(mesh.free))
    return manifests


def source_pod(mesh: Mesh, encoders: Manifest) -> Manifest:
    """The live source, which the chart leaves to the user: ``meshenc source`` sending the test
    pattern to every encoder's UDP port over a path of its own, in a pod secured as the
    chart's are, at the encoders' picture size and rate."""
    template = encoders["spec"]["template"]
    (encoder,) = template["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in encoder["env"]}
    service = encoders["spec"]["serviceName"]
    args = ["source", "--input", "testpattern"]
    args += ["--size", env["MESHENC_SIZE"], "--fps", env["MESHENC_FPS"]]
    assert encoders["spec"]["replicas"] == len(SOURCE_PATHS)
    for ordinal, path in enumerate(SOURCE_PATHS):
        host = f"{encoders['metadata']['name']}-{ordinal}.{service}.{NAMESPACE}.svc.cluster.local"
        args += ["--to", f"udp://{host}:{SOURCE_PORT}?{path}&seed={ordinal + 1}"]
    container = {
        "name": "source",
        "image": encoder["image"],
        "args": args,
        "securityContext": encoder["securityContext"],
        "volumeMounts": [m for m in encoder["volumeMounts"] if m["name"] == "tmp"],
    }
    spec = {
        "securityContext": template["spec"]["securityContext"],
        "containers": [container],
        "volumes": [v for v in template["spec"]["volumes"] if v["name"] == "tmp"],
        "hostAliases": mesh.hosts,
    }
    labels = {**template["metadata"]["labels"], "app.kubernetes.io/component": "source"}
    name = f"{mesh.release}-source"
    metadata = {"name": name, "namespace": NAMESPACE, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def volume_path(podman: Podman, volume: str) -> Path:
    return Path(podman.run("volume", "inspect", "--format", "{{.Mountpoint}}", volume).strip())


# --- the test --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_charts_containers_run_from_the_image_and_the_encoders_lock(mesh: Mesh) -> None:
    started = time.monotonic()
    manifests = start_mesh(mesh)
    podman = mesh.podman

    # 1. Every container runs as the chart says, and publishes nothing.
    running = mesh.containers()
    names = sorted(c["Names"][0] for c in running)
    assert len(running) == 7, names  # etcd, registry, manager, three encoders, the source
    pod_security = find(manifests, "StatefulSet", "encoder")["spec"]["template"]["spec"][
        "securityContext"
    ]
    user = f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"
    for listed in running:
        (info,) = json.loads(podman.run("container", "inspect", listed["Id"]))
        where = listed["Names"][0]
        assert info["State"]["Running"], f"{where} is not running: {info['State']}"
        assert info["Config"]["User"] == user, where
        assert info["HostConfig"]["ReadonlyRootfs"] is True, where
        assert not info["HostConfig"]["PortBindings"], where
        # As the service process itself sees it: no capability at all, even to regain, no new
        # privileges, and a root file system it cannot write.
        status = dict(
            line.split(":\t", 1)
            for line in podman.run("exec", where, "cat", "/proc/1/status").splitlines()
            if ":\t" in line
        )
        assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0, (where, status)
        assert status["NoNewPrivs"].strip() == "1", where
        assert podman.returncode("exec", where, "touch", "/written") != 0, where

    # 2. Every service answers gRPC health, asked as the chart's `helm test` pod asks it.
    hook = find(manifests, "Pod", "test")
    checks = [c["args"] for c in hook["spec"]["containers"]]
    encoder_0 = next(c["Names"][0] for c in running if c["Names"][0].endswith("encoder-0-encoder"))
    for args in checks:
        while podman.returncode("exec", encoder_0, "meshenc", *args[:3], "--timeout", "3") != 0:
            assert time.monotonic() - started < DEADLINE, f"no healthy answer: {args}"
            time.sleep(1)
    hook_pod = copy.deepcopy(hook)
    hook_name = hook["metadata"]["name"]
    hook_pod["spec"] = for_podman(hook["spec"], hook_name, mesh.hosts)
    mesh.play(hook_pod, next(mesh.free))
    hook_containers = [f"{hook_name}-{c['name']}" for c in hook["spec"]["containers"]]
    statuses = podman.run("wait", *hook_containers, timeout=60).split()
    failed = [c for c, status in zip(hook_containers, statuses, strict=True) if status != "0"]
    if len(statuses) != len(hook_containers) or failed:
        # What each failed check printed, and how often each service's container restarted.
        said = {c: podman.run("logs", c, check=False).strip() for c in failed}
        restarts = {c["Names"][0]: c.get("Restarts") for c in mesh.containers()}
        raise AssertionError(f"helm test fails: {said}; restarts: {restarts}")

    # 3. The encoders lock: the segments on their volumes are byte-identical.
    encoders = [name for name in mesh.addresses if "-encoder-" in name]
    try:
        identical = wait_for_identical_segments(mesh, encoders, started)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{mesh.logs(encoders)}") from None
    assert len(identical) >= IDENTICAL_SEGMENTS

    # 4. They run the mesh's hot path compiled when this tree's build/compiled holds it,
    #    compiled from the current sources (make test compiles it before the image).
    expected = f"mesh hot path {'compiled' if compiled_here() else 'pure Python'}"
    for pod in encoders:
        logged = mesh.logs([pod], lines=None)
        assert expected in logged, f"{pod} does not log {expected!r}:\n{mesh.logs([pod])}"


def compiled_here() -> bool:
    """Whether build/compiled holds the hot path compiled from this tree's current sources
    (what ``scripts/build-image.sh`` hands the image)."""
    compiled = ROOT / "build" / "compiled"
    if not (compiled / ".made").exists() or not any(compiled.glob("*__mypyc.*.so")):
        return False
    modules = [*compiled.glob("meshenc/**/*.so"), *compiled.glob("services/**/*.so")]
    for module in modules:
        source = module.with_name(module.name.split(".", 1)[0] + ".py")
        if source.read_bytes() != (ROOT / source.relative_to(compiled)).read_bytes():
            return False
    return bool(modules)


def segment_hashes(mesh: Mesh, pod: str) -> dict[str, str]:
    """SHA-256 of each finished segment an encoder wrote (segments appear by rename)."""
    folder = volume_path(mesh.podman, f"segments-{pod}")
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.glob("seg-*.ts"))
    }


def identical_segments(hashes: dict[str, dict[str, str]]) -> list[str]:
    """The segments every encoder wrote, past the lock-in, in order; each must have the same
    bytes everywhere (AssertionError naming the first that does not)."""
    common = sorted(set.intersection(*(set(h) for h in hashes.values())))
    judged = common[LOCKED_AFTER:]
    for name in judged:
        digests = {pod: h[name][:12] for pod, h in hashes.items()}
        assert len(set(digests.values())) == 1, f"{name} differs between encoders: {digests}"
    return judged


def wait_for_identical_segments(mesh: Mesh, encoders: list[str], started: float) -> list[str]:
    """Wait until IDENTICAL_SEGMENTS segments past the lock-in are the same on every encoder;
    fail on the first that differs, or at the deadline."""
    while True:
        hashes = {pod: segment_hashes(mesh, pod) for pod in encoders}
        judged = identical_segments(hashes)
        if len(judged) >= IDENTICAL_SEGMENTS:
            return judged
        assert time.monotonic() - started < DEADLINE, (
            f"after {DEADLINE:.0f} s only {len(judged)} segments to compare: "
            + ", ".join(f"{pod}: {len(h)} segments" for pod, h in hashes.items())
        )
        time.sleep(2)


def test_the_segment_check_fails_when_one_encoder_wrote_other_bytes() -> None:
    """The lock check can fail: one differing segment past the lock-in is caught, segments
    before it are not judged, and a segment one encoder lacks is not compared."""
    names = [f"seg-{n:012d}.ts" for n in range(LOCKED_AFTER + 3)]
    same = {name: hashlib.sha256(name.encode()).hexdigest() for name in names}
    hashes = {"e0": dict(same), "e1": dict(same), "e2": dict(same)}
    assert identical_segments(hashes) == names[LOCKED_AFTER:]
    hashes["e1"][names[0]] = "0" * 64  # during lock-in: not judged
    del hashes["e2"][names[-1]]  # not written everywhere yet: not compared
    assert identical_segments(hashes) == names[LOCKED_AFTER:-1]
    hashes["e2"][names[LOCKED_AFTER + 1]] = "f" * 64
    with pytest.raises(AssertionError, match=names[LOCKED_AFTER + 1]):
        identical_segments(hashes)
