"""Two daemon processes on one bucket behave like one server (fake-gcs-server over real
HTTP)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.plugins.daemon import Daemon
from tests.plugins.gcs import PART_SIZE

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


@pytest.fixture
def replicas(daemon_factory, gcs_daemon_env) -> tuple[Daemon, Daemon]:  # type: ignore[no-untyped-def]
    env = {**gcs_daemon_env, "TUSD_STORAGE__LEASE_DURATION": "2s"}
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


async def pieces(data: bytes, piece: int = 64 * 1024, pause: float = 0.01) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i:i + piece]
        await asyncio.sleep(pause)


async def test_concurrent_patches_across_replicas_exactly_one_wins(replicas, http):
    a, b = replicas
    size = 3 * PART_SIZE + 1000
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


async def test_cooperating_clients_on_two_replicas_never_double_write(replicas, http, gcs_objects,
                                                                      gcs_bucket):
    """Six resuming clients (three per replica) push one upload: every byte is
    acknowledged exactly once and the object is intact."""
    a, b = replicas
    data = os.urandom(7 * PART_SIZE + 5)
    path = await create(http, a, len(data))
    acknowledged: list[tuple[int, int]] = []

    async def client(daemon: Daemon) -> None:
        while True:
            offset = await offset_of(http, daemon, path)
            if offset == len(data):
                return
            chunk = data[offset:offset + 300 * 1024]
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
    key = path.rsplit("/", 1)[1]
    assert {n for n in gcs_objects(gcs_bucket) if key in n} == {f"up/{key}", f"up/{key}.info"}


async def test_kill_9_mid_upload_then_resume_on_the_other_replica(replicas, http, gcs_objects,
                                                                  gcs_bucket, gcs_storage_config):
    a, b = replicas
    data = os.urandom(10 * PART_SIZE)
    path = await create(http, a, len(data))
    key = gcs_storage_config["prefix"] + path.rsplit("/", 1)[1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    async with http.patch(a.root + path, data=data[:3 * PART_SIZE + 100], headers=headers) as r:
        assert r.status == 204  # committed: 3 full parts + a 100-byte part

    def parts() -> set[str]:
        return {n for n in gcs_objects(gcs_bucket) if n.startswith(key + ".p")}

    published = parts()
    assert len(published) == 4
    # Second PATCH to A: announce the rest, send two more parts' worth, then A dies.
    start = 3 * PART_SIZE + 100
    _reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Upload-Offset: {start}\r\nContent-Type: {OCTET}\r\n"
                  f"Content-Length: {len(data) - start}\r\n\r\n").encode())
    writer.write(data[start:start + 2 * PART_SIZE + 10])
    await writer.drain()
    deadline = time.monotonic() + 15
    while len(parts() - published) < 1:
        assert time.monotonic() < deadline, "daemon A never uploaded a part"
        await asyncio.sleep(0.05)
    a.kill()  # SIGKILL: no commit, no lease release
    writer.close()

    # B sees only what A acknowledged; A's staged parts are not published.
    assert await offset_of(http, b, path) == start
    # A's lease is still live for up to 2 s: B waits for it to expire (lock_wait 3 s).
    headers = {**TUS, "Upload-Offset": str(start), "Content-Type": OCTET}
    for _ in range(3):
        async with http.patch(b.root + path, data=data[start:], headers=headers) as r:
            if r.status != 423:
                break
    assert r.status == 204, await r.text()
    assert await fetch(http, b, path) == data
    # A's unpublished part is left for the sweeper (B runs it every second; it waits
    # lease_duration before taking anything), and then only the upload remains.
    deadline = time.monotonic() + 15
    while set(gcs_objects(gcs_bucket)) != {key, key + ".info"}:
        assert time.monotonic() < deadline, gcs_objects(gcs_bucket)
        await asyncio.sleep(0.2)
