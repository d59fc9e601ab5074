"""A real tusd-py daemon in a subprocess, on 127.0.0.1 and a free port.

* ``daemon_factory(env=None, data_dir=None, port=None) -> Daemon`` (started; every one
  is killed at the end of the test); ``daemon``: one on the local driver.
* ``driver_daemons`` (parametrised over ``DAEMON_DRIVERS``): a ``DriverDaemons`` that
  starts daemons for one driver on this test's own storage (a data dir, or a fresh
  bucket/container of the session's emulator), restarts them on it, and lists what the
  storage holds. ``driver_daemon``: one started daemon of it. Process-level tests
  written over these run on every persistent driver.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.local_files import upload_files

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``: its socket fds
    against the LISTEN rows of its network namespace's ``/proc/net/tcp`` (and tcp6)."""
    inodes = set()
    with os.scandir(f"/proc/{pid}/fd") as entries:
        for entry in entries:
            try:
                link = os.readlink(entry.path)
            except OSError:  # closed meanwhile
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as rows:
                next(rows)  # the header
                for row in rows:
                    fields = row.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port \
                            and inode in inodes:
                        return True
        except FileNotFoundError:  # no IPv6 here, or the process is gone
            continue
    return False


class PortTaken(Exception):
    """The daemon could not bind its port: another process took it first."""


class Daemon:
    """``tusd-py serve`` as a child process. ``env`` adds ``TUSD_*`` settings."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        #: The port was picked here, and no start has served on it yet: another process
        #: may take it between free_port() and the daemon's bind (then start picks again).
        self._may_move = port is None
        self.log_path = log_path or data_dir.parent / f"daemon-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The creation URL (``.../files/``)."""
        base = self.extra_env.get("TUSD_SERVER__BASE_PATH", "/files/")
        return self.root + base

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Daemon:
        for _ in range(3):
            try:
                started = self._start(timeout)
            except PortTaken:
                self.port = free_port()
                continue
            self._may_move = False
            return started
        raise RuntimeError(f"no free port found: {self.log()}")

    def _start(self, timeout: float) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
        env.update({"TUSD_SERVER__LOG_LEVEL": "warning", "TUSD_EXPIRATION__SWEEP_INTERVAL": "1s"})
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")
        command = [sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port)]
        if env.get("TUSD_STORAGE__DRIVER", "local") == "local":
            command += ["--data-dir", str(self.data_dir)]  # a key of the local driver only
        self.proc = subprocess.Popen(command, cwd=self.data_dir.parent, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                if self._may_move and log.rstrip().endswith(f"{self.port}: address already in use"):
                    raise PortTaken(self.port)
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {log}")
            try:
                with urllib.request.urlopen(self.root + "/healthz", timeout=1) as r:
                    # Another test's server may have bound the port picked here before
                    # this daemon got to it, and answered: only our own listener counts.
                    if r.status == 200 and listens(self.proc.pid, self.port):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not start: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if getattr(self, "_log", None):
            self._log.close()


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """``daemon_factory(env=None, data_dir=None, port=None) -> Daemon`` (started)."""
    started: list[Daemon] = []

    def factory(env: dict[str, str] | None = None, data_dir: Path | None = None,
                port: int | None = None) -> Daemon:
        directory = data_dir or tmp_path / f"data{len(started)}"
        d = Daemon(directory, env, port=port)
        started.append(d)
        return d.start()

    yield factory
    for d in started:
        d.close()


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> Daemon:
    """A started daemon on the local driver."""
    return daemon_factory()


#: The drivers process-level tests run on: each persistent one (the memory driver loses
#: everything with its process, so there is nothing to restart or sweep across processes).
DAEMON_DRIVERS = ["local", "s3", "gcs", "azure"]


@dataclass
class DriverDaemons:
    """Daemons of one driver on one test's storage: every daemon started here shares it,
    so a restarted one finds what the previous one left."""

    driver: str
    #: The part (block) size of the driver's test config; 0 for local (no parts).
    part_size: int
    #: ``TUSD_STORAGE__*`` settings of this test's storage.
    storage_env: dict[str, str]
    data_dir: Path
    factory: DaemonFactory
    #: Lists the names of everything the storage holds (see ``stored``).
    lister: Callable[[], set[str]] = field(repr=False)

    def start(self, env: dict[str, str] | None = None, port: int | None = None) -> Daemon:
        """A started daemon on this storage; ``env`` adds ``TUSD_*`` settings."""
        return self.factory(env={**self.storage_env, **(env or {})}, data_dir=self.data_dir,
                            port=port)

    def restart(self, old: Daemon, env: dict[str, str] | None = None) -> Daemon:
        """A new daemon with ``old``'s settings, port and storage (``old`` has exited)."""
        assert old.proc is not None and old.proc.poll() is not None, "stop the old one first"
        return self.factory(env={**old.extra_env, **(env or {})}, data_dir=self.data_dir,
                            port=old.port)

    def stored(self, upload_id: str = "") -> set[str]:
        """Names the storage holds that contain ``upload_id`` (all, by default): the local
        driver's upload files; objects, in-progress multipart uploads (S3) and blobs,
        uncommitted ones included (Azure)."""
        return {name for name in self.lister() if upload_id in name}


def _local_files(data_dir: Path) -> set[str]:
    return set(upload_files(data_dir)) if (data_dir / "uploads").is_dir() else set()


def _s3_names(client: Any, bucket: str) -> set[str]:
    names = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return names | {f"{u['Key']} (multipart {u['UploadId']})" for u in uploads}


def _azure_names(container: Any) -> set[str]:
    return {b.name for b in container.list_blobs(include=["uncommittedblobs"])}


@pytest.fixture(params=DAEMON_DRIVERS)
def driver_daemons(request: pytest.FixtureRequest, daemon_factory: DaemonFactory,
                   tmp_path: Path) -> DriverDaemons:
    """``DriverDaemons`` for each driver in ``DAEMON_DRIVERS`` (the cloud ones against
    the session's emulators, a fresh bucket or container per test)."""
    driver: str = request.param
    data_dir = tmp_path / "data"
    lister: Callable[[], set[str]]
    if driver == "local":
        env, part_size = {"TUSD_STORAGE__DRIVER": "local"}, 0
        lister = lambda: _local_files(data_dir)  # noqa: E731
    else:
        env = dict(request.getfixturevalue(f"{driver}_daemon_env"))
        part_size = int(importlib.import_module(f"tests.plugins.{driver}").PART_SIZE)
        if driver == "s3":
            client, bucket = request.getfixturevalue("s3_client"), request.getfixturevalue("s3_bucket")
            lister = lambda: _s3_names(client, bucket)  # noqa: E731
        elif driver == "gcs":
            objects, bucket = request.getfixturevalue("gcs_objects"), request.getfixturevalue("gcs_bucket")
            lister = lambda: set(objects(bucket))  # noqa: E731
        else:
            container = request.getfixturevalue("azure_container_client")
            lister = lambda: _azure_names(container)  # noqa: E731
    return DriverDaemons(driver, part_size, env, data_dir, daemon_factory, lister)


@pytest.fixture
def driver_daemon(driver_daemons: DriverDaemons) -> Daemon:
    """A started daemon on each driver of ``DAEMON_DRIVERS``, on this test's storage."""
    return driver_daemons.start()
