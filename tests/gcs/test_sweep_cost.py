"""The requests of a sweep do not grow with the bucket (fake-gcs-server behind a
counting proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.plugins.proxy import Forwarded, StoreProxy, running_proxy
from tests.plugins.sweep_cost import check_sweep_cost_is_flat


@pytest.fixture
async def gcs_proxy(gcs_endpoint: str) -> AsyncIterator[tuple[StoreProxy, str]]:
    async with running_proxy(gcs_endpoint) as running:
        yield running


def is_list(f: Forwarded) -> bool:
    """objects.list: GET .../b/{bucket}/o without an object name."""
    return f.method == "GET" and f.path.rstrip("/").endswith("/o")


@pytest.mark.timeout(360)  # 3,000 uploads made through the emulator: ~100 s at a load of 12
async def test_sweep_cost_is_flat_from_an_empty_bucket_to_thousands_of_uploads(
        gcs_proxy, aiohttp_client, gcs_storage_config):
    proxy, url = gcs_proxy
    await check_sweep_cost_is_flat(aiohttp_client, gcs_storage_config, {"endpoint_url": url},
                                   proxy, is_list)
