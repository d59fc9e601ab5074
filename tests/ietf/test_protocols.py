"""server.protocols, routing by headers, and what the draft shares with tus (events,
metrics, CORS, proxy-aware Location): one driver, since none of it is the driver's."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.http.helpers import OCTET, TUS
from tests.http.helpers import create as tus_create
from tests.plugins.app import make_config
from tusd_py.core.events import EventBus, UploadListener
from tusd_py.http.app import create_app
from tusd_py.storage.base import Upload

from .helpers import Version, append, create, limits, path_of, retrieve

V6, V10 = Version(6), Version(10)
MEMORY = {"driver": "memory"}


async def client_for(aiohttp_client: Any, events: EventBus | None = None,
                     **sections: dict[str, Any]) -> TestClient:
    client: TestClient = await aiohttp_client(
        create_app(make_config(MEMORY, **sections), events=events))
    return client


async def test_both_by_default_routed_by_headers(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client)
    r = await client.options("/files/")
    assert r.headers["Tus-Version"] == "1.0.0" and "Upload-Limit" not in r.headers
    r = await client.options("/files/", headers=V6.header)
    assert "Upload-Limit" in r.headers and "Tus-Version" not in r.headers
    assert r.headers["Upload-Draft-Interop-Version"] == "6"
    await tus_create(client, 3)
    await create(client, V6, b"abc", done=True)
    # Both headers: Tus-Resumable wins (tus clients never send the draft's).
    r = await client.post("/files/", headers={**TUS, **V6.header, "Upload-Length": "1"})
    assert r.status == 201 and r.headers["Tus-Resumable"] == "1.0.0"


async def test_tus_only(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client, server={"protocols": ["tus"]})
    r = await client.options("/files/", headers=V6.header)
    assert "Upload-Limit" not in r.headers and r.headers["Tus-Version"] == "1.0.0"
    r = await client.post("/files/", headers={**V6.header, "Upload-Complete": "?1"})
    assert r.status == 412  # not a tus request: the tus answer
    await tus_create(client, 3)


async def test_draft_only(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client, server={"protocols": "ietf-draft"})
    r = await client.options("/files/")
    assert r.status == 204 and "Tus-Version" not in r.headers
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 400 and "Tus-Resumable" not in r.headers
    r = await create(client, V10, b"abc", done=True)
    path = path_of(r.headers["Location"])
    got = await client.get(path)  # a plain GET downloads, as with tus on
    assert got.status == 200 and await got.read() == b"abc"
    r = await retrieve(client, V10, path, "GET")
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"


async def test_unsupported_version_gets_no_draft_field(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client)
    for value in ("2", "11", "abc", "6;x=1"):
        r = await client.post("/files/", headers={"Upload-Draft-Interop-Version": value,
                                                  "Upload-Complete": "?1"})
        assert r.status == 400, value
        assert not any(name.startswith("Upload-") for name in r.headers), r.headers
        assert "Location" not in r.headers


class Recorder(UploadListener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def created(self, upload: Upload, request: web.Request) -> None:
        self.seen.append(("created", upload.id))

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        self.seen.append(("progress", upload.id))

    def finished(self, upload: Upload, request: web.Request) -> None:
        self.seen.append(("finished", upload.id))

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        self.seen.append(("terminated", upload.id))


async def test_same_events_and_metrics(aiohttp_client: Any) -> None:
    events = EventBus()
    recorder = Recorder()
    events.add(recorder)
    client = await client_for(aiohttp_client, events=events)
    r = await create(client, V6, b"abc", done=False)
    path = path_of(r.headers["Location"])
    upload_id = path.rsplit("/", 1)[1]
    r = await append(client, V6, path, 3, b"def", done=True)
    assert r.status == 204
    r2 = await create(client, V6, done=False)
    other = path_of(r2.headers["Location"])
    assert (await client.delete(other, headers=V6.header)).status == 204
    other_id = other.rsplit("/", 1)[1]
    assert recorder.seen == [
        ("created", upload_id), ("progress", upload_id), ("progress", upload_id),
        ("finished", upload_id), ("created", other_id), ("terminated", other_id)]
    text = await (await client.get("/metrics")).text()
    assert 'tusd_uploads_created_total' in text or 'tusd_uploads_created' in text


async def test_cors_allows_and_exposes_the_draft_fields(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client, server={"cors": {"allowed_origins": ["*"]}})
    r = await client.options("/files/", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "upload-draft-interop-version, upload-complete"})
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"upload-draft-interop-version", "upload-complete", "upload-incomplete",
            "upload-offset", "upload-length"} <= allowed
    r = await create(client, V6, b"abc", done=False, Origin="https://app.example")
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "upload-offset", "upload-complete", "upload-limit"} <= exposed


async def test_location_behind_a_proxy(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client, server={"behind_proxy": True})
    r = await create(client, V6, b"abc", done=False, X_Forwarded_Proto="https",
                     X_Forwarded_Host="uploads.example", X_Forwarded_Prefix="/api")
    assert r.headers["Location"].startswith("https://uploads.example/api/files/")


async def test_reserved_metadata_key_refused_for_tus(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Upload-Metadata": "ietf-draft"})
    assert r.status == 400


async def test_append_status_per_version(aiohttp_client: Any) -> None:
    """201 for a non-completing append up to -05 (6), 204 after; Upload-Limit keys."""
    client = await client_for(aiohttp_client, server={"max_size": 100})
    for n in (3, 6, 7, 10):
        v = Version(n)
        r = await create(client, v, done=False)
        path = path_of(r.headers["Location"])
        r = await append(client, v, path, 0, b"ab")
        assert r.status == (201 if n <= 6 else 204), n
        if n >= 6:
            got = limits((await retrieve(client, v, path)).headers["Upload-Limit"])
            assert got["max-size"] == "100"
            assert (v.expiry_key in got) and int(got[v.expiry_key]) > 0


async def test_tus_patch_unchanged_beside_the_draft(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client)
    path = await tus_create(client, 3)
    r = await client.patch(path, data=b"abc", headers={
        **TUS, "Upload-Offset": "0", "Content-Type": OCTET})
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"
    assert "Upload-Complete" not in r.headers


async def test_creation_by_put(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client)
    r = await client.put("/files/", data=b"abc", headers={**V6.header, "Upload-Complete": "?1"})
    assert r.status == 201 and r.headers["Upload-Offset"] == "3"
    r = await client.delete("/files/", headers=V6.header)
    assert r.status == 405 and "POST" in r.headers["Allow"]
