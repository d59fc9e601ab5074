"""tus 1.0.0 over real HTTP, per extension and per error code, on every driver."""

from __future__ import annotations

import asyncio
import os
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.plugins.azure import PART_SIZE as AZURE_PART
from tests.plugins.gcs import PART_SIZE as GCS_PART
from tests.plugins.s3 import PART_SIZE as S3_PART

from .helpers import (
    OCTET,
    TUS,
    b64,
    checksum,
    create,
    download,
    head,
    patch,
    path_of,
    upload,
    wait_expired,
)

ALL_EXTENSIONS = ("creation,creation-with-upload,creation-defer-length,expiration,checksum,"
                  "termination,concatenation,concatenation-unfinished")


# -- core ---------------------------------------------------------------------------


async def test_options_advertises_every_extension(tus):
    r = await tus.options("/files/")
    assert r.status == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.headers["Tus-Extension"] == ALL_EXTENSIONS
    assert r.headers["Tus-Checksum-Algorithm"] == "sha1,md5,sha256,sha512"
    assert "Tus-Max-Size" not in r.headers


async def test_options_needs_no_tus_resumable_and_reports_max_size(tus_client_factory):
    client = await tus_client_factory(server={"max_size": 1000})
    r = await client.options("/files/")
    assert r.headers["Tus-Max-Size"] == "1000"


async def test_options_reflects_config(tus_client_factory):
    client = await tus_client_factory(expiration={"after": 0},
                                      server={"checksum_algorithms": ["sha256"]})
    r = await client.options("/files/")
    assert "expiration" not in r.headers["Tus-Extension"].split(",")
    assert r.headers["Tus-Checksum-Algorithm"] == "sha256"


async def test_upload_in_chunks_then_download(tus):
    data = os.urandom(300_000)
    path = await upload(tus, data, chunk=70_000, Upload_Metadata=f"filename {b64('a.bin')}")
    r = await head(tus, path)
    assert r.status == 200
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == str(len(data))
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Upload-Metadata"] == f"filename {b64('a.bin')}"
    assert await download(tus, path) == data


async def test_location_is_absolute_and_unique(tus):
    r1 = await tus.post("/files/", headers={**TUS, "Upload-Length": "1"})
    r2 = await tus.post("/files", headers={**TUS, "Upload-Length": "1"})
    for r in (r1, r2):
        assert r.status == 201
        assert r.headers["Location"].startswith(f"http://{tus.host}:{tus.port}/files/")
    assert r1.headers["Location"] != r2.headers["Location"]


async def test_head_unknown_upload_404(tus):
    r = await head(tus, "/files/" + "0" * 32)
    assert r.status == 404


async def test_missing_or_wrong_tus_resumable_is_412_with_version(tus):
    for headers in ({}, {"Tus-Resumable": "0.2.2"}):
        r = await tus.post("/files/", headers={**headers, "Upload-Length": "1"})
        assert r.status == 412
        assert r.headers["Tus-Version"] == "1.0.0"
        assert r.headers["Content-Type"].startswith("text/plain")
    path = await create(tus, 3)
    for method in ("HEAD", "PATCH", "DELETE"):
        r = await tus.request(method, path, data=b"abc" if method == "PATCH" else None,
                              headers={"Upload-Offset": "0", "Content-Type": OCTET})
        assert r.status == 412, method
        assert r.headers["Tus-Version"] == "1.0.0"
    r = await head(tus, path)  # nothing above touched the upload
    assert r.status == 200 and r.headers["Upload-Offset"] == "0"


async def test_patch_offset_mismatch_409_and_nothing_written(tus):
    path = await create(tus, 10)
    r = await patch(tus, path, 3, b"abc")
    assert r.status == 409
    assert (await head(tus, path)).headers["Upload-Offset"] == "0"


async def test_patch_wrong_content_type_415(tus):
    path = await create(tus, 10)
    r = await tus.patch(path, data=b"abc", headers={**TUS, "Upload-Offset": "0",
                                                    "Content-Type": "text/plain"})
    assert r.status == 415
    r = await tus.patch(path, data=b"abc", headers={**TUS, "Upload-Offset": "0"})
    assert r.status == 415


async def test_patch_missing_or_bad_offset_400(tus):
    path = await create(tus, 10)
    for offset in (None, "-1", "1.5", "0x0", "+0"):
        headers = {**TUS, "Content-Type": OCTET}
        if offset is not None:
            headers["Upload-Offset"] = offset
        r = await tus.patch(path, data=b"a", headers=headers)
        assert r.status == 400, offset


async def test_patch_beyond_length_413_and_nothing_kept(tus):
    path = await create(tus, 5)
    r = await patch(tus, path, 0, b"123456")
    assert r.status == 413
    assert (await head(tus, path)).headers["Upload-Offset"] == "0"
    r = await patch(tus, path, 0, b"12345")
    assert r.status == 204


async def test_chunked_body_beyond_length_413(tus):
    path = await create(tus, 5)

    async def body():
        yield b"123"
        yield b"456"

    r = await tus.patch(path, data=body(), headers={**TUS, "Upload-Offset": "0",
                                                   "Content-Type": OCTET})
    assert r.status == 413
    assert (await head(tus, path)).headers["Upload-Offset"] == "0"


async def test_empty_patch_is_204(tus):
    path = await create(tus, 5)
    r = await patch(tus, path, 0, b"")
    assert r.status == 204 and r.headers["Upload-Offset"] == "0"


async def test_zero_length_upload_is_complete_at_once(tus):
    path = await create(tus, 0)
    assert (await head(tus, path)).headers["Upload-Offset"] == "0"
    assert await download(tus, path) == b""


async def test_max_size_413(tus_client_factory):
    client = await tus_client_factory(server={"max_size": 100})
    await create(client, 101, expect=413)
    await create(client, 100)


async def test_method_override(tus):
    path = await create(tus, 3)
    r = await tus.post(path, data=b"abc", headers={
        **TUS, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0", "Content-Type": OCTET})
    assert r.status == 204, await r.text()
    r = await tus.post(path, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert r.headers["Upload-Offset"] == "3"
    r = await tus.post(path, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status == 204
    assert (await head(tus, path)).status == 404


async def test_error_bodies_are_short_plain_text(tus):
    r = await tus.post("/files/", headers=TUS)
    assert r.status == 400
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers["Tus-Resumable"] == "1.0.0"
    text = await r.text()
    assert "Upload-Length" in text and len(text) < 200


# -- creation ---------------------------------------------------------------------


async def test_creation_needs_exactly_one_length_header(tus):
    await create(tus, expect=400)
    await create(tus, 5, expect=400, Upload_Defer_Length="1")
    await create(tus, expect=400, Upload_Length="abc")
    await create(tus, expect=400, Upload_Length="-5")


async def test_creation_rejects_bad_metadata(tus):
    await create(tus, 1, expect=400, Upload_Metadata="a YQ==,a YQ==")
    await create(tus, 1, expect=400, Upload_Metadata="a not-base64!")


async def test_creation_with_upload(tus):
    r = await tus.post("/files/", data=b"hello", headers={
        **TUS, "Upload-Length": "11", "Content-Type": OCTET})
    assert r.status == 201
    assert r.headers["Upload-Offset"] == "5"
    path = path_of(r.headers["Location"])
    assert (await patch(tus, path, 5, b" world")).status == 204
    assert await download(tus, path) == b"hello world"


async def test_creation_with_upload_bad_checksum_keeps_upload_at_zero(tus):
    r = await tus.post("/files/", data=b"hello", headers={
        **TUS, "Upload-Length": "5", "Content-Type": OCTET,
        "Upload-Checksum": checksum("sha1", b"other")})
    assert r.status == 201
    assert r.headers["Upload-Offset"] == "0"


async def test_creation_body_without_offset_content_type_is_415(tus):
    r = await tus.post("/files/", data=b"hello", headers={
        **TUS, "Upload-Length": "5", "Content-Type": "text/plain"})
    assert r.status == 415


# -- creation-defer-length ----------------------------------------------------------


async def test_deferred_length(tus):
    path = await create(tus, Upload_Defer_Length="1")
    r = await head(tus, path)
    assert r.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in r.headers
    assert (await patch(tus, path, 0, b"abc")).status == 204
    r = await patch(tus, path, 3, b"def", Upload_Length="6")
    assert r.status == 204
    r = await head(tus, path)
    assert r.headers["Upload-Length"] == "6" and "Upload-Defer-Length" not in r.headers
    assert await download(tus, path) == b"abcdef"


async def test_deferred_length_declared_without_bytes_and_cannot_change(tus):
    path = await create(tus, Upload_Defer_Length="1")
    assert (await patch(tus, path, 0, b"", Upload_Length="4")).status == 204
    assert (await head(tus, path)).headers["Upload-Length"] == "4"
    assert (await patch(tus, path, 0, b"ab", Upload_Length="5")).status == 400
    assert (await patch(tus, path, 0, b"abcde")).status == 413
    assert (await patch(tus, path, 0, b"abcd")).status == 204


async def test_declared_length_below_offset_400(tus):
    path = await create(tus, Upload_Defer_Length="1")
    await patch(tus, path, 0, b"abc")
    assert (await patch(tus, path, 3, b"", Upload_Length="2")).status == 400


# -- expiration ---------------------------------------------------------------------


async def test_upload_expires_header_is_rfc7231(tus):
    r = await tus.post("/files/", headers={**TUS, "Upload-Length": "10"})
    expires = parsedate_to_datetime(r.headers["Upload-Expires"]).timestamp()
    assert abs(expires - (time.time() + 86400)) < 60
    path = path_of(r.headers["Location"])
    r = await patch(tus, path, 0, b"abc")
    assert "Upload-Expires" in r.headers
    assert "Upload-Expires" in (await head(tus, path)).headers
    r = await patch(tus, path, 3, b"1234567")
    assert "Upload-Expires" not in r.headers  # finished uploads do not expire by default


async def test_expired_upload_is_410_then_swept(tus_client_factory):
    from tusd_py.core.sweeper import sweep_once
    from tusd_py.http.keys import HANDLER

    # 2 s: the finished upload's POST and PATCH must land before it could expire, which
    # on a loaded machine took more than 0.3 s on S3 (moto).
    client = await tus_client_factory(expiration={"after": 2.0, "sweep_interval": 0})
    path = await create(client, 10)
    done = await upload(client, b"x" * 4)
    await wait_expired(client, path)
    assert (await patch(client, path, 0, b"a")).status == 410
    deleted = await sweep_once(client.app[HANDLER])
    assert deleted == 1
    assert (await head(client, path)).status == 404
    assert await download(client, done) == b"x" * 4  # finished uploads are kept


async def test_patch_refreshes_expiry(tus_client_factory):
    # 4 x 0.5 s outlives one 1.5 s lifetime; each gap leaves 1 s for a slow store's PATCH.
    client = await tus_client_factory(expiration={"after": 1.5, "sweep_interval": 0})
    path = await create(client, 10)
    for i in range(4):
        await asyncio.sleep(0.5)
        assert (await patch(client, path, i, b"a")).status == 204
    assert (await head(client, path)).status == 200


async def test_completed_uploads_expire_when_configured(tus_client_factory):
    from tusd_py.core.sweeper import sweep_once
    from tusd_py.http.keys import HANDLER

    client = await tus_client_factory(expiration={"completed_after": 0.2, "sweep_interval": 0})
    path = await upload(client, b"abc")
    await asyncio.sleep(0.4)
    assert await sweep_once(client.app[HANDLER]) == 1
    assert (await head(client, path)).status == 404


# -- checksum -----------------------------------------------------------------------


async def test_checksum_every_algorithm(tus):
    for algorithm in ("md5", "sha1", "sha256", "sha512"):
        path = await create(tus, 6)
        r = await patch(tus, path, 0, b"abc", Upload_Checksum=checksum(algorithm, b"abc"))
        assert r.status == 204, algorithm
        r = await patch(tus, path, 3, b"def", Upload_Checksum=checksum(algorithm, b"def"))
        assert r.status == 204
        assert await download(tus, path) == b"abcdef"


async def test_checksum_mismatch_460_no_offset_advance(tus):
    path = await create(tus, 6)
    await patch(tus, path, 0, b"abc")
    r = await patch(tus, path, 3, b"def", Upload_Checksum=checksum("sha256", b"xyz"))
    assert r.status == 460
    assert (await head(tus, path)).headers["Upload-Offset"] == "3"
    r = await patch(tus, path, 3, b"DEF", Upload_Checksum=checksum("sha256", b"DEF"))
    assert r.status == 204
    assert await download(tus, path) == b"abcDEF"


#: The part (block) size of each driver's test config; the others have no parts.
PART_SIZES = {"s3": S3_PART, "gcs": GCS_PART, "azure": AZURE_PART}


async def test_checksum_mismatch_across_staged_parts_commits_nothing(tus, storage_config):
    """A PATCH longer than two parts whose checksum fails: the object stores uploaded
    (staged) parts of it while it streamed; 460 rolls them back: the offset stays, the
    next PATCH at the same offset succeeds with other bytes, and those are the bytes."""
    part = PART_SIZES.get(storage_config["driver"], 256 * 1024)
    first = os.urandom(part // 2 + 3)  # the upload now ends mid-part (a stored tail)
    bad, good, rest = os.urandom(2 * part + 1000), os.urandom(2 * part + 1000), os.urandom(part)
    path = await create(tus, len(first) + len(good) + len(rest))
    assert (await patch(tus, path, 0, first)).status == 204
    r = await patch(tus, path, len(first), bad, Upload_Checksum=checksum("sha256", good))
    assert r.status == 460, (r.status, await r.text())
    assert (await head(tus, path)).headers["Upload-Offset"] == str(len(first))
    r = await patch(tus, path, len(first), good, Upload_Checksum=checksum("sha256", good))
    assert r.status == 204, (r.status, await r.text())
    assert r.headers["Upload-Offset"] == str(len(first) + len(good))
    assert (await patch(tus, path, len(first) + len(good), rest)).status == 204
    assert await download(tus, path) == first + good + rest


async def test_checksum_unknown_algorithm_400(tus):
    path = await create(tus, 3)
    r = await patch(tus, path, 0, b"abc", Upload_Checksum="crc32 AAAAAA==")
    assert r.status == 400
    r = await patch(tus, path, 0, b"abc", Upload_Checksum="sha1 ???")
    assert r.status == 400


# -- termination --------------------------------------------------------------------


async def test_termination(tus):
    path = await create(tus, 10)
    await patch(tus, path, 0, b"abc")
    r = await tus.delete(path, headers=TUS)
    assert r.status == 204
    assert (await head(tus, path)).status == 404
    assert (await patch(tus, path, 3, b"d")).status == 404
    r = await tus.delete(path, headers=TUS)
    assert r.status == 404


# -- concatenation ------------------------------------------------------------------


async def test_concatenation(tus):
    a = await upload(tus, b"hello ", Upload_Concat="partial")
    b = await upload(tus, b"world", Upload_Concat="partial")
    r = await head(tus, a)
    assert r.headers["Upload-Concat"] == "partial"
    base = f"http://{tus.host}:{tus.port}"
    r = await tus.post("/files/", headers={
        **TUS, "Upload-Concat": f"final;{a} {base}{b}",
        "Upload-Metadata": f"filename {b64('hw.txt')}"})
    assert r.status == 201, await r.text()
    final = path_of(r.headers["Location"])
    r = await head(tus, final)
    assert r.headers["Upload-Concat"] == f"final;{a} {b}"
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == "11"
    assert await download(tus, final) == b"hello world"
    assert (await patch(tus, final, 11, b"x")).status == 403


async def test_partials_are_not_downloadable_as_final_and_final_rules(tus):
    plain = await upload(tus, b"abc")
    r = await tus.post("/files/", headers={**TUS, "Upload-Concat": f"final;{plain}"})
    assert r.status == 400  # not a partial
    r = await tus.post("/files/", headers={**TUS, "Upload-Concat": "final;/files/" + "f" * 32})
    assert r.status == 400  # no such partial
    r = await tus.post("/files/", headers={**TUS, "Upload-Concat": "final;/elsewhere/abc"})
    assert r.status == 400
    r = await tus.post("/files/", headers={**TUS, "Upload-Concat": "bogus"})
    assert r.status == 400


async def test_concatenation_unfinished(tus):
    a = await create(tus, 3, Upload_Concat="partial")
    b = await create(tus, Upload_Defer_Length="1", Upload_Concat="partial")
    r = await tus.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert r.status == 201
    final = path_of(r.headers["Location"])
    r = await head(tus, final)
    assert "Upload-Offset" not in r.headers  # not assembled yet
    assert "Upload-Length" not in r.headers
    assert (await tus.get(final)).status == 404
    assert (await patch(tus, a, 0, b"abc")).status == 204
    assert (await patch(tus, b, 0, b"de", Upload_Length="2")).status == 204
    r = await head(tus, final)
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == "5"
    assert await download(tus, final) == b"abcde"


async def test_unfinished_final_lives_as_long_as_its_partials(tus_client_factory):
    from tusd_py.core.sweeper import sweep_once
    from tusd_py.http.keys import HANDLER

    # Margins are wide (loaded CI machines): partials are written every 1.2 s, well
    # inside their 2.5 s lifetime, while the final's own 2.5 s lapse after 2.4 s + ops.
    client = await tus_client_factory(expiration={"after": 2.5, "sweep_interval": 0})
    a = await create(client, 6, Upload_Concat="partial")
    b = await create(client, 2, Upload_Concat="partial")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    final = path_of(r.headers["Location"])
    created = time.monotonic()
    assert (await patch(client, a, 0, b"aa")).status == 204
    assert (await patch(client, b, 0, b"ef")).status == 204  # b is complete: kept
    for offset in (2, 4):  # a is written slowly, past the final's own expiry
        await asyncio.sleep(1.2)
        assert (await patch(client, a, offset, b"aa")).status == 204
    await asyncio.sleep(max(0.0, created + 2.6 - time.monotonic()))  # the final's own time is up
    assert await sweep_once(client.app[HANDLER]) == 0
    assert (await head(client, final)).status == 200
    assert await download(client, final) == b"aaaaaaef"

    c = await create(client, 5, Upload_Concat="partial")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{c} {b}"})
    stale = path_of(r.headers["Location"])
    await asyncio.sleep(2.6)  # c expires, and with it the final it was meant for
    assert (await head(client, stale)).status == 410
    assert await sweep_once(client.app[HANDLER]) == 2
    assert (await head(client, stale)).status == 404


# -- GET ------------------------------------------------------------------------------


async def test_download_headers_and_range(tus):
    data = bytes(range(256)) * 40
    path = await upload(tus, data, Upload_Metadata=f"filename {b64('pic.png')},filetype {b64('image/png')}")
    r = await tus.get(path)
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"].startswith('inline; filename="pic.png"')
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] and r.headers["Last-Modified"]
    r = await tus.get(path, headers={"Range": "bytes=100-199"})
    assert r.status == 206
    assert await r.read() == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    r = await tus.get(path, headers={"Range": "bytes=-10"})
    assert await r.read() == data[-10:]


@pytest.mark.parametrize("range_header, status, part", [
    ("bytes=0-0", 206, slice(0, 1)),
    ("bytes=990-5000", 206, slice(990, 1000)),  # last byte past the end: up to the end
    ("bytes=-5000", 206, slice(0, 1000)),  # suffix longer than the upload: all of it
    ("BYTES=5-", 206, slice(5, 1000)),
    ("bytes=0-1,4-5", 200, slice(None)),  # several ranges: ignored, the whole upload
    ("items=0-1", 200, slice(None)),  # another unit: ignored
    ("bytes=abc", 200, slice(None)),  # bad syntax: ignored
    ("bytes=5-4", 200, slice(None)),  # last < first: an invalid spec, ignored
    ("bytes=-0", 416, None),  # a zero-length suffix selects nothing
    ("bytes=1000-", 416, None),  # first byte past the end
])
async def test_download_range_edge_cases(tus, range_header, status, part):
    data = bytes(range(250)) * 4
    path = await upload(tus, data)
    r = await tus.get(path, headers={"Range": range_header})
    assert r.status == status, (range_header, r.status)
    body = await r.read()
    if status == 416:
        assert r.headers["Content-Range"] == "bytes */1000"
    else:
        assert body == data[part]
        assert ("Content-Range" in r.headers) == (status == 206)


async def test_download_if_range_and_conditional_get(tus):
    data = b"0123456789" * 100
    path = await upload(tus, data)
    r = await tus.get(path)
    etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
    r = await tus.get(path, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert r.status == 206 and await r.read() == data[10:20]
    r = await tus.get(path, headers={"Range": "bytes=10-19", "If-Range": '"another"'})
    assert r.status == 200 and await r.read() == data
    r = await tus.get(path, headers={"Range": "bytes=10-19", "If-Range": modified})
    assert r.status == 206 and await r.read() == data[10:20]
    r = await tus.get(path, headers={"Range": "bytes=10-19",
                                     "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert r.status == 200 and await r.read() == data
    r = await tus.get(path, headers={"If-None-Match": etag})
    assert r.status == 304 and await r.read() == b""


async def test_download_keeps_the_charset_of_a_safe_type(tus):
    meta = f"filetype {b64('text/plain; charset=UTF-8')}"
    path = await upload(tus, "héllo".encode(), Upload_Metadata=meta)
    r = await tus.get(path)
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Content-Disposition"] == "inline"
    meta = f"filetype {b64('text/html; charset=utf-8')}"
    path = await upload(tus, b"<p>", Upload_Metadata=meta)
    assert (await tus.get(path)).headers["Content-Type"] == "application/octet-stream"


async def test_download_and_errors_carry_cors_headers(tus):
    """Streamed object-store downloads are prepared inside the handler: CORS headers
    must still be on them (and on a 206 and an error)."""
    path = await upload(tus, b"cross-origin bytes")
    origin = {"Origin": "https://app.example"}
    for extra, status in (({}, 200), ({"Range": "bytes=0-4"}, 206)):
        r = await tus.get(path, headers={**origin, **extra})
        assert r.status == status
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
    r = await tus.head("/files/" + "0" * 32, headers={**TUS, **origin})
    assert r.status == 404 and r.headers["Access-Control-Allow-Origin"] == "*"


async def test_download_of_unsafe_type_is_attachment_octet_stream(tus):
    meta = f"filename {b64('x.html')},filetype {b64('text/html')}"
    path = await upload(tus, b"<script>alert(1)</script>", Upload_Metadata=meta)
    r = await tus.get(path)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_download_unfinished_404_and_disabled(tus, tus_client_factory):
    path = await create(tus, 10)
    assert (await tus.get(path)).status == 404
    client = await tus_client_factory(server={"download": False})
    path = await upload(client, b"abc")
    assert (await client.get(path)).status == 405


async def test_filename_header_is_sanitised(tus):
    name = b64('a"b;c\r\n.txt')
    meta = f"filename {name}"
    path = await upload(tus, b"abc", Upload_Metadata=meta)
    r = await tus.get(path)
    disposition = r.headers["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.startswith('attachment; filename="a_b;c')


# -- health ---------------------------------------------------------------------------


async def test_health_endpoints(tus):
    assert (await tus.get("/healthz")).status == 200
    r = await tus.get("/readyz")
    assert r.status == 200, await r.text()


async def test_readyz_fails_when_the_local_upload_dir_is_gone(aiohttp_client, local_storage_config,
                                                               caplog):
    import shutil

    from tests.plugins.app import make_config
    from tusd_py.http.app import create_app

    client = await aiohttp_client(create_app(make_config(local_storage_config)))
    assert (await client.get("/readyz")).status == 200
    shutil.rmtree(os.path.join(local_storage_config["data_dir"], "uploads"))
    r = await client.get("/readyz")
    assert r.status == 503
    assert await r.text() == "storage not ready\n"  # no path: the reason is in the log
    assert "uploads: No such file or directory" in caplog.text
    assert (await client.get("/healthz")).status == 200  # alive, just not ready
