"""Customer-managed encryption keys and storage class on GCS, over HTTP.

fake-gcs-server ignores ``kmsKeyName`` (it reports none) and keeps ``storageClass`` only
from an upload that sends a resource (multipart), not from a compose or a rewrite. So a
real HTTP proxy in front of it refuses, as an organisation policy requiring CMEK would,
any request making an object without the key (insert, compose, rewrite), and any that
sends a resource without the storage class; what the emulator does keep is asserted.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.http.helpers import b64, download, upload
from tests.plugins.app import make_config
from tests.plugins.encryption import enforce, run_upload_set
from tests.plugins.proxy import running_proxy
from tusd_py.http.app import create_app

KEY = "projects/tus/locations/us/keyRings/uploads/cryptoKeys/objects"
KEYS = {"kms_key_name": KEY, "storage_class": "NEARLINE"}


def resource_of(body: bytes) -> dict[str, Any]:
    """The JSON resource of a multipart upload's body (its first part)."""
    match = re.search(rb"\r\n\r\n(\{.*?\})\r\n--", body, re.S)
    assert match, body[:200]
    resource: dict[str, Any] = json.loads(match.group(1))
    return resource


def policy(request: web.Request, body: bytes) -> str | None:
    """Why a request making an object breaks the policy (None: it does not)."""
    if request.method != "POST":
        return None
    query = request.query
    if request.path.startswith("/upload/storage/v1/b/"):  # insert
        if query.get("kmsKeyName") != KEY:
            return f"insert without kmsKeyName: {request.path_qs}"
        if query.get("uploadType") == "multipart" and resource_of(body).get("storageClass") != "NEARLINE":
            return f"insert without storageClass: {resource_of(body)}"
        return None
    if request.path.endswith("/compose"):
        return None if query.get("kmsKeyName") == KEY else f"compose without kmsKeyName: {request.path}"
    if "/rewriteTo/" in request.path:
        if query.get("destinationKmsKeyName") != KEY:
            return f"rewrite without destinationKmsKeyName: {request.path}"
        if json.loads(body).get("storageClass") != "NEARLINE":
            return f"rewrite without storageClass: {body!r}"
    return None


async def test_every_object_is_written_with_the_key_and_the_class(
        aiohttp_client, gcs_endpoint, gcs_storage_config, gcs_bucket):
    async with running_proxy(gcs_endpoint) as (proxy, url):
        refused = enforce(proxy, policy)
        storage = {**gcs_storage_config, "endpoint_url": url, **KEYS}
        client = await aiohttp_client(create_app(make_config(storage, expiration={"sweep_interval": 0})))
        done = await run_upload_set(client)
        assert refused == []
        prefix = gcs_storage_config["prefix"]
        inserts = [f for f in proxy.log if f.method == "POST" and f.path.startswith("/upload/")]
        kinds = {f.query.get("uploadType") for f in inserts}
        assert kinds == {"media", "multipart"}  # part objects; records, markers, empty objects
        assert any(f.path.endswith("/compose") for f in proxy.log)
        rewritten = {unquote(f.path.rsplit("/o/", 1)[1]) for f in proxy.log
                     if "/rewriteTo/" in f.path}
        # Every finished non-empty upload (the partials too) was composed, then rewritten
        # into the class; nothing else was.
        finished = {prefix + path.rsplit("/", 1)[1] for path, data in done.items() if data}
        assert finished <= rewritten
        assert all(re.fullmatch(re.escape(prefix) + "[0-9a-f]{32}", name) for name in rewritten)
        assert len(rewritten) == len(finished) + 2  # the two partials
        # What the emulator keeps: the class of objects sent with a resource.
        async with client.session.get(f"{gcs_endpoint}/storage/v1/b/{gcs_bucket}/o") as r:
            items = (await r.json())["items"]
        classes = {item["name"]: item["storageClass"] for item in items}
        records = {name: c for name, c in classes.items() if name.endswith(".info")}
        assert records and set(records.values()) == {"NEARLINE"}
        markers = {name: c for name, c in classes.items() if name.startswith(prefix + ".")}
        assert markers and set(markers.values()) == {"NEARLINE"}
        empty = [prefix + path.rsplit("/", 1)[1] for path, data in done.items() if not data]
        assert {classes[name] for name in empty} == {"NEARLINE"}


async def test_without_the_key_the_first_write_is_refused(
        aiohttp_client, gcs_endpoint, gcs_storage_config):
    async with running_proxy(gcs_endpoint) as (proxy, url):
        refused = enforce(proxy, policy)
        storage = {**gcs_storage_config, "endpoint_url": url}
        client = await aiohttp_client(create_app(make_config(storage)))
        r = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
        assert r.status == 500
        assert "storage refused" in await r.text()
        assert refused and "kmsKeyName" in refused[0].why


async def test_the_rewrite_keeps_the_content_headers(aiohttp_client, gcs_endpoint,
                                                    gcs_storage_config, gcs_bucket):
    """The final object's Content-Type and Content-Disposition survive its rewrite."""
    storage = {**gcs_storage_config, **KEYS}
    client = await aiohttp_client(create_app(make_config(storage)))
    data = b"x" * 700_000
    path = await upload(client, data, chunk=300_000,
                        Upload_Metadata=f"filename {b64('r.csv')},filetype {b64('text/csv')}")
    name = gcs_storage_config["prefix"] + path.rsplit("/", 1)[1]
    async with client.session.get(f"{gcs_endpoint}/storage/v1/b/{gcs_bucket}/o/"
                                  f"{quote(name, safe='')}") as r:
        item = await r.json()
    assert item["contentType"] == "text/csv"
    assert "r.csv" in item["contentDisposition"] and int(item["size"]) == len(data)
    assert await download(client, path) == data
