"""kill -9 of the daemon: acknowledged offsets survive, the upload finishes intact."""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from .tusreq import create, get, offset_of, patch

CHUNK = 256 * 1024


@pytest.mark.parametrize("env", [{}, {"TUSD_STORAGE__FSYNC": "true"}], ids=["default", "fsync"])
async def test_kill_9_during_a_stream_of_patches(daemon_factory, tmp_path, env):
    data = os.urandom(12 * 1024 * 1024)
    first = daemon_factory(data_dir=tmp_path / "data", env=env)
    acknowledged = 0
    async with aiohttp.ClientSession() as session:
        url = await create(session, first.url, len(data))

        async def stream_patches() -> None:
            nonlocal acknowledged
            while acknowledged < len(data):
                r = await patch(session, url, acknowledged, data[acknowledged:acknowledged + CHUNK])
                assert r.status == 204
                acknowledged = int(r.headers["Upload-Offset"])

        async def slow_tail() -> None:
            # a PATCH that is mid-body when the daemon dies
            async def body():
                yield b"\0" * 1000
                await asyncio.sleep(10)
            try:
                await patch(session, url, len(data), body())
            except aiohttp.ClientError:
                pass

        sender = asyncio.create_task(stream_patches())
        while acknowledged < 4 * 1024 * 1024:
            await asyncio.sleep(0.005)
        first.kill()  # SIGKILL mid-stream
        try:
            await sender
        except (aiohttp.ClientError, AssertionError):
            pass
        assert 0 < acknowledged < len(data)

    second = daemon_factory(data_dir=tmp_path / "data", port=first.port, env=env)
    async with aiohttp.ClientSession() as session:
        offset = await offset_of(session, url)
        assert offset >= acknowledged  # nothing acknowledged was lost
        while offset < len(data):
            r = await patch(session, url, offset, data[offset:offset + 4 * CHUNK])
            assert r.status == 204, r.status
            offset = int(r.headers["Upload-Offset"])
        body = await get(session, url)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    second.terminate()


async def test_restart_reconciles_unacknowledged_bytes(daemon_factory, tmp_path):
    """A file longer than its committed offset is cut back at start-up."""
    first = daemon_factory(data_dir=tmp_path / "data")
    async with aiohttp.ClientSession() as session:
        url = await create(session, first.url, 1000)
        assert (await patch(session, url, 0, b"a" * 100)).status == 204
    first.kill()
    upload_file = tmp_path / "data" / "uploads" / url.rsplit("/", 1)[1]
    with open(upload_file, "ab") as fh:
        fh.write(b"garbage that was never acknowledged")
    second = daemon_factory(data_dir=tmp_path / "data", port=first.port)
    assert upload_file.stat().st_size == 100
    async with aiohttp.ClientSession() as session:
        assert await offset_of(session, url) == 100
        assert (await patch(session, url, 100, b"b" * 900)).status == 204
        assert await get(session, url) == b"a" * 100 + b"b" * 900
    second.terminate()


async def test_sweeper_deletes_expired_uploads_in_the_daemon(daemon_factory, tmp_path):
    daemon = daemon_factory(data_dir=tmp_path / "data", env={
        "TUSD_EXPIRATION__AFTER": "300ms", "TUSD_EXPIRATION__SWEEP_INTERVAL": "200ms"})
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 100)
        assert (await patch(session, url, 0, b"a" * 10)).status == 204
        upload_file = tmp_path / "data" / "uploads" / url.rsplit("/", 1)[1]
        assert upload_file.exists()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not upload_file.exists():
                break
        assert not upload_file.exists()
        async with session.head(url, headers={"Tus-Resumable": "1.0.0"}) as r:
            assert r.status == 404
