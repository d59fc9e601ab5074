"""Small PATCHes on Azure: a PATCH's remainder is staged as a short block (blocks have
no minimum size), so each byte is sent once (the proxy in front of Azurite counts
them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.plugins.azure import PART_SIZE, connection_string
from tests.plugins.proxy import StoreProxy, running_proxy
from tests.plugins.stores import started_stores
from tests.plugins.write_amplification import amplification
from tusd_py.storage.azure.store import AzureStore


@pytest.fixture
async def proxied(azurite_port: int, azure_container: str
                  ) -> AsyncIterator[tuple[AzureStore, StoreProxy]]:
    async with running_proxy(f"http://127.0.0.1:{azurite_port}") as (proxy, url), \
            started_stores() as start:
        port = int(url.rsplit(":", 1)[1])
        yield await start(AzureStore(azure_container, prefix="up/", part_size=PART_SIZE,
                                     connection_string=connection_string(port))), proxy


async def test_small_patches_send_each_byte_once(proxied):
    store, proxy = proxied
    ratio = await amplification(store, proxy, patch=PART_SIZE // 4, patches=24)
    assert ratio < 1.05, ratio
