"""Transient GCS failures are retried; persistent ones become 503 with a clear message.

A small real HTTP proxy on 127.0.0.1 stands between the driver and fake-gcs-server and
answers some requests itself with 503 (or 429) instead of forwarding them.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tusd_py.protocol.errors import ServiceUnavailable
from tusd_py.storage.base import Upload
from tusd_py.storage.gcs.store import GCSStore
from tusd_py.storage.ids import new_upload_id

PART = 64 << 10
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class FlakyProxy:
    """Forwards to ``upstream``; ``fail(n, status)`` makes the next ``n`` requests fail."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failures = 0
        self.status = 503
        self.failed = 0
        self.forwarded = 0
        self.session: aiohttp.ClientSession | None = None

    def fail(self, count: int, status: int = 503) -> None:
        self.failures, self.status = count, status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.failures:
            self.failures -= 1
            self.failed += 1
            return web.json_response({"error": {"code": self.status, "message": "try later"}},
                                     status=self.status)
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        headers=headers, data=body) as r:
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        self.forwarded += 1
        return web.Response(status=r.status, body=data, headers=out)


@pytest.fixture
async def proxy(aiohttp_server, gcs_endpoint: str) -> AsyncIterator[tuple[FlakyProxy, str]]:  # type: ignore[no-untyped-def]
    flaky = FlakyProxy(gcs_endpoint)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", flaky.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        flaky.session = session
        yield flaky, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def store(proxy: tuple[FlakyProxy, str], gcs_bucket: str) -> AsyncIterator[GCSStore]:
    s = GCSStore(gcs_bucket, endpoint_url=proxy[1], part_size=PART, prefix="r/")
    await s.start()
    yield s
    await s.stop()


async def test_transient_failures_are_retried(store: GCSStore, proxy):  # type: ignore[no-untyped-def]
    flaky, _ = proxy
    data = os.urandom(3 * PART + 11)
    flaky.fail(2)  # create: the record write fails twice, then lands
    upload = await store.create(Upload(id=new_upload_id(), length=len(data),
                                       created_at=time.time()))
    flaky.fail(1, 429)  # the lock's read of the record
    lock = await store.lock(upload.id, 1)
    try:
        flaky.fail(1, 500)  # a part upload, while the body streams
        await lock.write(data)
        flaky.fail(1, 502)  # the commit: remainder part, record, compose...
        done = await lock.commit()
    finally:
        await lock.release()
    assert done.is_complete
    assert flaky.failed == 5 and flaky.failures == 0
    download = await store.download(done)
    assert b"".join([c async for c in download.read(0, download.size)]) == data


async def test_persistent_failure_is_503_with_a_clear_message(store: GCSStore, proxy):  # type: ignore[no-untyped-def]
    flaky, _ = proxy
    flaky.fail(100)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="storage error 503 during reading an upload "
                                                 "record; retry later"):
        await store.get(new_upload_id())
    assert flaky.failed == store.bucket.attempts  # retried, then given up
    assert time.monotonic() - started < 5  # bounded backoff
