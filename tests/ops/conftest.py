"""Fixtures for the operations tests: Debian's nginx in front of a real daemon, and
helpers to drive headless Chromium through playwright-core (Node)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.daemon import ROOT, Daemon, free_port

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_SCRIPT = Path(__file__).resolve().parent / "browser.mjs"


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Nginx:
    """nginx (foreground, own prefix) rendered from deploy/nginx.test.conf.template.

    ``edit`` (for tests showing a directive matters) rewrites deploy/nginx/tus-proxy.conf's
    text for this instance; otherwise the deploy files are used as they are."""

    def __init__(self, upstream_port: int, edit: Callable[[str], str] | None = None) -> None:
        self.port = free_port()
        # Its own directory, readable by the unprivileged worker processes.
        self.run_dir = Path(tempfile.mkdtemp(prefix="tusd-nginx-"))
        self.run_dir.chmod(0o755)
        template = (DEPLOY / "nginx.test.conf.template").read_text()
        conf = (template.replace("{{RUN_DIR}}", str(self.run_dir))
                .replace("{{UPSTREAM_PORT}}", str(upstream_port))
                .replace("{{LISTEN_PORT}}", str(self.port)))
        assert "{{" not in conf
        self.conf = self.run_dir / "nginx.conf"
        self.conf.write_text(conf)
        for name in ("tus-locations.conf", "tus-proxy.conf"):
            if name == "tus-proxy.conf" and edit is not None:
                (self.run_dir / name).write_text(edit((DEPLOY / "nginx" / name).read_text()))
            else:
                (self.run_dir / name).symlink_to(DEPLOY / "nginx" / name)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        check = subprocess.run([NGINX, "-t", "-q", "-p", str(self.run_dir), "-c", str(self.conf)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([NGINX, "-p", str(self.run_dir), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)
        return self

    def error_log(self) -> str:
        try:
            return (self.run_dir / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: master waits for its workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def proxied(daemon_factory: Callable[..., Daemon]) -> Iterator[tuple[Daemon, Nginx]]:
    """A daemon with ``server.behind_proxy`` on, and nginx in front of it."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail("nginx is not installed (scripts/test.sh installs it with apt)")
    daemon = daemon_factory(env={"TUSD_SERVER__BEHIND_PROXY": "true"})
    nginx = Nginx(daemon.port).start()
    yield daemon, nginx
    nginx.stop()


async def run_browser(steps: list[dict[str, Any]], limit: float = 60.0) -> list[dict[str, Any]]:
    """Run ``browser.mjs`` (playwright-core + Debian chromium) over ``steps``; returns one
    result per step. Async, so in-process page servers keep serving meanwhile."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("chromium is not installed (scripts/test.sh installs it with apt)")
    task = json.dumps({"executablePath": CHROMIUM, "steps": steps})
    proc = await asyncio.create_subprocess_exec(
        "node", str(BROWSER_SCRIPT), task, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"browser run failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
    report: dict[str, Any] = json.loads(lines[-1])
    results: list[dict[str, Any]] = report["results"]
    return results
