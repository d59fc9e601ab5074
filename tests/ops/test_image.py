"""The container image, built from the Dockerfile and run with Debian's podman.

No registry is reachable here, so the base image ``python:<PYTHON_VERSION>-slim-bookworm`` is
stood in for by a Debian bookworm root filesystem made with debootstrap (its python3 is
3.11, like the Dockerfile's default ``PYTHON_VERSION``), cached as a tarball between runs.
Everything podman writes lives in a private storage directory that is removed at the end.
What the Kubernetes manifests rely on is checked on a running container: a non-root user
(uid 10001), a read-only root filesystem (a volume for /data, tmpfs /tmp), the image's
health check on a non-default port (``TUSD_SERVER__PORT``), an upload that keeps its bytes,
and SIGTERM -> exit 0 within the grace period with an in-flight upload's bytes committed.

The tools come from ``scripts/test.sh`` (podman, runc, debootstrap); see
/work/shared/notes/containers.md for the quirks worked around here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.plugins.daemon import ROOT, free_port
from tests.system.tusreq import create, get, offset_of, patch
from tusd_py.http.server import SHUTDOWN_MARGIN
from tusd_py.storage.local.layout import shard_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOOLS = ("podman", "runc", "debootstrap")
#: The Dockerfile's default Python (``ARG PYTHON_VERSION=...``): the stand-in base's tag.
PYTHON_VERSION = re.search(r"(?m)^ARG PYTHON_VERSION=(\S+)$",
                           (ROOT / "Dockerfile").read_text()).group(1)  # type: ignore[union-attr]
BASE = f"localhost/python:{PYTHON_VERSION}-slim-bookworm"
IMAGE = "localhost/tusd-py-imagetest:latest"
#: debootstrap's packages: python3 (3.11 on bookworm) with venv, ``python`` on PATH.
ROOTFS_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
UID = 10001
GRACE = 3.0


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _rootfs_tarball(work: Path) -> Path:
    """A bookworm root filesystem as a tarball, made once and kept in the user's cache
    (without a CA bundle: the fixture adds this machine's)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tusd-py-tests"
    tag = hashlib.sha256(f"bookworm minbase {ROOTFS_PACKAGES} -CA".encode()).hexdigest()[:12]
    tarball = cache / f"rootfs-bookworm-{tag}.tar"
    if tarball.is_file():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = work / "rootfs"
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}",
                           "bookworm", str(rootfs)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    partial = tarball.with_suffix(f".{os.getpid()}.partial")
    subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", f"--exclude=.{CA_BUNDLE}",
                    "-cf", str(partial), "."], check=True, timeout=300)
    os.replace(partial, tarball)
    shutil.rmtree(rootfs)
    return tarball


def _instant(text: str) -> datetime:
    """An RFC 3339 time as podman or the daemon's JSON log writes it (nanoseconds cut)."""
    match = re.fullmatch(r"(.+?T[\d:]+)(?:\.(\d+))?(Z|[+-][\d:]+)(?: \S+)?", text.strip())
    assert match, text
    moment, fraction, zone = match.groups()
    return datetime.fromisoformat(f"{moment}.{(fraction or '0')[:6]:0<6}{zone.replace('Z', '+00:00')}")


@dataclass
class Podman:
    """podman with its own storage, config and registries (nothing in /etc or /var/lib)."""

    env: dict[str, str]
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    def run(self, name: str, port: int, volume: str, *options: str) -> str:
        """Start the image as the Kubernetes manifests run it: read-only root, /data a
        volume, tmpfs /tmp, every capability dropped, no privilege escalation, no init
        (PID 1 is the daemon); on host loopback at ``port``."""
        self.containers.append(name)
        if volume not in self.volumes:
            self.volumes.append(volume)
        self("run", "-d", "--name", name, "--network", "host", "--read-only",
             "--tmpfs", "/tmp:rw,size=64m", "-v", f"{volume}:/data", "--cap-drop", "all",
             "--security-opt", "no-new-privileges",
             "-e", "TUSD_SERVER__HOST=127.0.0.1", "-e", f"TUSD_SERVER__PORT={port}",
             *options, IMAGE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self("exec", name, "tusd-py", "healthcheck", check=False).returncode == 0:
                return name
            if self("inspect", name, "--format", "{{.State.Running}}").stdout.strip() != "true":
                break
            time.sleep(0.2)
        raise AssertionError(f"container {name} did not start: {self.logs(name)}")

    def logs(self, name: str) -> str:
        proc = self("logs", name, check=False)
        return (proc.stdout + proc.stderr)[-4000:]

    def inspect(self, name: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(self("inspect", name).stdout)
        return data[0]


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    """The image built once from the Dockerfile (on the stand-in base), and a podman that
    runs it; afterwards the containers, volumes and images made here are removed, and the
    private storage with them."""
    missing = _missing_tools()
    if missing or os.geteuid() != 0:
        why = f"needs root and {', '.join(TOOLS)} (scripts/test.sh installs them); missing: {missing}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    work = Path(tempfile.mkdtemp(prefix="tusd-py-podman-"))
    (work / "tmp").mkdir()
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{work}/run"\ngraphroot = "{work}/graph"\n')
    # runc: crun refuses this VM's cgroup layout; no ulimits: raising them is not permitted.
    (work / "containers.conf").write_text(
        '[containers]\nnetns = "host"\ndefault_ulimits = []\n'
        f'[network]\nnetwork_config_dir = "{work}/networks"\n'
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{work}/events.log"\ntmp_dir = "{work}/libpod"\n')
    (work / "registries.conf").write_text("unqualified-search-registries = []\n")
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
           "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"), "TMPDIR": str(work / "tmp")}
    tool = Podman(env)
    try:
        # The stand-in base: the cached rootfs plus this machine's CA bundle (pip in the
        # build goes through whatever this machine trusts).
        base_tar = work / "base.tar"
        shutil.copyfile(_rootfs_tarball(work), base_tar)
        with tarfile.open(base_tar, "a") as tar:
            tar.add(CA_BUNDLE, arcname="./etc/ssl/certs/ca-certificates.crt")
        tool("import", "--change", f"ENV PIP_CERT={CA_BUNDLE}", str(base_tar), BASE, timeout=300)
        base_tar.unlink()
        # --layers=false: one commit per stage (every step a layer costs minutes on vfs);
        # --format docker keeps HEALTHCHECK; chroot isolation needs no OCI runtime.
        tool("build", "--layers=false", "--format", "docker", "--isolation=chroot",
             "--pull=never", "--network=host", "-t", IMAGE, "-f", str(ROOT / "Dockerfile"),
             str(ROOT), timeout=600)
        yield tool
    finally:
        for name in tool.containers:
            tool("rm", "--force", "--time", "0", name, check=False)
        for volume in tool.volumes:
            tool("volume", "rm", "--force", volume, check=False)
        tool("rmi", "--force", IMAGE, BASE, check=False, timeout=300)
        shutil.rmtree(work, ignore_errors=True)


def test_the_image_is_the_dockerfiles(podman: Podman) -> None:
    """What the build produced: the health check, user, entry point and config of the
    Dockerfile, on the base's Python."""
    image = podman.inspect(IMAGE)
    config = image["Config"]
    assert isinstance(config, dict)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["tusd-py"] and config["Cmd"] == ["serve"]
    assert image["Healthcheck"]["Test"] == ["CMD", "tusd-py", "healthcheck"]  # type: ignore[index]
    assert "TUSD_CONFIG=/etc/tusd-py/tusd.yaml" in config["Env"]
    version = podman("run", "--rm", "--entrypoint", "python", IMAGE, "--version").stdout
    assert version.startswith(f"Python {PYTHON_VERSION}."), version


def test_non_root_read_only_root_and_healthcheck_on_another_port(podman: Podman) -> None:
    port = free_port()
    assert port != 8080
    name = podman.run("tusd-py-imagetest-run", port, "tusd-py-imagetest-run")
    state = podman.inspect(name)
    assert state["HostConfig"]["ReadonlyRootfs"] is True  # type: ignore[index]
    # The daemon's own process, seen from the host: uid and gid 10001.
    pid = state["State"]["Pid"]  # type: ignore[index]
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"(?m)^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status), status
    assert re.search(rf"(?m)^Gid:\s+{UID}\s", status), status
    write = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'w').close()\n"
             "        print(p, 'ok')\n    except OSError as e:\n        print(p, e.strerror)\n")
    probe = podman("exec", name, "python", "-c", write, "/etc/tusd-py/x", "/opt/tusd-py/x",
                   "/data/x", "/tmp/x").stdout.splitlines()
    assert probe == ["/etc/tusd-py/x Read-only file system", "/opt/tusd-py/x Read-only file system",
                     "/data/x ok", "/tmp/x ok"]
    # The image's HEALTHCHECK follows TUSD_SERVER__PORT (it used to probe 8080).
    check = podman("healthcheck", "run", name, check=False)
    assert check.returncode == 0, (check, podman.logs(name))
    assert podman.inspect(name)["State"]["Health"]["Status"] == "healthy"  # type: ignore[index]
    closed = free_port()
    wrong = podman("exec", name, "tusd-py", "healthcheck", "--port", str(closed), check=False)
    assert (wrong.returncode, wrong.stderr) == (
        1, f"tusd-py healthcheck: http://127.0.0.1:{closed}/healthz: connection refused\n")


def test_runs_with_the_kubernetes_configmap(podman: Podman, tmp_path: Path) -> None:
    """The local overlay's rendered ConfigMap mounted over /etc/tusd-py, as the pod mounts
    it: the daemon reads it (TUSD_CONFIG), serves, and stores in /data."""
    from tests.ops.test_kubernetes import resource

    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    (config_dir / "tusd.yaml").write_text(resource("local", "ConfigMap")["data"]["tusd.yaml"])
    (config_dir / "tusd.yaml").chmod(0o644)
    port = free_port()
    name = podman.run("tusd-py-imagetest-k8s", port, "tusd-py-imagetest-k8s",
                      "-v", f"{config_dir}:/etc/tusd-py:ro", "--user", f"{UID}:{UID}")
    dumped = yaml.safe_load(podman("exec", name, "tusd-py", "check-config").stdout)
    assert (dumped["storage"]["driver"], dumped["storage"]["data_dir"]) == ("local", "/data")
    assert dumped["server"]["behind_proxy"] is True and dumped["server"]["port"] == port
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    request = urllib.request.Request(f"http://127.0.0.1:{port}/files/", method="POST", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "5", "X-Forwarded-Host": "uploads.example.com",
        "X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        location = response.headers["Location"]
    assert location.startswith("https://uploads.example.com/files/"), location
    upload_id = location.rsplit("/", 1)[1]
    listing = podman("exec", name, "ls", f"/data/uploads/{shard_of(upload_id)}").stdout.split()
    assert upload_id in listing


async def test_upload_through_the_image_keeps_its_bytes(podman: Podman) -> None:
    port = free_port()
    name = podman.run("tusd-py-imagetest-upload", port, "tusd-py-imagetest-upload")
    source = os.urandom(3 * 1024 * 1024 + 17)
    async with aiohttp.ClientSession() as session:
        url = await create(session, f"http://127.0.0.1:{port}/files/", len(source))
        first = await patch(session, url, 0, source[:1_000_000])
        assert first.status == 204
        second = await patch(session, url, 1_000_000, source[1_000_000:])
        assert second.status == 204
        assert await offset_of(session, url) == len(source)
        assert await get(session, url) == source
    upload_id = url.rsplit("/", 1)[1]
    on_disk = podman("exec", name, "python", "-c",
                     "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read())"
                     ".hexdigest())", f"/data/uploads/{shard_of(upload_id)}/{upload_id}").stdout.strip()
    assert on_disk == hashlib.sha256(source).hexdigest()


async def test_sigterm_exits_0_within_the_grace_and_keeps_the_bytes(podman: Podman) -> None:
    """``podman stop -t 35`` during a stalled PATCH: the daemon (PID 1, no init, as under
    Kubernetes) commits what arrived and exits 0 within shutdown_grace + SHUTDOWN_MARGIN; a
    new container on the same volume resumes the upload at that offset."""
    port = free_port()
    volume = "tusd-py-imagetest-stop"
    grace = ("-e", f"TUSD_SERVER__SHUTDOWN_GRACE={GRACE:g}s")
    name = podman.run("tusd-py-imagetest-stop", port, volume, *grace)
    source = os.urandom(2_000_000)
    sent = 765_432
    async with aiohttp.ClientSession() as session:
        url = await create(session, f"http://127.0.0.1:{port}/files/", len(source))
    path = url.split(f":{port}", 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                  "Content-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {len(source)}\r\n\r\n").encode() + source[:sent])
    await writer.drain()
    await asyncio.sleep(0.5)  # loopback: the daemon has read every byte sent; then silence
    started = time.monotonic()
    await asyncio.to_thread(podman, "stop", "-t", "35", name, timeout=60)
    elapsed = time.monotonic() - started
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    state = podman.inspect(name)["State"]
    assert state["ExitCode"] == 0, (state, podman.logs(name))  # type: ignore[index]
    assert elapsed < 35, elapsed  # not podman's SIGKILL at the stop timeout
    # The daemon's own clock: from SIGTERM ("shutting down") to the container's exit it
    # waited out the grace for the stalled upload, and no longer than its margin allows
    # (podman's start-up under load is not counted; 0.5 s for conmon to record the exit).
    output = podman("logs", name)  # the daemon's stderr on podman's stderr
    logs = [json.loads(line) for line in (output.stdout + output.stderr).splitlines()
            if line.startswith("{")]
    [term] = [line["time"] for line in logs if line["message"].startswith("shutting down")]
    took = (_instant(str(state["FinishedAt"])) - _instant(term)).total_seconds()  # type: ignore[index]
    assert GRACE - 0.1 <= took <= GRACE + SHUTDOWN_MARGIN + 0.5, (took, logs[-3:])
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]

    again = podman.run("tusd-py-imagetest-stop-again", port, volume)
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == sent
        rest = await patch(session, url, sent, source[sent:])
        assert rest.status == 204
        assert await get(session, url) == source
    assert podman.inspect(again)["State"]["Running"] is True  # type: ignore[index]
