"""A minimal tus client over aiohttp for system tests (absolute URLs, no TestClient)."""

from __future__ import annotations

import aiohttp

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


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


async def offset_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.head(url, headers=TUS) as r:
        assert r.status == 200, r.status
        return int(r.headers["Upload-Offset"])


async def get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as r:
        assert r.status == 200, (r.status, await r.text())
        return await r.read()
