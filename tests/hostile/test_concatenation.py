"""Concatenation cannot multiply disk use or break other clients' requests (issue 16,
items 2, 3 and 7): each partial once, a capped count, the final's length held to
max_size and to 2**63-1, and a final whose assembly failed leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.plugins.app import TusClientFactory
from tests.plugins.local_files import upload_file, upload_files

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}

local_and_memory = pytest.mark.parametrize("storage_config", ["local", "memory"], indirect=True)
with_s3 = pytest.mark.parametrize("storage_config", ["local", "memory", "s3"], indirect=True)


async def partial(client: TestClient, data: bytes | None, length: int | None = None) -> str:
    """A partial upload of ``data`` (complete), or of ``length`` with nothing written."""
    size = len(data) if data is not None else length
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "partial",
                                              "Upload-Length": str(size)})
    assert r.status == 201, await r.text()
    url = path_of(r.headers["Location"])
    if data:
        r = await client.patch(url, data=data, headers={**OCTET, "Upload-Offset": "0"})
        assert r.status == 204, await r.text()
    return url


def path_of(location: str) -> str:
    return "/files/" + location.rsplit("/", 1)[1]


def final(*paths: str) -> dict[str, str]:
    return {**TUS, "Upload-Concat": "final;" + " ".join(paths)}


@local_and_memory
async def test_a_partial_named_twice_is_refused(tus_client_factory: TusClientFactory):
    client = await tus_client_factory()
    a = await partial(client, b"x" * 4096)
    r = await client.post("/files/", headers=final(a, a, a))
    assert r.status == 400
    assert "only once" in await r.text()
    b = await partial(client, b"y" * 10)
    r = await client.post("/files/", headers=final(a, b))  # distinct partials still work
    assert r.status == 201
    got = await client.get(path_of(r.headers["Location"]))
    assert await got.read() == b"x" * 4096 + b"y" * 10


@local_and_memory
async def test_the_number_of_partials_is_capped(tus_client_factory: TusClientFactory):
    client = await tus_client_factory(server={"max_concat_partials": 3})
    parts = [await partial(client, bytes([65 + i])) for i in range(4)]
    r = await client.post("/files/", headers=final(*parts))
    assert r.status == 400
    assert "max_concat_partials" in await r.text()
    r = await client.post("/files/", headers=final(*parts[:3]))
    assert r.status == 201


def test_the_default_cap_is_100() -> None:
    from tusd_py.config import ServerConfig

    assert ServerConfig().max_concat_partials == 100


@local_and_memory
async def test_a_final_longer_than_max_size_is_refused(tus_client_factory: TusClientFactory):
    client = await tus_client_factory(server={"max_size": 1000})
    a, b = await partial(client, b"a" * 600), await partial(client, b"b" * 600)
    r = await client.post("/files/", headers=final(a, b))
    assert r.status == 413


@local_and_memory
async def test_an_unfinished_final_longer_than_max_size_is_never_assembled(
        tus_client_factory: TusClientFactory):
    """concatenation-unfinished with deferred-length partials: the length is known only
    once they finish; the assembly is refused then."""
    client = await tus_client_factory(server={"max_size": 1000})
    paths = []
    for _ in range(2):
        r = await client.post("/files/", headers={**TUS, "Upload-Concat": "partial",
                                                  "Upload-Defer-Length": "1"})
        paths.append(path_of(r.headers["Location"]))
    r = await client.post("/files/", headers=final(*paths))
    assert r.status == 201
    final_url = path_of(r.headers["Location"])
    for path in paths:
        r = await client.patch(path, data=b"z" * 600, headers={
            **OCTET, "Upload-Offset": "0", "Upload-Length": "600"})
        assert r.status == 204
    r = await client.head(final_url, headers=TUS)
    assert r.status == 413
    assert "Upload-Offset" not in r.headers


@with_s3
async def test_a_final_longer_than_2_63_minus_1_is_refused(tus_client_factory: TusClientFactory):
    """Two partials of 2**62 each: their sum is 2**63, one more than a length can be
    (SQLite's INTEGER overflowed inside a shared batch; S3 reported the length)."""
    client = await tus_client_factory()
    a, b = await partial(client, None, 2**62), await partial(client, None, 2**62)
    r = await client.post("/files/", headers=final(a, b))
    assert r.status == 413, await r.text()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(2**63)})
    assert r.status == 400


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
async def test_an_overflowing_final_does_not_fail_honest_requests_batched_with_it(
        tus_client_factory: TusClientFactory):
    """Honest creates and PATCHes at the same moment as hostile finals all succeed."""
    client = await tus_client_factory()
    a, b = await partial(client, None, 2**62), await partial(client, None, 2**62)

    async def honest(i: int) -> tuple[int, int]:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
        created = r.status
        r = await client.patch(path_of(r.headers["Location"]), data=b"abc",
                               headers={**OCTET, "Upload-Offset": "0"})
        return created, r.status

    async def hostile() -> int:
        r = await client.post("/files/", headers=final(a, b))
        return r.status

    results = await asyncio.gather(*[honest(i) for i in range(40)], *[hostile() for _ in range(20)])
    assert results[:40] == [(201, 204)] * 40
    assert set(results[40:]) == {413}


def _rows(data_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "uploads.db") as db:
        return db.execute("SELECT id, final_of, completed_at FROM uploads").fetchall()


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
async def test_a_final_whose_assembly_failed_is_removed(tus_client_factory: TusClientFactory,
                                                        storage_config: dict[str, Any]):
    """A partial's bytes vanish while the final is assembled (its DELETE raced the
    final's POST): the final answers an error and leaves neither record nor bytes."""
    client = await tus_client_factory()
    data_dir = Path(storage_config["data_dir"])
    a, b = await partial(client, b"a" * (1 << 20)), await partial(client, b"b" * 100)
    os.unlink(upload_file(data_dir, b.rsplit("/", 1)[1]))  # the first copies, then this fails
    r = await client.post("/files/", headers=final(a, b))
    assert r.status == 500
    assert "Location" not in r.headers
    finals = [row for row in _rows(data_dir) if row[1]]
    assert finals == []
    assert upload_files(data_dir) == [a.rsplit("/", 1)[1]]


@pytest.mark.parametrize("storage_config", ["local"], indirect=True)
async def test_a_delete_racing_the_assembly_leaves_no_junk(tus_client_factory: TusClientFactory,
                                                           storage_config: dict[str, Any]):
    """DELETE of a partial while its final is created, many times over: whoever wins,
    no unfinished final is left (before: a 500 and the copied bytes for 24 h)."""
    client = await tus_client_factory()
    data_dir = Path(storage_config["data_dir"])
    statuses = set()
    for _ in range(15):
        a, b = await partial(client, b"a" * (4 << 20)), await partial(client, b"b" * (4 << 20))
        post, delete = await asyncio.gather(
            client.post("/files/", headers=final(a, b)), client.delete(b, headers=TUS))
        statuses.add(post.status)
        assert delete.status == 204
        assert post.status in (201, 400, 410), await post.text()
    unfinished = [row for row in _rows(data_dir) if row[1] and row[2] is None]
    assert unfinished == []
    assert statuses  # which outcomes happened depends on timing
