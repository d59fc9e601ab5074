"""A reverse proxy in front of an emulator (moto, fake-gcs-server, Azurite) that logs
what it forwarded (to count requests and body bytes) and injects faults on request.

``async with running_proxy(upstream) as (proxy, url)``: a ``StoreProxy`` listening on
127.0.0.1 for the test's duration; point a driver's endpoint at ``url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                  b"<Message>We encountered an internal error.</Message></Error>")
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Forwarded:
    """One request the proxy passed on to the emulator."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    sent: int  # request body bytes
    received: int  # response body bytes
    status: int
    started: float  # time.monotonic() when it was passed on
    ended: float  # ... and when moto had answered


class StoreProxy:
    """Forwards everything to an emulator (``upstream``), with faults on request:

    * ``rule``/``failures``: matching requests get 503 SlowDown (S3's) while ``failures``
      lasts (-1: for ever); ``refused`` counts them.
    * ``lose_rule``/``lose``: matching requests are carried out, then answered 500
      (``lose`` times; ``lost`` counts them), so botocore retries a write that landed.
    * ``delay``: seconds to hold a request back before reading its body (a slow network
      path; ``held`` counts them; ``let_go`` ends the delays early). A request whose
      client gave up meanwhile is never passed on (``dropped``).
    * ``log``: every request passed on, in order (``Forwarded``).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rule: Callable[[web.Request], bool] = lambda request: False
        self.failures = 0
        self.refused = 0
        self.lose_rule: Callable[[web.Request], bool] = lambda request: False
        self.lose = 0
        self.lost = 0
        self.delay: Callable[[web.Request], float] = lambda request: 0.0
        self.held = 0
        self._let_go = asyncio.Event()
        self.dropped = 0
        self.log: list[Forwarded] = []
        self._forwarding: set[asyncio.Task[web.Response]] = set()
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.failures and self.rule(request):
            self.failures -= 1 if self.failures > 0 else 0
            self.refused += 1
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        wait = self.delay(request)
        try:
            if wait > 0:
                self.held += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._let_go.wait(), wait)
            body = await request.read()
            if wait > 0:
                await asyncio.sleep(0.05)  # time to notice that the client hung up
        except (asyncio.CancelledError, ConnectionError):
            self.dropped += 1  # the client gave up: nothing reaches moto
            raise
        if request.transport is None or request.transport.is_closing():
            self.dropped += 1
            return web.Response(status=499)
        # Once passed on, a request is carried out (and logged) even if its client
        # hangs up meanwhile, as S3 does.
        task = asyncio.get_running_loop().create_task(self.forward(request, body))
        self._forwarding.add(task)
        task.add_done_callback(self._forwarding.discard)
        response = await asyncio.shield(task)
        if self.lose and response.status < 300 and self.lose_rule(request):
            # The write happened, but the client never learns it: botocore retries it.
            self.lose -= 1
            self.lost += 1
            return web.Response(status=500, body=INTERNAL_ERROR, content_type="application/xml")
        return response

    def let_go(self) -> None:
        """End the delay of every request held back now."""
        self._let_go.set()
        self._let_go = asyncio.Event()

    async def forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        started = time.monotonic()
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        headers=headers, data=body or None,
                                        allow_redirects=False) as r:
            answer = await r.read()
            out = {k: v for k, v in r.headers.items()
                   if k.lower() not in _HOP and k.lower() != "content-encoding"}
        self.log.append(Forwarded(request.method, request.path, dict(request.query),
                                  dict(request.headers), len(body), len(answer), r.status,
                                  started, time.monotonic()))
        return web.Response(status=r.status, body=answer, headers=out)


@contextlib.asynccontextmanager
async def running_proxy(upstream: str) -> AsyncIterator[tuple[StoreProxy, str]]:
    proxy = StoreProxy(upstream)
    app = web.Application(client_max_size=256 << 20)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(request)  # looked up per request: tests may wrap it

    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            proxy.session = session
            yield proxy, f"http://127.0.0.1:{server.port}"
            await asyncio.gather(*proxy._forwarding, return_exceptions=True)
    finally:
        await server.close()


def count(log: list[Forwarded], what: Callable[[Forwarded], bool] = lambda f: True) -> int:
    """How many logged requests ``what`` selects."""
    return sum(1 for f in log if what(f))
