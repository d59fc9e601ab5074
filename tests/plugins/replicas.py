"""Shared bodies of the two-replica tests (``tests/{s3,gcs,azure}/test_replicas.py``):
two daemon processes on one bucket/container, driven over real HTTP. Each driver's
module supplies the replicas (its own emulator and sizes) and its storage-side checks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from tests.plugins.daemon import Daemon

MIB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))


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


async def pieces(data: bytes, piece: int, pause: float = 0.01) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i:i + piece]
        await asyncio.sleep(pause)


async def concurrent_patches_exactly_one_wins(http: aiohttp.ClientSession, a: Daemon, b: Daemon,
                                              *, size: int, piece: int) -> None:
    """Four PATCHes from offset 0 (two per replica) on each of three uploads: exactly one
    wins each, and both replicas serve the winner's bytes."""
    uploads = [await create(http, a, size) for _ in range(3)]

    async def send(daemon: Daemon, path: str, data: bytes) -> int:
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET,
                   "Content-Length": str(len(data))}
        async with http.patch(daemon.root + path, data=pieces(data, piece),
                              headers=headers) as r:
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


async def cooperating_clients(http: aiohttp.ClientSession, a: Daemon, b: Daemon, data: bytes,
                              *, chunk: int, piece: int) -> str:
    """Six resuming clients (three per replica) push one upload in ``chunk``-byte PATCHes:
    every byte is acknowledged exactly once and the upload is intact. Returns its path."""
    path = await create(http, a, len(data))
    acknowledged: list[tuple[int, int]] = []

    async def client(daemon: Daemon) -> None:
        while True:
            offset = await offset_of(http, daemon, path)
            if offset == len(data):
                return
            body = data[offset:offset + chunk]
            headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET}
            async with http.patch(daemon.root + path, data=pieces(body, piece, pause=0.002),
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
    return path


async def raw_patch(daemon: Daemon, path: str, offset: int, length: int,
                    body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Start a PATCH announcing ``length`` bytes and send only ``body``; the connection
    stays open (a client that went silent, or one whose daemon is about to die)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Upload-Offset: {offset}\r\nContent-Type: {OCTET}\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode() + body)
    await writer.drain()
    return reader, writer


async def resume_after_kill(http: aiohttp.ClientSession, b: Daemon, path: str, data: bytes,
                            start: int) -> None:
    """After the replica writing ``path`` was killed: B sees only what was acknowledged
    (``start``), then finishes the upload once the dead replica's lease expires."""
    assert await offset_of(http, b, path) == start
    # A's lease is still live for up to 2 s: B waits for it to expire (lock_wait 3 s).
    headers = {**TUS, "Upload-Offset": str(start), "Content-Type": OCTET}
    for _ in range(3):
        async with http.patch(b.root + path, data=data[start:], headers=headers) as r:
            if r.status != 423:
                break
    assert r.status == 204, await r.text()
    assert await fetch(http, b, path) == data


async def stalled_writer_yields(http: aiohttp.ClientSession, a: Daemon, b: Daemon) -> None:
    """The client's connection to A went silent (no FIN); it reconnects to B. B flags the
    upload in .info, A's request yields (it was idle) and commits what it had: B answers
    within lock_wait instead of 423 until A's 30 s idle timeout."""
    data = os.urandom(300_000)
    path = await create(http, a, len(data))
    reader, writer = await raw_patch(a, path, 0, len(data), data[:100_000])
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
