"""S3 failures over real HTTP: a small reverse proxy in front of moto answers some
requests with 503 SlowDown, as S3 does when it throttles."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.http.helpers import TUS, create, download, head, patch
from tests.plugins.app import make_config
from tusd_py.app import create_app
from tusd_py.storage.s3 import S3Store

MIB = 1 << 20
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                  b"<Message>We encountered an internal error.</Message></Error>")
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class ThrottlingProxy:
    """Forwards everything to moto, except that requests matching ``rule`` get 503
    SlowDown while ``failures`` lasts (-1: for ever)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rule: Callable[[web.Request], bool] = lambda request: False
        self.failures = 0
        self.refused = 0
        #: Requests matching ``lose_rule`` are carried out, then answered 500 (``lose`` times).
        self.lose_rule: Callable[[web.Request], bool] = lambda request: False
        self.lose = 0
        self.lost = 0
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.failures and self.rule(request):
            self.failures -= 1 if self.failures > 0 else 0
            self.refused += 1
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        response = await self.forward(request)
        if self.lose and response.status < 300 and self.lose_rule(request):
            # The write happened, but the client never learns it: botocore retries it.
            self.lose -= 1
            self.lost += 1
            return web.Response(status=500, body=INTERNAL_ERROR, content_type="application/xml")
        return response

    async def forward(self, request: web.Request) -> web.Response:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        headers=headers, data=await request.read(),
                                        allow_redirects=False) as r:
            body = await r.read()
            out = {k: v for k, v in r.headers.items()
                   if k.lower() not in _HOP and k.lower() != "content-encoding"}
            return web.Response(status=r.status, body=body, headers=out)


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[tuple[ThrottlingProxy, str]]:
    throttle = ThrottlingProxy(moto_endpoint)
    app = web.Application(client_max_size=64 * MIB)
    app.router.add_route("*", "/{tail:.*}", throttle.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        throttle.session = session
        yield throttle, f"http://127.0.0.1:{server.port}"
    await server.close()


def is_part_upload(request: web.Request) -> bool:
    return request.method == "PUT" and "partNumber" in request.query


async def client_for(aiohttp_client: Any, config: dict[str, Any], endpoint: str,
                     retry_attempts: int = 3) -> Any:
    store = S3Store(config["bucket"], prefix=config["prefix"], endpoint_url=endpoint,
                    region="us-east-1", part_size=5 * MIB, retry_attempts=retry_attempts)
    return await aiohttp_client(create_app(make_config(config), store=store))


async def test_throttled_part_uploads_are_retried(aiohttp_client, s3_storage_config, proxy):
    throttle, endpoint = proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint)
    data = os.urandom(6 * MIB)
    path = await create(client, len(data))
    throttle.rule, throttle.failures = is_part_upload, 2
    r = await patch(client, path, 0, data)
    assert r.status == 204, await r.text()
    assert throttle.refused == 2  # botocore backed off and retried each time
    assert await download(client, path) == data


async def test_persistent_throttling_is_503_with_a_clear_message_then_resumes(
        aiohttp_client, s3_storage_config, proxy):
    throttle, endpoint = proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint)
    data = os.urandom(6 * MIB)
    path = await create(client, len(data))
    throttle.rule, throttle.failures = is_part_upload, -1
    r = await patch(client, path, 0, data)
    assert r.status == 503
    text = await r.text()
    assert "throttling" in text and "SlowDown" in text, text
    assert throttle.refused >= 3  # retry_attempts, each backed off
    assert (await head(client, path)).headers["Upload-Offset"] == "0"  # nothing published
    throttle.failures = 0
    r = await patch(client, path, 0, data)
    assert r.status == 204, await r.text()
    assert await download(client, path) == data


async def test_readyz_503_while_s3_answers_5xx(aiohttp_client, s3_storage_config, proxy):
    throttle, endpoint = proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint, retry_attempts=1)
    assert (await client.get("/readyz")).status == 200
    throttle.rule, throttle.failures = (lambda request: True), -1
    r = await client.get("/readyz")
    assert r.status == 503
    throttle.failures = 0
    assert (await client.get("/readyz")).status == 200
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status == 201


def is_conditional_record_write(request: web.Request) -> bool:
    return (request.method == "PUT" and request.path.endswith(".info")
            and "If-Match" in request.headers)


async def test_lost_responses_to_conditional_writes_are_recognised(
        aiohttp_client, s3_storage_config, proxy):
    """Every conditional write of a record succeeds but its answer is lost: botocore's
    retry then fails its If-Match (the ETag moved). The lease holder token and the
    per-write nonce show the write was ours, so nothing is refused or lost."""
    throttle, endpoint = proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint)
    data = os.urandom(7 * MIB)
    path = await create(client, len(data))
    throttle.lose_rule, throttle.lose = is_conditional_record_write, 1000
    r = await patch(client, path, 0, data[:6 * MIB])  # lease, MPU record, commit, release
    assert r.status == 204, await r.text()
    r = await patch(client, path, 6 * MIB, data[6 * MIB:])  # + completing, completed
    assert r.status == 204, await r.text()
    assert throttle.lost >= 8
    throttle.lose = 0
    assert await download(client, path) == data
    r = await head(client, path)
    assert r.headers["Upload-Offset"] == str(len(data))
    # the lease was released too: another request gets the upload at once
    r = await client.delete(path, headers=TUS)
    assert r.status == 204
