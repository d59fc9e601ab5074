"""SIGTERM: in-flight uploads are stopped after the grace period with their bytes committed."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .tusreq import create, offset_of, patch


async def test_sigterm_during_upload_commits_and_exits_zero(daemon_factory, tmp_path):
    daemon = daemon_factory(env={"TUSD_SERVER__SHUTDOWN_GRACE": "1s"}, data_dir=tmp_path / "d")
    received_status: list[int] = []
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 10_000_000)

        async def body():
            for _ in range(100):
                yield b"x" * 10_000
                await asyncio.sleep(0.02)  # ~0.5 MB/s: still running when SIGTERM comes

        async def upload() -> None:
            try:
                r = await patch(session, url, 0, body())
                received_status.append(r.status)
            except aiohttp.ClientError:
                received_status.append(-1)

        task = asyncio.create_task(upload())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        code = await asyncio.get_running_loop().run_in_executor(None, daemon.terminate, 20)
        elapsed = time.monotonic() - started
        await task
    assert code == 0
    assert elapsed < 8, elapsed  # grace (1 s) + commit + close, far below the 10 s backstop
    assert received_status == [503]

    again = daemon_factory(data_dir=tmp_path / "d", port=daemon.port)
    async with aiohttp.ClientSession() as session:
        offset = await offset_of(session, url)
    assert offset >= 100_000  # what arrived before the stop was committed
    assert offset % 10_000 == 0 or offset > 0
    again.terminate()


async def test_sigterm_lets_short_uploads_finish(daemon_factory, tmp_path):
    daemon = daemon_factory(env={"TUSD_SERVER__SHUTDOWN_GRACE": "5s"}, data_dir=tmp_path / "d")
    async with aiohttp.ClientSession() as session:
        url = await create(session, daemon.url, 300_000)

        async def body():
            for _ in range(30):
                yield b"y" * 10_000
                await asyncio.sleep(0.02)

        task = asyncio.create_task(patch(session, url, 0, body()))
        await asyncio.sleep(0.2)
        code = await asyncio.get_running_loop().run_in_executor(None, daemon.terminate, 20)
        r = await task
    assert code == 0
    assert r.status == 204 and r.headers["Upload-Offset"] == "300000"
