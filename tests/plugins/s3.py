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
* ``s3_proxy``: ``(StoreProxy, url)``, a reverse proxy in front of moto that can
  throttle, lose answers, hold requests back, and logs what it forwarded (to count S3
  requests and body bytes; ``tests.plugins.proxy``).
* ``r2_proxy``: ``(EqualPartsCheck, url)``, such a proxy that also refuses, as Cloudflare
  R2 does, to complete a multipart upload whose parts differ in size
  (``tests.plugins.r2``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from bench.emulators import emulator_process
from tests.plugins.proxy import StoreProxy, running_proxy
from tests.plugins.r2 import EqualPartsCheck
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
    ``s3_proxy``), with 5 MiB parts unless ``store_options`` say otherwise; ``sections``
    are config overrides as for ``make_config``."""
    from tests.plugins.app import make_config
    from tusd_py.http.app import create_app
    from tusd_py.storage.s3.store import S3Store

    store = S3Store(config["bucket"], prefix=config["prefix"], endpoint_url=endpoint,
                    region="us-east-1", **{"part_size": 5 * MIB, **(store_options or {})})
    return await aiohttp_client(create_app(make_config(config, **sections), store=store))


@pytest.fixture
def s3_daemon_env(s3_storage_config: dict[str, Any]) -> dict[str, str]:
    env = {f"TUSD_STORAGE__{k.upper()}": str(v) for k, v in s3_storage_config.items()}
    env.update(AWS_ENV)
    return env


@pytest.fixture
async def s3_proxy(moto_endpoint: str) -> AsyncIterator[tuple[StoreProxy, str]]:
    async with running_proxy(moto_endpoint) as running:
        yield running


@pytest.fixture
async def r2_proxy(moto_endpoint: str) -> AsyncIterator[tuple[EqualPartsCheck, str]]:
    async with running_proxy(moto_endpoint) as (proxy, url):
        yield EqualPartsCheck(proxy), url


def is_part_upload(request: web.Request) -> bool:
    return request.method == "PUT" and "partNumber" in request.query


def is_conditional_record_write(request: web.Request) -> bool:
    return (request.method == "PUT" and request.path.endswith(".info")
            and "If-Match" in request.headers)
