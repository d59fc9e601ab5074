"""A body that trickles is ended by ``server.min_body_rate`` like an idle one, and so
frees its ``max_concurrent_uploads`` slot (issue 16, items 1 and 4: before, 1 byte/s
never tripped idle_timeout and 20 such PATCHes kept every other PATCH at 503)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.plugins.daemon import Daemon

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}
SLOW = {"TUSD_SERVER__MIN_BODY_RATE": "100", "TUSD_SERVER__MIN_BODY_RATE_WINDOW": "1s",
        "TUSD_SERVER__IDLE_TIMEOUT": "30s"}


async def create(session: aiohttp.ClientSession, daemon: Daemon, length: int) -> str:
    async with session.post(daemon.url, headers={**TUS, "Upload-Length": str(length)}) as r:
        assert r.status == 201
        return r.headers["Location"]


async def trickle(daemon: Daemon, url: str, length: int, seconds: float,
                  every: float = 0.1) -> tuple[int, dict[str, str], int, float]:
    """PATCH ``length`` bytes one byte per ``every`` seconds (10 B/s), for at most
    ``seconds``; returns the status, headers, bytes sent and when the answer came."""
    path = url.split(str(daemon.port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode())
    start = time.monotonic()
    sent = 0
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    try:
        while not answer.done() and sent < length and time.monotonic() - start < seconds:
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.wait([answer], timeout=every)
        head = await asyncio.wait_for(answer, 5)
    finally:
        writer.close()
    took = time.monotonic() - start
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, sent, took


async def test_a_trickling_body_is_ended_and_its_bytes_kept(daemon_factory):
    daemon = daemon_factory(env=SLOW)
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon, 1000)
        status, headers, sent, took = await trickle(daemon, url, 1000, seconds=15)
        assert status == 408
        assert took < 4, took  # a window (1 s) plus the check at the next byte
        offset = int(headers["Upload-Offset"])
        assert 0 < offset <= sent
        async with session.head(url, headers=TUS) as r:
            assert int(r.headers["Upload-Offset"]) == offset  # the client resumes there


async def test_trickling_bodies_no_longer_hold_every_upload_slot(daemon_factory):
    daemon = daemon_factory(env={**SLOW, "TUSD_SERVER__MAX_CONCURRENT_UPLOADS": "20"})
    async with aiohttp.ClientSession() as session:
        slow_urls = [await create(session, daemon, 1000) for _ in range(20)]
        honest = await create(session, daemon, 3)
        tricklers = [asyncio.ensure_future(trickle(daemon, url, 1000, seconds=20))
                     for url in slow_urls]
        await asyncio.sleep(0.5)
        async with session.patch(honest, data=b"abc",
                                 headers={**OCTET, "Upload-Offset": "0"}) as r:
            assert r.status == 503  # every slot is taken for now
        start = time.monotonic()
        status = 503
        while status == 503 and time.monotonic() - start < 10:
            await asyncio.sleep(0.25)
            async with session.patch(honest, data=b"abc",
                                     headers={**OCTET, "Upload-Offset": "0"}) as r:
                status = r.status
        assert status == 204, "the tricklers still hold every slot"
        assert time.monotonic() - start < 5
        results = await asyncio.gather(*tricklers)
        assert {result[0] for result in results} == {408}


def test_the_default_minimum_is_1kib_per_10_seconds() -> None:
    from tusd_py.config import ServerConfig

    server = ServerConfig()
    assert (server.min_body_rate, server.min_body_rate_window) == (1024, 10.0)
