"""The daemon fixture itself: a daemon counts as started only once it serves on its own
port. Seen in a full run: another test's server took the port picked for a daemon,
answered its /healthz first, and the test then talked to two servers (a 404 for the
upload it had just created)."""

from __future__ import annotations

import http.server
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.daemon import Daemon, listens


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[int]:
    """Another process's stand-in: an HTTP server on 127.0.0.1 answering 200 to anything."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_a_port_taken_by_another_server_is_not_taken_for_the_daemon(
        foreign_server: int, tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "data")
    daemon.port = foreign_server  # as if the other server had bound it first
    try:
        daemon.start()
        assert daemon.port != foreign_server
        assert listens(daemon.pid, daemon.port)
        options = urllib.request.Request(daemon.url, method="OPTIONS")
        with urllib.request.urlopen(options, timeout=5) as r:
            assert r.headers["Tus-Version"] == "1.0.0"  # the daemon, not the stand-in
    finally:
        daemon.close()


def test_listens_tells_a_process_s_own_listener(foreign_server: int) -> None:
    assert listens(os.getpid(), foreign_server)  # the stand-in runs in this process
    assert not listens(os.getpid(), foreign_server + 1 if foreign_server < 65535 else 1)
