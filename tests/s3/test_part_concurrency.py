"""S3 parts of one PATCH upload at once (``part_concurrency``), within the memory bound."""

from __future__ import annotations

from tests.plugins.part_concurrency import check_memory_bound, check_parts_upload_at_once
from tests.plugins.s3 import PART_SIZE, is_part_upload


async def test_parts_of_one_patch_upload_at_once(s3_proxy, make_store):
    proxy, url = s3_proxy
    store = await make_store(endpoint_url=url, part_concurrency=3)
    await check_parts_upload_at_once(store, proxy, is_part_upload, part_size=PART_SIZE,
                                     concurrency=3)


async def test_a_patch_holds_two_parts_in_memory_and_parks_the_others(make_store):
    store = await make_store(part_concurrency=3)
    await check_memory_bound(store, part_size=PART_SIZE, concurrency=3)
