"""Two daemon processes on one data directory: the flock lease still allows one writer."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from .tusreq import OCTET, TUS, create, get, offset_of


async def test_two_daemons_same_dir_one_writer_wins(daemon_factory, tmp_path):
    shared = tmp_path / "shared"
    a = daemon_factory(data_dir=shared)
    b = daemon_factory(data_dir=shared, env={"TUSD_SERVER__LOCK_WAIT": "0.2"})
    size = 2 * 1024 * 1024
    async with aiohttp.ClientSession() as session:
        for _round in range(3):
            url_a = await create(session, a.url, size)
            url_b = url_a.replace(str(a.port), str(b.port))
            payloads = [os.urandom(size) for _ in range(4)]

            async def body(data: bytes):
                for i in range(0, len(data), 64 * 1024):
                    yield data[i:i + 64 * 1024]
                    await asyncio.sleep(0.001)

            async def send(url: str, data: bytes) -> int:
                async with session.patch(url, data=body(data), headers={
                        **TUS, "Upload-Offset": "0", "Content-Type": OCTET}) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(
                send(url_a if i % 2 == 0 else url_b, p) for i, p in enumerate(payloads)))
            assert statuses.count(204) == 1, statuses
            assert set(statuses) <= {204, 409, 423}, statuses
            winner = payloads[statuses.index(204)]
            assert await offset_of(session, url_b) == size
            assert await get(session, url_b) == winner
