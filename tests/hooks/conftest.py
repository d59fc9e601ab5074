"""A real hook receiver (aiohttp on 127.0.0.1) and apps wired to it."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.plugins.app import DRIVERS, TusClientFactory
from tests.plugins.local_files import upload_file
from tusd_py.http.keys import HOOKS

#: Hook behaviour is driver-independent: most tests run on the local driver; tests
#: marked with ``every_driver`` (Storage info, exactly-once) run on each driver.
#: (Not the memory driver: a receiver could not read the bytes its Storage names.)
every_driver = pytest.mark.parametrize("storage_config", [d for d in DRIVERS if d != "memory"],
                                       indirect=True)


@pytest.fixture(params=["local"])
def storage_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.getfixturevalue(f"{request.param}_storage_config"))

#: Answer for one hook request: a JSON-able dict (200), or (status, body) to answer raw.
Answer = dict[str, Any] | tuple[int, str] | None
Responder = Callable[[dict[str, Any], "web.Request"], Awaitable[Answer] | Answer]


@dataclass
class Call:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def type(self) -> str:
        return str(self.body["Type"])

    @property
    def upload(self) -> dict[str, Any]:
        return dict(self.body["Event"]["Upload"])

    @property
    def http(self) -> dict[str, Any]:
        return dict(self.body["Event"]["HTTPRequest"])


class Receiver:
    """Records every hook request; ``responder`` decides the answer; ``delay`` stalls it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.responder: Responder | None = None
        self.delay = 0.0
        self.url = ""
        self._changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(Call(body, dict(request.headers)))
        self._changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        answer: Any = None
        if self.responder is not None:
            answer = self.responder(body, request)
            if asyncio.iscoroutine(answer):
                answer = await answer
        if isinstance(answer, tuple):
            return web.Response(status=answer[0], text=answer[1])
        return web.Response(text=json.dumps(answer or {}), content_type="application/json")

    def of(self, hook_type: str) -> list[Call]:
        return [c for c in self.calls if c.type == hook_type]

    async def wait_for(self, hook_type: str, count: int = 1, within: float = 5.0) -> list[Call]:
        async with asyncio.timeout(within):
            while len(self.of(hook_type)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(hook_type)

    async def settle(self, *clients: TestClient, limit: float = 30.0) -> None:
        """Wait until every hook delivery the apps behind ``clients`` have queued so far
        has been answered (their queues joined): then "nothing more" means nothing more.
        (Progress the post-receive throttle still holds back is not queued yet.)"""
        async with asyncio.timeout(limit):
            for client in clients:
                queue = client.app[HOOKS].queue
                assert queue is not None, "the app's hooks are not running"
                await queue.join()

    async def let_time_pass(self, seconds: float) -> None:
        """Sleep: for checks whose point is that time passed (timer rounds) and nothing
        more came."""
        await asyncio.sleep(seconds)


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:  # type: ignore[no-untyped-def]
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rec.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.url = str(server.make_url("/hooks"))
    return rec


HookedFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def hooked(tus_client_factory: TusClientFactory, receiver: Receiver) -> HookedFactory:
    """``await hooked(enabled=[...], **hooks_keys)``: an app whose HTTP hooks go to ``receiver``."""

    async def factory(*, http: dict[str, Any] | None = None, **hooks: Any) -> TestClient:
        http_config = {"url": receiver.url, "timeout": 2, "retries": 0, "backoff": 0}
        http_config.update(http or {})
        sections: dict[str, dict[str, Any]] = {"hooks": {"http": http_config, **hooks}}
        for name in ("server", "expiration"):
            if name in hooks:
                sections[name] = sections["hooks"].pop(name)
        return await tus_client_factory(**sections)

    return factory


def metric(text: str, name: str, hooktype: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``hooktype`` and ``labels``."""
    wanted = {"hooktype": hooktype, **labels}
    total = 0.0
    for m in re.finditer(rf"^{name}{{([^}}]*)}} ([0-9.e+]+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in wanted.items()):
            total += float(m.group(2))
    return total


def expected_storage(upload_id: str, storage_config: dict[str, Any]) -> dict[str, str]:
    """The ``Storage`` object tusd's store of the same kind would send for this upload."""
    driver = storage_config["driver"]
    key = storage_config.get("prefix", "") + upload_id
    if driver == "local":  # no InfoPath: the local driver has no .info file
        return {"Type": "filestore", "Path": str(upload_file(storage_config["data_dir"], upload_id))}
    if driver == "azure":
        return {"Type": "azurestore", "Container": storage_config["container"], "Key": key}
    kind = {"s3": "s3store", "gcs": "gcsstore"}[driver]
    return {"Type": kind, "Bucket": storage_config["bucket"], "Key": key}


StoredBytes = Callable[[dict[str, str]], bytes]


@pytest.fixture
def stored_bytes(request: pytest.FixtureRequest, storage_config: dict[str, Any]) -> StoredBytes:
    """Read the object a ``Storage`` object names, with the store's own client: what a
    receiver would do with it."""

    def read(storage: dict[str, str]) -> bytes:
        driver = storage_config["driver"]
        if driver == "local":
            with open(storage["Path"], "rb") as fh:
                return fh.read()
        if driver == "s3":
            s3 = request.getfixturevalue("s3_client")
            return bytes(s3.get_object(Bucket=storage["Bucket"], Key=storage["Key"])["Body"].read())
        if driver == "gcs":
            name = urllib.parse.quote(storage["Key"], safe="")
            url = f"{storage_config['endpoint_url']}/storage/v1/b/{storage['Bucket']}/o/{name}?alt=media"
            with urllib.request.urlopen(url, timeout=10) as r:
                return bytes(r.read())
        from azure.storage.blob import ContainerClient

        with ContainerClient.from_connection_string(storage_config["connection_string"],
                                                    storage["Container"]) as container:
            return bytes(container.download_blob(storage["Key"]).readall())

    return read
