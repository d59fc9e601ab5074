"""Interrupted uploads on every driver: a client whose connection drops mid-body keeps
every byte that arrived; after a kill -9 acknowledged offsets survive; either way the
upload finishes intact. And the daemon's own sweeper deletes expired uploads."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from tests.plugins.daemon import DaemonFactory, DriverDaemons
from tests.plugins.local_files import upload_file, upload_files
from tests.plugins.tcp import wait_delivered

from .tusreq import OCTET, create, get, metric, offset_of, patch, patch_when_free, wait_metric

#: A killed daemon's lease on an object store blocks the upload until it runs out.
SHORT_LEASE = {"TUSD_STORAGE__LEASE_DURATION": "3s"}


#: More than the daemon reads ahead of a handler that does not read yet (aiohttp's
#: payload buffer, plus what one socket read brings: a few hundred KiB).
READ_AHEAD = 1 << 20


async def test_dropped_connection_keeps_every_byte_that_reached_the_driver(
        driver_daemons: DriverDaemons) -> None:
    """The client sends part of the body, the daemon reads it, then the connection is
    reset: the upload's offset becomes exactly what was sent, and it resumes from there.

    What is promised is the bytes that reached the driver. The handler reads the body
    once it holds the upload's lock (a round trip on the object stores), and one that
    waits for a part upload reads nothing meanwhile: bytes the daemon buffered for it
    then are lost with the connection. So the body comes in two steps: first more than
    the read-ahead, delivered (the handler is reading, so it holds the lock), then the
    rest, with parts (8 MiB here) larger than the whole, so the handler never waits."""
    env = {} if driver_daemons.driver == "local" else {"TUSD_STORAGE__PART_SIZE": "8MiB"}
    daemon = driver_daemons.start(env=env)
    sent = READ_AHEAD + 300_000
    data = os.urandom(sent + 400_000)
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, len(data))
        path = url[len(daemon.root):]
        _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
                      f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: {OCTET}\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:READ_AHEAD])
        await wait_delivered(writer)  # only a reading handler takes this much
        writer.write(data[READ_AHEAD:sent])
        await wait_delivered(writer)
        writer.transport.abort()  # RST: the connection is lost mid-body
        async with asyncio.timeout(30):  # committed once the daemon notices
            while (offset := await offset_of(session, url)) == 0:
                await asyncio.sleep(0.02)
        assert offset == sent
        r = await patch_when_free(session, url, sent, data[sent:])
        assert r.status == 204, r.status
        assert await get(session, url) == data


async def test_kill_9_mid_patch_keeps_what_was_acknowledged(driver_daemons: DriverDaemons) -> None:
    """PATCHes are acknowledged one after the other; then one is mid-body (more than a
    part of it sent and read by the daemon: the object stores have staged a part of it)
    when the daemon is killed. A new daemon on the same storage has every acknowledged
    byte, nothing wrong, and the upload finishes intact."""
    await kill_9_mid_patch(driver_daemons, {} if driver_daemons.driver == "local" else SHORT_LEASE)


async def test_kill_9_mid_patch_with_fsync(daemon_factory: DaemonFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same on the local driver with ``storage.fsync: true`` (its own sync path)."""
    data_dir = tmp_path / "data"
    local = DriverDaemons("local", 0, {"TUSD_STORAGE__DRIVER": "local"}, data_dir,
                          daemon_factory, lambda: set(upload_files(data_dir)))
    await kill_9_mid_patch(local, {"TUSD_STORAGE__FSYNC": "true"})


async def kill_9_mid_patch(driver_daemons: DriverDaemons, env: dict[str, str]) -> None:
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
    path = upload_file(tmp_path / "data", url.rsplit("/", 1)[1])
    with open(path, "ab") as fh:
        fh.write(b"garbage that was never acknowledged")
    second = daemon_factory(data_dir=tmp_path / "data", port=first.port)
    assert path.stat().st_size == 100
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
