"""``tusd-py healthcheck`` over real sockets: against a real daemon on a non-default port
(port from env, file and flag, as ``serve`` reads it), a closed port, a port that never
answers, a daemon that is alive but not ready, and a bad config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.plugins.daemon import Daemon, free_port
from tusd_py.config import load_config
from tusd_py.healthcheck import probe_target, probe_url


def healthcheck(*args: str, env: dict[str, str] | None = None, cwd: Path,
                timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``tusd-py healthcheck ARGS`` with only ``env``'s ``TUSD_*`` variables, run in ``cwd``
    (so no config/tusd.yaml of the checkout is picked up)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    return subprocess.run([sys.executable, "-m", "tusd_py", "healthcheck", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert proc.stderr == expected + "\n", proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_target_maps_wildcards_to_loopback() -> None:
    def target(host: str) -> tuple[str, int]:
        return probe_target(load_config(None, env={}, overrides={"server.host": host,
                                                                  "server.port": 9000}))

    assert target("0.0.0.0") == ("127.0.0.1", 9000)
    assert target("::") == ("::1", 9000)
    assert target("[::]") == ("::1", 9000)
    assert target("127.0.0.2") == ("127.0.0.2", 9000)
    assert probe_url("::1", 9000, "/healthz") == "http://[::1]:9000/healthz"
    assert probe_url("127.0.0.1", 9000, "/readyz") == "http://127.0.0.1:9000/readyz"


def test_healthy_daemon_on_a_non_default_port(daemon: Daemon, tmp_path: Path) -> None:
    """The port comes from wherever ``serve`` would take it: env, config file, flag."""
    assert daemon.port != 8080
    port = str(daemon.port)
    by_env = healthcheck(env={"TUSD_SERVER__PORT": port}, cwd=tmp_path)
    assert (by_env.returncode, by_env.stderr) == (0, "")
    config = tmp_path / "tusd.yaml"
    config.write_text(f"server:\n  host: 0.0.0.0\n  port: {port}\n")
    by_file = healthcheck(env={"TUSD_CONFIG": str(config)}, cwd=tmp_path)
    assert (by_file.returncode, by_file.stderr) == (0, "")
    assert healthcheck("--config", str(config), cwd=tmp_path).returncode == 0
    assert healthcheck("--port", port, cwd=tmp_path).returncode == 0
    ready = healthcheck("--ready", env={"TUSD_SERVER__PORT": port}, cwd=tmp_path)
    assert (ready.returncode, ready.stderr) == (0, "")
    # The config says another port than the daemon's: that is what is probed, and it fails.
    closed = free_port()
    wrong = healthcheck("--config", str(config), "--port", str(closed), cwd=tmp_path)
    assert_one_line(wrong, f"tusd-py healthcheck: http://127.0.0.1:{closed}/healthz: "
                           "connection refused")


def test_closed_port(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    proc = healthcheck(env={"TUSD_SERVER__PORT": str(port)}, cwd=tmp_path)
    assert_one_line(proc, f"tusd-py healthcheck: http://127.0.0.1:{port}/healthz: connection refused")
    ready = healthcheck("--ready", "--port", str(port), cwd=tmp_path)
    assert_one_line(ready, f"tusd-py healthcheck: http://127.0.0.1:{port}/readyz: connection refused")
    assert time.monotonic() - started < 10


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def test_a_daemon_that_does_not_answer_times_out(silent_port: int, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = healthcheck("--port", str(silent_port), "--timeout", "0.5", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert_one_line(proc, f"tusd-py healthcheck: http://127.0.0.1:{silent_port}/healthz: "
                          "no answer within 0.5s")
    assert elapsed < 5, elapsed


def test_alive_but_not_ready(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    """A GCS daemon whose endpoint is a closed port: alive (/healthz 200), not ready
    (/readyz 503), and the probe says which with the daemon's answer (which names no
    endpoint or bucket: the reason is in the daemon's log)."""
    dead = free_port()
    d = daemon_factory(env={"TUSD_STORAGE__DRIVER": "gcs", "TUSD_STORAGE__BUCKET": "b",
                            "TUSD_STORAGE__ENDPOINT_URL": f"http://127.0.0.1:{dead}"})
    env = {"TUSD_SERVER__PORT": str(d.port)}
    assert healthcheck(env=env, cwd=tmp_path).returncode == 0
    proc = healthcheck("--ready", "--timeout", "10", env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc
    prefix = f"tusd-py healthcheck: http://127.0.0.1:{d.port}/readyz: HTTP 503 Service Unavailable: "
    assert proc.stderr == prefix + "storage not ready\n", proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_invalid_config_is_one_line(tmp_path: Path) -> None:
    proc = healthcheck(env={"TUSD_SERVER__PROT": "9000"}, cwd=tmp_path)
    assert_one_line(proc, "tusd-py healthcheck: invalid configuration: server.prot: unknown key "
                          "(from env TUSD_SERVER__PROT)")
    missing = healthcheck(env={"TUSD_CONFIG": str(tmp_path / "nope.yaml")}, cwd=tmp_path)
    assert_one_line(missing, f"tusd-py healthcheck: cannot read config file {tmp_path}/nope.yaml: "
                             "No such file or directory")
