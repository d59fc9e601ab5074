"""Resumable Uploads for HTTP, every interop version the server speaks, on every driver.

Each expectation is the draft text's for that version (tests/ietf/helpers.py:
``Version``); ../shared/notes/ietf-draft.md gathers them with their sources.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import TUS, wait_metric
from tests.http.helpers import create as tus_create
from tests.plugins.app import TusClientFactory
from tests.plugins.tcp import wait_delivered

from .helpers import (
    PROBLEM,
    VERSIONS,
    Version,
    append,
    create,
    download,
    limits,
    messages,
    path_of,
    problem,
    raw,
    retrieve,
)


@pytest.fixture(params=VERSIONS, ids=lambda n: f"v{n}")
def v(request: pytest.FixtureRequest) -> Version:
    return Version(request.param)


# -- creation ------------------------------------------------------------------------


async def test_creation_complete_with_content(tus: TestClient, v: Version) -> None:
    """A creation that carries the whole representation: 2xx, the offset, complete."""
    data = os.urandom(70_000)
    r = await create(tus, v, data, done=True)
    assert r.headers["Upload-Offset"] == str(len(data))
    assert v.says_complete(r) is True
    assert await download(tus, path_of(r.headers["Location"])) == data


async def test_creation_incomplete_with_content(tus: TestClient, v: Version) -> None:
    data = os.urandom(5000)
    r = await create(tus, v, data, done=False)
    assert r.status == 201 and r.headers["Location"]
    assert r.headers["Upload-Offset"] == "5000"
    assert v.says_complete(r) is False
    if v.has_limits and v.n >= 8:  # -09 on: the incomplete creation carries Upload-Limit
        assert "Upload-Limit" in r.headers


async def test_creation_without_content_then_appends(tus: TestClient, v: Version) -> None:
    """An empty creation (allowed explicitly from -03), two appends, the last completing."""
    data = os.urandom(300_000)
    r = await create(tus, v, done=False)
    assert r.headers["Upload-Offset"] == "0" and v.says_complete(r) is False
    path = path_of(r.headers["Location"])
    r = await append(tus, v, path, 0, data[:100_000])
    assert v.incomplete_append_ok(r.status), r.status
    assert r.headers["Upload-Offset"] == "100000"
    if v.n >= 7:  # -06 on: a non-completing append response says ?0
        assert v.says_complete(r) is False
    r = await append(tus, v, path, 100_000, data[100_000:], done=True)
    assert 200 <= r.status < 300, (r.status, await r.text())
    assert v.says_complete(r) is not False
    assert await download(tus, path) == data


async def test_empty_complete_creation(tus: TestClient, v: Version) -> None:
    r = await create(tus, v, b"", done=True)
    assert r.headers["Upload-Offset"] == "0"
    assert v.says_complete(r) is True
    assert await download(tus, path_of(r.headers["Location"])) == b""


async def test_metadata_from_content_headers(tus: TestClient, v: Version) -> None:
    """Content-Type and Content-Disposition of the creation name the download (as tusd)."""
    r = await create(tus, v, b"%PDF-1.7", done=True, Content_Type="application/pdf",
                     Content_Disposition='attachment; filename="report.pdf"')
    got = await tus.get(path_of(r.headers["Location"]))
    assert await got.read() == b"%PDF-1.7"
    assert got.headers["Content-Type"] == "application/pdf"
    assert "report.pdf" in got.headers["Content-Disposition"]


# -- offset retrieval -----------------------------------------------------------------


async def test_offset_retrieval(tus: TestClient, v: Version) -> None:
    headers = {"Upload-Length": "20"} if v.has_length else {}
    r = await create(tus, v, b"0123456789", done=False, **{k.replace("-", "_"): x
                                                            for k, x in headers.items()})
    path = path_of(r.headers["Location"])
    methods = ["HEAD", "GET"] if v.get_is_retrieval else ["HEAD"]
    for method in methods:
        r = await retrieve(tus, v, path, method)
        assert v.retrieval_ok(r.status), (method, r.status)
        assert r.headers["Upload-Offset"] == "10"
        assert r.headers["Cache-Control"] == "no-store"
        if v.head_needs_completeness:
            assert v.says_complete(r) is False
        if v.has_length and v.n < 10:
            assert r.headers["Upload-Length"] == "20"
        if v.n >= 8:  # -09 on: HEAD MUST carry Upload-Limit
            assert "Upload-Limit" in r.headers


async def test_get_before_9_is_a_download(tus: TestClient, v: Version) -> None:
    r = await create(tus, v, b"abc", done=True)
    got = await retrieve(tus, v, path_of(r.headers["Location"]), "GET")
    if v.get_is_retrieval:
        assert got.headers["Upload-Offset"] == "3" and not await got.read()
    else:
        assert got.status == 200 and await got.read() == b"abc"


async def test_retrieval_with_upload_fields_is_refused_up_to_6(tus: TestClient,
                                                               v: Version) -> None:
    """-01..-05: HEAD (and DELETE) with Upload-Offset or the completeness header: 400."""
    r = await create(tus, v, b"abc", done=False)
    path = path_of(r.headers["Location"])
    r = await retrieve(tus, v, path, "HEAD", **{"Upload-Offset": "3"})
    if v.n <= 6:
        assert r.status == 400
    else:
        assert 200 <= r.status < 300


async def test_unknown_upload_is_404(tus: TestClient, v: Version) -> None:
    r = await retrieve(tus, v, "/files/0123456789abcdef0123456789abcdef")
    assert r.status == 404
    r = await append(tus, v, "/files/0123456789abcdef0123456789abcdef", 0, b"x")
    assert r.status == 404


# -- append ---------------------------------------------------------------------------


async def test_mismatched_offset(tus: TestClient, v: Version) -> None:
    """409 with the right offset; problem details from -04; ``?0`` from -12."""
    r = await create(tus, v, b"0123456789", done=False)
    path = path_of(r.headers["Location"])
    r = await append(tus, v, path, 4, b"xyz")
    assert r.status == 409
    assert r.headers["Upload-Offset"] == "10"
    if v.n >= 7:
        assert v.says_complete(r) is False
    if v.problems:
        body = await problem(r)
        assert body["type"] == PROBLEM + "mismatching-upload-offset"
        assert body["expected-offset"] == 10 and body["provided-offset"] == 4
    r = await retrieve(tus, v, path)
    assert r.headers["Upload-Offset"] == "10"  # nothing of the refused request kept


async def test_append_needs_partial_upload_type_from_6(tus: TestClient, v: Version) -> None:
    r = await create(tus, v, done=False)
    path = path_of(r.headers["Location"])
    r = await tus.patch(path, data=b"abc", headers={
        **v.header, **v.complete(False), "Upload-Offset": "0",
        "Content-Type": "application/octet-stream"})
    if v.n >= 6:
        assert r.status == 415
    else:
        assert r.status == 201


async def test_append_to_a_completed_upload(tus: TestClient, v: Version) -> None:
    """Nothing changes. -04..-11: refused (problem ``completed-upload``); -12 on: data
    cannot be appended (the length is known: inconsistent), an empty completing request
    gets the final response again."""
    r = await create(tus, v, b"abc", done=True)
    path = path_of(r.headers["Location"])
    r = await append(tus, v, path, 3, b"more", done=True)
    assert 400 <= r.status < 500
    if 6 <= v.n <= 8:
        assert (await problem(r))["type"] == PROBLEM + "completed-upload"
    elif v.n >= 9:
        assert (await problem(r))["type"] == PROBLEM + "inconsistent-upload-length"
    r = await append(tus, v, path, 3, b"", done=True)
    assert 200 <= r.status < 300 and v.says_complete(r) is True
    assert await download(tus, path) == b"abc"


async def test_cancellation(tus: TestClient, v: Version) -> None:
    r = await create(tus, v, b"abc", done=False)
    path = path_of(r.headers["Location"])
    r = await tus.delete(path, headers=v.header)
    assert r.status == 204
    assert (await retrieve(tus, v, path)).status == 404


# -- limits ---------------------------------------------------------------------------


async def test_options_upload_limit(tus_client_factory: TusClientFactory, v: Version) -> None:
    client = await tus_client_factory(server={"max_size": 1000, "max_request_size": 400})
    r = await client.options("/files/", headers=v.header)
    assert 200 <= r.status < 300
    if v.has_limits:
        got = limits(r.headers["Upload-Limit"])
        assert got["max-size"] == "1000" and got["max-append-size"] == "400"
        assert got[v.expiry_key] == str(24 * 3600)  # expiration.after's default
    else:
        assert "Upload-Limit" not in r.headers
    assert "Tus-Version" not in r.headers  # a draft request gets the draft's answer


async def test_options_without_limits_says_min_size_0(tus_client_factory: TusClientFactory,
                                                      v: Version) -> None:
    """-05 on: OPTIONS carries Upload-Limit, ``min-size=0`` when nothing is limited."""
    client = await tus_client_factory(expiration={"after": 0})
    r = await client.options("/files/", headers=v.header)
    if v.has_limits:
        assert r.headers["Upload-Limit"] == "min-size=0"


async def test_limits_violated_413_with_upload_limit(tus_client_factory: TusClientFactory,
                                                     v: Version) -> None:
    client = await tus_client_factory(server={"max_size": 1000, "max_request_size": 400})
    r = await create(client, v, os.urandom(1001), done=True, expect=413)
    if v.has_limits:
        assert limits(r.headers["Upload-Limit"])["max-size"] == "1000"
    r = await create(client, v, done=False)
    path = path_of(r.headers["Location"])
    r = await append(client, v, path, 0, os.urandom(401))
    assert r.status == 413
    if v.has_limits:
        assert limits(r.headers["Upload-Limit"])["max-append-size"] == "400"
    r = await append(client, v, path, 0, os.urandom(400))
    assert v.incomplete_append_ok(r.status)


# -- length consistency ---------------------------------------------------------------


async def test_inconsistent_lengths(tus: TestClient, v: Version) -> None:
    """-05 on: Upload-Length against the completing request's length: 400 (problem
    ``inconsistent-upload-length`` from -06); -02 on: a completing append must end where
    the first completing request said."""
    if v.has_length:
        r = await create(tus, v, b"12345", done=True, Upload_Length="10", expect=400)
        if v.n >= 7:
            assert (await problem(r))["type"] == PROBLEM + "inconsistent-upload-length"
        r = await create(tus, v, b"12345", done=False, Upload_Length="10")
        path = path_of(r.headers["Location"])
        r = await append(tus, v, path, 5, b"123456")  # past the length
        assert r.status == 400
        r = await append(tus, v, path, 5, b"1234", done=True)  # ends before it
        assert r.status == 400
        r = await append(tus, v, path, 5, b"12345", done=True, Upload_Length="11")
        assert r.status == 400
        assert (await retrieve(tus, v, path)).headers["Upload-Offset"] == "5"
        r = await append(tus, v, path, 5, b"67890", done=True)
        assert 200 <= r.status < 300
        assert await download(tus, path) == b"1234567890"


async def test_chunked_completing_request_shorter_than_length(tus: TestClient,
                                                              v: Version) -> None:
    """-12 (#3463): the length is offset + content whenever the request completes, and
    must stay consistent: a chunked completing request ending short is refused."""
    if not v.has_length:
        return

    async def body(data: bytes):  # type: ignore[no-untyped-def]
        yield data  # a generator: aiohttp sends it chunked (no Content-Length)

    r = await create(tus, v, b"abc", done=False, Upload_Length="10")
    path = path_of(r.headers["Location"])
    r = await tus.patch(path, data=body(b"defg"), headers={
        **v.header, **v.complete(True), **v.append_type, "Upload-Offset": "3"})
    assert r.status == 400
    assert (await retrieve(tus, v, path)).headers["Upload-Offset"] == "3"
    r = await tus.patch(path, data=body(b"defghij"), headers={
        **v.header, **v.complete(True), **v.append_type, "Upload-Offset": "3"})
    assert 200 <= r.status < 300, (r.status, await r.text())
    assert await download(tus, path) == b"abcdefghij"


async def test_chunked_completing_creation_sets_the_length(tus: TestClient, v: Version) -> None:
    async def body():  # type: ignore[no-untyped-def]
        yield b"a" * 1000
        yield b"b" * 234

    r = await tus.post("/files/", data=body(), headers={**v.header, **v.complete(True)})
    assert r.status == 201, await r.text()
    assert r.headers["Upload-Offset"] == "1234" and v.says_complete(r) is True
    path = path_of(r.headers["Location"])
    r2 = await retrieve(tus, v, path)
    if v.has_length and v.n < 10:
        assert r2.headers["Upload-Length"] == "1234"
    assert await download(tus, path) == b"a" * 1000 + b"b" * 234


# -- the 104 and interrupted requests on the wire ----------------------------------------


def _creation(v: Version, body: bytes, *, http: str = "1.1", version: str | None = None) -> bytes:
    version = version or str(v.n)
    (name, value), = v.complete(True).items()
    return (f"POST /files/ HTTP/{http}\r\nHost: 127.0.0.1\r\n"
            f"Upload-Draft-Interop-Version: {version}\r\n{name}: {value}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def test_104_before_the_final_response(tus: TestClient, v: Version) -> None:
    port = tus.server.port
    assert port is not None
    wire = await raw(port, _creation(v, b"hello"))
    (status, interim), (final, headers) = messages(wire)
    assert status == 104
    assert wire.startswith(b"HTTP/1.1 104 Upload Resumption Supported\r\n")
    assert interim["upload-draft-interop-version"] == str(v.n)
    assert interim["location"] == headers["location"]  # identical in every message (-10)
    if v.n >= 8:  # -09 on: the 104 carries Upload-Limit
        assert "upload-limit" in interim
    assert final == 201 and headers["upload-offset"] == "5"


async def test_no_104_for_http_1_0_or_another_version(tus: TestClient, v: Version) -> None:
    port = tus.server.port
    assert port is not None
    wire = await raw(port, _creation(v, b"hello", http="1.0"))
    assert [m[0] for m in messages(wire)] == [201]
    wire = await raw(port, _creation(v, b"hello", version="2"))
    (status, headers), = messages(wire)
    assert status == 400 and "upload-draft-interop-version" not in headers


async def test_interrupted_append_is_kept_and_resumed(tus: TestClient, v: Version) -> None:
    """-04 on: the server SHOULD keep what arrived of an interrupted request, and an
    interrupted upload is never complete; the client asks the offset and goes on.

    aiohttp's test server cancels the handler of a client that hung up (tests/README.md),
    so what it keeps is a prefix of what it read: the connection is cut once the handler
    is provably reading (more than aiohttp's read-ahead taken from the kernel), and the
    daemon-level test (tests/system/test_crash.py) checks that exactly the bytes sent
    are kept."""
    read_ahead = 1 << 20  # more than aiohttp buffers for a handler that does not read
    sent = read_ahead + 250_000
    data = os.urandom(sent + 350_000)
    r = await create(tus, v, done=False)
    path = path_of(r.headers["Location"])
    port = tus.server.port
    assert port is not None
    (name, value), = v.complete(True).items()
    ctype = "Content-Type: application/partial-upload\r\n" if v.n >= 6 else ""
    head = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpload-Draft-Interop-Version: {v.n}\r\n"
            f"{name}: {value}\r\nUpload-Offset: 0\r\n{ctype}"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + data[:read_ahead])
    await wait_delivered(writer)  # only a reading handler takes this much
    writer.write(data[read_ahead:sent])
    await wait_delivered(writer)
    writer.transport.abort()
    await wait_metric(tus, "tusd_uploads_active", 0)  # it has committed what it read
    r = await retrieve(tus, v, path)
    offset = int(r.headers["Upload-Offset"])
    assert 0 < offset <= sent  # a prefix: the bytes are compared below
    loop = asyncio.get_running_loop()
    if v.head_needs_completeness:
        assert v.says_complete(r) is False
    deadline = loop.time() + 20  # object stores release the lease with a round trip:
    while True:                  # 423 for a moment
        r = await append(tus, v, path, offset, data[offset:], done=True)
        if r.status != 423 or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert 200 <= r.status < 300, (r.status, await r.text())
    assert await download(tus, path) == data


# -- tus and the draft beside each other ------------------------------------------------


async def test_each_protocol_sees_only_its_uploads(tus: TestClient, v: Version) -> None:
    r = await create(tus, v, b"draft", done=False)
    draft_path = path_of(r.headers["Location"])
    tus_path = await tus_create(tus, 5)
    assert (await tus.head(draft_path, headers=TUS)).status == 404
    r = await tus.patch(draft_path, data=b"x", headers={
        **TUS, "Upload-Offset": "5", "Content-Type": "application/offset+octet-stream"})
    assert r.status == 404
    assert (await tus.delete(draft_path, headers=TUS)).status == 404
    assert (await retrieve(tus, v, tus_path)).status == 404
    assert (await append(tus, v, tus_path, 0, b"x")).status == 404
    assert (await tus.delete(tus_path, headers=v.header)).status == 404
    assert (await retrieve(tus, v, draft_path)).headers["Upload-Offset"] == "5"
