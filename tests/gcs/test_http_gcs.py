"""GCS-specific behaviour over real HTTP (in-process app on fake-gcs-server):
concatenation by compose, the sweeper, readiness and storage failures."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.http.helpers import TUS, create, download, head, patch, path_of, upload, wait_expired
from tests.plugins.app import make_config
from tests.plugins.gcs import PART_SIZE
from tests.plugins.object_stores import GARBAGE, check_corrupt_record
from tusd_py.core.sweeper import sweep_once
from tusd_py.http.app import create_app
from tusd_py.http.keys import HANDLER

KIB = 1 << 10


@pytest.fixture
def gcs_app_factory(aiohttp_client, gcs_storage_config):  # type: ignore[no-untyped-def]
    async def factory(storage: dict[str, Any] | None = None, **sections: dict[str, Any]):  # type: ignore[no-untyped-def]
        config = make_config({**gcs_storage_config, **(storage or {})}, **sections)
        return await aiohttp_client(create_app(config))

    return factory


async def test_concatenation_is_composed_server_side(gcs_app_factory, gcs_objects, gcs_bucket,
                                                     gcs_storage_config):
    client = await gcs_app_factory()
    prefix = gcs_storage_config["prefix"]
    blobs = {"a": os.urandom(3 * PART_SIZE + 5), "b": os.urandom(PART_SIZE), "c": b"",
             "d": os.urandom(100)}
    paths = {name: await upload(client, data, chunk=PART_SIZE + 17, Upload_Concat="partial")
             for name, data in blobs.items()}

    async def final(order: str, **headers: str) -> str:
        r = await client.post("/files/", headers={
            **TUS, "Upload-Concat": "final;" + " ".join(paths[n] for n in order), **headers})
        assert r.status == 201, await r.text()
        return path_of(r.headers["Location"])

    abcd = await final("abcd", **{"Upload-Metadata": "filetype dGV4dC9wbGFpbg=="})
    whole = blobs["a"] + blobs["b"] + blobs["c"] + blobs["d"]
    assert await download(client, abcd) == whole
    assert (await head(client, abcd)).headers["Upload-Offset"] == str(len(whole))
    r = await client.get(abcd, headers={"Range": "bytes=100-299"})
    assert r.status == 206 and await r.read() == whole[100:300]
    objects = gcs_objects(gcs_bucket)
    key = prefix + abcd.rsplit("/", 1)[1]
    assert objects[key] == len(whole)
    assert not [n for n in objects if ".p" in n or ".c-" in n]  # no part left anywhere
    # 40 partials: composed in two rounds (32 + 8, then 2)
    many = [os.urandom(1000 + i) for i in range(40)]
    many_paths = [await upload(client, data, Upload_Concat="partial") for data in many]
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(many_paths)})
    assert r.status == 201, await r.text()
    assert await download(client, path_of(r.headers["Location"])) == b"".join(many)
    assert not [n for n in gcs_objects(gcs_bucket) if ".c-" in n]


async def test_sweeper_deletes_stray_objects_only(gcs_app_factory, gcs_objects, gcs_bucket,
                                                  gcs_storage_config):
    client = await gcs_app_factory(expiration={"sweep_interval": 0})
    store = client.app[HANDLER].store
    prefix = gcs_storage_config["prefix"]
    data = os.urandom(4 * PART_SIZE)
    path = await create(client, len(data))
    assert (await patch(client, path, 0, data[:PART_SIZE + 10])).status == 204
    # a part and a temporary of an upload whose record is gone; objects that are not
    # the driver's temporaries are kept, whatever their names
    orphan = "f" * 32
    stray = {f"{prefix}{orphan}.p000001-abcdef012345", f"{prefix}{orphan}.c-0123456789ab"}
    kept = {f"{prefix}{orphan}", f"{prefix}{orphan}.txt", "unrelated/object"}
    for name in stray | kept:
        await store.bucket.put(name, b"stray", what="test")
    assert await sweep_once(client.app[HANDLER], now=time.time() + 60) == 0  # nothing expired
    names = set(gcs_objects(gcs_bucket))
    assert not names & stray
    assert kept <= names
    assert (await patch(client, path, PART_SIZE + 10, data[PART_SIZE + 10:])).status == 204
    assert await download(client, path) == data


async def test_expired_upload_is_deleted(gcs_app_factory, gcs_objects, gcs_bucket):
    client = await gcs_app_factory(expiration={"after": 3, "sweep_interval": 0})  # room for a slow PATCH
    path = await create(client, 20 * PART_SIZE)
    assert (await patch(client, path, 0, os.urandom(3 * PART_SIZE))).status == 204
    await wait_expired(client, path)
    assert await sweep_once(client.app[HANDLER]) == 1
    assert (await head(client, path)).status == 404
    assert gcs_objects(gcs_bucket) == {}


async def test_readyz_and_requests_fail_clearly_without_the_bucket(gcs_app_factory):
    client = await gcs_app_factory(storage={"bucket": "no-such-bucket-here"})
    r = await client.get("/readyz")
    assert r.status == 503
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 500
    assert "not found" in await r.text()


async def test_gcs_down_is_503_with_a_clear_message(aiohttp_client, gcs_storage_config):
    from tests.plugins.daemon import free_port
    from tusd_py.storage.gcs.store import GCSStore

    config = make_config(gcs_storage_config)
    store = GCSStore(gcs_storage_config["bucket"], endpoint_url=f"http://127.0.0.1:{free_port()}",
                     retry_attempts=2)
    client = await aiohttp_client(create_app(config, store=store))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 503
    assert "storage unreachable" in await r.text()
    assert (await client.get("/readyz")).status == 503


async def test_a_corrupt_record_is_a_storage_error(gcs_app_factory, gcs_put, gcs_bucket, gcs_storage_config):
    """An ``.info`` that is not JSON (written with the emulator's own client) is a 500
    with the reason, never an unhandled exception."""
    client = await gcs_app_factory()
    prefix = gcs_storage_config["prefix"]
    await check_corrupt_record(client, lambda upload_id: gcs_put(
        gcs_bucket, f"{prefix}{upload_id}.info", GARBAGE))
