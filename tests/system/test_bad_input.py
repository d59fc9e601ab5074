"""Hostile and malformed requests against a real daemon: clear 4xx, nothing changes,
and the daemon stays healthy."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.plugins.tcp import wait_delivered

from .tusreq import TUS, create, get, offset_of, patch, wait_metric


async def raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("target", [
    "/files/..%2F..%2Fetc%2Fpasswd",
    "/files/../../etc/passwd",
    "/files/%2e%2e%2fuploads.db",
    "/files/..",
    "/files/uploads.db%00",
    "/files/" + "a" * 300,
    "/files/a%2Fb",
    "/files/.hidden",
])
async def test_path_traversal_is_404(daemon, target):
    for method in ("HEAD", "PATCH", "DELETE", "GET"):
        response = await raw(daemon.port, (
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n").encode())
        assert status_of(response) in (404, 400), (method, target, response[:200])
        assert b"root:" not in response


async def test_garbage_and_overflowing_headers(daemon):
    async with aiohttp.ClientSession() as session:
        for length in ("99999999999999999999999", "-1", "1e3", "0x10", "", "12 34"):
            async with session.post(daemon.url, headers={**TUS, "Upload-Length": length}) as r:
                assert r.status == 400, length
        url = await create(session, daemon.url, 10)
        for offset in ("99999999999999999999999", "-0", "NaN"):
            async with session.patch(url, data=b"a", headers={
                    **TUS, "Upload-Offset": offset,
                    "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 400, offset
        async with session.post(daemon.url, headers={
                **TUS, "Upload-Length": "1", "Upload-Metadata": "k " + "QUFB" * 2000}) as r:
            assert r.status == 400
        assert await offset_of(session, url) == 0
        assert (await patch(session, url, 0, b"0123456789")).status == 204
        assert await get(session, url) == b"0123456789"


async def test_oversized_headers_are_refused(daemon):
    response = await raw(daemon.port, (
        "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\n"
        f"X-Big: {'a' * 70000}\r\n\r\n").encode())
    assert status_of(response) in (400, 431)
    # The limit is server.max_header_size (16 KiB): a field just under it is served.
    for size, expected in ((16000, 201), (16400, 400)):
        response = await raw(daemon.port, (
            "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\n"
            f"X-Big: {'a' * size}\r\nConnection: close\r\n\r\n").encode())
        assert status_of(response) == expected, size
    many = "".join(f"X-H{i}: v\r\n" for i in range(500))
    response = await raw(daemon.port, (
        f"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n{many}Upload-Length: 1\r\n"
        "Connection: close\r\n\r\n").encode())
    assert status_of(response) in (201, 400, 431)


async def test_body_longer_than_length_and_wrong_content_type(daemon):
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 100)
        assert (await patch(session, url, 0, os.urandom(101))).status == 413
        async with session.patch(url, data=b"a", headers={
                **TUS, "Upload-Offset": "0", "Content-Type": "application/json"}) as r:
            assert r.status == 415
        async with session.patch(url, data=b"a", headers={**TUS, "Upload-Offset": "0"}) as r:
            assert r.status == 415
        assert await offset_of(session, url) == 0
        data = os.urandom(100)  # nothing of the refused bodies was kept
        assert (await patch(session, url, 0, data)).status == 204
        assert await get(session, url) == data


CHUNKED_PATCH = ("PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                 "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")


async def test_malformed_chunked_body_is_400_and_changes_nothing(daemon):
    """A chunk header that is no hex number, in the same packet as the request: aiohttp
    refuses the request before the handler runs (400); the upload is unchanged, and
    finishes with exactly the bytes sent later."""
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 100)
    path = url.split(str(daemon.port), 1)[1]
    response = await raw(daemon.port, (CHUNKED_PATCH.format(path=path) + "ZZZ\r\n").encode())
    assert status_of(response) == 400, response[:200]
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == 0
        assert (await patch(session, url, 0, b"x" * 100)).status == 204
        assert await get(session, url) == b"x" * 100


async def test_malformed_chunk_mid_body_keeps_the_chunks_before_it(daemon_factory):
    """The malformed chunk header arrives after a good chunk the handler has read: the
    good chunk's bytes are committed and the upload goes on from them. (aiohttp does not
    tell a handler that is already reading about the bad chunk header: the request ends
    at ``idle_timeout``, 408, like a client that went silent.)"""
    daemon = daemon_factory(env={"TUSD_SERVER__IDLE_TIMEOUT": "1s"})
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 100)
        path = url.split(str(daemon.port), 1)[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(CHUNKED_PATCH.format(path=path).encode())
        await wait_delivered(writer)
        await wait_metric(session, daemon.root, "tusd_uploads_active", 1)  # it is reading
        writer.write(b"ZZZ\r\n")
        response = await asyncio.wait_for(reader.read(65536), 30)
        writer.close()
        assert status_of(response) in (400, 408), response[:200]
        assert await offset_of(session, url) == 5
        assert (await patch(session, url, 5, b"x" * 95)).status == 204
        assert await get(session, url) == b"hello" + b"x" * 95


async def test_daemon_healthy_after_abuse(daemon):
    await test_garbage_and_overflowing_headers(daemon)
    await test_oversized_headers_are_refused(daemon)
    for _ in range(20):
        _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"\x00\xff garbage \r\n\r\n")
        writer.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.root + "/healthz") as r:
            assert r.status == 200
        url = await create(session, daemon.url, 5)
        assert (await patch(session, url, 0, b"hello")).status == 204
        assert await get(session, url) == b"hello"
    assert daemon.proc is not None and daemon.proc.poll() is None
