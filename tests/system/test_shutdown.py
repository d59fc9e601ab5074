"""SIGTERM, on every driver: in-flight uploads run for ``server.shutdown_grace``, are then
stopped with their bytes committed, and the process exits 0 within the grace + 2 s."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import aiohttp

from tests.plugins.daemon import ROOT, Daemon, DaemonFactory, DriverDaemons
from tests.plugins.tcp import wait_delivered

from .tusreq import OCTET, create, get, offset_of, patch, patch_when_free, wait_metric

GRACE = 1.0
#: Documented (README "Operations"): SIGTERM to exit takes at most shutdown_grace + 2 s.
MARGIN = 2.0
#: Documented: the exit status when a shutdown overran that and had to be cut short.
EXIT_OVERRUN = 1
#: Our view of the exit lags the daemon's by process exit and scheduling: the daemon's
#: own bound is checked by its exit status (0: it finished in time by its own clock).
OBSERVED = 1.0


def lingering_thread_hook(hook: dict[str, object]) -> None:
    """A Python hook that leaves a non-daemon thread behind: the interpreter would wait
    for it at exit."""
    threading.Thread(target=time.sleep, args=(60,), name="lingering", daemon=False).start()


async def _terminate(daemon: Daemon) -> tuple[int, float]:
    """SIGTERM the daemon; its exit code and the seconds from the signal to its exit."""
    started = time.monotonic()
    code = await asyncio.to_thread(daemon.terminate, 20)
    return code, time.monotonic() - started


def _access_lines(log: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "tusd_py.access"]


async def test_sigterm_during_a_stalled_upload_commits_what_arrived(
        driver_daemons: DriverDaemons) -> None:
    """The client declares more than it sends (more than a part: the object stores have
    one staged) and stalls: SIGTERM -> after the grace period the writer is stopped,
    commits exactly what arrived, answers 503; exit 0. A new daemon resumes from there."""
    daemon = driver_daemons.start(env={
        "TUSD_SERVER__SHUTDOWN_GRACE": f"{GRACE}s", "TUSD_SERVER__IDLE_TIMEOUT": "60s",
        "TUSD_SERVER__LOG_LEVEL": "info", "TUSD_SERVER__LOG_FORMAT": "json"})
    sent = max(driver_daemons.part_size, 256 << 10) + 345_679
    source = os.urandom(2 * sent)
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, len(source))
    upload_id = url.rsplit("/", 1)[1]
    path = url[len(daemon.root):]

    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
                  f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: {OCTET}\r\n"
                  f"Content-Length: {len(source)}\r\n\r\n").encode() + source[:sent])
    await wait_delivered(writer)  # the daemon has read every byte sent; then silence
    terminated = asyncio.create_task(_terminate(daemon))
    raw = await asyncio.wait_for(reader.read(), 30)  # the answer, then the daemon closes
    code, elapsed = await terminated
    writer.close()

    assert code == 0, daemon.log()
    assert GRACE <= elapsed <= GRACE + MARGIN + OBSERVED, elapsed
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable", raw[:300]
    assert f"Upload-Offset: {sent}".encode() in head.split(b"\r\n"), raw[:300]
    # The daemon's own account of the request: it committed exactly what was sent.
    # The whole log (Daemon.log() is its last 4,000 characters, for messages).
    whole = daemon.log_path.read_text(errors="replace")
    [patch_line] = [line for line in _access_lines(whole) if line["method"] == "PATCH"]
    assert (patch_line["status"], patch_line["received"], patch_line["upload_id"]) == (
        503, sent, upload_id)

    again = driver_daemons.restart(daemon)
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == sent
        r = await patch_when_free(session, url, sent, source[sent:])
        assert r.status == 204, r.status
        assert await get(session, url) == source
    assert again.terminate() == 0


async def test_sigterm_lets_short_uploads_finish(driver_daemons: DriverDaemons) -> None:
    """A PATCH that ends within the grace period completes; the daemon exits right after,
    without waiting the grace out; the bytes are all there for the next daemon."""
    daemon = driver_daemons.start(env={"TUSD_SERVER__SHUTDOWN_GRACE": "30s"})
    data = os.urandom(300_000)
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, len(data))

        async def body():  # type: ignore[no-untyped-def]
            for i in range(0, len(data), 10_000):
                yield data[i:i + 10_000]
                await asyncio.sleep(0.02)

        task = asyncio.create_task(patch(session, url, 0, body()))
        await wait_metric(session, daemon.root, "tusd_uploads_active", 1)  # it is in flight
        code, elapsed = await _terminate(daemon)
        r = await task
    assert code == 0
    assert r.status == 204 and r.headers["Upload-Offset"] == str(len(data))
    assert elapsed < 15, elapsed  # the 30 s grace was not waited out
    again = driver_daemons.restart(daemon)
    async with aiohttp.ClientSession() as session:
        assert await get(session, url) == data
    assert again.terminate() == 0


async def test_idle_daemon_exits_at_once(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(env={"TUSD_SERVER__SHUTDOWN_GRACE": "30s"})
    code, elapsed = await _terminate(daemon)
    assert code == 0
    assert elapsed < 15, elapsed  # nothing in flight: the 30 s grace is not waited out


async def test_watchdog_ends_a_shutdown_that_overruns(daemon_factory: DaemonFactory) -> None:
    """Something that keeps the interpreter from exiting (here a thread a hook left
    behind, sleeping 60 s) cannot hold the process past grace + 2 s: the watchdog ends
    it with the overrun status."""
    daemon = daemon_factory(env={
        "TUSD_SERVER__SHUTDOWN_GRACE": f"{GRACE}s", "PYTHONPATH": str(ROOT),
        "TUSD_HOOKS__PYTHON": "tests.system.test_shutdown:lingering_thread_hook",
        "TUSD_HOOKS__ENABLED": "pre-create"})
    async with aiohttp.ClientSession() as session:
        await create(session, daemon.url, 1)
    code, elapsed = await _terminate(daemon)
    assert code == EXIT_OVERRUN, daemon.log()
    # Not before the mark (the point: a shutdown is given all of it), long before the
    # thread's 60 s.
    assert GRACE + MARGIN <= elapsed <= GRACE + MARGIN + 10, elapsed
    assert f"shutdown did not finish within {GRACE + MARGIN:.1f}s" in daemon.log()
