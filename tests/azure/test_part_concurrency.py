"""Azure blocks of one PATCH are staged at once (``part_concurrency``), within the memory
bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.plugins.azure import PART_SIZE, connection_string
from tests.plugins.part_concurrency import check_memory_bound, check_parts_upload_at_once
from tests.plugins.proxy import running_proxy
from tests.plugins.stores import new_upload, read_all, started_stores, write
from tusd_py.storage.azure.store import AzureStore

#: Blocks large enough that the client libraries' own buffers do not hide them.
PART = 2 * PART_SIZE


@pytest.fixture
async def make_azure_store(azure_container: str
                           ) -> AsyncIterator[Callable[..., Awaitable[AzureStore]]]:
    async with started_stores() as start:
        async def factory(port: int, **options: Any) -> AzureStore:
            return await start(AzureStore(azure_container, prefix="up/", part_size=PART,
                                          connection_string=connection_string(port), **options))

        yield factory


def is_part(request: web.Request) -> bool:
    return request.method == "PUT" and request.query.get("comp") == "block"


async def test_blocks_of_one_patch_are_staged_at_once(azurite_port, make_azure_store):
    async with running_proxy(f"http://127.0.0.1:{azurite_port}") as (proxy, url):
        store = await make_azure_store(int(url.rsplit(":", 1)[1]), part_concurrency=3)
        await check_parts_upload_at_once(store, proxy, is_part, part_size=PART, concurrency=3)
        await store.stop()


async def test_a_patch_holds_two_parts_in_memory_and_parks_the_others(azurite_port,
                                                                          make_azure_store):
    store = await make_azure_store(azurite_port, part_concurrency=3)
    await check_memory_bound(store, part_size=PART, concurrency=3)


async def test_a_refused_block_is_staged_again_from_its_start(azurite_port, make_azure_store):
    """The SDK retries a 503 with the same body (a reader over the chunks): every byte
    arrives once more, from the start."""
    async with running_proxy(f"http://127.0.0.1:{azurite_port}") as (proxy, url):
        store = await make_azure_store(int(url.rsplit(":", 1)[1]), part_concurrency=2)
        proxy.rule, proxy.failures = is_part, 2
        data = bytes(range(256)) * (3 * PART // 256) + b"tail"
        upload = await new_upload(store, len(data))
        done = await write(store, upload.id, data)
        assert proxy.refused == 2 and done.is_complete
        assert await read_all(store, done) == data
        await store.stop()
