"""The access tier on Azure, over HTTP. Azurite accepts and keeps ``x-ms-access-tier``
on Put Blob and Put Block List (Get Blob Properties reports it, not inferred), so every
blob the driver wrote is checked there; a real HTTP proxy in front of Azurite also
refuses any request making a blob without the tier, so no write goes unchecked (a blob
rewritten later would hide an earlier one)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.plugins.app import make_config
from tests.plugins.azure import connection_string
from tests.plugins.encryption import enforce, missing_headers, run_upload_set
from tests.plugins.proxy import running_proxy
from tusd_py.http.app import create_app


def makes_blob(request: web.Request) -> bool:
    """Put Blob or Put Block List (Put Block stages bytes: no tier of its own)."""
    comp = request.query.get("comp")
    return request.method == "PUT" and "restype" not in request.query and (
        comp is None or comp == "blocklist")


def policy(request: web.Request, body: bytes) -> str | None:
    return missing_headers(request, {"x-ms-access-tier": "Cool"}) if makes_blob(request) else None


async def test_every_blob_is_written_in_the_tier(aiohttp_client, azurite_port,
                                                 azure_storage_config, azure_container_client):
    async with running_proxy(f"http://127.0.0.1:{azurite_port}") as (proxy, url):
        refused = enforce(proxy, policy)
        port = int(url.rsplit(":", 1)[1])
        storage = {**azure_storage_config, "connection_string": connection_string(port),
                   "access_tier": "cool"}
        client = await aiohttp_client(create_app(make_config(storage, expiration={"sweep_interval": 0})))
        await run_upload_set(client)
        assert refused == []
        made = [f for f in proxy.log if f.method == "PUT" and f.query.get("comp") in (None, "blocklist")]
        assert {f.query.get("comp") for f in made} == {None, "blocklist"}
    tiers: dict[str, Any] = {}
    for item in azure_container_client.list_blobs():
        props = azure_container_client.get_blob_client(item.name).get_blob_properties()
        tiers[item.name] = (item.blob_tier, props.blob_tier, props.blob_tier_inferred)
    assert any(name.endswith(".info") for name in tiers)
    assert {v for v in tiers.values()} <= {("Cool", "Cool", False), ("Cool", "Cool", None)}, tiers


async def test_without_the_tier_the_first_write_is_refused(aiohttp_client, azurite_port,
                                                           azure_storage_config):
    async with running_proxy(f"http://127.0.0.1:{azurite_port}") as (proxy, url):
        refused = enforce(proxy, policy)
        port = int(url.rsplit(":", 1)[1])
        storage = {**azure_storage_config, "connection_string": connection_string(port)}
        client = await aiohttp_client(create_app(make_config(storage)))
        r = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
        assert r.status == 500
        assert refused and "x-ms-access-tier" in refused[0].why

