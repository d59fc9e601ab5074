"""SIGTERM: in-flight uploads run for ``server.shutdown_grace``, are then stopped with their
bytes committed, and the process exits 0 within ``shutdown_grace + SHUTDOWN_MARGIN``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time

import aiohttp

from tests.plugins.daemon import ROOT
from tusd_py.http.server import EXIT_OVERRUN, SHUTDOWN_MARGIN

from .tusreq import create, offset_of, patch

GRACE = 1.0


def lingering_thread_hook(hook: dict[str, object]) -> None:
    """A Python hook that leaves a non-daemon thread behind: the interpreter would wait
    for it at exit."""
    threading.Thread(target=time.sleep, args=(60,), name="lingering", daemon=False).start()


async def _terminate(daemon) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """SIGTERM the daemon; its exit code and the seconds from the signal to its exit."""
    started = time.monotonic()
    code = await asyncio.to_thread(daemon.terminate, 20)
    return code, time.monotonic() - started


def _access_lines(log: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "tusd_py.access"]


async def test_sigterm_during_a_stalled_upload_commits_what_arrived(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    """The client declares 1 MB, sends a known part of it and stalls: SIGTERM -> after the
    grace period the writer is stopped, commits exactly what arrived, answers 503; exit 0."""
    data_dir = tmp_path / "d"
    daemon = daemon_factory(data_dir=data_dir, env={
        "TUSD_SERVER__SHUTDOWN_GRACE": f"{GRACE}s", "TUSD_SERVER__IDLE_TIMEOUT": "60s",
        "TUSD_SERVER__LOG_LEVEL": "info", "TUSD_SERVER__LOG_FORMAT": "json"})
    source = os.urandom(1_000_000)
    sent = 345_679
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, len(source))
    upload_id = url.rsplit("/", 1)[1]
    path = url[len(daemon.root):]

    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
                  "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                  "Content-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {len(source)}\r\n\r\n").encode() + source[:sent])
    await writer.drain()
    await asyncio.sleep(0.3)  # loopback: the daemon has read every byte sent; then silence
    terminated = asyncio.create_task(_terminate(daemon))
    raw = await asyncio.wait_for(reader.read(), 10)  # the answer, then the daemon closes
    code, elapsed = await terminated
    writer.close()

    assert code == 0, daemon.log()
    assert GRACE <= elapsed <= GRACE + SHUTDOWN_MARGIN, elapsed
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable", raw[:300]
    assert f"Upload-Offset: {sent}".encode() in head.split(b"\r\n"), raw[:300]
    # The daemon's own account of the request: it committed exactly what was sent.
    [patch_line] = [line for line in _access_lines(daemon.log()) if line["method"] == "PATCH"]
    assert (patch_line["status"], patch_line["received"], patch_line["upload_id"]) == (
        503, sent, upload_id)

    again = daemon_factory(data_dir=data_dir, port=daemon.port)
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == sent
    on_disk = (data_dir / "uploads" / upload_id).read_bytes()
    assert len(on_disk) == sent
    assert hashlib.sha256(on_disk).hexdigest() == hashlib.sha256(source[:sent]).hexdigest()
    assert again.terminate() == 0


async def test_sigterm_lets_short_uploads_finish(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    """A PATCH that ends within the grace period completes; the daemon exits right after."""
    daemon = daemon_factory(env={"TUSD_SERVER__SHUTDOWN_GRACE": "5s"}, data_dir=tmp_path / "d")
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 300_000)

        async def body():  # type: ignore[no-untyped-def]
            for _ in range(30):
                yield b"y" * 10_000
                await asyncio.sleep(0.02)

        task = asyncio.create_task(patch(session, url, 0, body()))
        await asyncio.sleep(0.2)
        code, elapsed = await _terminate(daemon)
        r = await task
    assert code == 0
    assert r.status == 204 and r.headers["Upload-Offset"] == "300000"
    assert elapsed < 2.5, elapsed  # the body took ~0.6 s more; the 5 s grace was not waited out


async def test_idle_daemon_exits_at_once(daemon) -> None:  # type: ignore[no-untyped-def]
    code, elapsed = await _terminate(daemon)
    assert code == 0
    assert elapsed < 1.0, elapsed


async def test_watchdog_ends_a_shutdown_that_overruns(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """Something that keeps the interpreter from exiting (here a thread a hook left
    behind) cannot hold the process past grace + SHUTDOWN_MARGIN: the watchdog ends it
    with EXIT_OVERRUN."""
    daemon = daemon_factory(env={
        "TUSD_SERVER__SHUTDOWN_GRACE": f"{GRACE}s", "PYTHONPATH": str(ROOT),
        "TUSD_HOOKS__PYTHON": "tests.system.test_shutdown:lingering_thread_hook",
        "TUSD_HOOKS__ENABLED": "pre-create"})
    async with aiohttp.ClientSession() as session:
        await create(session, daemon.url, 1)
    code, elapsed = await _terminate(daemon)
    assert code == EXIT_OVERRUN, daemon.log()
    # Nothing was in flight: the grace period was not waited out; the watchdog fired at
    # grace + SHUTDOWN_MARGIN after the signal.
    assert GRACE + SHUTDOWN_MARGIN - 0.1 <= elapsed <= GRACE + SHUTDOWN_MARGIN + 0.5, elapsed
    assert f"shutdown did not finish within {GRACE + SHUTDOWN_MARGIN:.1f}s" in daemon.log()
