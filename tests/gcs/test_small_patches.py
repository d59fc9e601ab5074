"""Small PATCHes on GCS: a PATCH's remainder becomes a part object of its own, merged
with the previous small one by a server-side compose, so each byte is sent once (the
proxy in front of fake-gcs-server counts them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.plugins.gcs import PART_SIZE
from tests.plugins.proxy import StoreProxy, running_proxy
from tests.plugins.stores import started_stores
from tests.plugins.write_amplification import amplification
from tusd_py.storage.gcs.store import GCSStore


@pytest.fixture
async def proxied(gcs_endpoint: str, gcs_bucket: str) -> AsyncIterator[tuple[GCSStore, StoreProxy]]:
    async with running_proxy(gcs_endpoint) as (proxy, url), started_stores() as start:
        yield await start(GCSStore(gcs_bucket, prefix="up/", endpoint_url=url,
                                   part_size=PART_SIZE)), proxy


async def test_small_patches_send_each_byte_once(proxied):
    store, proxy = proxied
    ratio = await amplification(store, proxy, patch=PART_SIZE // 4, patches=24)
    assert ratio < 1.1, ratio  # bodies carry a little JSON and multipart framing
