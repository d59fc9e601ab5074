"""A URL storage shared with tuspy 1.1.0 (the real, unpatched client from PyPI), against the
real daemon: tuspy stores under the bare fingerprint; this client stores under an
endpoint-scoped key by default, finds tuspy's bare entries (HEAD-checked, same origin
only), and with ``tuspy_keys=True`` stores bare keys that tuspy resumes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage

from tests.client.test_client import fetch, sha256
from tests.plugins.daemon import Daemon
from tusd_py.client import (
    FileURLStorage,
    MD5Fingerprint,
    SQLiteURLStorage,
    TusClient,
    URLStorage,
)
from tusd_py.client.storage import as_url_storage

CHUNK = 256 * 1024
SIZE = 2 * 1024 * 1024 + 4321


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "shared.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture(params=["tuspy-filestorage", "our-fileurlstorage", "our-sqliteurlstorage"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[object, URLStorage]]:
    """(what tuspy is given, what our client is given) for the same storage file."""
    if request.param == "tuspy-filestorage":
        theirs = FileStorage(str(tmp_path / "tuspy.db"))  # TinyDB
        adapted = as_url_storage(theirs)
        assert adapted is not None
        yield theirs, adapted
        theirs.close()
    else:
        # tuspy takes ours as is (get_item/set_item/remove_item; it also stores None
        # before creating an upload, which must not break a NOT NULL column or the JSON)
        ours: URLStorage = (FileURLStorage(tmp_path / "urls.json")
                            if request.param == "our-fileurlstorage"
                            else SQLiteURLStorage(tmp_path / "urls.db"))
        yield ours, ours
        ours.close()


async def test_client_resumes_an_upload_tuspy_started(daemon: Daemon, source: tuple[Path, bytes],
                                                      shared: tuple[object, URLStorage]) -> None:
    path, data = source
    theirs, ours = shared
    fingerprint = MD5Fingerprint().for_path(path)
    first = tus_client.TusClient(daemon.url).uploader(
        file_path=str(path), chunk_size=CHUNK, store_url=True, url_storage=theirs)
    first.upload(stop_at=3 * CHUNK + 1)  # an odd offset
    assert first.offset == 3 * CHUNK + 1
    assert ours.get_url(fingerprint) == first.url  # tuspy's key: the bare fingerprint

    resumed: list[tuple[int, int | None]] = []
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=ours) as client:
        url = await client.upload(path, on_resume=lambda o, t: resumed.append((o, t)))
    assert url == first.url
    assert resumed == [(3 * CHUNK + 1, SIZE)]  # the server's offset, not zero
    assert sha256(await fetch(url)) == sha256(data)
    assert ours.get_url(fingerprint) is None  # the entry it resumed is forgotten when done


async def test_tuspy_resumes_an_upload_the_client_started_with_tuspy_keys(
        daemon: Daemon, source: tuple[Path, bytes], shared: tuple[object, URLStorage]) -> None:
    path, data = source
    theirs, ours = shared
    fingerprint = MD5Fingerprint().for_path(path)
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=ours, tuspy_keys=True) as client:
        uploader = client.uploader(path)
        for _ in range(3):
            await uploader.upload_chunk()
        uploader.close()
    assert uploader.key == fingerprint and ours.get_url(fingerprint) == uploader.url

    second = tus_client.TusClient(daemon.url).uploader(
        file_path=str(path), chunk_size=CHUNK, store_url=True, url_storage=theirs)
    assert second.url == uploader.url
    assert second.offset == 3 * CHUNK  # from HEAD
    second.upload()
    assert sha256(await fetch(second.url or "")) == sha256(data)


async def test_default_keys_are_endpoint_scoped(daemon: Daemon, source: tuple[Path, bytes],
                                                tmp_path: Path) -> None:
    """Without tuspy_keys the entry is invisible to tuspy (it looks up the bare
    fingerprint), which keeps one file uploaded to two servers apart."""
    path, _ = source
    storage = FileURLStorage(tmp_path / "urls.json")
    fingerprint = MD5Fingerprint().for_path(path)
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as client:
        uploader = client.uploader(path)
        await uploader.upload_chunk()
        uploader.close()
    assert storage.items() == {f"{fingerprint}--endpoint:{daemon.url}": uploader.url}
    fresh = tus_client.TusClient(daemon.url).uploader(
        file_path=str(path), chunk_size=CHUNK, store_url=True, url_storage=storage)
    assert fresh.url is None  # tuspy would start a new upload


async def test_a_bare_entry_for_another_server_is_left_alone(
        daemon: Daemon, source: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = source
    storage = FileURLStorage(tmp_path / "urls.json")
    fingerprint = MD5Fingerprint().for_path(path)
    elsewhere = "http://127.0.0.1:9/files/not-this-server"  # never contacted
    storage.set_url(fingerprint, elsewhere)
    resumed: list[int] = []
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as client:
        url = await client.upload(path, on_resume=lambda o, t: resumed.append(o))
    assert resumed == [] and url.startswith(daemon.url)
    assert sha256(await fetch(url)) == sha256(data)
    assert storage.items() == {fingerprint: elsewhere}  # tuspy's entry, untouched


async def test_a_stale_bare_entry_on_this_server_is_dropped(
        daemon: Daemon, source: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = source
    storage = FileURLStorage(tmp_path / "urls.json")
    fingerprint = MD5Fingerprint().for_path(path)
    async with TusClient(daemon.url, chunk_size=CHUNK) as client:
        gone = await client.upload(b"x" * 10)
        await client.delete(gone)
    storage.set_url(fingerprint, gone)
    async with TusClient(daemon.url, chunk_size=CHUNK, url_storage=storage) as client:
        url = await client.upload(path)
    assert url != gone and sha256(await fetch(url)) == sha256(data)
    assert storage.items() == {}
