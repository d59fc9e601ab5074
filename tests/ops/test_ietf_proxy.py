"""The IETF draft behind Debian's nginx (deploy/nginx/*.conf): with ``behind_proxy`` on,
``server.ietf_interim: auto`` sends no 104, and draft requests keep the connection usable;
forced on, nginx takes the 104 for the final response (why auto is the default)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.ietf.helpers import messages, raw
from tests.plugins.daemon import Daemon

from .conftest import NGINX, Nginx


def creation(port: int, complete: str, body: bytes) -> bytes:
    return (f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upload-Draft-Interop-Version: 6\r\nUpload-Complete: {complete}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def proxied_with(daemon_factory: Callable[..., Daemon], **env: str) -> tuple[Daemon, Nginx]:
    if not os.access(NGINX, os.X_OK):
        pytest.fail("nginx is not installed (scripts/test.sh installs it with apt)")
    daemon = daemon_factory(env={"TUSD_SERVER__BEHIND_PROXY": "true", **env})
    return daemon, Nginx(daemon.port).start()


async def test_no_104_behind_the_proxy_by_default(
        daemon_factory: Callable[..., Daemon]) -> None:
    _daemon, nginx = proxied_with(daemon_factory)
    try:
        port = nginx.port
        wire = await raw(port, creation(port, "?0", b"hello") + creation(port, "?1", b"x"),
                         finals=2)
        statuses = [status for status, _ in messages(wire)]
        assert statuses == [201, 201], wire  # both answered on the kept-alive connection
        headers = messages(wire)[0][1]
        assert headers["location"].startswith(nginx.root + "/files/")
    finally:
        nginx.stop()


async def test_nginx_takes_a_104_for_the_final_response(
        daemon_factory: Callable[..., Daemon]) -> None:
    """Forced on behind nginx: nginx relays the 104 as its final response (adding its own
    Server header) with the real answer as that response's body, and the pipelined
    second request is never answered: the connection is lost to the client."""
    _daemon, nginx = proxied_with(daemon_factory, TUSD_SERVER__IETF_INTERIM="true")
    try:
        port = nginx.port
        wire = await raw(port, creation(port, "?0", b"hello") + creation(port, "?1", b"x"),
                         finals=2)
        first_status, first = messages(wire)[0]
        assert first_status == 104 and first.get("server") == "nginx", wire
        assert wire.count(b"HTTP/1.1 201") == 1  # the second request got no answer
    finally:
        nginx.stop()
