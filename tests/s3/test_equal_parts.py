"""Equal-parts mode (``storage.equal_parts``, for Cloudflare R2): every multipart upload
the driver completes has all parts but the last of one size. Checked by a proxy in front
of moto that refuses completions as R2 does (``r2_proxy``, ``tests.plugins.r2``); without
the mode some of these uploads are refused there, with it every one completes and reads
back byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

import aiohttp
import pytest

from tests.http.helpers import TUS, create, download, head, patch, path_of, upload
from tests.plugins.r2 import EqualPartsCheck
from tests.plugins.s3 import AWS_ENV, MIB, PREFIX, client_through_proxy
from tusd_py.http.keys import STORE
from tusd_py.storage.s3.lock import UNEQUAL_PARTS

#: Not S3's 5 MiB minimum: with 5 MiB parts every cut part would be 5 MiB anyway.
PART = 6 * MIB
LENGTH = 3 * PART + 2 * MIB + 77


def sha1(data: bytes) -> str:
    import base64

    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


async def r2_client(aiohttp_client: Any, config: dict[str, Any], url: str, *,
                    equal: bool = True, **store_options: Any) -> Any:
    return await client_through_proxy(
        aiohttp_client, config, url, expiration={"sweep_interval": 0},
        store_options={"part_size": PART, "equal_parts": equal, **store_options})


async def send(client: Any, path: str, data: bytes, pieces: list[int], start: int = 0,
               **last_headers: str) -> int:
    """PATCH ``data`` from ``start`` in PATCHes of the sizes ``pieces`` (repeated; the
    last one what is left); the status of the last PATCH."""
    offset, index = start, 0
    status = 0
    while offset < len(data):
        end = min(offset + pieces[index % len(pieces)], len(data))
        extra = last_headers if end == len(data) else {}
        r = await patch(client, path, offset, data[offset:end], **extra)
        status = r.status
        if status != 204:
            return status
        offset, index = end, index + 1
    return status


def assert_equal_parts(check: EqualPartsCheck, size: int, total: int) -> None:
    """The last completion through the proxy had parts of ``size`` and a smaller last."""
    assert not check.refused, check.refused
    sizes = check.completed[-1]
    assert sizes[:-1] == [size] * (len(sizes) - 1) and 0 < sizes[-1] <= size, sizes
    assert sum(sizes) == total


@pytest.mark.parametrize("pieces", [
    [MIB], [5 * MIB], [7 * MIB + 13], [LENGTH], [5 * MIB + 100, 7 * MIB + 13, MIB, MIB],
], ids=["1MiB", "5MiB", "7MiB+13", "one-patch", "mixed"])
async def test_known_length_in_odd_patches(r2_proxy, aiohttp_client, s3_storage_config, pieces):
    check, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url)
    data = os.urandom(LENGTH)
    path = await create(client, len(data))
    assert await send(client, path, data, pieces) == 204
    assert_equal_parts(check, PART, len(data))
    assert await download(client, path) == data


async def test_deferred_length(r2_proxy, aiohttp_client, s3_storage_config):
    check, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url)
    data = os.urandom(LENGTH)
    path = await create(client, Upload_Defer_Length="1")
    assert await send(client, path, data, [7 * MIB + 13, 3 * MIB],
                      Upload_Length=str(len(data))) == 204
    assert_equal_parts(check, PART, len(data))
    assert await download(client, path) == data


async def test_a_deferred_length_upload_holds_max_parts_parts(
        r2_proxy, aiohttp_client, s3_storage_config):
    """The part size is fixed at creation, so max_parts (3 here, 10,000 on S3 and R2)
    parts of part_size are the most a deferred-length upload can hold: beyond, 413."""
    _, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url, max_parts=3)
    limit = 3 * PART
    data = os.urandom(limit)
    path = await create(client, Upload_Defer_Length="1")
    assert (await patch(client, path, 0, data[:2 * PART])).status == 204
    r = await patch(client, path, 2 * PART, os.urandom(PART + 1))  # past it, in the body
    assert r.status == 413 and "maximum upload size exceeded" in await r.text()
    r = await patch(client, path, 2 * PART, data[2 * PART:], Upload_Length=str(limit + 1))
    assert r.status == 413 and f"at most {limit} bytes" in await r.text()
    assert (await head(client, path)).headers["Upload-Offset"] == str(2 * PART)
    r = await patch(client, path, 2 * PART, data[2 * PART:], Upload_Length=str(limit))
    assert r.status == 204
    assert await download(client, path) == data


async def test_a_length_beyond_max_parts_grows_the_one_part_size(
        r2_proxy, aiohttp_client, s3_storage_config):
    """17 MiB + 5 in at most 3 parts: every part but the last is 6 MiB (rounded up to a
    MiB from a third of the length), decided at creation."""
    check, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url, max_parts=3,
                             part_size=5 * MIB)
    data = os.urandom(17 * MIB + 5)
    path = await create(client, len(data))
    assert await send(client, path, data, [4 * MIB + 7]) == 204
    assert check.completed[-1] == [6 * MIB, 6 * MIB, 5 * MIB + 5]
    assert await download(client, path) == data
    await create(client, 3 * (5 << 30) + 1, expect=413)  # parts would pass S3's 5 GiB


async def test_concatenation_of_odd_partials_is_re_cut(r2_proxy, aiohttp_client, s3_storage_config):
    """Partials of 3 MiB + 1, 0, 7 MiB + 5 and 11 MiB + 3: the two parts spanning
    partials are read and uploaded (through at most a part of memory), the two inside the
    last partial are copied within S3."""
    check, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url)
    blobs = [os.urandom(n) for n in (3 * MIB + 1, 0, 7 * MIB + 5, 11 * MIB + 3)]
    partials = [await upload(client, blob, Upload_Concat="partial") for blob in blobs]
    store = client.server.app[STORE]
    store.buffer_gauge.reset()
    check.uploads = check.copies = 0
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(partials)})
    assert r.status == 201, await r.text()
    whole = b"".join(blobs)
    assert_equal_parts(check, PART, len(whole))
    assert (check.uploads, check.copies) == (2, 2)
    assert store.buffer_gauge.peak <= PART + 64 * 1024
    assert await download(client, path_of(r.headers["Location"])) == whole


async def test_a_checksum_mismatch_mid_part_then_resume(r2_proxy, aiohttp_client, s3_storage_config):
    """A PATCH that cut and uploaded a part before its checksum failed (460) leaves
    nothing; the retry re-sends the same part number with the same size."""
    check, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url)
    data = os.urandom(LENGTH)
    path = await create(client, len(data))
    assert (await patch(client, path, 0, data[:4 * MIB])).status == 204
    piece = data[4 * MIB:11 * MIB + 13]
    r = await patch(client, path, 4 * MIB, piece, Upload_Checksum=sha1(b"other bytes"))
    assert r.status == 460
    assert check.uploads >= 1  # a part was uploaded before the body ended
    assert (await head(client, path)).headers["Upload-Offset"] == str(4 * MIB)
    assert (await patch(client, path, 4 * MIB, piece, Upload_Checksum=sha1(piece))).status == 204
    assert await send(client, path, data, [LENGTH], start=11 * MIB + 13) == 204
    assert_equal_parts(check, PART, len(data))
    assert await download(client, path) == data


@pytest.mark.parametrize("scenario", ["mixed-patches", "deferred-doubling", "concatenation"])
async def test_without_the_mode_the_proxy_refuses(r2_proxy, aiohttp_client, s3_storage_config,
                                                  scenario):
    """The same uploads with parts sized as usual: R2 (the proxy) refuses to complete
    them, and the client's 500 says why; the upload can still be deleted."""
    check, url = r2_proxy
    client = await r2_client(aiohttp_client, s3_storage_config, url, equal=False,
                             max_parts=3 if scenario == "deferred-doubling" else 10_000,
                             part_size=5 * MIB if scenario == "deferred-doubling" else PART)
    if scenario == "concatenation":
        blobs = [os.urandom(n) for n in (3 * MIB + 1, 7 * MIB + 5, 11 * MIB + 3)]
        partials = [await upload(client, blob, Upload_Concat="partial") for blob in blobs]
        check.completed.clear()  # the partials' own parts were sized alike
        r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(partials)})
        assert r.status == 500 and "InvalidPart" in await r.text()
    else:
        data = os.urandom(LENGTH if scenario == "mixed-patches" else 16 * MIB)
        if scenario == "mixed-patches":
            path = await create(client, len(data))
            status = await send(client, path, data, [5 * MIB + 100, 7 * MIB + 13, MIB, MIB])
        else:  # deferred: parts of 5, 10, then 20 MiB
            path = await create(client, Upload_Defer_Length="1")
            r = await patch(client, path, 0, data, Upload_Length=str(len(data)))
            status = r.status
            assert UNEQUAL_PARTS in await r.text()
        assert status == 500
        assert (await client.delete(path, headers=TUS)).status == 204
    assert check.refused and not check.completed


async def test_the_part_size_survives_a_restart(r2_proxy, daemon_factory, s3_daemon_env, s3_client,
                                                s3_storage_config):
    """A real daemon restarted mid-upload with another part_size: the upload keeps the
    part size recorded when it was created."""
    check, url = r2_proxy
    env = {**s3_daemon_env, **AWS_ENV, "TUSD_STORAGE__ENDPOINT_URL": url,
           "TUSD_STORAGE__EQUAL_PARTS": "true", "TUSD_STORAGE__PART_SIZE": "6MiB"}
    # Started and stopped in threads: the daemon talks to the proxy on this event loop.
    daemon = await asyncio.to_thread(daemon_factory, env)
    data = os.urandom(18 * MIB + 13)
    async with aiohttp.ClientSession(daemon.root) as session:
        path = await create(session, Upload_Defer_Length="1")
        assert (await patch(session, path, 0, data[:8 * MIB])).status == 204
    assert await asyncio.to_thread(daemon.terminate) == 0
    record = json.loads(s3_client.get_object(
        Bucket=s3_storage_config["bucket"],
        Key=f"{PREFIX}{path.rsplit('/', 1)[1]}.info")["Body"].read())
    assert record["part_size"] == PART
    env["TUSD_STORAGE__PART_SIZE"] = "5MiB"
    daemon = await asyncio.to_thread(daemon_factory, env, None, daemon.port)
    async with aiohttp.ClientSession(daemon.root) as session:
        assert await send(session, path, data, [7 * MIB + 13, 3 * MIB], start=8 * MIB,
                          Upload_Length=str(len(data))) == 204
        assert await download(session, path) == data
    assert check.completed == [[PART, PART, PART, 13]]
