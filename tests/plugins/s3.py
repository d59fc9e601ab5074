"""S3 fixtures: a real moto server (``moto_server``) on 127.0.0.1 in a subprocess.

* ``moto_endpoint`` (session): the server's URL; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
  are set to ``test`` in this process (daemon subprocesses inherit them).
* ``s3_bucket``: a fresh bucket per test.
* ``s3_storage_config``: the ``storage`` section for that bucket (used by the HTTP
  suite through ``tests.plugins.app.DRIVERS``).
* ``s3_daemon_env``: the same as ``TUSD_STORAGE__*`` env for ``daemon_factory``.
* ``s3_client``: a plain boto3 client, to look behind the driver's back in assertions.
* ``make_store``: ``await make_store(**S3Store options)`` -> a started ``S3Store`` on the
  test's bucket (prefix ``up/``, 5 MiB parts); two of them stand for two replicas.
  With ``new_upload``, ``write`` (one PATCH) and ``read_all`` for driver-level tests.
* ``s3_proxy``: ``(S3Proxy, url)``, a reverse proxy in front of moto that can throttle,
  lose answers, hold requests back, and logs what it forwarded (to count S3 requests
  and body bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.emulators import emulator_process
from tests.plugins.stores import started_stores

AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
#: Small parts keep the tests fast while exercising real multipart uploads.
PART_SIZE = 5 << 20
MIB = 1 << 20
PREFIX = "up/"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        with emulator_process("s3", tmp_path_factory.mktemp("moto")) as url:
            yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_client(moto_endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    name = f"tus-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_storage_config(moto_endpoint: str, s3_bucket: str) -> dict[str, Any]:
    return {"driver": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint,
            "region": "us-east-1", "part_size": "5MiB", "prefix": "up/"}


if TYPE_CHECKING:
    from tusd_py.storage.s3.store import S3Store

StoreFactory = Callable[..., Awaitable["S3Store"]]


@pytest.fixture
async def make_store(moto_endpoint: str, s3_bucket: str) -> AsyncIterator[StoreFactory]:
    from tusd_py.storage.s3.store import S3Store

    async with started_stores() as start:
        async def factory(**kwargs: Any) -> S3Store:
            options: dict[str, Any] = {"prefix": PREFIX, "endpoint_url": moto_endpoint,
                                       "region": "us-east-1", "part_size": PART_SIZE}
            return await start(S3Store(s3_bucket, **{**options, **kwargs}))

        yield factory


async def client_through_proxy(aiohttp_client: Any, config: dict[str, Any], endpoint: str, *,
                               store_options: dict[str, Any] | None = None,
                               **sections: dict[str, Any]) -> Any:
    """A test client for an app whose S3 store talks to moto through ``endpoint`` (the
    ``s3_proxy``), with 5 MiB parts; ``sections`` are config overrides as for
    ``make_config``."""
    from tests.plugins.app import make_config
    from tusd_py.http.app import create_app
    from tusd_py.storage.s3.store import S3Store

    store = S3Store(config["bucket"], prefix=config["prefix"], endpoint_url=endpoint,
                    region="us-east-1", part_size=5 * MIB, **(store_options or {}))
    return await aiohttp_client(create_app(make_config(config, **sections), store=store))


@pytest.fixture
def s3_daemon_env(s3_storage_config: dict[str, Any]) -> dict[str, str]:
    env = {f"TUSD_STORAGE__{k.upper()}": str(v) for k, v in s3_storage_config.items()}
    env.update(AWS_ENV)
    return env


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                  b"<Message>We encountered an internal error.</Message></Error>")
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Forwarded:
    """One request the proxy passed on to moto."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    sent: int  # request body bytes
    received: int  # response body bytes
    status: int
    started: float  # time.monotonic() when it was passed on
    ended: float  # ... and when moto had answered


class S3Proxy:
    """Forwards everything to moto, with faults on request:

    * ``rule``/``failures``: matching requests get 503 SlowDown while ``failures``
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
                                        headers=headers, data=body,
                                        allow_redirects=False) as r:
            answer = await r.read()
            out = {k: v for k, v in r.headers.items()
                   if k.lower() not in _HOP and k.lower() != "content-encoding"}
        self.log.append(Forwarded(request.method, request.path, dict(request.query),
                                  dict(request.headers), len(body), len(answer), r.status,
                                  started, time.monotonic()))
        return web.Response(status=r.status, body=answer, headers=out)


@pytest.fixture
async def s3_proxy(moto_endpoint: str) -> AsyncIterator[tuple[S3Proxy, str]]:
    proxy = S3Proxy(moto_endpoint)
    app = web.Application(client_max_size=256 << 20)
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(request)  # looked up per request: tests may wrap it

    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        proxy.session = session
        yield proxy, f"http://127.0.0.1:{server.port}"
        await asyncio.gather(*proxy._forwarding, return_exceptions=True)
    await server.close()


def is_part_upload(request: web.Request) -> bool:
    return request.method == "PUT" and "partNumber" in request.query


def is_conditional_record_write(request: web.Request) -> bool:
    return (request.method == "PUT" and request.path.endswith(".info")
            and "If-Match" in request.headers)
