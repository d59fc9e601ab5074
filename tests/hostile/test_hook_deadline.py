"""A blocking hook whose receiver hangs holds a request for at most
``hooks.http.total_timeout``, retries and backoff included (issue 16, item 9: before,
10 s x 4 attempts plus backoff held every POST for 50 s)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.plugins.daemon import Daemon


@pytest.fixture
def hanging_receiver() -> Iterator[str]:
    """An endpoint that accepts connections, reads the request and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hooks"
    stop.set()
    thread.join(2)
    listener.close()
    for conn in held:
        conn.close()


def _post(daemon: Daemon) -> tuple[int, float]:
    start = time.monotonic()
    request = urllib.request.Request(daemon.url, method="POST", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "5"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.monotonic() - start


def test_a_hanging_pre_create_receiver_holds_a_post_no_longer_than_the_total_timeout(
        daemon_factory, hanging_receiver: str):
    daemon = daemon_factory(env={
        "TUSD_HOOKS__HTTP__URL": hanging_receiver, "TUSD_HOOKS__HTTP__TIMEOUT": "10s",
        "TUSD_HOOKS__HTTP__RETRIES": "3", "TUSD_HOOKS__HTTP__BACKOFF": "1s",
        "TUSD_HOOKS__HTTP__TOTAL_TIMEOUT": "1.5s"})
    status, took = _post(daemon)
    assert status == 500
    assert 1.4 < took < 4.0, took
    assert "total_timeout" in daemon.log()


def test_the_default_total_timeout_is_15_seconds() -> None:
    from tusd_py.config import HttpHookConfig

    assert HttpHookConfig().total_timeout == 15.0
