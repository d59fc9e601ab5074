"""Azure-specific behaviour over real HTTP (in-process app on Azurite): concatenation
with Put Block From URL, the sweeper, readiness and Azure failures."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.http.helpers import TUS, b64, create, download, head, patch, path_of, upload, wait_expired
from tests.plugins.app import make_config
from tests.plugins.object_stores import GARBAGE, check_corrupt_record, without_index
from tusd_py.core.sweeper import sweep_once
from tusd_py.http.app import create_app
from tusd_py.http.keys import HANDLER, STORE

MIB = 1 << 20


@pytest.fixture
def azure_app_factory(aiohttp_client, azure_storage_config):  # type: ignore[no-untyped-def]
    async def factory(storage: dict[str, Any] | None = None, **sections: dict[str, Any]):  # type: ignore[no-untyped-def]
        config = make_config({**azure_storage_config, **(storage or {})}, **sections)
        return await aiohttp_client(create_app(config))

    return factory


def blob_names(container: Any) -> set[str]:
    return without_index(b.name for b in container.list_blobs(include=["uncommittedblobs"]))


async def test_concatenation_with_put_block_from_url(azure_app_factory, azure_container_client,
                                                     azure_storage_config):
    client = await azure_app_factory()
    prefix = azure_storage_config["prefix"]
    blobs = {"a": os.urandom(2 * MIB + 3), "b": os.urandom(100), "c": os.urandom(MIB)}
    paths = {name: await upload(client, data, chunk=MIB, Upload_Concat="partial")
             for name, data in blobs.items()}
    r = await client.post("/files/", headers={
        **TUS, "Upload-Concat": "final;" + " ".join(paths[n] for n in "cab"),
        "Upload-Metadata": f"filename {b64('all.bin')}"})
    assert r.status == 201, await r.text()
    final = path_of(r.headers["Location"])
    whole = blobs["c"] + blobs["a"] + blobs["b"]
    assert await download(client, final) == whole
    assert client.app[STORE].copy_from_url  # no byte went through the daemon
    blob = azure_container_client.get_blob_client(prefix + final.rsplit("/", 1)[1])
    committed, _ = blob.get_block_list("committed")
    assert [block.size for block in committed] == [MIB, 2 * MIB + 3, 100]
    props = blob.get_blob_properties()
    assert props.content_settings.content_disposition.startswith('attachment; filename="all.bin"')
    r = await client.get(final, headers={"Range": f"bytes={MIB - 50}-{MIB + 49}"})
    assert r.status == 206
    assert await r.read() == whole[MIB - 50:MIB + 50]
    assert (await head(client, final)).headers["Upload-Concat"].startswith("final;")


async def test_expired_upload_is_deleted_with_its_blocks(azure_app_factory, azure_container_client):
    client = await azure_app_factory(expiration={"after": 3, "sweep_interval": 0})  # room for a slow PATCH
    path = await create(client, 5 * MIB)
    assert (await patch(client, path, 0, os.urandom(MIB + 5))).status == 204
    assert len(blob_names(azure_container_client)) == 2  # .info + the uncommitted blob
    await wait_expired(client, path)
    assert await sweep_once(client.app[HANDLER]) == 1
    assert (await head(client, path)).status == 404
    assert blob_names(azure_container_client) == set()


async def test_sweeper_removes_blobs_without_record(azure_app_factory, azure_container_client,
                                                    azure_storage_config):
    client = await azure_app_factory(expiration={"sweep_interval": 0})
    prefix = azure_storage_config["prefix"]
    path = await create(client, 3 * MIB)
    assert (await patch(client, path, 0, os.urandom(MIB))).status == 204
    azure_container_client.get_blob_client(prefix + "f" * 32).upload_blob(b"stray")
    azure_container_client.get_blob_client("unrelated/blob").upload_blob(b"keep")
    handler = client.app[HANDLER]
    assert await sweep_once(handler, now=time.time()) == 0  # nothing expired
    names = blob_names(azure_container_client)
    assert prefix + "f" * 32 not in names and "unrelated/blob" in names
    assert (await head(client, path)).headers["Upload-Offset"] == str(MIB)


async def test_readyz_503_and_clear_500_when_container_is_missing(azure_app_factory):
    client = await azure_app_factory(storage={"container": "no-such-container"})
    r = await client.get("/readyz")
    assert r.status == 503
    assert "storage not ready" in await r.text()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 500
    assert "container does not exist" in await r.text()


async def test_azure_down_is_503_with_a_clear_message(aiohttp_client, azure_storage_config):
    from tests.plugins.azure import connection_string
    from tests.plugins.daemon import free_port
    from tusd_py.storage.azure.store import AzureStore

    config = make_config(azure_storage_config)
    store = AzureStore("c", connection_string=connection_string(free_port()))
    store._client_options = lambda: {"retry_total": 0}  # type: ignore[method-assign]
    client = await aiohttp_client(create_app(config, store=store))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 503
    assert "storage unreachable" in await r.text()
    assert (await client.get("/readyz")).status == 503


async def test_driver_from_environment_connection_string(daemon_factory, azure_storage_config):
    """``AZURE_STORAGE_CONNECTION_STRING`` instead of storage.connection_string."""
    import aiohttp

    env = {"TUSD_STORAGE__DRIVER": "azure", "TUSD_STORAGE__CONTAINER": azure_storage_config["container"],
           "AZURE_STORAGE_CONNECTION_STRING": azure_storage_config["connection_string"]}
    daemon = daemon_factory(env=env)
    async with aiohttp.ClientSession() as http:
        async with http.get(daemon.root + "/readyz") as r:
            assert r.status == 200
        async with http.post(daemon.url, headers={**TUS, "Upload-Length": "5"}) as r:
            assert r.status == 201
            location = r.headers["Location"]
        async with http.patch(location, data=b"hello", headers={
                **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
            assert r.status == 204
        async with http.get(location) as r:
            assert await r.read() == b"hello"


async def test_create_container_at_start(azure_app_factory, azure_container,
                                         azurite_connection_string):
    """``storage.create_container``: a missing container is created (once; an existing
    one is left alone)."""
    from azure.storage.blob import BlobServiceClient

    name = f"{azure_container}-new"
    client = await azure_app_factory(storage={"container": name, "create_container": True})
    try:
        assert (await client.get("/readyz")).status == 200
        path = await upload(client, b"made it")
        assert await download(client, path) == b"made it"
        again = await azure_app_factory(storage={"container": name, "create_container": True})
        assert (await head(again, path)).headers["Upload-Offset"] == "7"
    finally:
        with BlobServiceClient.from_connection_string(azurite_connection_string) as service:
            service.delete_container(name)


async def test_a_corrupt_record_is_a_storage_error(azure_app_factory, azure_container_client,
                                                   azure_storage_config):
    """An ``.info`` that is not JSON (written with the emulator's own client) is a 500
    with the reason, never an unhandled exception."""
    client = await azure_app_factory()
    prefix = azure_storage_config["prefix"]
    await check_corrupt_record(client, lambda upload_id: azure_container_client.upload_blob(
        f"{prefix}{upload_id}.info", GARBAGE, overwrite=True))
