"""kill -9 of the daemon, on every driver: acknowledged offsets survive, the upload
finishes intact; and the daemon's own sweeper deletes expired uploads."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from tests.plugins.daemon import DaemonFactory, DriverDaemons
from tests.plugins.tcp import wait_delivered

from .tusreq import OCTET, create, get, metric, offset_of, patch, patch_when_free, wait_metric

#: A killed daemon's lease on an object store blocks the upload until it runs out.
SHORT_LEASE = {"TUSD_STORAGE__LEASE_DURATION": "3s"}


async def test_kill_9_mid_patch_keeps_what_was_acknowledged(driver_daemons: DriverDaemons) -> None:
    """PATCHes are acknowledged one after the other; then one is mid-body (more than a
    part of it sent and read by the daemon: the object stores have staged a part of it)
    when the daemon is killed. A new daemon on the same storage has every acknowledged
    byte, nothing wrong, and the upload finishes intact."""
    env = {} if driver_daemons.driver == "local" else SHORT_LEASE
    first = driver_daemons.start(env=env)
    chunk = max(driver_daemons.part_size, 256 << 10) + 12_345  # parts and tails both
    data = os.urandom(8 * chunk)
    async with aiohttp.ClientSession() as session:
        url = await create(session, first.url, len(data))
        acknowledged = 0
        while acknowledged < 3 * chunk:
            r = await patch(session, url, acknowledged, data[acknowledged:acknowledged + chunk])
            assert r.status == 204, r.status
            acknowledged = int(r.headers["Upload-Offset"])
    assert acknowledged == 3 * chunk

    # The PATCH that is mid-body when the daemon dies.
    path = url[len(first.root):]
    reader, writer = await asyncio.open_connection("127.0.0.1", first.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{first.port}\r\n"
                  f"Tus-Resumable: 1.0.0\r\nUpload-Offset: {acknowledged}\r\n"
                  f"Content-Type: {OCTET}\r\nContent-Length: {len(data) - acknowledged}\r\n\r\n"
                  ).encode() + data[acknowledged:acknowledged + chunk])
    await wait_delivered(writer)
    first.kill()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # no answer: the process is gone
    writer.close()

    second = driver_daemons.restart(first)
    async with aiohttp.ClientSession() as session:
        offset = await offset_of(session, url)
        # Nothing acknowledged was lost; of the interrupted PATCH at most what was sent.
        assert acknowledged <= offset <= acknowledged + chunk, (acknowledged, offset)
        while offset < len(data):
            r = await patch_when_free(session, url, offset, data[offset:offset + 2 * chunk])
            assert r.status == 204, r.status
            offset = int(r.headers["Upload-Offset"])
        assert await get(session, url) == data
    assert second.terminate() == 0


async def test_restart_reconciles_unacknowledged_bytes(daemon_factory: DaemonFactory, tmp_path):  # type: ignore[no-untyped-def]
    """Local driver: a file longer than its committed offset (bytes written, never
    acknowledged) is cut back at start-up."""
    first = daemon_factory(data_dir=tmp_path / "data")
    async with aiohttp.ClientSession() as session:
        url = await create(session, first.url, 1000)
        assert (await patch(session, url, 0, b"a" * 100)).status == 204
    first.kill()
    upload_file = tmp_path / "data" / "uploads" / url.rsplit("/", 1)[1]
    with open(upload_file, "ab") as fh:
        fh.write(b"garbage that was never acknowledged")
    second = daemon_factory(data_dir=tmp_path / "data", port=first.port)
    assert upload_file.stat().st_size == 100
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == 100
        assert (await patch(session, url, 100, b"b" * 900)).status == 204
        assert await get(session, url) == b"a" * 100 + b"b" * 900
    second.terminate()


async def test_the_daemons_sweeper_deletes_expired_uploads(driver_daemons: DriverDaemons) -> None:
    """With a short ``expiration.after`` and ``sweep_interval``, the daemon's own timer
    deletes an unfinished upload (its parts too) and keeps a finished one."""
    daemon = driver_daemons.start(env={"TUSD_EXPIRATION__AFTER": "1s",
                                       "TUSD_EXPIRATION__SWEEP_INTERVAL": "200ms"})
    part = max(driver_daemons.part_size, 1)
    async with aiohttp.ClientSession() as session:
        kept = await create(session, daemon.url, 5)
        assert (await patch(session, kept, 0, b"kept!")).status == 204
        url = await create(session, daemon.url, 3 * part + 10)
        assert (await patch(session, url, 0, os.urandom(part + 10))).status == 204
        upload_id = url.rsplit("/", 1)[1]
        assert driver_daemons.stored(upload_id)
        assert await metric(session, daemon.root, "tusd_uploads_expired_total") == 0

        await wait_metric(session, daemon.root, "tusd_uploads_expired_total", 1)
        async with session.head(url, headers={"Tus-Resumable": "1.0.0"}) as r:
            assert r.status == 404
        assert driver_daemons.stored(upload_id) == set()
        assert await get(session, kept) == b"kept!"
        assert await metric(session, daemon.root, "tusd_uploads_expired_total") == 1
