"""The requests of a sweep do not grow with the bucket (moto behind a counting proxy)."""

from __future__ import annotations

import pytest

from tests.plugins.proxy import Forwarded
from tests.plugins.sweep_cost import check_sweep_cost_is_flat


def is_list(f: Forwarded) -> bool:
    """ListObjectsV2, ListMultipartUploads."""
    return f.method == "GET" and ("list-type" in f.query or "uploads" in f.query)


@pytest.mark.timeout(360)  # 3,000 uploads made through the emulator: ~100 s at a load of 12
async def test_sweep_cost_is_flat_from_an_empty_bucket_to_thousands_of_uploads(
        s3_proxy, aiohttp_client, s3_storage_config):
    proxy, url = s3_proxy
    await check_sweep_cost_is_flat(aiohttp_client, s3_storage_config, {"endpoint_url": url},
                                   proxy, is_list)
