"""Concurrent writers, dropped connections, stalled clients: the write path's guarantees."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.plugins.tcp import wait_delivered

from .helpers import OCTET, TUS, create, download, head, patch, wait_metric


async def _slow_body(data: bytes, piece: int = 32 * 1024):
    for i in range(0, len(data), piece):
        yield data[i:i + piece]
        await asyncio.sleep(0)


@pytest.mark.parametrize("writers", [2, 4, 16])
async def test_simultaneous_patches_exactly_one_wins(tus, writers):
    size = 512 * 1024
    path = await create(tus, size)
    payloads = [os.urandom(size) for _ in range(writers)]

    async def send(data: bytes) -> int:
        r = await tus.patch(path, data=_slow_body(data), headers={
            **TUS, "Upload-Offset": "0", "Content-Type": OCTET})
        await r.read()
        return r.status

    statuses = await asyncio.gather(*(send(p) for p in payloads))
    assert statuses.count(204) == 1, statuses
    assert all(s in (204, 409, 423) for s in statuses), statuses
    winner = payloads[statuses.index(204)]
    assert (await head(tus, path)).headers["Upload-Offset"] == str(size)
    assert await download(tus, path) == winner


async def _raw_patch(host: str, port: int, path: str, offset: int, declared: int,
                     body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send PATCH headers announcing ``declared`` bytes, then only ``body``."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((
        f"PATCH {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: {OCTET}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode() + body)
    await writer.drain()
    return reader, writer


async def _resume(tus, path: str, data: bytes, limit: float = 30.0) -> None:
    """Finish an upload as a resuming client does: HEAD for the offset, PATCH the rest,
    again after a 409 or 423 (an interrupted request may still be committing)."""
    async with asyncio.timeout(limit):
        while True:
            offset = int((await head(tus, path)).headers["Upload-Offset"])
            r = await patch(tus, path, offset, data[offset:])
            if r.status == 204:
                return
            assert r.status in (409, 423), r.status
            await asyncio.sleep(0.05)


async def test_dropped_connection_leaves_a_correct_prefix_and_resumes(tus):
    """The connection is lost mid-body: what the request had read by then is kept (a
    correct prefix of what was sent) and the upload resumes from it. (aiohttp's test
    server cancels a handler whose client is gone, possibly before it read anything;
    the daemon does not: tests/system/test_crash.py checks that it keeps exactly the
    bytes that reached the driver.)"""
    data = os.urandom(1_000_000)
    path = await create(tus, len(data))
    _, writer = await _raw_patch(tus.host, tus.port, path, 0, len(data), data[:300_000])
    await wait_delivered(writer)  # the server has read all 300,000 bytes
    writer.transport.abort()  # connection lost mid-body
    await _resume(tus, path, data)
    body = await download(tus, path)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_dropped_connection_with_checksum_keeps_nothing(tus):
    path = await create(tus, 1000)
    _reader, writer = await asyncio.open_connection(tus.host, tus.port)
    writer.write((
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        f"Content-Type: {OCTET}\r\nContent-Length: 1000\r\n"
        "Upload-Checksum: sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n").encode() + b"x" * 400)
    await wait_delivered(writer)  # the server has the 400 bytes
    await wait_metric(tus, "tusd_uploads_active", 1)
    writer.transport.abort()
    await wait_metric(tus, "tusd_uploads_active", 0)  # the server is done with it
    assert (await head(tus, path)).headers["Upload-Offset"] == "0"
    # Object-store drivers release their lease with a network round trip: a client that
    # comes back at once may see 423 for a moment, and retries as tus clients do.
    async with asyncio.timeout(30):
        while (r := await patch(tus, path, 0, b"y" * 1000)).status == 423:
            await asyncio.sleep(0.2)
    assert r.status == 204
    assert await download(tus, path) == b"y" * 1000


async def test_stalled_writer_hands_over_to_reconnecting_client(tus_client_factory):
    client = await tus_client_factory(server={"lock_takeover_idle": 0.3, "idle_timeout": 30,
                                              "lock_wait": 10})
    data = os.urandom(200_000)
    path = await create(client, len(data))
    reader, writer = await _raw_patch(client.host, client.port, path, 0, len(data), data[:50_000])
    await wait_delivered(writer)  # then silence: a dead network path
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await patch(client, path, 0, data)  # the client reconnected and retries
    elapsed = loop.time() - started
    assert r.status == 409  # the stalled writer committed what it had received
    assert elapsed < 5, elapsed  # handed over, not a wait for lock_wait (10 s) or idle_timeout
    response = await asyncio.wait_for(reader.read(1000), 10)
    assert response.startswith(b"HTTP/1.1 400"), response[:100]
    writer.close()
    offset = int((await head(client, path)).headers["Upload-Offset"])
    assert offset == 50_000
    assert (await patch(client, path, offset, data[offset:])).status == 204
    assert await download(client, path) == data


async def test_active_writer_is_not_taken_over(tus_client_factory):
    """A writer whose body keeps arriving (pauses far below lock_takeover_idle) keeps
    the upload: another request gives up after lock_wait with 423."""
    client = await tus_client_factory(server={"lock_takeover_idle": 3, "lock_wait": 0.3})
    size = 40 * 100_000
    path = await create(client, size)

    async def trickle():
        for _ in range(40):
            yield b"a" * (size // 40)
            await asyncio.sleep(0.05)

    first = asyncio.create_task(client.patch(path, data=trickle(), headers={
        **TUS, "Upload-Offset": "0", "Content-Type": OCTET}))
    await wait_metric(client, "tusd_uploads_active", 1)  # the first one is writing
    second = await patch(client, path, 0, b"b" * size)
    assert second.status == 423
    r = await first
    assert r.status == 204
    assert await download(client, path) == b"a" * size


async def test_idle_timeout_ends_stalled_patch_and_keeps_bytes(tus_client_factory):
    client = await tus_client_factory(server={"idle_timeout": 0.4})
    path = await create(client, 1000)
    reader, writer = await _raw_patch(client.host, client.port, path, 0, 1000, b"z" * 600)
    response = await asyncio.wait_for(reader.read(1000), 5)
    assert response.startswith(b"HTTP/1.1 408"), response[:80]
    lines = response.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert b"Upload-Offset: 600" in lines and b"Connection: close" in lines, lines
    writer.close()
    assert (await head(client, path)).headers["Upload-Offset"] == "600"
    assert (await patch(client, path, 600, b"w" * 400)).status == 204
    assert await download(client, path) == b"z" * 600 + b"w" * 400
