"""The requests of a sweep do not grow with the container (Azurite behind a counting
proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.plugins.azure import connection_string
from tests.plugins.proxy import Forwarded, StoreProxy, running_proxy
from tests.plugins.sweep_cost import check_sweep_cost_is_flat


@pytest.fixture
async def azure_proxy(azurite_port: int) -> AsyncIterator[tuple[StoreProxy, str]]:
    async with running_proxy(f"http://127.0.0.1:{azurite_port}") as running:
        yield running


def is_list(f: Forwarded) -> bool:
    """List Blobs."""
    return f.method == "GET" and f.query.get("comp") == "list"


@pytest.mark.timeout(360)  # 3,000 uploads made through the emulator: ~100 s at a load of 12
async def test_sweep_cost_is_flat_from_an_empty_container_to_thousands_of_uploads(
        azure_proxy, aiohttp_client, azure_storage_config):
    proxy, url = azure_proxy
    port = int(url.rsplit(":", 1)[1])
    await check_sweep_cost_is_flat(aiohttp_client, azure_storage_config,
                                   {"connection_string": connection_string(port)}, proxy,
                                   is_list)
