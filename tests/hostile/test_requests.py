"""Malformed requests and forged Host headers against the real daemon (issue 16,
items 5 and 6): one access line per malformed request, no traceback; a Host that is not
a host and an optional port is refused before anything is created."""

from __future__ import annotations

import time

import pytest

from tests.hostile import raw
from tests.plugins.daemon import Daemon
from tests.plugins.local_files import upload_files

MALFORMED = [
    b"GET /files/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST /files/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /files/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
]


@pytest.fixture
def logged_daemon(daemon_factory) -> Daemon:  # type: ignore[no-untyped-def]
    return daemon_factory(env={"TUSD_SERVER__LOG_LEVEL": "info"})


def _access_lines(daemon: Daemon) -> list[str]:
    """Access lines of refused requests (a malformed one is logged as ``UNKNOWN /``)."""
    return [line for line in daemon.log().splitlines()
            if "tusd_py.access" in line and " 400 " in line]


def test_a_malformed_request_gets_one_access_line_and_no_traceback(logged_daemon: Daemon):
    before = len(_access_lines(logged_daemon))
    for request in MALFORMED:
        status, _, _ = raw.request(logged_daemon.port, request)
        assert status == 400
    deadline = time.monotonic() + 5  # access lines are flushed every 0.25 s
    while len(_access_lines(logged_daemon)) < before + len(MALFORMED) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = _access_lines(logged_daemon)[before:]
    assert len(lines) == len(MALFORMED), logged_daemon.log()
    assert "Traceback" not in logged_daemon.log()
    assert "Unhandled exception" not in logged_daemon.log()


def _post(daemon: Daemon, host: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = raw.request(daemon.port, (
        f"POST /files/ HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
        "Upload-Length: 5\r\nContent-Length: 0\r\n\r\n").encode())
    return status, headers


@pytest.mark.parametrize("host", ["evil.example/phish?x=", "a@evil.example", "evil.example#x",
                                  "evil.example:80/x", "ex ample", "[::1", "a:99999", ""])
def test_a_forged_host_is_refused_before_anything_is_created(daemon: Daemon, host: str):
    status, headers = _post(daemon, host)
    assert status == 400
    assert "location" not in headers
    assert upload_files(daemon.data_dir) == []


@pytest.mark.parametrize("host", ["uploads.example.com", "uploads.example.com:8443",
                                  "10.0.0.1:80", "[2001:db8::1]:8080"])
def test_a_valid_host_goes_into_location(daemon: Daemon, host: str):
    status, headers = _post(daemon, host)
    assert status == 201
    assert headers["location"].startswith(f"http://{host}/files/")
