"""GCS part objects of one PATCH upload at once (``part_concurrency``), within the memory
bound."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.plugins.gcs import PART_SIZE
from tests.plugins.part_concurrency import check_memory_bound, check_parts_upload_at_once
from tests.plugins.proxy import running_proxy
from tests.plugins.stores import new_upload, read_all, started_stores, write
from tusd_py.storage.gcs.store import GCSStore

#: Parts large enough that the client libraries' own buffers do not hide them.
PART = 4 * PART_SIZE


@pytest.fixture
async def make_gcs_store(gcs_bucket: str) -> AsyncIterator[Callable[..., Awaitable[GCSStore]]]:
    async with started_stores() as start:
        async def factory(endpoint_url: str, **options: Any) -> GCSStore:
            return await start(GCSStore(gcs_bucket, prefix="up/", endpoint_url=endpoint_url,
                                        part_size=PART, **options))

        yield factory


def is_part(request: web.Request) -> bool:
    return request.method == "POST" and ".p0" in request.query.get("name", "")


async def test_parts_of_one_patch_upload_at_once(gcs_endpoint, make_gcs_store):
    async with running_proxy(gcs_endpoint) as (proxy, url):
        store = await make_gcs_store(url, part_concurrency=3)
        await check_parts_upload_at_once(store, proxy, is_part, part_size=PART, concurrency=3)
        await store.stop()


async def test_a_patch_holds_two_parts_in_memory_and_parks_the_others(gcs_endpoint,
                                                                          make_gcs_store):
    store = await make_gcs_store(gcs_endpoint, part_concurrency=3)
    await check_memory_bound(store, part_size=PART, concurrency=3)


async def test_a_patch_of_more_parts_than_one_compose_takes(gcs_endpoint, gcs_bucket):
    """A PATCH of 32 + part_concurrency parts: its commit collects the parts in flight all at
    once, more than the 32 one compose takes, and composes them in turns; the bytes read
    back are the bytes sent."""
    async with started_stores() as start:
        store = await start(GCSStore(gcs_bucket, prefix="up/", endpoint_url=gcs_endpoint,
                                     part_size=PART_SIZE, part_concurrency=8))
        data = os.urandom((32 + 8) * PART_SIZE - 1234)
        upload = await new_upload(store, len(data))
        up = await write(store, upload.id, data)
        assert up.is_complete and up.offset == len(data)
        assert await read_all(store, up) == data
