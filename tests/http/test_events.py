"""Upload events as the handler emits them (what metrics, logs and hooks listen to)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from tests.plugins.app import make_config
from tusd_py.core.events import EventBus, UploadListener
from tusd_py.http.app import create_app
from tusd_py.protocol.errors import TusError
from tusd_py.storage.base import Upload

from .helpers import OCTET, TUS, checksum, create, head, patch, path_of


class Recorder(UploadListener):
    """Records finished uploads; refuses access to uploads in ``denied``."""

    def __init__(self) -> None:
        self.finished_ids: list[str] = []
        self.created_ids: list[str] = []
        self.pre_finished: list[str] = []
        self.accessed: list[tuple[str, str]] = []
        self.denied: set[str] = set()

    def created(self, upload: Upload, request: web.Request) -> None:
        self.created_ids.append(upload.id)

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        self.pre_finished.append(upload.id)

    def finished(self, upload: Upload, request: web.Request) -> None:
        self.finished_ids.append(upload.id)

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        self.accessed.append((upload_id, method))
        if upload_id in self.denied:
            raise TusError("access denied", status=403)


@pytest.fixture
async def recorded(aiohttp_client: Any, storage_config: dict[str, Any]) -> tuple[Any, Recorder]:
    recorder = Recorder()
    events = EventBus()
    events.add(recorder)
    app = create_app(make_config(storage_config), events=events)
    return await aiohttp_client(app), recorder


async def test_zero_byte_patch_declaring_the_length_finishes_once(recorded):
    """A deferred-length upload whose last PATCH carries only Upload-Length == offset
    (tus-js-client does this when a stream ends on a chunk boundary) is finished."""
    client, recorder = recorded
    path = await create(client, Upload_Defer_Length="1")
    upload_id = path.rsplit("/", 1)[1]
    r = await patch(client, path, 0, b"x" * 1000)
    assert r.status == 204 and recorder.finished_ids == []
    r = await patch(client, path, 1000, b"", Upload_Length="1000")
    assert r.status == 204, await r.text()
    assert recorder.pre_finished == [upload_id] and recorder.finished_ids == [upload_id]
    # An empty PATCH on the finished upload changes nothing and finishes nothing again.
    r = await patch(client, path, 1000, b"")
    assert r.status == 204
    assert recorder.finished_ids == [upload_id]
    r = await head(client, path)
    assert r.headers["Upload-Offset"] == "1000" and r.headers["Upload-Length"] == "1000"


async def test_final_concatenation_checks_access_to_each_partial(recorded):
    client, recorder = recorded
    urls = []
    for data in (b"alice's ", b"secret"):
        r = await client.post("/files/", headers={
            **TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial"})
        assert r.status == 201
        urls.append(r.headers["Location"])
        assert (await patch(client, path_of(urls[-1]), 0, data)).status == 204
    ids = [path_of(u).rsplit("/", 1)[1] for u in urls]
    recorder.denied.add(ids[1])
    final = {**TUS, "Upload-Concat": "final;" + " ".join(urls)}
    r = await client.post("/files/", headers=final)
    assert r.status == 403, await r.text()
    assert (ids[0], "POST") in recorder.accessed and (ids[1], "POST") in recorder.accessed
    assert recorder.finished_ids == []  # nothing was assembled
    recorder.denied.clear()
    r = await client.post("/files/", headers=final)
    assert r.status == 201
    got = await client.get(path_of(r.headers["Location"]))
    assert await got.read() == b"alice's secret"


@pytest.mark.parametrize("headers, status", [
    ({"Upload-Length": "3", "Upload-Checksum": "crc32 AAAA"}, 400),  # unknown algorithm
    ({"Upload-Length": "3", "Upload-Checksum": "sha1 not-base64!"}, 400),
    ({"Upload-Length": "2"}, 413),  # the body is longer than the upload
])
async def test_refused_creation_with_upload_creates_nothing(recorded, headers, status):
    client, recorder = recorded
    r = await client.post("/files/", data=b"abc", headers={**TUS, "Content-Type": OCTET, **headers})
    assert r.status == status, await r.text()
    assert "Location" not in r.headers
    assert recorder.created_ids == []
    # A matching checksum on the same request shape is accepted (the check is not blanket).
    r = await client.post("/files/", data=b"abc", headers={
        **TUS, "Content-Type": OCTET, "Upload-Length": "3",
        "Upload-Checksum": checksum("sha1", b"abc")})
    assert r.status == 201 and r.headers["Upload-Offset"] == "3"
    assert len(recorder.created_ids) == 1 and recorder.finished_ids == recorder.created_ids
