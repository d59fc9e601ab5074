"""S3-specific behaviour over real HTTP (in-process app on moto): concatenation with
server-side part copies, the sweeper, readiness and S3 failures."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.http.helpers import TUS, create, download, head, patch, path_of, upload, wait_expired
from tests.plugins.app import make_config
from tests.plugins.object_stores import GARBAGE, check_corrupt_record, without_index
from tusd_py.core.sweeper import sweep_once
from tusd_py.http.app import create_app
from tusd_py.http.keys import HANDLER

MIB = 1 << 20


@pytest.fixture
def s3_app_factory(aiohttp_client, s3_storage_config):  # type: ignore[no-untyped-def]
    async def factory(storage: dict[str, Any] | None = None, **sections: dict[str, Any]):  # type: ignore[no-untyped-def]
        config = make_config({**s3_storage_config, **(storage or {})}, **sections)
        return await aiohttp_client(create_app(config))

    return factory


def _parts_in(s3_client: Any, bucket: str, key: str) -> int:
    etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


async def test_concatenation_of_partials_above_and_below_5_mib(
        s3_app_factory, s3_client, s3_bucket, s3_storage_config):
    client = await s3_app_factory()
    prefix = s3_storage_config["prefix"]
    blobs = {"a": os.urandom(6 * MIB), "b": os.urandom(5 * MIB), "c": os.urandom(MIB),
             "d": os.urandom(100)}
    paths = {}
    for name, data in blobs.items():
        paths[name] = await upload(client, data, chunk=4 * MIB, Upload_Concat="partial")

    async def final(order: str) -> str:
        r = await client.post("/files/", headers={
            **TUS, "Upload-Concat": "final;" + " ".join(paths[n] for n in order)})
        assert r.status == 201, await r.text()
        return path_of(r.headers["Location"])

    # a b c: three UploadPartCopy parts (the last one small), no byte through the daemon
    abc = await final("abc")
    assert await download(client, abc) == blobs["a"] + blobs["b"] + blobs["c"]
    assert _parts_in(s3_client, s3_bucket, prefix + abc.rsplit("/", 1)[1]) == 3
    # c a d b: small partials and remainders are re-uploaded through a 5 MiB buffer
    cadb = await final("cadb")
    assert await download(client, cadb) == blobs["c"] + blobs["a"] + blobs["d"] + blobs["b"]
    assert _parts_in(s3_client, s3_bucket, prefix + cadb.rsplit("/", 1)[1]) == 3
    # only small partials: one PutObject
    cd = await final("cd")
    assert await download(client, cd) == blobs["c"] + blobs["d"]
    r = await head(client, cd)
    assert r.headers["Upload-Offset"] == str(MIB + 100)
    r = await client.get(cadb, headers={"Range": f"bytes={7 * MIB}-{7 * MIB + 99}"})
    assert r.status == 206
    whole = blobs["c"] + blobs["a"] + blobs["d"] + blobs["b"]
    assert await r.read() == whole[7 * MIB:7 * MIB + 100]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


async def test_sweeper_aborts_dangling_multipart_uploads(
        s3_app_factory, s3_client, s3_bucket, s3_storage_config):
    client = await s3_app_factory(expiration={"sweep_interval": 0})
    prefix = s3_storage_config["prefix"]
    data = os.urandom(7 * MIB)
    path = await create(client, len(data))
    upload_id = path.rsplit("/", 1)[1]
    assert (await patch(client, path, 0, data[:6 * MIB])).status == 204
    [live] = s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]

    # A replica died after starting a multipart upload but before recording it, and
    # another one's upload record is gone (deleted by hand, or a crash mid-termination).
    orphan_id = "f" * 32
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key=prefix + upload_id)
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key=prefix + orphan_id)
    s3_client.put_object(Bucket=s3_bucket, Key=prefix + orphan_id + ".part", Body=b"stray")
    s3_client.put_object(Bucket=s3_bucket, Key="unrelated/object", Body=b"keep")
    assert len(s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]) == 3

    deleted = await sweep_once(client.app[HANDLER], now=time.time() + 60)
    assert deleted == 0  # nothing expired
    left = s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    assert [u["UploadId"] for u in left] == [live["UploadId"]]
    names = without_index(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert prefix + orphan_id + ".part" not in names
    assert "unrelated/object" in names

    # the live upload is intact and finishes
    assert (await patch(client, path, 6 * MIB, data[6 * MIB:])).status == 204
    assert await download(client, path) == data


async def test_expired_upload_is_aborted_and_deleted(s3_app_factory, s3_client, s3_bucket):
    client = await s3_app_factory(expiration={"after": 3, "sweep_interval": 0})  # room for a slow PATCH
    path = await create(client, 20 * MIB)
    assert (await patch(client, path, 0, os.urandom(6 * MIB))).status == 204
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    await wait_expired(client, path)
    assert await sweep_once(client.app[HANDLER]) == 1
    assert (await head(client, path)).status == 404
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert without_index(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get(
        "Contents", [])) == set()


async def test_readyz_503_when_bucket_unreachable(s3_app_factory):
    client = await s3_app_factory(storage={"bucket": "no-such-bucket-here"})
    r = await client.get("/readyz")
    assert r.status == 503
    assert "storage not ready" in await r.text()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 500
    assert "bucket does not exist" in await r.text()


async def test_s3_down_is_503_with_a_clear_message(aiohttp_client, s3_storage_config):
    from tests.plugins.daemon import free_port
    from tusd_py.storage.s3.store import S3Store

    config = make_config(s3_storage_config)
    store = S3Store(s3_storage_config["bucket"], endpoint_url=f"http://127.0.0.1:{free_port()}",
                    region="us-east-1", retry_attempts=1)
    client = await aiohttp_client(create_app(config, store=store))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 503
    assert "storage unreachable" in await r.text()
    assert (await client.get("/readyz")).status == 503


async def test_a_corrupt_record_is_a_storage_error(s3_app_factory, s3_client, s3_bucket,
                                                   s3_storage_config):
    """An ``.info`` that is not JSON (written with the emulator's own client) is a 500
    with the reason, never an unhandled exception."""
    client = await s3_app_factory()
    prefix = s3_storage_config["prefix"]
    await check_corrupt_record(client, lambda upload_id: s3_client.put_object(
        Bucket=s3_bucket, Key=f"{prefix}{upload_id}.info", Body=GARBAGE))
