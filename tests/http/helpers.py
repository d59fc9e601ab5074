"""Small tus request helpers for aiohttp TestClient-based tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from urllib.parse import urlsplit

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


def path_of(location: str) -> str:
    return urlsplit(location).path


def b64(value: bytes | str) -> str:
    if isinstance(value, str):
        value = value.encode()
    return base64.b64encode(value).decode()


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {b64(hashlib.new(algorithm, data).digest())}"


async def create(client: TestClient, length: int | None = None, *, expect: int = 201,
                 **headers: str) -> str:
    """POST; returns the upload's path."""
    h = {**TUS, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if length is not None:
        h["Upload-Length"] = str(length)
    r = await client.post("/files/", headers=h)
    assert r.status == expect, (r.status, await r.text())
    return path_of(r.headers.get("Location", ""))


async def patch(client: TestClient, path: str, offset: int, data: bytes,
                **headers: str) -> ClientResponse:
    h = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    r = await client.patch(path, data=data, headers=h)
    await r.read()
    return r


async def head(client: TestClient, path: str) -> ClientResponse:
    r = await client.head(path, headers=TUS)
    await r.read()
    return r


async def upload(client: TestClient, data: bytes, chunk: int | None = None, **headers: str) -> str:
    path = await create(client, len(data), **headers)
    chunk = chunk or max(len(data), 1)
    offset = 0
    while offset < len(data):
        r = await patch(client, path, offset, data[offset:offset + chunk])
        assert r.status == 204, (r.status, await r.text())
        offset = int(r.headers["Upload-Offset"])
    return path


async def download(client: TestClient, path: str) -> bytes:
    r = await client.get(path)
    assert r.status == 200, (r.status, await r.text())
    return await r.read()


async def metric(client: TestClient, name: str) -> float:
    """An unlabelled sample of the app's /metrics (0 if absent)."""
    r = await client.get("/metrics")
    for line in (await r.text()).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def wait_metric(client: TestClient, name: str, value: float, limit: float = 30.0) -> None:
    """Wait until the app's metric ``name`` is ``value`` (an event: no fixed sleep)."""
    async with asyncio.timeout(limit):
        while await metric(client, name) != value:
            await asyncio.sleep(0.02)


async def wait_expired(client: TestClient, path: str, limit: float = 30.0) -> None:
    """Wait until HEAD of ``path`` answers 410 (its expiry passed), polling."""
    async with asyncio.timeout(limit):
        while (await head(client, path)).status != 410:
            await asyncio.sleep(0.1)
