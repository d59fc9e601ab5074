"""Retries, backoff and per-chunk checksums, against a real small tus server that
misbehaves on purpose (tests/client/minitus.py, aiohttp on 127.0.0.1)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from pathlib import Path

import pytest

from tests.client.minitus import MiniTus, mini_tus
from tusd_py.client import (
    InMemoryURLStorage,
    TusClient,
    TusClientError,
    TusResponseError,
    UploadNotFound,
)

CHUNK = 100_000
DATA = os.urandom(350_000)  # 4 chunks


def pipe_with(data: bytes) -> int:
    """The read end of a pipe a thread fills with ``data`` and closes."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), os.fdopen(write_fd, "wb") as w:
            w.write(data)  # a reader may stop early on purpose

    threading.Thread(target=feed, daemon=True).start()
    return read_fd


def client_for(url: str, **kwargs: object) -> TusClient:
    return TusClient(url, chunk_size=CHUNK, backoff=0.01, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [503, 500, 423, 409, 460, 0])
async def test_a_failed_chunk_is_retried_after_a_head(status: int) -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        uploader = client.uploader(DATA)
        await uploader.upload_chunk()  # first chunk fine
        server.fail_next = [status]
        url = await uploader.upload()
        methods = [m for m, _ in server.requests]
        # the failed PATCH, then a HEAD to learn the offset, then the same chunk again
        i = methods.index("PATCH", methods.index("PATCH") + 1)
        assert methods[i:i + 3] == ["PATCH", "HEAD", "PATCH"]
        patches = server.patches()
        assert [p["Upload-Offset"] for p in patches] == ["0", "100000", "100000", "200000", "300000"]
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA


async def test_retries_run_out() -> None:
    async with mini_tus() as server, client_for(server.url, retries=2) as client:
        server.fail_next = [503] * 5
        with pytest.raises(TusResponseError) as err:
            await client.upload(DATA)
        assert err.value.status == 503
        assert len(server.patches()) == 3  # the first try and two retries


async def test_creation_is_retried_on_503_and_423() -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        server.fail_create = [503, 423]
        url = await client.upload(DATA)
        assert [m for m, _ in server.requests if m == "POST"] == ["POST"] * 3
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA


async def test_upload_checksum_on_every_chunk() -> None:
    async with mini_tus() as server, client_for(server.url, checksum="sha1") as client:
        await client.upload(DATA)
        patches = server.patches()
        assert len(patches) == 4
        for i, headers in enumerate(patches):
            chunk = DATA[i * CHUNK:(i + 1) * CHUNK]
            expected = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
            assert headers["Upload-Checksum"] == f"sha1 {expected}"
    async with mini_tus() as server, client_for(server.url, checksum=None) as client:
        await client.upload(DATA)
        assert all("Upload-Checksum" not in h for h in server.patches())


async def test_deferred_length_declared_with_the_last_chunk() -> None:
    read_fd = pipe_with(DATA[:250_000])
    async with mini_tus() as server, client_for(server.url) as client:
        with os.fdopen(read_fd, "rb") as pipe:
            url = await client.upload(pipe)
        posts = [h for m, h in server.requests if m == "POST"]
        assert posts[0]["Upload-Defer-Length"] == "1" and "Upload-Length" not in posts[0]
        patches = server.patches()
        assert [p.get("Upload-Length") for p in patches] == [None, None, "250000"]
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA[:250_000]


async def test_a_stream_chunk_is_resent_from_memory_after_a_failure() -> None:
    read_fd = pipe_with(DATA[:250_000])
    async with mini_tus() as server, client_for(server.url) as client:
        server.fail_next = [503, 0]
        with os.fdopen(read_fd, "rb") as pipe:
            url = await client.upload(pipe)
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA[:250_000]


def upload_id(url: str | None) -> str:
    assert url is not None
    return url.rsplit("/", 1)[1]


def lose(server: MiniTus, upload_id: str, status: int) -> None:
    """The server loses an upload: it was terminated (404) or expired (410)."""
    if status == 404:
        del server.uploads[upload_id]
    else:
        server.gone.add(upload_id)


@pytest.mark.parametrize("status", [404, 410])
async def test_an_upload_lost_mid_way_starts_over_once(status: int) -> None:
    storage = InMemoryURLStorage()
    async with mini_tus() as server, client_for(server.url, url_storage=storage) as client:
        lost: list[str] = []
        after: list[tuple[int, dict[str, str]]] = []

        def progress(done: int, total: int | None) -> None:
            if lost:
                after.append((done, storage.items()))
            elif done >= 2 * CHUNK:
                lost.append(next(iter(server.uploads)))
                lose(server, lost[0], status)

        url = await client.upload(DATA, progress=progress)
        first = server.url + lost[0]
        assert url != first
        assert [m for m, _ in server.requests].count("POST") == 2  # one fresh creation
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA
        # back to zero, and from then on the storage only knows the new upload
        restart = [i for i, (done, _) in enumerate(after) if done == 0]
        assert restart, after
        assert all(set(items.values()) == {url} for _, items in after[restart[0]:])
        assert storage.items() == {}  # forgotten once finished


async def test_an_upload_lost_twice_is_not_restarted_again() -> None:
    storage = InMemoryURLStorage()
    async with mini_tus() as server, client_for(server.url, url_storage=storage) as client:
        uploader = client.uploader(DATA)
        await uploader.upload_chunk()
        lose(server, upload_id(uploader.url), 410)
        assert await uploader.upload_chunk() == CHUNK  # started over: the first chunk again
        assert uploader.restarted and uploader.resumed_from is None
        lose(server, upload_id(uploader.url), 404)
        with pytest.raises(UploadNotFound) as err:
            await uploader.upload_chunk()
        assert err.value.status == 404
        assert [m for m, _ in server.requests].count("POST") == 2


async def test_an_explicit_url_that_is_lost_is_not_replaced() -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        uploader = client.uploader(DATA)
        await uploader.upload_chunk()
        server.gone.add(upload_id(uploader.url))
        with pytest.raises(UploadNotFound) as err:
            await client.resume(uploader.url or "", DATA)
        assert err.value.status == 410
        assert [m for m, _ in server.requests].count("POST") == 1


async def test_a_stored_url_answering_410_at_resume_starts_over() -> None:
    storage = InMemoryURLStorage()
    async with mini_tus() as server, client_for(server.url, url_storage=storage) as client:
        first = client.uploader(DATA)
        await first.upload_chunk()
        assert first.url is not None and storage.items() == {first.key: first.url}
        server.gone.add(upload_id(first.url))
        resumed: list[int] = []
        url = await client.upload(DATA, on_resume=lambda o, t: resumed.append(o))
        assert url != first.url and resumed == []
        methods = [m for m, _ in server.requests]
        assert methods[methods.index("POST") + 2:][:2] == ["HEAD", "POST"]  # 410, then new
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA
        assert storage.items() == {}


def test_backoff_is_exponential_with_jitter() -> None:
    client = TusClient("http://127.0.0.1:1/files/", backoff=0.5, max_backoff=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        delays = {client.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


async def test_stream_is_spooled_when_the_server_cannot_defer_the_length() -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        server.extensions = "creation,checksum"
        with os.fdopen(pipe_with(DATA), "rb") as pipe:
            url = await client.upload(pipe)
        posts = [h for m, h in server.requests if m == "POST"]
        assert posts[0]["Upload-Length"] == str(len(DATA))
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA


async def test_a_stalled_server_times_out_and_the_chunk_is_retried() -> None:
    async with mini_tus() as server, client_for(server.url, timeout=0.3) as client:
        server.stall_next = 1.0
        url = await client.upload(DATA)
        assert [p["Upload-Offset"] for p in server.patches()][:2] == ["0", "0"]
        assert bytes(server.uploads[url.rsplit("/", 1)[1]].data) == DATA


async def test_download_resumes_with_range_after_a_drop(tmp_path: Path) -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        url = await client.upload(DATA)
        server.drop_get_after = 123_456
        out = tmp_path / "out.bin"
        assert await client.download(url, out) == len(DATA)
        assert out.read_bytes() == DATA
        ranges = [h.get("Range") for m, h in server.requests if m == "GET"]
        assert ranges == [None, "bytes=123456-"]


async def test_download_retries_5xx_with_backoff(tmp_path: Path) -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        url = await client.upload(DATA)
        server.fail_get = [503, 500, 423]
        out = tmp_path / "out.bin"
        assert await client.download(url, out) == len(DATA)
        assert out.read_bytes() == DATA
        assert [m for m, _ in server.requests].count("GET") == 4
        server.fail_get = [502] * 10
        with pytest.raises(TusResponseError) as err:
            await client.download(url, tmp_path / "never.bin")
        assert err.value.status == 502
        assert [m for m, _ in server.requests].count("GET") == 4 + 6  # first try + 5 retries


async def test_download_rejects_a_content_range_that_is_not_what_was_asked(tmp_path: Path) -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        url = await client.upload(DATA)
        server.drop_get_after = 100_000
        server.range_shift = 10  # Range: bytes=100000- answered from 100010
        with pytest.raises(TusClientError, match="asked for bytes 100000- and got Content-Range "
                                                 "'bytes 100010-349999/350000'"):
            await client.download(url, tmp_path / "out.bin")


async def test_download_of_an_upload_that_changed_size_fails(tmp_path: Path) -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        url = await client.upload(DATA)
        server.drop_get_after = 100_000

        def grow(done: int, total: int | None) -> None:
            if done == 100_000:  # between the drop and the ranged retry
                server.uploads[upload_id(url)].data += b"more"

        with pytest.raises(TusClientError, match="changed size"):
            await client.download(url, tmp_path / "out.bin", progress=grow)


async def test_resume_a_stream_by_url_skips_what_the_server_has() -> None:
    async with mini_tus() as server, client_for(server.url) as client:
        with os.fdopen(pipe_with(DATA), "rb") as pipe:
            first = client.uploader(pipe)
            await first.upload_chunk()
            await first.upload_chunk()
        assert first.url is not None and first.offset == 2 * CHUNK
        with os.fdopen(pipe_with(DATA), "rb") as pipe:  # the same bytes again, from the start
            assert await client.resume(first.url, pipe) == first.url
        assert [p["Upload-Offset"] for p in server.patches()] == ["0", "100000", "200000", "300000"]
        assert bytes(server.uploads[first.url.rsplit("/", 1)[1]].data) == DATA
