"""``create_app()`` mounted as an aiohttp sub-application under a prefix, behind the
parent application's own middlewares (here: a session check): the URLs the server sends
and reads carry the prefix, the store and hooks start and stop with the parent, and the
parent's shutdown drains uploads in flight."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.http.helpers import OCTET, TUS, path_of
from tests.plugins.app import make_config
from tusd_py.http.app import create_app, drain_uploads
from tusd_py.http.keys import HANDLER

ROOT = Path(__file__).resolve().parents[2]
SESSION = {"Cookie": "session=s-alice"}
PREFIX = "/api/uploads"
USER: web.RequestKey[str] = web.RequestKey("user")


def parent_app(storage: dict[str, Any],
               **sections: dict[str, Any]) -> tuple[web.Application, web.Application]:
    """An application of its own (a session middleware, a page) with tusd-py under PREFIX."""

    @web.middleware
    async def session(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "OPTIONS" and request.cookies.get("session") != "s-alice":
            return web.json_response({"error": "log in first"}, status=401)
        request[USER] = "alice"
        return await handler(request)

    async def home(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request[USER]}")

    parent = web.Application(middlewares=[session])
    parent.router.add_get("/", home)
    tus = create_app(make_config(storage, **sections))
    parent.add_subapp(PREFIX, tus)
    return parent, tus


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.getfixturevalue(f"{request.param}_storage_config"))


async def test_mounted_under_a_prefix_behind_the_parents_auth(aiohttp_client, storage) -> None:  # type: ignore[no-untyped-def]
    parent, _ = parent_app(storage)
    client: TestClient = await aiohttp_client(parent)
    r = await client.post(f"{PREFIX}/files/", headers={**TUS, "Upload-Length": "4"})
    assert r.status == 401 and (await r.json()) == {"error": "log in first"}  # the parent's answer
    assert (await client.get("/", headers=SESSION)).status == 200

    r = await client.post(f"{PREFIX}/files/", headers={**TUS, **SESSION, "Upload-Length": "4"})
    assert r.status == 201
    location = r.headers["Location"]
    assert location.startswith(str(client.make_url(f"{PREFIX}/files/"))), location
    path = path_of(location)
    r = await client.patch(path, data=b"abcd", headers={**TUS, **SESSION, "Upload-Offset": "0",
                                                        "Content-Type": OCTET})
    assert r.status == 204
    r = await client.get(path, headers=SESSION)
    assert (r.status, await r.read()) == (200, b"abcd")
    assert (await client.get(path)).status == 401  # every tus route is behind the parent's check
    assert (await client.get(f"{PREFIX}/healthz")).status == 401
    assert (await client.get(f"{PREFIX}/healthz", headers=SESSION)).status == 200
    assert (await client.get("/files/" + path.rsplit("/", 1)[1], headers=SESSION)).status == 404

    # Concatenation: partial URLs under the prefix are understood, and HEAD names them so.
    partials = []
    for part in (b"12", b"345"):
        r = await client.post(f"{PREFIX}/files/", data=part, headers={
            **TUS, **SESSION, "Upload-Length": str(len(part)), "Upload-Concat": "partial",
            "Content-Type": OCTET})
        assert r.status == 201
        partials.append(path_of(r.headers["Location"]))
    r = await client.post(f"{PREFIX}/files/", headers={
        **TUS, **SESSION, "Upload-Concat": "final;" + " ".join(partials)})
    assert r.status == 201, await r.text()
    final = path_of(r.headers["Location"])
    assert final.startswith(f"{PREFIX}/files/")
    r = await client.head(final, headers={**TUS, **SESSION})
    assert r.headers["Upload-Concat"] == "final;" + " ".join(partials)
    r = await client.get(final, headers=SESSION)
    assert await r.read() == b"12345"


async def test_mounted_with_relative_and_public_locations(aiohttp_client, local_storage_config) -> None:  # type: ignore[no-untyped-def]
    parent, _ = parent_app(local_storage_config, server={"relative_location": True})
    client = await aiohttp_client(parent)
    r = await client.post(f"{PREFIX}/files/", headers={**TUS, **SESSION, "Upload-Length": "1"})
    assert r.headers["Location"].startswith(f"{PREFIX}/files/")
    parent, _ = parent_app(local_storage_config,
                           server={"public_url": "https://app.example.com"})
    client = await aiohttp_client(parent)
    r = await client.post(f"{PREFIX}/files/", headers={**TUS, **SESSION, "Upload-Length": "1"})
    assert r.headers["Location"].startswith(f"https://app.example.com{PREFIX}/files/")


async def test_the_parents_shutdown_drains_uploads(aiohttp_client, local_storage_config) -> None:  # type: ignore[no-untyped-def]
    """``drain_uploads(tus_app)`` in the parent's on_shutdown: a PATCH still sending when
    the parent stops keeps what arrived (its offset is committed)."""
    parent, tus = parent_app(local_storage_config, server={"shutdown_grace": 0.2})
    parent.on_shutdown.append(lambda app: drain_uploads(tus))
    client = await aiohttp_client(parent)
    r = await client.post(f"{PREFIX}/files/", headers={**TUS, **SESSION, "Upload-Length": "100"})
    path = path_of(r.headers["Location"])
    sent = asyncio.Event()

    async def body():  # type: ignore[no-untyped-def]
        yield b"x" * 10
        sent.set()
        await asyncio.sleep(30)
        yield b"y"

    patching = asyncio.create_task(client.patch(path, data=body(), headers={
        **TUS, **SESSION, "Upload-Offset": "0", "Content-Type": OCTET}))
    await sent.wait()
    await asyncio.sleep(0.2)
    store = tus[HANDLER].store
    await client.server.runner.shutdown()
    upload_id = path[len(f"{PREFIX}/files/"):]
    assert (await store.get(upload_id)).offset == 10
    patching.cancel()


@pytest.mark.skipif(shutil.which("node") is None or not (ROOT / "node_modules" / "tus-js-client").is_dir(),
                    reason="node and node_modules/tus-js-client are installed by scripts/test.sh")
async def test_tus_js_client_through_the_parent(aiohttp_client, local_storage_config) -> None:  # type: ignore[no-untyped-def]
    parent, _ = parent_app(local_storage_config)
    client = await aiohttp_client(parent)
    endpoint = str(client.make_url(f"{PREFIX}/files/"))
    proc = await asyncio.create_subprocess_exec(
        "node", str(ROOT / "tests" / "hooks" / "js_upload.mjs"), endpoint, "{}",
        json.dumps(SESSION), json.dumps({"chunkSize": 10}), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["ok"] is True, (result, err.decode())
    assert result["url"].startswith(endpoint)
    r = await client.get(path_of(result["url"]), headers=SESSION)
    assert await r.read() == b"hello from tus-js-client"
