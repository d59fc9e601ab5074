"""Small PATCHes on S3: S3 wants parts of 5 MiB (except the last), so bytes that do not
fill a part are stored as tail segments and sent once more inside the part they end up
in; each PATCH's own bytes are sent once, and the tail becomes a part as soon as it
reaches 5 MiB. Bytes counted by the proxy in front of moto (5 MiB parts here)."""

from __future__ import annotations

from tests.plugins.s3 import MIB
from tests.plugins.write_amplification import amplification


async def test_one_mib_patches_send_each_byte_at_most_twice(s3_proxy, make_store):
    proxy, url = s3_proxy
    store = await make_store(endpoint_url=url)
    # 4 segments of 1 MiB, then the fifth PATCH makes a 5 MiB part of them: 9 MiB per 5
    ratio = await amplification(store, proxy, patch=MIB, patches=20)
    assert ratio < 1.85, ratio


async def test_patches_of_a_part_send_each_byte_once(s3_proxy, make_store):
    proxy, url = s3_proxy
    store = await make_store(endpoint_url=url)
    ratio = await amplification(store, proxy, patch=5 * MIB, patches=4)
    assert ratio < 1.01, ratio


async def test_a_tail_of_five_mib_becomes_a_part_at_commit(s3_proxy, make_store):
    """8 MiB parts: a 6 MiB PATCH leaves 6 MiB that fill no 8 MiB part; it is stored as
    a (shorter) part at once, not as a tail to be sent again."""
    proxy, url = s3_proxy
    store = await make_store(endpoint_url=url, part_size=8 * MIB)
    ratio = await amplification(store, proxy, patch=6 * MIB, patches=3)
    assert ratio < 1.01, ratio


async def test_equal_parts_send_patches_of_whole_parts_once(s3_proxy, make_store):
    """Equal-parts mode: a PATCH of whole parts sends its bytes once; any other PATCH's
    bytes past its last whole part wait in a tail segment and are sent once more inside
    the next part (never as a shorter part): up to twice."""
    proxy, url = s3_proxy
    store = await make_store(endpoint_url=url, part_size=8 * MIB, equal_parts=True)
    assert await amplification(store, proxy, patch=8 * MIB, patches=3) < 1.01
    ratio = await amplification(store, proxy, patch=MIB, patches=24)
    assert 1.8 < ratio < 2.0, ratio
    ratio = await amplification(store, proxy, patch=7 * MIB + 13, patches=4)
    assert 1.5 < ratio < 2.0, ratio
