"""What S3 requests the driver makes, counted by the proxy in front of moto
(``s3_proxy``): HEAD is one GET, concatenation copies parts inside S3."""

from __future__ import annotations

import os

from tests.http.helpers import TUS, create, download, head, patch, path_of, upload
from tests.plugins.proxy import Forwarded
from tests.plugins.s3 import MIB, client_through_proxy


def is_part_copy(f: Forwarded) -> bool:
    return (f.method == "PUT" and "partNumber" in f.query
            and "x-amz-copy-source" in {k.lower() for k in f.headers})


async def test_head_is_one_get_of_the_record_and_never_list_parts(
        s3_proxy, aiohttp_client, s3_storage_config):
    proxy, endpoint = s3_proxy
    client = await client_through_proxy(aiohttp_client, s3_storage_config, endpoint,
                                      expiration={"sweep_interval": 0})
    data = os.urandom(12 * MIB)
    path = await create(client, len(data))
    record = ("GET", f"/{s3_storage_config['bucket']}/{s3_storage_config['prefix']}"
                     f"{path.rsplit('/', 1)[1]}.info")
    assert (await patch(client, path, 0, data[:6 * MIB])).status == 204
    # A multipart upload with a part, and a tail object: still one GET per HEAD.
    proxy.log.clear()
    for _ in range(3):
        r = await head(client, path)
        assert r.status == 200 and r.headers["Upload-Offset"] == str(6 * MIB)
    assert [(f.method, f.path) for f in proxy.log] == [record] * 3
    assert (await patch(client, path, 6 * MIB, data[6 * MIB:])).status == 204
    proxy.log.clear()
    r = await head(client, path)  # complete
    assert r.status == 200 and r.headers["Upload-Offset"] == str(len(data))
    assert [(f.method, f.path) for f in proxy.log] == [record]
    assert await download(client, path) == data


async def test_concatenating_large_partials_moves_no_bytes_through_the_daemon(
        s3_proxy, aiohttp_client, s3_storage_config):
    proxy, endpoint = s3_proxy
    client = await client_through_proxy(aiohttp_client, s3_storage_config, endpoint,
                                      expiration={"sweep_interval": 0})
    a, b = os.urandom(6 * MIB), os.urandom(5 * MIB)
    partials = [await upload(client, blob, Upload_Concat="partial") for blob in (a, b)]
    proxy.log.clear()
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(partials)})
    assert r.status == 201, await r.text()
    copies = [f for f in proxy.log if is_part_copy(f)]
    assert len(copies) == 2  # one UploadPartCopy per partial
    moved = sum(f.sent + f.received for f in proxy.log)
    assert moved < 64 * 1024, f"{moved} body bytes between the daemon and S3"
    assert not [f for f in proxy.log if f.method == "GET" and "Range" in f.headers]
    final = path_of(r.headers["Location"])
    assert await download(client, final) == a + b
