"""Two daemon processes on one Azure container behave like one server (Azurite over
real HTTP)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.plugins.daemon import Daemon

MIB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


@pytest.fixture
def replicas(daemon_factory, azure_daemon_env) -> tuple[Daemon, Daemon]:  # type: ignore[no-untyped-def]
    env = {**azure_daemon_env, "TUSD_STORAGE__LEASE_DURATION": "2s"}
    return daemon_factory(env=env), daemon_factory(env=env)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def create(http: aiohttp.ClientSession, daemon: Daemon, length: int) -> str:
    async with http.post(daemon.url, headers={**TUS, "Upload-Length": str(length)}) as r:
        assert r.status == 201, await r.text()
        return urlsplit(r.headers["Location"]).path


async def offset_of(http: aiohttp.ClientSession, daemon: Daemon, path: str) -> int:
    async with http.head(daemon.root + path, headers=TUS) as r:
        assert r.status == 200
        return int(r.headers["Upload-Offset"])


async def fetch(http: aiohttp.ClientSession, daemon: Daemon, path: str) -> bytes:
    async with http.get(daemon.root + path) as r:
        assert r.status == 200
        return await r.read()


async def pieces(data: bytes, piece: int = 128 * 1024, pause: float = 0.01) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i:i + piece]
        await asyncio.sleep(pause)


def blob_names(container: Any) -> set[str]:
    return {b.name for b in container.list_blobs(include=["uncommittedblobs"])}


async def test_concurrent_patches_across_replicas_exactly_one_wins(replicas, http):
    a, b = replicas
    size = 3 * MIB + 7
    uploads = [await create(http, a, size) for _ in range(3)]

    async def send(daemon: Daemon, path: str, data: bytes) -> int:
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET,
                   "Content-Length": str(len(data))}
        async with http.patch(daemon.root + path, data=pieces(data), headers=headers) as r:
            await r.read()
            return r.status

    attempts = [(path, daemon, os.urandom(size)) for path in uploads for daemon in (a, b, a, b)]
    statuses = await asyncio.gather(*(send(d, p, data) for p, d, data in attempts))
    for path in uploads:
        mine = [(s, data) for (p, _, data), s in zip(attempts, statuses, strict=True) if p == path]
        codes = [s for s, _ in mine]
        assert codes.count(204) == 1, codes
        assert all(s in (204, 409, 423) for s in codes), codes
        winner = next(data for s, data in mine if s == 204)
        assert await offset_of(http, b, path) == size
        assert await fetch(http, a, path) == winner
        assert await fetch(http, b, path) == winner


async def test_cooperating_clients_on_two_replicas_never_double_write(replicas, http):
    """Six resuming clients (three per replica) push one upload: every byte is
    acknowledged exactly once and the blob is intact."""
    a, b = replicas
    data = os.urandom(5 * MIB + 5)
    path = await create(http, a, len(data))
    acknowledged: list[tuple[int, int]] = []

    async def client(daemon: Daemon) -> None:
        while True:
            offset = await offset_of(http, daemon, path)
            if offset == len(data):
                return
            chunk = data[offset:offset + 768 * 1024]
            headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET}
            async with http.patch(daemon.root + path, data=pieces(chunk, pause=0.002),
                                  headers=headers) as r:
                await r.read()
                if r.status == 204:
                    acknowledged.append((offset, int(r.headers["Upload-Offset"])))
                else:
                    assert r.status in (409, 423), (r.status, await r.text())
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(client(d) for d in (a, b, a, b, a, b)))
    acknowledged.sort()
    position = 0
    for start, end in acknowledged:  # contiguous, no overlap, no gap
        assert start == position and end > start
        position = end
    assert position == len(data)
    assert await fetch(http, b, path) == data


async def test_kill_9_mid_upload_then_resume_on_the_other_replica(
        replicas, http, azure_container_client, azure_storage_config):
    a, b = replicas
    data = os.urandom(5 * MIB)
    path = await create(http, a, len(data))
    name = azure_storage_config["prefix"] + path.rsplit("/", 1)[1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    async with http.patch(a.root + path, data=data[:MIB + 100], headers=headers) as r:
        assert r.status == 204  # committed: a 1 MiB block + a 100-byte block

    # Second PATCH to A: announce 3 MiB, send 2 MiB (A stages blocks), then A dies.
    _reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Upload-Offset: {MIB + 100}\r\nContent-Type: {OCTET}\r\n"
                  f"Content-Length: {3 * MIB}\r\n\r\n").encode())
    writer.write(data[MIB + 100:3 * MIB + 100])
    await writer.drain()
    blob = azure_container_client.get_blob_client(name)
    deadline = time.monotonic() + 15
    while len(blob.get_block_list("uncommitted")[1]) < 3:
        assert time.monotonic() < deadline, "daemon A never staged a block of the 2nd PATCH"
        await asyncio.sleep(0.05)
    a.kill()  # SIGKILL: no commit, no lease release
    writer.close()

    # B sees only what A acknowledged; the blocks A staged are not published.
    assert await offset_of(http, b, path) == MIB + 100
    # A's lease is still live for up to 2 s: B waits for it to expire (lock_wait 3 s).
    headers = {**TUS, "Upload-Offset": str(MIB + 100), "Content-Type": OCTET}
    for _ in range(3):
        async with http.patch(b.root + path, data=data[MIB + 100:], headers=headers) as r:
            if r.status != 423:
                break
    assert r.status == 204, await r.text()
    assert await fetch(http, b, path) == data
    committed, uncommitted = blob.get_block_list("all")
    assert sum(block.size for block in committed) == len(data) and uncommitted == []
    assert blob_names(azure_container_client) == {name, name + ".info"}


async def test_stalled_writer_on_one_replica_yields_to_a_client_on_the_other(replicas, http):
    """The client's connection to A went silent (no FIN); it reconnects to B. B flags the
    upload in .info, A's request yields (it was idle) and commits what it had: B answers
    within lock_wait instead of 423 until A's 30 s idle timeout."""
    a, b = replicas
    data = os.urandom(300_000)
    path = await create(http, a, len(data))
    reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Upload-Offset: 0\r\nContent-Type: {OCTET}\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:100_000])
    await writer.drain()
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    async with http.patch(b.root + path, data=data, headers=headers) as r:
        status = r.status
    elapsed = loop.time() - started
    assert status == 409, status  # A committed the 100,000 bytes it had, then let B in
    assert elapsed < 3.0, elapsed  # server.lock_wait: no 423
    response = await asyncio.wait_for(reader.read(1000), 5)
    assert response.startswith(b"HTTP/1.1 400"), response[:100]
    writer.close()
    offset = await offset_of(http, b, path)
    assert offset == 100_000
    headers["Upload-Offset"] = str(offset)
    async with http.patch(b.root + path, data=data[offset:], headers=headers) as r:
        assert r.status == 204
    assert await fetch(http, a, path) == data
