"""A real tusd-py daemon in a subprocess, on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``tusd-py serve`` as a child process. ``env`` adds ``TUSD_*`` settings."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        self.port = port or free_port()
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
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.root + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
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


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
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
def daemon(daemon_factory) -> Daemon:  # type: ignore[no-untyped-def]
    """A started daemon on the local driver."""
    return daemon_factory()
