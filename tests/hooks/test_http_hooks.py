"""HTTP hooks in tusd v2's wire format, against a real receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import OCTET, TUS, b64, create, head, patch, path_of, upload
from tests.plugins.daemon import free_port

from .conftest import (
    HookedFactory,
    Receiver,
    StoredBytes,
    every_driver,
    expected_storage,
    metric,
)

POST_HOOKS = ["post-create", "post-receive", "post-finish", "post-terminate"]


async def metrics_text(client: TestClient) -> str:
    r = await client.get("/metrics")
    assert r.status == 200
    return await r.text()


# -- pre-create ------------------------------------------------------------------------


async def test_pre_create_rejection_reaches_the_client(hooked: HookedFactory, receiver: Receiver):
    receiver.responder = lambda body, request: {
        "RejectUpload": True,
        "HTTPResponse": {"StatusCode": 403, "Body": '{"message":"quota exceeded"}',
                         "Header": {"Content-Type": "application/json", "X-Reason": "quota"}},
    }
    client = await hooked()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert r.status == 403
    assert await r.text() == '{"message":"quota exceeded"}'
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["X-Reason"] == "quota"
    assert "Location" not in r.headers
    await receiver.settle(client)
    assert [c.type for c in receiver.calls] == ["pre-create"]  # nothing was created


async def test_pre_create_rejection_defaults_to_tusd_message(hooked: HookedFactory,
                                                             receiver: Receiver):
    receiver.responder = lambda body, request: {"RejectUpload": True}
    client = await hooked()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert r.status == 400
    assert await r.text() == "upload creation has been rejected by server\n"  # tusd's words
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    # An empty Body is no body, as in tusd (its default stays); a status alone is kept.
    receiver.responder = lambda body, request: {"RejectUpload": True,
                                                "HTTPResponse": {"StatusCode": 402, "Body": ""}}
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert (r.status, await r.text()) == (402, "upload creation has been rejected by server\n")


async def test_pre_create_payload(hooked: HookedFactory, receiver: Receiver):
    client = await hooked()
    meta = f"filename {b64('résumé.txt')},empty"
    await create(client, 5, Upload_Metadata=meta, Authorization="Bearer abc")
    (call,) = receiver.of("pre-create")
    assert set(call.body) == {"Type", "Event"}
    assert set(call.body["Event"]) == {"Upload", "HTTPRequest"}
    assert call.upload == {
        "ID": "", "Size": 5, "SizeIsDeferred": False, "Offset": 0,
        "MetaData": {"filename": "résumé.txt", "empty": ""},
        "IsPartial": False, "IsFinal": False, "PartialUploads": None, "Storage": None,
    }
    http = call.http
    assert set(http) == {"Method", "URI", "RemoteAddr", "Header"}
    assert http["Method"] == "POST"
    assert http["URI"] == "/files/"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", http["RemoteAddr"])
    assert http["Header"]["Upload-Length"] == ["5"]
    assert http["Header"]["Tus-Resumable"] == ["1.0.0"]
    assert http["Header"]["Authorization"] == ["Bearer abc"]
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Idempotency-Key"]


@every_driver
async def test_pre_create_changes_id_and_metadata(hooked: HookedFactory, receiver: Receiver,
                                                  storage_config):
    receiver.responder = lambda body, request: (
        {"ChangeFileInfo": {"ID": "project-7-upload-1",
                            "MetaData": {"filename": "renamed.txt", "owner": "alice"}},
         "HTTPResponse": {"Header": {"X-Upload-Owner": "alice"}}}
        if body["Type"] == "pre-create" else {})
    client = await hooked()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3",
                                              "Upload-Metadata": f"filename {b64('a.txt')}"})
    assert r.status == 201, await r.text()
    assert path_of(r.headers["Location"]) == "/files/project-7-upload-1"
    assert r.headers["X-Upload-Owner"] == "alice"
    h = await head(client, "/files/project-7-upload-1")
    assert h.status == 200
    pairs = dict(p.split(" ") for p in h.headers["Upload-Metadata"].split(","))
    assert pairs == {"filename": b64("renamed.txt"), "owner": b64("alice")}
    (created,) = await receiver.wait_for("post-create")
    assert created.upload["ID"] == "project-7-upload-1"
    assert created.upload["MetaData"] == {"filename": "renamed.txt", "owner": "alice"}
    assert created.upload["Storage"] == expected_storage("project-7-upload-1", storage_config)

    # The same id again: a clean refusal, and the first upload is untouched.
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 409
    assert "already exists" in await r.text()
    assert (await head(client, "/files/project-7-upload-1")).headers["Upload-Offset"] == "0"


async def test_pre_create_invalid_id_is_refused(hooked: HookedFactory, receiver: Receiver):
    receiver.responder = lambda body, request: {"ChangeFileInfo": {"ID": "../../etc/passwd"}}
    client = await hooked()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 500
    assert "invalid upload id" in await r.text()


async def test_pre_create_receiver_down_fails_closed(hooked: HookedFactory, caplog):
    """As tusd: a pre-create hook that cannot be called refuses the POST with 500 (tus
    clients retry 5xx). The client learns why in one line; the log has the details."""
    client = await hooked(http={"url": f"http://127.0.0.1:{free_port()}/hooks"})
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 500
    assert await r.text() == "pre-create hook failed: hook endpoint unavailable\n"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert "Location" not in r.headers
    assert re.search(r"pre-create hook for upload \w+ failed: HTTP hook http://127.0.0.1:\d+/hooks: "
                     r"ClientConnectorError", caplog.text)
    assert metric(await metrics_text(client), "tusd_hook_errors_total", "pre-create") == 1


async def test_pre_create_bad_answers_are_hook_errors(hooked: HookedFactory, receiver: Receiver):
    answers = iter([(404, "nope"), (200, "not json"), (200, '{"RejectUpload": "yes"}')])
    receiver.responder = lambda body, request: next(answers)
    client = await hooked()
    for reason in ("hook endpoint answered 404", "invalid hook response",
                   "invalid hook response"):
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
        assert (r.status, await r.text()) == (500, f"pre-create hook failed: {reason}\n")
    assert metric(await metrics_text(client), "tusd_hook_errors_total", "pre-create") == 3


async def test_retries_with_backoff_then_succeeds(hooked: HookedFactory, receiver: Receiver):
    answers = iter([(503, "busy"), (500, "oops")])
    receiver.responder = lambda body, request: next(answers, {})
    client = await hooked(http={"retries": 2, "backoff": 0.05})
    started = time.monotonic()
    await create(client, 3)
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff, then doubled
    calls = receiver.of("pre-create")
    assert len(calls) == 3
    assert len({c.headers["Idempotency-Key"] for c in calls}) == 1  # one delivery
    assert metric(await metrics_text(client), "tusd_hook_invocations_total", "pre-create") == 1


async def test_forward_headers_and_static_headers(hooked: HookedFactory, receiver: Receiver):
    client = await hooked(http={"forward_headers": ["Cookie", "X-Missing"],
                                "headers": {"X-Hook-Secret": "s3cret"}})
    await create(client, 3, Cookie="session=42")
    (call,) = receiver.of("pre-create")
    assert call.headers["Cookie"] == "session=42"
    assert call.headers["X-Hook-Secret"] == "s3cret"
    assert "X-Missing" not in call.headers


# -- post-receive ----------------------------------------------------------------------


async def test_post_receive_is_throttled(hooked: HookedFactory, receiver: Receiver):
    """At most one post-receive per interval per upload: the first at once, the newest
    offset when the interval ends (nothing in between); the completing PATCH at once."""
    interval = 3.0  # ten in-process PATCHes take far less, even on a loaded machine
    client = await hooked(post_receive_interval=interval)
    data = bytes(range(200))
    path = await create(client, len(data))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for offset in range(0, 100, 10):  # ten quick PATCHes within one interval
        r = await patch(client, path, offset, data[offset:offset + 10])
        assert r.status == 204
    assert loop.time() - started < interval  # else the check below is meaningless
    first = await receiver.wait_for("post-receive", 1)
    assert first[0].upload["Offset"] == 10
    assert first[0].http["Method"] == "PATCH"
    assert first[0].http["URI"] == path
    # The newest offset is delivered when the interval ends, and nothing in between.
    calls = await receiver.wait_for("post-receive", 2, within=3 * interval)
    assert loop.time() - started >= interval  # the lower bound is the point: it waited
    await receiver.settle(client)
    assert [c.upload["Offset"] for c in receiver.of("post-receive")] == [10, 100]
    assert calls[1].upload["Size"] == 200
    # The PATCH completing the upload is reported at once, not at the interval's end.
    completed = loop.time()
    r = await patch(client, path, 100, data[100:])
    assert r.status == 204
    calls = await receiver.wait_for("post-receive", 3, within=interval)
    assert loop.time() - completed < interval
    assert calls[2].upload["Offset"] == 200


@pytest.mark.parametrize("http, status, text", [
    ({"StatusCode": 400, "Body": "project deleted"}, 400, "project deleted"),
    (None, 400, "upload has been stopped by server\n"),  # tusd's default
])
async def test_post_receive_stop_upload(hooked: HookedFactory, receiver: Receiver,
                                        http: dict | None, status: int, text: str):
    receiver.responder = lambda body, request: (
        {"StopUpload": True, "HTTPResponse": http} if body["Type"] == "post-receive" else {})
    client = await hooked(post_receive_interval=0)
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"12345")).status == 204
    await receiver.wait_for("post-receive")
    await receiver.settle(client)
    r = await patch(client, path, 5, b"67890")
    assert (r.status, await r.text()) == (status, text)
    assert (await head(client, path)).headers["Upload-Offset"] == "5"


# -- post-finish: payload, exactly once ---------------------------------------------------


@every_driver
async def test_post_finish_payload(hooked: HookedFactory, receiver: Receiver, storage_config,
                                   stored_bytes: StoredBytes):
    client = await hooked()
    data = b"hello world"
    path = await upload(client, data, chunk=4, Upload_Metadata=f"filename {b64('h.txt')}")
    (call,) = await receiver.wait_for("post-finish")
    upload_id = path.rsplit("/", 1)[1]
    u = call.upload
    assert u["ID"] == upload_id
    assert (u["Size"], u["Offset"], u["SizeIsDeferred"]) == (11, 11, False)
    assert u["MetaData"] == {"filename": "h.txt"}
    assert (u["IsPartial"], u["IsFinal"], u["PartialUploads"]) == (False, False, None)
    assert u["Storage"] == expected_storage(upload_id, storage_config)
    assert stored_bytes(u["Storage"]) == data  # the receiver can use the bytes at once
    assert call.http["Method"] == "PATCH"
    assert call.http["URI"] == path
    assert call.http["Header"]["Upload-Offset"] == ["8"]


@every_driver
async def test_post_finish_fires_exactly_once(hooked: HookedFactory, receiver: Receiver):
    client = await hooked()
    path = await upload(client, b"abcdef", chunk=3)
    await receiver.wait_for("post-finish")
    # Replays of the last PATCH, HEADs, an empty PATCH and a download change nothing.
    assert (await patch(client, path, 3, b"def")).status == 409
    assert (await patch(client, path, 6, b"")).status in (204, 403)
    assert (await head(client, path)).status == 200
    assert (await client.get(path)).status == 200
    await receiver.settle(client)
    assert len(receiver.of("post-finish")) == 1
    assert len(receiver.of("post-create")) == 1


@every_driver
async def test_post_finish_once_when_replicas_race(hooked: HookedFactory, receiver: Receiver):
    """Two apps on one data directory race to write the last bytes: one post-finish."""
    replicas = [await hooked(), await hooked()]
    for _ in range(3):
        path = await create(replicas[0], 8)
        assert (await patch(replicas[0], path, 0, b"1234")).status == 204
        results = await asyncio.gather(*(patch(c, path, 4, b"5678") for c in replicas))
        statuses = sorted(r.status for r in results)
        assert statuses[0] == 204 and statuses[1] in (409, 423), statuses
    await receiver.settle(*replicas)
    finished = [c.upload["ID"] for c in receiver.of("post-finish")]
    assert len(finished) == 3 and len(set(finished)) == 3


async def test_zero_length_upload_finishes_on_creation(hooked: HookedFactory, receiver: Receiver):
    client = await hooked()
    await create(client, 0)
    (call,) = await receiver.wait_for("post-finish")
    assert call.http["Method"] == "POST"
    assert (call.upload["Size"], call.upload["Offset"]) == (0, 0)


@every_driver
async def test_concatenation_post_finish_only_for_the_final(hooked: HookedFactory,
                                                            receiver: Receiver):
    client = await hooked()
    parts = []
    for data in (b"abc", b"defg"):
        path = await create(client, len(data), Upload_Concat="partial")
        assert (await patch(client, path, 0, data)).status == 204
        parts.append(path)
    created = await receiver.wait_for("post-create", 2)
    assert all(c.upload["IsPartial"] for c in created)
    await receiver.settle(client)
    assert receiver.of("post-finish") == []  # finished partials are not "finished uploads"

    final = await create(client, None, Upload_Concat="final;" + " ".join(parts))
    (call,) = await receiver.wait_for("post-finish")
    u = call.upload
    assert u["ID"] == final.rsplit("/", 1)[1]
    assert (u["IsFinal"], u["IsPartial"]) == (True, False)
    assert u["PartialUploads"] == [p.rsplit("/", 1)[1] for p in parts]
    assert (u["Size"], u["Offset"]) == (7, 7)
    assert (await client.get(final)).status == 200
    await receiver.settle(client)
    assert len(receiver.of("post-finish")) == 1


async def test_unfinished_concatenation_post_finish_once(hooked: HookedFactory,
                                                         receiver: Receiver):
    client = await hooked()
    parts = [await create(client, 2, Upload_Concat="partial") for _ in range(2)]
    final = await create(client, None, Upload_Concat="final;" + " ".join(parts))
    for path in parts:
        assert (await patch(client, path, 0, b"xy")).status == 204
    for _ in range(3):  # each HEAD may settle the final; only one finishes it
        assert (await head(client, final)).status == 200
    (call,) = await receiver.wait_for("post-finish")
    assert call.upload["ID"] == final.rsplit("/", 1)[1]
    await receiver.settle(client)
    assert len(receiver.of("post-finish")) == 1


# -- post-terminate ---------------------------------------------------------------------


@every_driver
async def test_post_terminate(hooked: HookedFactory, receiver: Receiver):
    client = await hooked()
    path = await create(client, 10)
    r = await client.delete(path, headers=TUS)
    assert r.status == 204
    (call,) = await receiver.wait_for("post-terminate")
    assert call.upload["ID"] == path.rsplit("/", 1)[1]
    assert call.http["Method"] == "DELETE"
    assert call.http["URI"] == path


async def test_post_terminate_on_expiry(hooked: HookedFactory, receiver: Receiver):
    client = await hooked(expiration={"after": 0.2, "sweep_interval": 0.1})
    path = await create(client, 10)
    (call,) = await receiver.wait_for("post-terminate", within=5)
    assert call.upload["ID"] == path.rsplit("/", 1)[1]
    assert call.http == {"Method": "", "URI": "", "RemoteAddr": "", "Header": {}}


async def test_deferred_length_payload(hooked: HookedFactory, receiver: Receiver):
    client = await hooked()
    r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status == 201
    (call,) = await receiver.wait_for("post-create")
    assert (call.upload["Size"], call.upload["SizeIsDeferred"]) == (0, True)


# -- a receiver that is down or slow ------------------------------------------------------


async def test_receiver_down_uploads_still_succeed(hooked: HookedFactory, caplog):
    client = await hooked(http={"url": f"http://127.0.0.1:{free_port()}/hooks", "retries": 1,
                                "backoff": 0.01},
                          enabled=POST_HOOKS, post_receive_interval=0)
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        path = await upload(client, b"x" * 100, chunk=50)
        assert (await client.get(path)).status == 200
        async with asyncio.timeout(5):
            while metric(await metrics_text(client), "tusd_hook_errors_total", "post-finish") < 1:
                await asyncio.sleep(0.02)
    text = await metrics_text(client)
    assert metric(text, "tusd_hook_errors_total", "post-create") == 1
    assert metric(text, "tusd_hook_errors_total", "post-receive") == 2
    assert metric(text, "tusd_hook_invocations_total", "post-finish") == 1
    # Every lost event is counted by reason, and logged with its upload id.
    for hook_type, count in (("post-create", 1), ("post-receive", 2)):
        assert metric(text, "tusd_hook_dropped_total", hook_type, reason="failed") == count
        assert metric(text, "tusd_hook_dropped_total", hook_type) == count
    upload_id = path.rsplit("/", 1)[1]
    assert f"post-create hook for upload {upload_id} dropped (failed)" in caplog.text
    # post-finish is not lost: it stays owed in storage, to be delivered again.
    assert metric(text, "tusd_hook_dropped_total", "post-finish") == 0
    assert re.search(rf"post-finish hook for upload {upload_id} failed: "
                     r"HTTP hook http://127\.0\.0\.1:\d+/hooks: ClientConnectorError.*"
                     r"\(after 2 attempt\(s\)\)", caplog.text)
    assert (f"post-finish hook for upload {upload_id} not delivered (a backend failed): "
            "delivered again once it is 60s overdue") in caplog.text


async def test_receiver_down_drops_post_finish_without_redelivery(hooked: HookedFactory, caplog):
    """``redeliver_after: 0``: post-finish is at most once, like the other post-* events."""
    client = await hooked(http={"url": f"http://127.0.0.1:{free_port()}/hooks"},
                          enabled=["post-finish"], redeliver_after=0)
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        path = await upload(client, b"x" * 10, chunk=10)
        async with asyncio.timeout(5):
            while metric(await metrics_text(client), "tusd_hook_errors_total", "post-finish") < 1:
                await asyncio.sleep(0.02)
    text = await metrics_text(client)
    assert metric(text, "tusd_hook_dropped_total", "post-finish", reason="failed") == 1
    assert f"post-finish hook for upload {path.rsplit('/', 1)[1]} dropped (failed)" in caplog.text


async def test_slow_receiver_does_not_slow_uploads(hooked: HookedFactory, receiver: Receiver,
                                                   caplog):
    receiver.delay = 10.0
    client = await hooked(http={"timeout": 2}, enabled=POST_HOOKS, post_receive_interval=0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        for _ in range(3):
            await upload(client, b"y" * 30, chunk=10)
        elapsed = time.monotonic() - started
        # Waiting for even one of the 15 deliveries would take the 2 s hook timeout.
        assert elapsed < 2.0, elapsed
        async with asyncio.timeout(30):
            while metric(await metrics_text(client), "tusd_hook_errors_total", "post-finish") < 3:
                await asyncio.sleep(0.05)
    assert "no answer within 2s" in caplog.text


async def test_full_queue_drops_and_counts(hooked: HookedFactory, receiver: Receiver, caplog):
    receiver.delay = 1.0
    client = await hooked(http={"timeout": 2}, enabled=["post-create"], queue_size=2,
                          concurrency=1)
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        paths = [await create(client, 1) for _ in range(6)]
    text = await metrics_text(client)
    # One in flight, two queued, three dropped.
    assert metric(text, "tusd_hook_dropped_total", "post-create", reason="queue_full") == 3
    assert metric(text, "tusd_hook_dropped_total", "post-create") == 3
    for path in paths[3:]:
        assert (f"post-create hook for upload {path.rsplit('/', 1)[1]} dropped (queue_full): "
                "2 deliveries already queued") in caplog.text
    receiver.delay = 0


# -- pre-finish, pre-access ---------------------------------------------------------------


async def test_pre_finish_adds_headers_or_rejects(hooked: HookedFactory, receiver: Receiver):
    def respond(body, request):
        if body["Type"] != "pre-finish":
            return {}
        if body["Event"]["Upload"]["MetaData"].get("bad"):
            return {"HTTPResponse": {"StatusCode": 422, "Body": "virus found"}}
        return {"HTTPResponse": {"Header": {"Link": "<https://example.com/f/1>; rel=related"}}}

    receiver.responder = respond
    client = await hooked(enabled=["pre-finish", "post-finish"])
    path = await create(client, 3)
    r = await patch(client, path, 0, b"abc")
    assert r.status == 204
    assert r.headers["Link"] == "<https://example.com/f/1>; rel=related"
    await receiver.wait_for("post-finish")

    path = await create(client, 3, Upload_Metadata=f"bad {b64('1')}")
    r = await patch(client, path, 0, b"abc")
    assert r.status == 422
    assert await r.text() == "virus found"
    await receiver.settle(client)
    assert len(receiver.of("post-finish")) == 1  # a rejected finish is not reported


@pytest.mark.parametrize("answer, status", [
    ({"HTTPResponse": {"StatusCode": 422}}, 422),
    ({"RejectUpload": True}, 400),  # not in tusd (it ignores RejectUpload in pre-finish)
])
async def test_pre_finish_rejection_without_body(hooked: HookedFactory, receiver: Receiver,
                                                 answer: dict, status: int):
    """tusd has no default body for pre-finish: it sends the hook's HTTPResponse as given."""
    receiver.responder = lambda body, request: answer if body["Type"] == "pre-finish" else {}
    client = await hooked(enabled=["pre-finish"])
    path = await create(client, 3)
    r = await patch(client, path, 0, b"abc")
    assert (r.status, await r.text()) == (status, "")


async def test_pre_access_denies_other_users(hooked: HookedFactory, receiver: Receiver):
    """Per-upload authorisation: the owner recorded at creation must match the token."""

    def respond(body, request):
        token = (body["Event"]["HTTPRequest"]["Header"].get("Authorization") or [""])[0]
        user = token.removeprefix("Bearer ")
        if body["Type"] == "pre-create":
            if not user:
                return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 401,
                                                               "Body": "token required"}}
            return {"ChangeFileInfo": {"MetaData": {**body["Event"]["Upload"]["MetaData"],
                                                    "owner": user}}}
        if body["Type"] == "pre-access":
            if body["Event"]["Upload"]["MetaData"].get("owner") != user:
                return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 403,
                                                               "Body": "not your upload"}}
        return {}

    receiver.responder = respond
    client = await hooked(enabled=["pre-create", "pre-access"])
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}
    path = await create(client, 4, **alice)
    for method in ("HEAD", "PATCH", "GET", "DELETE"):
        r = await client.request(method, path, headers={
            **TUS, **bob, "Upload-Offset": "0", "Content-Type": OCTET})
        assert r.status == 403, method
        if method != "HEAD":
            assert await r.text() == "not your upload"
    assert (await patch(client, path, 0, b"data", **alice)).status == 204
    r = await client.get(path, headers=alice)
    assert await r.read() == b"data"
    access = receiver.of("pre-access")
    assert [c.http["Method"] for c in access[:4]] == ["HEAD", "PATCH", "GET", "DELETE"]
    assert access[0].upload["ID"] == path.rsplit("/", 1)[1]
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status == 401


async def test_pre_terminate_can_refuse_a_delete(hooked: HookedFactory, receiver: Receiver):
    """tusd v2's pre-terminate: RejectTermination refuses the DELETE (400 with tusd's
    wording unless the hook gives a body); the upload stays as it was."""
    def respond(body: dict, request: object) -> dict:
        if body["Type"] != "pre-terminate":
            return {}
        if body["Event"]["Upload"]["MetaData"].get("keep") == "yes":
            return {"RejectTermination": True}
        return {"HTTPResponse": {"Header": {"X-Audit": "deleted"}}}

    receiver.responder = respond
    client = await hooked(enabled=["pre-terminate", "post-terminate"])
    kept = await create(client, 4, Upload_Metadata=f"keep {b64('yes')}")
    assert (await patch(client, kept, 0, b"da")).status == 204
    r = await client.delete(kept, headers=TUS)
    assert r.status == 400
    assert await r.text() == "upload termination has been rejected by server\n"
    r = await head(client, kept)
    assert r.status == 200 and r.headers["Upload-Offset"] == "2"
    other = await create(client, 4)
    r = await client.delete(other, headers=TUS)
    assert r.status == 204 and r.headers["X-Audit"] == "deleted"
    assert (await head(client, other)).status == 404
    calls = receiver.of("pre-terminate")
    assert [c.upload["ID"] for c in calls] == [kept.rsplit("/", 1)[1], other.rsplit("/", 1)[1]]
    assert calls[0].http["Method"] == "DELETE"
    await receiver.wait_for("post-terminate", 1)
    assert [c.upload["ID"] for c in receiver.of("post-terminate")] == [other.rsplit("/", 1)[1]]


async def test_pre_access_reject_termination(hooked: HookedFactory, receiver: Receiver):
    receiver.responder = lambda body, request: (
        {"RejectTermination": True, "HTTPResponse": {"Body": "kept for audit"}}
        if body["Type"] == "pre-access" else {})
    client = await hooked(enabled=["pre-access"])
    path = await create(client, 4)
    assert (await head(client, path)).status == 200
    r = await client.delete(path, headers=TUS)
    assert r.status == 403
    assert await r.text() == "kept for audit"


async def test_no_hooks_configured_means_no_listener(tus_client_factory):
    client = await tus_client_factory()
    from tusd_py.hooks.listener import HookListener
    from tusd_py.http.keys import EVENTS

    assert not any(isinstance(x, HookListener) for x in client.app[EVENTS].listeners)
    r = await client.get("/metrics")
    assert "tusd_hook_errors_total" not in await r.text()


@pytest.mark.parametrize("body", ["", "{}", "null"])
async def test_empty_answers_mean_carry_on(hooked: HookedFactory, receiver: Receiver, body: str):
    receiver.responder = lambda b, request: (200, body)
    client = await hooked()
    await create(client, 1)


def test_payload_is_json_serialisable_round_trip():
    from tusd_py.hooks.payload import hook_request
    from tusd_py.storage.base import Upload

    u = Upload(id="x1", length=None, metadata={"a": b"\xff", "b": None}, final_of=("p1",),
               location="bucket/some/key")
    body = json.loads(json.dumps(hook_request("post-create", u, None, "s3")))
    assert body["Event"]["Upload"]["MetaData"] == {"a": "\ufffd", "b": ""}
    assert body["Event"]["Upload"]["Storage"] == {"Type": "s3store", "Bucket": "bucket",
                                                  "Key": "some/key"}
    assert body["Event"]["Upload"]["PartialUploads"] == ["p1"]


async def test_unreachable_endpoint_is_skipped_for_a_while(hooked: HookedFactory,
                                                           receiver: Receiver):
    """After 5 failed deliveries in a row the endpoint is skipped (failing fast, counted)."""
    from tusd_py.hooks.http import BREAKER_THRESHOLD, HttpHook
    from tusd_py.http.keys import HOOKS

    client = await hooked(http={"url": f"http://127.0.0.1:{free_port()}/hooks"},
                          enabled=["post-create"], concurrency=1)
    for _ in range(BREAKER_THRESHOLD + 3):
        await create(client, 1)
    async with asyncio.timeout(5):
        while metric(await metrics_text(client), "tusd_hook_errors_total", "post-create") < 8:
            await asyncio.sleep(0.02)
    backend = client.app[HOOKS].backends[0]
    assert isinstance(backend, HttpHook)
    assert backend.failures == BREAKER_THRESHOLD  # the last three never tried to connect
    text = await metrics_text(client)
    assert metric(text, "tusd_hook_dropped_total", "post-create", reason="failed") == 5
    assert metric(text, "tusd_hook_dropped_total", "post-create", reason="circuit_open") == 3
    assert backend.open_until > asyncio.get_running_loop().time()
    # When the cooldown ends, the next delivery tries again; a success closes the breaker.
    backend.url, backend.open_until = receiver.url, 0.0
    path = await create(client, 1)
    (call,) = await receiver.wait_for("post-create")
    assert call.upload["ID"] == path.rsplit("/", 1)[1]
    async with asyncio.timeout(2):
        while backend.failures:  # reset once the answer is read
            await asyncio.sleep(0.01)


async def test_readme_auth_recipe_as_http_receiver(hooked: HookedFactory, receiver: Receiver):
    """The docs' recipe function (docs/hooks/python.md), served over HTTP instead of in-process."""
    from . import sample_hooks

    receiver.responder = lambda body, request: sample_hooks.check_bearer(body)
    client = await hooked(enabled=["pre-create", "pre-access"])
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "2",
                                              "Authorization": "Bearer wrong"})
    assert (r.status, await r.text()) == (401, '{"error":"invalid token"}')
    path = await create(client, 2, Authorization="Bearer t-alice")
    assert (await patch(client, path, 0, b"ok", Authorization="Bearer t-bob")).status == 403
    assert (await patch(client, path, 0, b"ok", Authorization="Bearer t-alice")).status == 204


async def test_queued_hooks_are_delivered_on_shutdown(hooked: HookedFactory, receiver: Receiver):
    """Stopping the app drains the queue (up to min(timeout, 5 s)) before it closes."""
    receiver.delay = 0.2
    client = await hooked(enabled=["post-finish"], concurrency=1)
    paths = [await upload(client, b"bye") for _ in range(3)]
    await client.close()  # runs the app's cleanup: the hooks drain first
    ids = [c.upload["ID"] for c in receiver.of("post-finish")]
    assert ids == [p.rsplit("/", 1)[1] for p in paths]


async def slow_body(chunks: int, size: int, pause: float):
    for _ in range(chunks):
        yield b"s" * size
        await asyncio.sleep(pause)


async def test_post_receive_during_a_long_patch(hooked: HookedFactory, receiver: Receiver):
    """One long PATCH (tus-js-client's default) still reports progress as it streams: at
    most one report per interval, the last one with the final offset."""
    interval = 0.2
    client = await hooked(post_receive_interval=interval)
    path = await create(client, 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await client.patch(path, data=slow_body(10, 100, 0.06), headers={
        **TUS, "Upload-Offset": "0", "Content-Type": OCTET})
    assert r.status == 204
    elapsed = loop.time() - started  # at least 0.6 s: three intervals
    await receiver.settle(client)
    offsets = [c.upload["Offset"] for c in receiver.of("post-receive")]
    assert 3 <= len(offsets) <= elapsed / interval + 2, (offsets, elapsed)
    assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] == 1000


@every_driver
async def test_stop_upload_ends_the_running_patch(hooked: HookedFactory, receiver: Receiver):
    receiver.responder = lambda body, request: (
        {"StopUpload": True, "HTTPResponse": {"StatusCode": 410, "Body": "project deleted"}}
        if body["Type"] == "post-receive" else {})
    client = await hooked(post_receive_interval=0.2)
    path = await create(client, 100_000)
    started = time.monotonic()
    r = await client.patch(path, data=slow_body(300, 100, 0.05), headers={
        **TUS, "Upload-Offset": "0", "Content-Type": OCTET})
    assert (r.status, await r.text()) == (410, "project deleted")
    assert time.monotonic() - started < 8.0  # not the 15 s the body would take
    offset = int((await head(client, path)).headers["Upload-Offset"])
    assert 0 < offset < 30_000  # what arrived before the stop is committed
    r = await patch(client, path, offset, b"more")
    assert (r.status, await r.text()) == (410, "project deleted")


# -- delivery guarantees: Idempotency-Key, shutdown ---------------------------------------


@every_driver
async def test_idempotency_key_is_one_per_event_across_retries_and_replicas(
        hooked: HookedFactory, receiver: Receiver):
    """Replica A creates the upload, replica B completes it; B's first post-finish attempt
    gets a 503. Both attempts carry one key (32 hex digits, as documented), so a receiver
    de-duplicating on it sees the completion once. (Another process re-delivering the
    same event sends the same key: test_post_finish_redelivery.)"""
    post_finish_attempts = 0

    def respond(body, request):
        nonlocal post_finish_attempts
        if body["Type"] == "pre-create" and "fixed" in body["Event"]["Upload"]["MetaData"]:
            return {"ChangeFileInfo": {"ID": "reused-id"}}
        if body["Type"] == "post-finish":
            post_finish_attempts += 1
            if post_finish_attempts == 1:
                return (503, "busy")
        return {}

    receiver.responder = respond
    http = {"retries": 1, "backoff": 0}
    a, b = await hooked(http=http), await hooked(http=http)
    path = await create(a, 6)
    upload_id = path.rsplit("/", 1)[1]
    assert (await patch(a, path, 0, b"abc")).status == 204
    assert (await patch(b, path, 3, b"def")).status == 204
    finished = await receiver.wait_for("post-finish", 2)
    keys = {c.headers["Idempotency-Key"] for c in finished}
    assert len(keys) == 1 and re.fullmatch("[0-9a-f]{32}", next(iter(keys))), keys
    assert {c.upload["ID"] for c in finished} == {upload_id}
    # One key per event: other hook types and other offsets get other keys.
    (created,) = receiver.of("post-create")
    received = {c.upload["Offset"]: c.headers["Idempotency-Key"]
                for c in receiver.of("post-receive")}
    assert sorted(received) == [3, 6] and len(set(received.values())) == 2
    assert created.headers["Idempotency-Key"] not in keys | set(received.values())

    # An id a hook reuses after a DELETE is another upload: another key.
    created_keys = []
    for _ in range(2):
        fixed = await create(a, 1, Upload_Metadata="fixed")
        assert fixed.endswith("/reused-id")
        created_keys.append((await receiver.wait_for("post-create", len(created_keys) + 2))[-1]
                            .headers["Idempotency-Key"])
        assert (await a.delete(fixed, headers=TUS)).status == 204
    assert created_keys[0] != created_keys[1]


async def test_shutdown_drain_is_bounded_and_counts_what_it_abandons(
        hooked: HookedFactory, receiver: Receiver, caplog):
    """At shutdown queued post-finish deliveries get up to the drain time (here 1 s: the
    hook timeout); what is still queued or in flight then is counted and logged by id."""
    from tusd_py.http.keys import REGISTRY

    receiver.delay = 0.6
    client = await hooked(http={"timeout": 1}, enabled=["post-finish"], concurrency=1,
                          redeliver_after=0)  # at most once (else: left for re-delivery)
    ids = [(await upload(client, b"bye")).rsplit("/", 1)[1] for _ in range(4)]
    registry = client.app[REGISTRY]
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        started = time.monotonic()
        await client.close()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    dropped = registry.get_sample_value(
        "tusd_hook_dropped_total", {"hooktype": "post-finish", "reason": "shutdown"})
    logged = re.findall(r"post-finish hook for upload (\w+) dropped \(shutdown\)", caplog.text)
    assert dropped == len(logged) and 2 <= len(logged) <= 3, caplog.text
    assert len(set(logged)) == len(logged) and set(logged) <= set(ids)
    delivered = set(ids) - set(logged)
    assert delivered <= {c.upload["ID"] for c in receiver.of("post-finish")}
    assert re.search(rf"shutdown drain ended after 1\.\ds with {len(logged)} delivery",
                     caplog.text)


async def test_pending_post_receive_is_sent_at_shutdown(hooked: HookedFactory,
                                                        receiver: Receiver):
    """The newest progress held back by the throttle is delivered in the shutdown drain."""
    client = await hooked(enabled=["post-receive"], post_receive_interval=30)
    path = await create(client, 10)
    for offset in (0, 3, 6):
        assert (await patch(client, path, offset, b"xyz")).status == 204
    await receiver.wait_for("post-receive")
    await receiver.settle(client)
    assert [c.upload["Offset"] for c in receiver.of("post-receive")] == [3]
    await client.close()
    assert [c.upload["Offset"] for c in receiver.of("post-receive")] == [3, 9]


async def test_shutdown_cut_short_still_counts_what_it_abandons(
        hooked: HookedFactory, receiver: Receiver, caplog):
    """The daemon's own shutdown deadline may cancel the drain: nothing goes uncounted."""
    from tusd_py.http.keys import HOOKS

    receiver.delay = 5
    client = await hooked(http={"timeout": 10}, enabled=["post-finish"], concurrency=1,
                          redeliver_after=0)
    ids = [(await upload(client, b"x")).rsplit("/", 1)[1] for _ in range(2)]
    await receiver.wait_for("post-finish")  # one in flight, one queued
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.app[HOOKS].stop(drain=10), 0.3)
    text = await metrics_text(client)
    assert metric(text, "tusd_hook_dropped_total", "post-finish", reason="shutdown") == 2
    logged = re.findall(r"post-finish hook for upload (\w+) dropped \(shutdown\)", caplog.text)
    assert sorted(logged) == sorted(ids)
    receiver.delay = 0
