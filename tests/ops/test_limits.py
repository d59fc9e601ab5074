"""Limits, the static bearer token and the access log, on a real daemon over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import aiohttp
from tusclient.client import TusClient

from .test_metrics import scrape
from .test_proxy import PATCH_HEADERS, TUS, create, head_offset, patch


async def test_max_request_size(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(env={"TUSD_SERVER__MAX_REQUEST_SIZE": "64KiB"})
    data = os.urandom(200_000)
    async with aiohttp.ClientSession() as s:
        url = await create(s, daemon.url, len(data))
        async with s.patch(url, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}) as r:
            assert r.status == 413
        assert await head_offset(s, url) == 0  # refused before a byte was read

        async def chunked():  # type: ignore[no-untyped-def]
            yield data[:10]

        async with s.patch(url, data=chunked(), headers={**PATCH_HEADERS, "Upload-Offset": "0"}) as r:
            assert r.status == 411
        # creation-with-upload over the limit: refused, nothing created
        async with s.post(daemon.url, data=data, headers={
                **PATCH_HEADERS, "Upload-Length": str(len(data))}) as r:
            assert r.status == 413
        assert await patch(s, url, 0, data[:65536]) == 65536
        m = await scrape(s, daemon)
        assert m["tusd_limit_rejections_total{reason=request-size}"] == 2
        assert m["tusd_limit_rejections_total{reason=length-required}"] == 1
        assert m["tusd_uploads_created_total"] == 1

    # A client whose chunks fit the limit uploads the whole file.
    path = daemon.data_dir.parent / "big.bin"
    path.write_bytes(data)
    uploader = TusClient(daemon.url).uploader(str(path), chunk_size=64 * 1024)
    await asyncio.to_thread(uploader.upload)
    async with aiohttp.ClientSession() as s, s.get(uploader.url) as r:
        assert await r.read() == data


async def test_max_concurrent_uploads(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(env={"TUSD_SERVER__MAX_CONCURRENT_UPLOADS": "1"})
    async with aiohttp.ClientSession() as s:
        first, second = await create(s, daemon.url, 100), await create(s, daemon.url, 100)
        gate = asyncio.Event()

        async def slow():  # type: ignore[no-untyped-def]
            yield b"a" * 50
            await gate.wait()
            yield b"a" * 50

        task = asyncio.create_task(s.patch(first, data=slow(), headers={
            **PATCH_HEADERS, "Upload-Offset": "0", "Content-Length": "100"}))
        for _ in range(100):
            if (await scrape(s, daemon))["tusd_uploads_active"]:
                break
            await asyncio.sleep(0.02)
        async with s.patch(second, data=b"b" * 100,
                           headers={**PATCH_HEADERS, "Upload-Offset": "0"}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
        assert await head_offset(s, second) == 0  # HEAD is never limited
        gate.set()
        async with await task as r:
            assert r.status == 204
        assert await patch(s, second, 0, b"b" * 100) == 100
        m = await scrape(s, daemon)
        assert m["tusd_limit_rejections_total{reason=concurrency}"] == 1


async def test_request_header_size_limit(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(env={"TUSD_SERVER__MAX_HEADER_SIZE": "2KiB"})
    async with aiohttp.ClientSession() as s:
        ok = "filename " + "QUJD" * 400  # 1.6 KB header value
        async with s.post(daemon.url, headers={**TUS, "Upload-Length": "1",
                                                "Upload-Metadata": ok}) as r:
            assert r.status == 201
        too_long = "filename " + "QUJD" * 1000  # 4 KB
        async with s.post(daemon.url, headers={**TUS, "Upload-Length": "1",
                                                "Upload-Metadata": too_long}) as r:
            assert r.status in (400, 431)
        async with s.get(daemon.url + "x" * 3000) as r:  # request line too long
            assert r.status in (400, 414)
        m = await scrape(s, daemon)
        assert m["tusd_uploads_created_total"] == 1


async def test_bearer_token(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    token = "s3cr3t-token-value"
    daemon = daemon_factory(env={"TUSD_SERVER__AUTH_TOKEN": token})
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            async with s.post(daemon.url, headers={**TUS, "Upload-Length": "3", **headers}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        url = await create(s, daemon.url, 3, auth)
        async with s.head(url, headers=TUS) as r:
            assert r.status == 401
        async with s.patch(url, data=b"abc", headers={
                **PATCH_HEADERS, **auth, "Upload-Offset": "0"}) as r:
            assert r.status == 204
        async with s.get(url) as r:
            assert r.status == 401
        async with s.get(url, headers=auth) as r:
            assert await r.read() == b"abc"
        # Preflights, probes and metrics need no token.
        async with s.options(daemon.url, headers={
                "Origin": "http://app.example", "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204
        async with s.get(daemon.root + "/healthz") as r:
            assert r.status == 200
        m = await scrape(s, daemon)
        assert m["tusd_limit_rejections_total{reason=auth}"] == 5
        # The token is masked in the effective config.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tusd_py", "check-config",
            env={**os.environ, "TUSD_SERVER__AUTH_TOKEN": token}, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert b"auth_token: '**********'" in out and token.encode() not in out


async def test_json_access_log_one_line_per_request_without_secrets(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    token = "tok-NEVER-LOGGED-42"
    daemon = daemon_factory(env={"TUSD_SERVER__LOG_FORMAT": "json", "TUSD_SERVER__LOG_LEVEL": "info",
                                 "TUSD_SERVER__AUTH_TOKEN": token})
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s:
        url = await create(s, daemon.url, 10, auth)
        async with s.patch(url + "?access_token=query-NEVER-LOGGED", data=b"0123456789",
                           headers={**PATCH_HEADERS, **auth, "Upload-Offset": "0",
                                    "Cookie": "session=cookie-NEVER-LOGGED"}) as r:
            assert r.status == 204
        async with s.head(url, headers={**TUS, "Authorization": "Bearer wrong-NEVER-LOGGED"}) as r:
            assert r.status == 401
        async with s.post(daemon.url, data=b"abcd", headers={  # creation-with-upload
                **PATCH_HEADERS, **auth, "Upload-Length": "8"}) as r:
            assert r.status == 201
            with_body_id = r.headers["Location"].rsplit("/", 1)[1]
    upload_id = url.rsplit("/", 1)[1]
    entries = []
    for _ in range(50):  # the access line is written right after the response
        entries = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
        if sum(e.get("logger") == "tusd_py.access" for e in entries) >= 5:  # + /healthz
            break
        await asyncio.sleep(0.05)
    access = [e for e in entries
              if e.get("logger") == "tusd_py.access" and e["path"].startswith("/files")]
    assert [e["method"] for e in access] == ["POST", "PATCH", "HEAD", "POST"]  # one per request
    post, patch_line, head, post_with_body = access
    assert post_with_body["upload_id"] == with_body_id and post_with_body["received"] == 4
    assert post["status"] == 201 and post["upload_id"] == upload_id  # the id it created
    assert post["received"] is None
    assert patch_line["status"] == 204
    assert patch_line["upload_id"] == upload_id
    assert patch_line["bytes_in"] == 10 and patch_line["received"] == 10
    assert f"upload={upload_id} received=10" in patch_line["message"]
    assert patch_line["duration_ms"] >= 0
    assert patch_line["path"] == f"/files/{upload_id}"  # no query string
    assert head["status"] == 401 and head["upload_id"] == upload_id
    assert all(e["level"] == "info" and e["time"].endswith("Z") for e in access)
    text = daemon.log()
    assert "NEVER-LOGGED" not in text
    assert "Authorization" not in text and "Bearer" not in text


async def test_text_access_log_line_shape(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """The text access line: stamp, level, logger, then the documented message fields."""
    daemon = daemon_factory(env={"TUSD_SERVER__LOG_FORMAT": "text", "TUSD_SERVER__LOG_LEVEL": "info"})
    async with aiohttp.ClientSession() as s:
        url = await create(s, daemon.url, 10)
        assert await patch(s, url, 0, b"0123456789") == 10
    upload_id = url.rsplit("/", 1)[1]
    pattern = re.compile(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO tusd_py\.access: "
        r"(POST|PATCH) (\S+) (\d{3}) in=(\d+) out=(\d+) \d+\.\dms upload=(\S+)( received=\d+)?")
    lines: list[re.Match[str]] = []
    for _ in range(50):  # access lines are flushed every 0.25 s
        lines = [m for line in daemon.log().splitlines() if (m := pattern.fullmatch(line))]
        if len(lines) >= 2:
            break
        await asyncio.sleep(0.05)
    post, patch_line = lines[:2]
    assert post.group(1, 2, 3, 4, 6, 7) == ("POST", "/files/", "201", "0", upload_id, None)
    assert patch_line.group(1, 2, 3, 4, 6, 7) == (
        "PATCH", f"/files/{upload_id}", "204", "10", upload_id, " received=10")
    assert int(patch_line.group(5)) > 0  # out: what aiohttp wrote (the head, here)
