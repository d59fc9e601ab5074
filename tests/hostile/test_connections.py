"""Connection-level limits against the real daemon (issue 16, item 1): a header-read
timeout, the keep-alive timeout, caps on open connections (total, per address), the
open-file limit raised at start, and a daemon that stays reachable when a client opens
connections until the file limit (before: 1,000 half-sent request lines were held as long
as the client liked, and with 1,024 files /healthz got connection resets)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile import raw
from tests.plugins.daemon import Daemon, free_port

HALF_REQUEST = b"PATCH /files/0123456789abcdef0123456789abcdef HTT"


def healthz(daemon: Daemon) -> int:
    with urllib.request.urlopen(daemon.root + "/healthz", timeout=5) as r:
        return r.status


def test_half_sent_request_lines_are_closed_after_the_header_timeout(daemon_factory):
    daemon = daemon_factory(env={"TUSD_SERVER__HEADER_TIMEOUT": "1s"})
    socks = [raw.connect(daemon.port) for _ in range(200)]
    try:
        for sock in socks[:150]:
            sock.sendall(HALF_REQUEST)  # the rest never comes; 50 send nothing at all
        assert healthz(daemon) == 200
        start = time.monotonic()
        closed = [raw.closed_within(sock, 5 - (time.monotonic() - start)) for sock in socks]
        assert all(t is not None for t in closed), closed.count(None)
        assert time.monotonic() - start < 4
    finally:
        for sock in socks:
            sock.close()
    assert healthz(daemon) == 200


def test_headers_trickled_after_a_first_request_are_cut_at_the_keepalive_timeout(daemon_factory):
    """A later request on a kept-alive connection has keepalive_timeout from the previous
    response for its headers (aiohttp's keep-alive timer)."""
    daemon = daemon_factory(env={"TUSD_SERVER__HEADER_TIMEOUT": "30s",
                                 "TUSD_SERVER__KEEPALIVE_TIMEOUT": "1.5s"})
    with raw.connect(daemon.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.read_response(sock)[0] == 200
        start = time.monotonic()
        for piece in (b"GET /heal", b"thz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n",
                      b"X-B: 1\r\n", b"X-C: 1\r\n"):
            time.sleep(0.4)
            try:
                sock.sendall(piece)
            except OSError:
                break
        took = raw.closed_within(sock, 5)
        assert took is not None and time.monotonic() - start < 3


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(daemon_factory):
    daemon = daemon_factory(env={"TUSD_SERVER__KEEPALIVE_TIMEOUT": "1s"})
    with raw.connect(daemon.port) as sock:
        for _ in range(3):  # it is kept alive between requests
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.read_response(sock)[0] == 200
            time.sleep(0.3)
        took = raw.closed_within(sock, 5)
        assert took is not None and took < 2


def test_the_defaults() -> None:
    from tusd_py.config import ServerConfig

    server = ServerConfig()
    assert (server.header_timeout, server.keepalive_timeout) == (10.0, 75.0)
    assert (server.max_connections, server.max_connections_per_address) == (0, 0)


def test_connections_over_the_cap_are_answered_503_and_closed(daemon_factory):
    daemon = daemon_factory(env={"TUSD_SERVER__MAX_CONNECTIONS": "20",
                                 "TUSD_SERVER__HEADER_TIMEOUT": "30s"})
    held = [raw.connect(daemon.port) for _ in range(20)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        status, headers, body = raw.request(
            daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert body == b"too many connections; retry later\n"
        assert time.monotonic() - start < 1
        for sock in held[:5]:
            sock.close()
        time.sleep(0.3)
        assert healthz(daemon) == 200  # room again
    finally:
        for sock in held:
            sock.close()
    assert "refusing connections" in daemon.log()


def test_the_per_address_cap_leaves_other_addresses_alone(daemon_factory):
    daemon = daemon_factory(env={"TUSD_SERVER__MAX_CONNECTIONS_PER_ADDRESS": "5",
                                 "TUSD_SERVER__HEADER_TIMEOUT": "30s"})
    held = [raw.connect(daemon.port) for _ in range(5)]
    try:
        time.sleep(0.3)
        status, _, _ = raw.request(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503
        other = socket.create_connection(("127.0.0.1", daemon.port), timeout=5,
                                         source_address=("127.0.0.2", 0))
        with other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.read_response(other)[0] == 200
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def limited_daemon(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """``start(soft, hard, env)``: the daemon run with that RLIMIT_NOFILE."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(soft: int, hard: int, env: dict[str, str] | None = None) -> tuple[int, int, Path]:
        port = free_port()
        log_path = tmp_path / f"daemon-{port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
        environ.update(env or {})

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1", "--port",
                 str(port), "--data-dir", str(tmp_path / f"data{port}")],
                env=environ, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return proc.pid, port, log_path
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(log_path.read_text())

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_the_soft_file_limit_is_raised_to_the_hard_limit(limited_daemon):
    pid, _, _ = limited_daemon(256, 4096)
    assert _soft_nofile(pid) == 4096


def test_a_client_opening_connections_to_the_file_limit_shuts_nobody_out(limited_daemon):
    """200 files, no higher limit: the automatic cap ((200 - 64) // 2 = 68) refuses
    connections before accept() could run out of descriptors; once the flood ends
    the daemon serves again, with no accept error logged."""
    pid, port, log_path = limited_daemon(200, 200, {"TUSD_SERVER__HEADER_TIMEOUT": "30s"})
    flood: list[socket.socket] = []
    statuses = []
    try:
        for _ in range(300):
            try:
                sock = raw.connect(port, timeout=2)
            except OSError:
                continue
            flood.append(sock)
        time.sleep(0.5)
        for _ in range(3):  # the cap answers, the loop does not fail
            try:
                statuses.append(raw.request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0])
            except OSError:
                statuses.append(0)
    finally:
        for sock in flood:
            sock.close()
    assert 200 not in statuses  # answered 503, or closed at once while refusals pile up
    time.sleep(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    log = log_path.read_text()
    assert "Too many open files" not in log and "Traceback" not in log
    assert "refusing connections" in log
    assert Path(f"/proc/{pid}").exists()


ASYNCIO_EMFILE = r"""
import asyncio, logging, resource, socket, sys
from tusd_py.config import ServerConfig
from tusd_py.http.connections import ConnectionGuard
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
loop = asyncio.new_event_loop()  # asyncio's own loop: it reports every failed accept()
guard = ConnectionGuard(ServerConfig(), max_connections=10**6)
loop.set_exception_handler(guard.loop_exception)

async def main():
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))
loop.run_until_complete(main())
"""


def test_accept_errors_are_logged_once_per_episode(tmp_path: Path):
    script = tmp_path / "emfile.py"
    script.write_text(ASYNCIO_EMFILE)
    proc = subprocess.Popen([sys.executable, str(script), "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])
    socks = []
    for _ in range(80):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            break
    out = proc.communicate(timeout=30)[0].decode()
    for sock in socks:
        sock.close()
    assert out.count("cannot accept connections") == 1, out[-3000:]
    assert "Traceback" not in out
