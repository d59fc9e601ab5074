"""The async client against the real daemon over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.plugins.daemon import Daemon
from tusd_py.client import (
    FileURLStorage,
    InMemoryURLStorage,
    SQLiteURLStorage,
    SyncTusClient,
    TusClient,
    TusClientError,
    UploadNotFound,
    URLStorage,
)
from tusd_py.client.parallel import split_ranges

CHUNK = 256 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(2 * 1024 * 1024 + 12345)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


async def test_upload_download_info_delete(daemon: Daemon, payload: tuple[Path, bytes],
                                           tmp_path: Path) -> None:
    path, data = payload
    progress: list[tuple[int, int | None]] = []
    async with TusClient(daemon.url, chunk_size=CHUNK) as client:
        url = await client.upload(path, metadata={"note": "héllo", "flag": None},
                                  progress=lambda done, total: progress.append((done, total)))
        assert url.startswith(daemon.url)
        assert await fetch(url) == data
        info = await client.info(url)
        assert (info.offset, info.length, info.is_complete) == (len(data), len(data), True)
        assert info.metadata == {"note": "héllo".encode(), "flag": None, "filename": b"payload.bin"}
        out = tmp_path / "out.bin"
        assert await client.download(url, out) == len(data)
        assert out.read_bytes() == data
        await client.delete(url)
        with pytest.raises(UploadNotFound):
            await client.info(url)
    # progress is monotonic within the upload, ends at the total, and is live (per piece)
    assert progress[-1] == (len(data), len(data))
    assert len(progress) > len(data) // CHUNK
    dones = [d for d, _ in progress]
    assert dones == sorted(dones)


async def test_upload_bytes_and_file_objects(daemon: Daemon) -> None:
    data = os.urandom(300_000)
    async with TusClient(daemon.url, chunk_size=100_000) as client:
        assert await fetch(await client.upload(data)) == data
        assert await fetch(await client.upload(io.BytesIO(data))) == data
        empty = await client.upload(b"")
        info = await client.info(empty)
        assert (info.offset, info.length) == (0, 0)


async def test_checksums_are_sent_when_advertised(daemon: Daemon) -> None:
    """The daemon advertises sha1; a wrong algorithm choice would be refused (400) and a
    wrong digest answered 460, so a correct upload with checksums on proves both."""
    data = os.urandom(700_000)
    async with TusClient(daemon.url, chunk_size=200_000, checksum="sha256") as client:
        assert await client.checksum_algorithm() == "sha256"
        assert await fetch(await client.upload(data)) == data
    async with TusClient(daemon.url, checksum="crc32") as client:
        assert await client.checksum_algorithm() is None  # not offered: not sent


@pytest.mark.parametrize("kind", ["sqlite", "file", "memory"])
async def test_resume_across_clients_with_url_storage(daemon: Daemon, payload: tuple[Path, bytes],
                                                      tmp_path: Path, kind: str) -> None:
    path, data = payload
    storage: URLStorage = {"sqlite": lambda: SQLiteURLStorage(tmp_path / "urls.db"),
                           "file": lambda: FileURLStorage(tmp_path / "urls.json"),
                           "memory": InMemoryURLStorage}[kind]()
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as first:
        uploader = first.uploader(path)
        await uploader.prepare()
        assert uploader.resumed_from is None
        for _ in range(3):
            await uploader.upload_chunk()
        assert uploader.offset == 3 * CHUNK
        uploader.close()
    assert storage.get_url(uploader.key or "") == uploader.url
    resumed: list[tuple[int, int | None]] = []
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as second:
        url = await second.upload(path, on_resume=lambda o, t: resumed.append((o, t)))
    assert url == uploader.url
    assert resumed == [(3 * CHUNK, len(data))]
    assert await fetch(url) == data
    assert storage.items() == {}  # forgotten once finished


async def test_stored_url_that_is_gone_starts_over(daemon: Daemon, payload: tuple[Path, bytes]) -> None:
    path, data = payload
    storage = InMemoryURLStorage()
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as client:
        uploader = client.uploader(path)
        await uploader.upload_chunk()
        uploader.close()
        await client.delete(uploader.url or "")
        resumed: list[int] = []
        url = await client.upload(path, on_resume=lambda o, t: resumed.append(o))
        assert url != uploader.url and resumed == []
        assert await fetch(url) == data


async def test_explicit_resume(daemon: Daemon, payload: tuple[Path, bytes]) -> None:
    path, data = payload
    async with TusClient(daemon.url, chunk_size=CHUNK) as client:
        uploader = client.uploader(path)
        await uploader.upload_chunk()
        await uploader.upload_chunk()
        uploader.close()
        assert await client.resume(uploader.url or "", path) == uploader.url
        assert await fetch(uploader.url or "") == data


async def test_parallel_upload(daemon: Daemon, payload: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = payload
    storage = InMemoryURLStorage()
    totals: list[int] = []
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as client:
        url = await client.upload(path, parallel=4, progress=lambda d, t: totals.append(d),
                                  metadata={"kind": "parallel"})
        info = await client.info(url)
    assert info.concat is not None and info.concat.startswith("final;")
    assert len(info.concat.split(" ")) == 4
    assert info.metadata["kind"] == b"parallel"
    assert await fetch(url) == data
    assert totals[-1] == len(data)
    assert storage.items() == {}


async def test_parallel_parts_resume(daemon: Daemon, payload: tuple[Path, bytes]) -> None:
    """Parts already stored are picked up where they stopped."""
    path, data = payload
    storage = InMemoryURLStorage()
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as client:
        fingerprint = client.fingerprinter.for_path(path)  # type: ignore[attr-defined]
        start, length = split_ranges(len(data), 2)[1]
        part = client.uploader(data[start:start + length], partial=True,
                               fingerprint=f"{fingerprint}--part:2/2")
        await part.upload_chunk()
        resumed: list[int] = []
        url = await client.upload(path, parallel=2, on_resume=lambda o, t: resumed.append(o))
    assert resumed == [CHUNK]
    assert await fetch(url) == data


async def test_deferred_length_from_a_pipe(daemon: Daemon) -> None:
    data = os.urandom(1_000_000)
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            for i in range(0, len(data), 70_000):
                w.write(data[i:i + 70_000])

    writer = threading.Thread(target=feed)
    writer.start()
    async with TusClient(daemon.url, chunk_size=CHUNK) as client:
        with os.fdopen(read_fd, "rb") as pipe:
            uploader = client.uploader(pipe)
            await uploader.prepare()
            info = await client.info(uploader.url or "")
            assert info.deferred and info.length is None
            url = await uploader.upload()
        writer.join()
        info = await client.info(url)
    assert (info.offset, info.length, info.deferred) == (len(data), len(data), False)
    assert await fetch(url) == data


async def test_deferred_length_ending_on_a_chunk_boundary(daemon: Daemon) -> None:
    data = os.urandom(2 * CHUNK)
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    async with TusClient(daemon.url, chunk_size=CHUNK) as client:
        with os.fdopen(read_fd, "rb") as pipe:
            url = await client.upload(pipe)
    writer.join()
    assert await fetch(url) == data


def test_sync_wrapper(daemon: Daemon, payload: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = payload
    with SyncTusClient(daemon.url, chunk_size=CHUNK) as client:
        url = client.upload(path)
        assert client.info(url).is_complete
        client.download(url, tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == data
        client.delete(url)
        with pytest.raises(UploadNotFound):
            client.info(url)


def test_sync_resume_takes_a_chunk_size(daemon: Daemon, payload: tuple[Path, bytes]) -> None:
    path, data = payload

    async def start() -> str:
        async with TusClient(daemon.url, chunk_size=CHUNK) as client:
            uploader = client.uploader(path)
            await uploader.upload_chunk()
            uploader.close()
            return uploader.url or ""

    url = asyncio.run(start())
    seen: list[int] = []
    with SyncTusClient(daemon.url) as client:  # default chunk size: 8 MiB
        assert client.resume(url, path, chunk_size=100_000,
                             progress=lambda done, total: seen.append(done)) == url
    assert sha256(asyncio.run(fetch(url))) == sha256(data)
    # progress comes per piece of a chunk, and a 100 000-byte chunk is one piece
    assert seen[0] == CHUNK and seen[-1] == len(data)
    assert all((done - CHUNK) % 100_000 == 0 for done in seen if done < len(data)), seen


async def test_errors_are_reported(daemon: Daemon) -> None:
    async with TusClient(daemon.url, retries=0) as client:
        with pytest.raises(UploadNotFound):
            await client.info(daemon.url + "0" * 32)
        with pytest.raises(TusClientError):
            await client.download(daemon.url + "0" * 32, io.BytesIO())
    async with TusClient(f"http://127.0.0.1:{daemon.port + 0}/nope/", retries=0) as client:
        with pytest.raises(TusClientError):
            await client.upload(b"abc")


def test_split_ranges() -> None:
    assert split_ranges(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert split_ranges(2, 5) == [(0, 1), (1, 1)]
    assert sum(n for _, n in split_ranges(12345, 7)) == 12345


async def test_concurrent_uploads_share_one_client(daemon: Daemon) -> None:
    blobs = [os.urandom(200_000 + i) for i in range(4)]
    async with TusClient(daemon.url, chunk_size=64 * 1024) as client:
        urls = await asyncio.gather(*(client.upload(b) for b in blobs))
    assert [sha256(await fetch(u)) for u in urls] == [sha256(b) for b in blobs]


async def test_larger_than_tus_max_size_fails_early(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(env={"TUSD_SERVER__MAX_SIZE": "1000"})
    async with TusClient(daemon.url) as client:
        assert (await client.server_info()).max_size == 1000
        with pytest.raises(TusClientError, match="Tus-Max-Size"):
            await client.upload(b"x" * 1001)
        assert await fetch(await client.upload(b"y" * 1000)) == b"y" * 1000


async def test_expired_uploads_start_over(daemon_factory: Callable[..., Daemon],
                                          payload: tuple[Path, bytes]) -> None:
    """The daemon answers 410 for an upload idle past expiration.after (until its sweep):
    mid-upload (a PATCH) and at resume time (the HEAD of a stored URL) alike, the client
    drops the stored URL and starts over with a new upload."""
    daemon = daemon_factory(env={"TUSD_EXPIRATION__AFTER": "1s",
                                 "TUSD_EXPIRATION__SWEEP_INTERVAL": "1h"})
    path, data = payload
    storage = InMemoryURLStorage()
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage, backoff=0.01) as client:
        uploader = client.uploader(path)
        await uploader.upload_chunk()
        first = uploader.url or ""
        await asyncio.sleep(1.5)
        with pytest.raises(UploadNotFound) as gone:
            await client.info(first)
        assert gone.value.status == 410
        url = await uploader.upload()  # the next PATCH gets 410
        uploader.close()
        assert uploader.restarted and url != first
        assert await fetch(url) == data
        assert storage.items() == {}

        stale = client.uploader(path)
        await stale.upload_chunk()
        stale.close()
        assert storage.items() == {stale.key: stale.url}
        await asyncio.sleep(1.5)
        resumed: list[int] = []
        url = await client.upload(path, on_resume=lambda o, t: resumed.append(o))
        assert resumed == [] and url != stale.url
        assert await fetch(url) == data
        assert storage.items() == {}


async def test_another_writer_advances_the_offset_between_chunks(
        daemon: Daemon, payload: tuple[Path, bytes], caplog: pytest.LogCaptureFixture) -> None:
    """A second writer moves the server's offset on: the daemon answers our next PATCH 409,
    the client re-reads the offset with HEAD and carries on from there."""
    path, data = payload
    async with TusClient(daemon.url, chunk_size=CHUNK, backoff=0.01) as client, \
            TusClient(daemon.url, chunk_size=CHUNK) as other_client:
        ours = client.uploader(path)
        assert await ours.upload_chunk() == CHUNK
        other = other_client.uploader(path, url=ours.url)
        await other.prepare()
        await other.upload_chunk()
        assert await other.upload_chunk() == 3 * CHUNK
        other.close()
        with caplog.at_level(logging.INFO, logger="tusd_py.client"):
            assert await ours.upload_chunk() == 4 * CHUNK  # from 3 chunks, not 2
        conflicts = [r.getMessage() for r in caplog.records if "HTTP 409" in r.getMessage()]
        assert len(conflicts) == 1 and f"at {CHUNK} failed" in conflicts[0]
        url = await ours.upload()
        ours.close()
    assert sha256(await fetch(url)) == sha256(data)


class Crash(Exception):
    """The process dying at a chosen storage operation."""


class CrashOnRemove(InMemoryURLStorage):
    """Dies at the first remove_url: after the final POST, while the parts are forgotten."""

    armed = True

    def remove_url(self, fingerprint: str) -> None:
        if self.armed:
            self.armed = False
            raise Crash(fingerprint)
        super().remove_url(fingerprint)


def recording_session(methods: list[str]) -> aiohttp.ClientSession:
    """A session that notes every request's method (aiohttp's tracing hooks)."""
    async def on_start(session: object, ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        methods.append(params.method)
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    return aiohttp.ClientSession(trace_configs=[trace])


async def test_a_crash_after_the_final_post_does_not_create_a_second_final(
        daemon: Daemon, payload: tuple[Path, bytes]) -> None:
    path, data = payload
    storage = CrashOnRemove()
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as first:
        with pytest.raises(Crash):
            await first.upload(path, parallel=3)
    entries = storage.items()
    finals = [u for k, u in entries.items() if "--part:" not in k]
    assert len(entries) == 4 and len(finals) == 1  # the final is stored before the parts go

    methods: list[str] = []
    resumed: list[tuple[int, int | None]] = []
    async with recording_session(methods) as session, TusClient(
            daemon.url, chunk_size=CHUNK, url_storage=storage, session=session) as second:
        url = await second.upload(path, parallel=3, on_resume=lambda o, t: resumed.append((o, t)))
    assert url == finals[0]
    assert methods == ["OPTIONS", "HEAD"]  # no second final: one HEAD of the stored one
    assert resumed == [(len(data), len(data))]
    assert storage.items() == {}
    assert await fetch(url) == data
