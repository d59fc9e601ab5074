"""The tus routes are resolved by their prefix (tusd_py.http.routing), the rest by
aiohttp's router: same answers either way."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tusd_py.http.app import create_app
from tusd_py.http.routing import route_tus_directly
from tusd_py.storage.memory.store import MemoryStore

from ..plugins.app import make_config
from .helpers import OCTET, TUS, create, head, patch


def count_router(app: web.Application) -> list[str]:
    """Paths the router resolves from now on."""
    seen: list[str] = []
    resolve = app.router.resolve

    async def counting(request: web.Request):  # type: ignore[no-untyped-def]
        seen.append(request.path)
        return await resolve(request)

    app.router.resolve = counting  # type: ignore[method-assign]
    return seen


def test_the_server_calls_the_app_s_handle(tmp_path) -> None:
    """What route_tus_directly relies on: aiohttp's server calls ``app._handle``."""
    app = create_app(make_config({"driver": "memory"}))
    assert app._handle.__qualname__.startswith(route_tus_directly.__name__)
    server = app._make_handler(loop=asyncio.new_event_loop())
    assert server.request_handler is app._handle
    server._loop.close()


async def test_tus_requests_skip_the_router_and_others_keep_it(aiohttp_client) -> None:
    app = create_app(make_config({"driver": "memory"}), store=MemoryStore())
    client = await aiohttp_client(app)
    routed = count_router(app)
    path = await create(client, 5, Upload_Metadata="name YQ==")
    assert (await patch(client, path, 0, b"hello")).status == 204
    r = await head(client, path)
    assert r.status == 200 and r.headers["Upload-Offset"] == "5"
    r = await client.options("/files/")
    assert r.status == 204 and "creation" in r.headers["Tus-Extension"]
    r = await client.post("/files", headers={**TUS, "Upload-Length": "1"})  # no slash
    assert r.status == 201
    assert (await client.delete(path, headers=TUS)).status == 204
    assert (await head(client, path)).status == 404
    assert routed == []
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/files/a/b", headers=TUS)).status == 404  # no such route
    assert routed == ["/healthz", "/files/a/b"]


async def test_direct_routes_keep_middlewares_and_errors(aiohttp_client) -> None:
    app = create_app(make_config({"driver": "memory"}, server={"auth_token": "s3cret"}),
                     store=MemoryStore())
    client = await aiohttp_client(app)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status == 401 and r.headers["Tus-Resumable"] == "1.0.0"  # limits middleware
    auth = {"Authorization": "Bearer s3cret"}
    r = await client.post("/files/", headers={**TUS, **auth, "Upload-Length": "x"})
    assert r.status == 400 and "Upload-Length" in await r.text()  # front: TusError -> 400
    r = await client.head("/files/nosuchupload", headers={**TUS, **auth})
    assert r.status == 404
    metrics = await (await client.get("/metrics")).text()
    assert 'tusd_requests_total{method="POST",status="401"} 1.0' in metrics
    assert 'tusd_requests_total{method="HEAD",status="404"} 1.0' in metrics


async def test_expect_continue_goes_through_aiohttp(aiohttp_client) -> None:
    """aiohttp answers ``Expect: 100-continue`` before the handler; the router path does it."""
    app = create_app(make_config({"driver": "memory"}), store=MemoryStore())
    client = await aiohttp_client(app)
    path = await create(client, 5)
    routed = count_router(app)
    r = await client.patch(path, data=b"hello", expect100=True, headers={
        **TUS, "Upload-Offset": "0", "Content-Type": OCTET})
    assert r.status == 204 and r.headers["Upload-Offset"] == "5"
    assert routed == [path]


async def test_base_path_slash_keeps_the_router(aiohttp_client) -> None:
    app = create_app(make_config({"driver": "memory"}, server={"base_path": "/"}),
                     store=MemoryStore())
    client = await aiohttp_client(app)
    r = await client.post("/", headers={**TUS, "Upload-Length": "2"})
    assert r.status == 201
    assert (await client.get("/healthz")).status == 200  # not taken for an upload id
