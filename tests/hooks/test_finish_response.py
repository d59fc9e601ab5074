"""pre-finish answering the request that finished the upload: its StatusCode (2xx),
headers and a small body, as tusd merges them into that response; CORS exposes the
headers it set."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.http.helpers import OCTET, TUS, create, patch

from .conftest import HookedFactory, Receiver


def pre_finish_answer(answer: dict[str, Any]):  # type: ignore[no-untyped-def]
    return lambda body, request: answer if body["Type"] == "pre-finish" else {}


async def test_the_finishing_patch_carries_status_headers_and_body(hooked: HookedFactory,
                                                                   receiver: Receiver) -> None:
    def respond(body, request):  # type: ignore[no-untyped-def]
        if body["Type"] != "pre-finish":
            return {}
        upload = body["Event"]["Upload"]
        return {"HTTPResponse": {"StatusCode": 200, "Header": {
            "Content-Type": "application/json", "X-File-Id": "f-" + upload["ID"][:8]},
            "Body": json.dumps({"id": upload["ID"], "size": upload["Size"]})}}

    receiver.responder = respond
    client = await hooked(enabled=["pre-finish"])
    path = await create(client, 6)
    upload_id = path.rsplit("/", 1)[1]
    first = await patch(client, path, 0, b"abc", Origin="https://app.example")
    assert first.status == 204 and "X-File-Id" not in first.headers  # not finished yet
    r = await client.patch(path, data=b"def", headers={
        **TUS, "Upload-Offset": "3", "Content-Type": OCTET, "Origin": "https://app.example"})
    assert r.status == 200
    assert await r.json() == {"id": upload_id, "size": 6}
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Upload-Offset"] == "6" and r.headers["Tus-Resumable"] == "1.0.0"
    assert r.headers["X-File-Id"] == "f-" + upload_id[:8]
    exposed = [h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")]
    assert "X-File-Id" in exposed and "Upload-Offset" in exposed
    # The headers of the first PATCH exposed only the fixed list.
    assert "X-File-Id" not in first.headers["Access-Control-Expose-Headers"]


async def test_a_body_alone_comes_with_200_and_creation_keeps_201(hooked: HookedFactory,
                                                                  receiver: Receiver) -> None:
    receiver.responder = pre_finish_answer({"HTTPResponse": {"Body": "done: f-1"}})
    client = await hooked(enabled=["pre-finish"])
    path = await create(client, 2)
    r = await client.patch(path, data=b"hi", headers={**TUS, "Upload-Offset": "0",
                                                      "Content-Type": OCTET})
    assert (r.status, await r.text()) == (200, "done: f-1")
    # creation-with-upload finishing the upload: 201 with Location, and the body.
    r = await client.post("/files/", data=b"hi", headers={
        **TUS, "Upload-Length": "2", "Content-Type": OCTET})
    assert r.status == 201 and r.headers["Location"] and r.headers["Upload-Offset"] == "2"
    assert await r.text() == "done: f-1"
    # An empty upload finishes at creation: the same.
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "0"})
    assert (r.status, await r.text()) == (201, "done: f-1")


async def test_headers_alone_keep_204(hooked: HookedFactory, receiver: Receiver) -> None:
    receiver.responder = pre_finish_answer({"HTTPResponse": {"Header": {"X-A": "1"}}})
    client = await hooked(enabled=["pre-finish"])
    path = await create(client, 1)
    r = await patch(client, path, 0, b"x")
    assert (r.status, r.headers["X-A"]) == (204, "1")


@pytest.mark.parametrize("http", [
    {"StatusCode": 302, "Header": {"Location": "https://elsewhere.example"}},
    {"StatusCode": 204, "Body": "a body on 204"},
    {"StatusCode": 200, "Body": "x" * (16 * 1024 + 1)},
])
async def test_what_a_finishing_answer_cannot_be(hooked: HookedFactory, receiver: Receiver,
                                                 http: dict[str, Any]) -> None:
    """Fails closed, as any broken pre-finish answer: 500, and post-finish is not sent."""
    receiver.responder = pre_finish_answer({"HTTPResponse": http})
    client = await hooked(enabled=["pre-finish", "post-finish"])
    path = await create(client, 1)
    r = await patch(client, path, 0, b"x")
    assert r.status == 500
    assert (await r.text()).startswith("pre-finish hook failed: invalid hook response")
    await receiver.settle()
    assert receiver.of("post-finish") == []
