"""The switches tusd and @tus/server operators expect, over HTTP against the real daemon:
``server.download``, ``server.termination`` (true, false, unfinished-only) and
``server.concatenation``; OPTIONS advertises what remains, and the start-up line says it."""

from __future__ import annotations

import re
import time

import aiohttp

from tests.plugins.daemon import Daemon
from tusd_py import __version__

from .test_proxy import TUS, create, patch

ALL = ["creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
       "termination", "concatenation", "concatenation-unfinished"]


async def extensions(s: aiohttp.ClientSession, daemon: Daemon) -> list[str]:
    async with s.options(daemon.url) as r:
        assert r.status == 204
        return r.headers["Tus-Extension"].split(",")


def allowed(response: aiohttp.ClientResponse) -> set[str]:
    return {method.strip() for method in response.headers["Allow"].split(",")}


def start_line(daemon: Daemon) -> str:
    """The daemon's 'what I am' line (its log is flushed every 0.25 s)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in daemon.log_path.read_text().splitlines()
                 if "tusd-py " + __version__ + " listening on " in line]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, daemon.log()
            return lines[0]
        time.sleep(0.05)


async def finished_upload(s: aiohttp.ClientSession, daemon: Daemon, data: bytes = b"abc") -> str:
    url = await create(s, daemon.url, len(data))
    assert await patch(s, url, 0, data) == len(data)
    return url


async def test_defaults_offer_everything_and_the_start_line_says_so(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__LOG_LEVEL": "info"})
    async with aiohttp.ClientSession() as s:
        assert await extensions(s, daemon) == ALL
    line = start_line(daemon)
    assert f"listening on {daemon.url} (storage: local {daemon.data_dir}; " in line
    assert f"extensions: {','.join(ALL)}; hooks: none; loop: " in line


async def test_termination_off(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """tusd -disable-termination: DELETE is not a method of an upload URL any more."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__TERMINATION": "false",
                                         "TUSD_SERVER__LOG_LEVEL": "info"})
    async with aiohttp.ClientSession() as s:
        offered = await extensions(s, daemon)
        assert offered == [e for e in ALL if e != "termination"]
        url = await create(s, daemon.url, 10)
        async with s.delete(url, headers=TUS) as r:
            assert r.status == 405
            assert allowed(r) == {"HEAD", "PATCH", "GET", "OPTIONS"}
        async with s.head(url, headers=TUS) as r:
            assert r.status == 200 and r.headers["Upload-Offset"] == "0"
    assert f"extensions: {','.join(offered)};" in start_line(daemon)


async def test_termination_of_unfinished_uploads_only(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """@tus/server's disableTerminationForFinishedUploads: a finished upload stays."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__TERMINATION": "unfinished-only"})
    async with aiohttp.ClientSession() as s:
        assert "termination" in await extensions(s, daemon)
        unfinished = await create(s, daemon.url, 10)
        assert await patch(s, unfinished, 0, b"12345") == 5
        async with s.delete(unfinished, headers=TUS) as r:
            assert r.status == 204
        async with s.head(unfinished, headers=TUS) as r:
            assert r.status == 404
        finished = await finished_upload(s, daemon)
        async with s.delete(finished, headers=TUS) as r:
            assert r.status == 400
            assert await r.text() == "cannot terminate a finished upload\n"
        async with s.get(finished) as r:
            assert r.status == 200 and await r.read() == b"abc"


async def test_concatenation_off(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """tusd -disable-concatenation: Upload-Concat is refused, plain uploads go on."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__CONCATENATION": "false"})
    async with aiohttp.ClientSession() as s:
        assert await extensions(s, daemon) == [e for e in ALL if not e.startswith("concat")]
        async with s.post(daemon.url, headers={**TUS, "Upload-Length": "3",
                                               "Upload-Concat": "partial"}) as r:
            assert r.status == 400
            assert await r.text() == "concatenation is not supported by this server\n"
        url = await finished_upload(s, daemon)
        path = url[len(daemon.root):]
        async with s.post(daemon.url, headers={**TUS, "Upload-Concat": f"final;{path}"}) as r:
            assert r.status == 400
        async with s.get(url) as r:
            assert await r.read() == b"abc"


async def test_download_off(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """tusd -disable-download: GET of an upload is 405, the rest of tus is unchanged."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__DOWNLOAD": "false"})
    async with aiohttp.ClientSession() as s:
        assert await extensions(s, daemon) == ALL
        url = await finished_upload(s, daemon)
        async with s.get(url) as r:
            assert r.status == 405
            assert allowed(r) == {"HEAD", "PATCH", "DELETE", "OPTIONS"}
        async with s.head(url, headers=TUS) as r:
            assert r.status == 200 and r.headers["Upload-Offset"] == "3"
        async with s.delete(url, headers=TUS) as r:
            assert r.status == 204


def test_a_bad_switch_value_is_named() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tusd_py", "check-config", "-c", "/dev/null"],
                            capture_output=True, text=True, timeout=60,
                            env={"TUSD_SERVER__TERMINATION": "finished-only", "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert re.search(r"server.termination: must be true, false or unfinished-only "
                     r"\(from env TUSD_SERVER__TERMINATION\)", result.stderr), result.stderr
