"""S3 fixtures: a real moto server (``moto_server``) on 127.0.0.1 in a subprocess.

* ``moto_endpoint`` (session): the server's URL; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
  are set to ``test`` in this process (daemon subprocesses inherit them).
* ``s3_bucket``: a fresh bucket per test.
* ``s3_storage_config``: the ``storage`` section for that bucket (used by the HTTP
  suite through ``tests.plugins.app.DRIVERS``).
* ``s3_daemon_env``: the same as ``TUSD_STORAGE__*`` env for ``daemon_factory``.
* ``s3_client``: a plain boto3 client, to look behind the driver's back in assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.daemon import free_port

AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
#: Small parts keep the tests fast while exercising real multipart uploads.
PART_SIZE = 5 << 20


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    port = free_port()
    log_path = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    log = open(log_path, "wb")
    server = Path(sys.executable).parent / "moto_server"
    cmd = [str(server)] if server.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
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


@pytest.fixture
def s3_daemon_env(s3_storage_config: dict[str, Any]) -> dict[str, str]:
    env = {f"TUSD_STORAGE__{k.upper()}": str(v) for k, v in s3_storage_config.items()}
    env.update(AWS_ENV)
    return env
