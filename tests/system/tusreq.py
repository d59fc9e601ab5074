"""A minimal tus client over aiohttp for system tests (absolute URLs, no TestClient),
and bodies that need not be held in memory: a seeded stream and a GET into a hash."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import aiohttp

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
MIB = 1 << 20


async def create(session: aiohttp.ClientSession, url: str, length: int, **headers: str) -> str:
    async with session.post(url, headers={**TUS, "Upload-Length": str(length), **headers}) as r:
        assert r.status == 201, (r.status, await r.text())
        return r.headers["Location"]


async def patch(session: aiohttp.ClientSession, url: str, offset: int,
                data: object) -> aiohttp.ClientResponse:
    async with session.patch(url, data=data, headers={
            **TUS, "Upload-Offset": str(offset), "Content-Type": OCTET}) as r:
        await r.read()
        return r


async def patch_when_free(session: aiohttp.ClientSession, url: str, offset: int, data: bytes,
                          limit: float = 30.0) -> aiohttp.ClientResponse:
    """PATCH, again while the answer is 423 (the upload is still leased by a writer that
    is gone: a killed daemon's lease runs out, a dropped request releases its own), as
    tus clients retry; for at most ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while True:
            r = await patch(session, url, offset, data)
            if r.status != 423:
                return r
            await asyncio.sleep(0.2)


async def offset_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.head(url, headers=TUS) as r:
        assert r.status == 200, r.status
        return int(r.headers["Upload-Offset"])


async def get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as r:
        assert r.status == 200, (r.status, await r.text())
        return await r.read()


async def get_digest(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """GET a finished upload into a hash: (bytes received, blake2b hex digest)."""
    digest, size = hashlib.blake2b(), 0
    async with session.get(url) as r:
        assert r.status == 200, (r.status, await r.text())
        async for chunk in r.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def digest_of(data: bytes) -> str:
    return hashlib.blake2b(data).hexdigest()


class SeededBody:
    """``size`` pseudo-random bytes from ``seed``, made a MiB at a time as they are sent
    (so neither the test nor the generator holds them); ``digest`` is their blake2b
    once every byte was sent. ``part(start, end)`` streams one slice of the same bytes."""

    def __init__(self, seed: int, size: int) -> None:
        assert size % MIB == 0
        self.seed, self.size = seed, size
        self._digest = hashlib.blake2b()
        self._sent = 0

    def _block(self, index: int) -> bytes:
        return random.Random(self.seed * 1_000_003 + index).randbytes(MIB)

    async def part(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start``..``end`` (MiB-aligned), in 1 MiB chunks, hashed in order."""
        assert start == self._sent and start % MIB == 0 and end % MIB == 0
        for index in range(start // MIB, end // MIB):
            block = self._block(index)
            self._digest.update(block)
            self._sent += len(block)
            yield block

    @property
    def digest(self) -> str:
        assert self._sent == self.size, "not every byte was sent"
        return self._digest.hexdigest()


async def metric(session: aiohttp.ClientSession, root: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` on the daemon's /metrics (0 if absent)."""
    async with session.get(root + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def wait_metric(session: aiohttp.ClientSession, root: str, name: str, at_least: float,
                      limit: float = 30.0) -> float:
    """Poll /metrics until ``name`` reaches ``at_least`` (for at most ``limit`` seconds)."""
    async with asyncio.timeout(limit):
        while (value := await metric(session, root, name)) < at_least:
            await asyncio.sleep(0.05)
    return value
