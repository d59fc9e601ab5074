"""PyPI tuspy 1.1.0 (the real client, unpatched) against a real tusd-py daemon; the
interruption tests run on every driver."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from tests.interop.helpers import download, head, make_file
from tests.plugins.daemon import Daemon, DriverDaemons
from tests.plugins.local_files import upload_file
from tests.plugins.tcp import CuttingProxy

MiB = 1 << 20


def test_plain_upload_with_checksum_and_metadata(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "report.bin"
    want = make_file(source, 3 * MiB + 7)
    uploader = tus_client.TusClient(daemon.url).uploader(
        file_path=str(source), chunk_size=1 * MiB, upload_checksum=True,  # Upload-Checksum: sha1
        metadata={"filename": "report 2024.bin", "filetype": "application/x-thing"})
    uploader.upload()

    assert uploader.url is not None and uploader.url.startswith(daemon.url)
    assert uploader.offset == 3 * MiB + 7
    headers = head(uploader.url)
    assert headers["upload-offset"] == headers["upload-length"] == str(3 * MiB + 7)
    pairs = dict(item.split(" ", 1) for item in headers["upload-metadata"].split(","))
    assert base64.b64decode(pairs["filename"]).decode() == "report 2024.bin"
    got, response = download(uploader.url)
    assert got == want
    assert "report 2024.bin" in response["content-disposition"]
    # not on the safe list: served as a download, never as the client-supplied type
    assert response["content-type"] == "application/octet-stream"


async def test_async_uploader(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "async.bin"
    want = make_file(source, 2 * MiB + 3)
    uploader = tus_client.TusClient(daemon.url).async_uploader(file_path=str(source), chunk_size=512 * 1024)
    await uploader.upload()
    got, _ = await asyncio.to_thread(download, uploader.url)
    assert got == want


def test_resume_from_url_storage_after_stop(daemon: Daemon, tmp_path: Path) -> None:
    """Upload part of the file, drop the uploader; a new uploader with the same URL
    storage finds the upload, asks the server for the offset and continues from it."""
    source = tmp_path / "resume.bin"
    size = 4 * MiB + 123
    want = make_file(source, size)
    storage = FileStorage(str(tmp_path / "urls.json"))
    tus = tus_client.TusClient(daemon.url)

    first = tus.uploader(file_path=str(source), chunk_size=256 * 1024, store_url=True, url_storage=storage)
    first.upload(stop_at=MiB + 1)  # 4 full chunks, then a 1-byte one: an odd offset
    assert first.offset == MiB + 1
    assert head(first.url)["upload-offset"] == str(first.offset)

    second = tus.uploader(file_path=str(source), chunk_size=1 * MiB, store_url=True, url_storage=storage)
    assert second.url == first.url          # found through the fingerprint
    assert second.offset == first.offset    # from the server's HEAD, not from 0
    second.upload()
    assert second.offset == size
    got, _ = download(second.url)
    assert got == want


def test_upload_resumes_after_the_connection_is_cut(driver_daemon: Daemon, tmp_path: Path) -> None:
    """A proxy between tuspy and the daemon resets the connection in the middle of a
    PATCH body; tuspy's own retry asks the server for the offset and resumes from it:
    from inside the cut PATCH (the server kept what arrived), not from that PATCH's
    start, and the bytes read back are the file's."""
    source = tmp_path / "cut.bin"
    size, chunk, cut = 5 * MiB + 7, 2 * MiB, 3 * MiB // 2
    want = make_file(source, size)
    proxy = CuttingProxy(driver_daemon.port)
    try:
        proxy.cut_after(cut)  # the first PATCH, 1.5 MiB into its body
        uploader = tus_client.TusClient(proxy.root + "/files/").uploader(
            file_path=str(source), chunk_size=chunk, retries=10, retry_delay=1)
        uploader.upload()
        assert uploader.offset == size
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert proxy.offsets[0] == 0
    assert [o for o in proxy.offsets if 0 < o <= cut], proxy.offsets  # from where it got to
    got, _ = download(driver_daemon.root + uploader.url.removeprefix(proxy.root))
    assert got == want


def test_resume_after_daemon_killed(driver_daemons: DriverDaemons, tmp_path: Path) -> None:
    """kill -9 the daemon between PATCHes: the client sees a failure; after a restart on
    the same storage, a new uploader resumes from the acknowledged offset."""
    source = tmp_path / "crash.bin"
    size = 3 * MiB + 5
    want = make_file(source, size)
    storage = FileStorage(str(tmp_path / "urls.json"))
    first_daemon = driver_daemons.start()
    tus = tus_client.TusClient(first_daemon.url)

    first = tus.uploader(file_path=str(source), chunk_size=512 * 1024, store_url=True, url_storage=storage)
    first.upload(stop_at=MiB)
    acknowledged = first.offset
    assert acknowledged == MiB
    first_daemon.kill()
    with pytest.raises((TusUploadFailed, TusCommunicationError)):
        first.upload_chunk()

    second_daemon = driver_daemons.restart(first_daemon)
    second = tus_client.TusClient(second_daemon.url).uploader(
        file_path=str(source), chunk_size=1 * MiB, store_url=True, url_storage=storage)
    assert second.url == first.url
    assert second.offset == acknowledged
    second.upload()
    got, _ = download(second.url)
    assert got == want


def test_an_id_of_segments_resumed_by_tuspy(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pre-create hook files uploads under ``users/<user>/``: tuspy gets a Location of
    path segments, stores it, and a new uploader resumes the upload from it."""
    daemon: Daemon = daemon_factory(env={
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "TUSD_HOOKS__PYTHON": "tests.hooks.sample_hooks:per_user_folder",
        "TUSD_HOOKS__ENABLED": "pre-create"})
    source = tmp_path / "nested.bin"
    want = make_file(source, 2 * MiB + 5)
    storage = FileStorage(str(tmp_path / "urls.json"))
    tus = tus_client.TusClient(daemon.url)
    first = tus.uploader(file_path=str(source), chunk_size=256 * 1024, store_url=True,
                         url_storage=storage, metadata={"user": "alice"})
    first.upload(stop_at=MiB)
    assert first.url is not None
    upload_id = first.url[len(daemon.url):]
    assert upload_id.startswith("users/alice/") and len(upload_id.split("/")) == 3, first.url
    assert upload_file(daemon.data_dir, upload_id).parent.name == "alice"

    second = tus.uploader(file_path=str(source), chunk_size=256 * 1024, store_url=True,
                          url_storage=storage, metadata={"user": "alice"})
    assert second.url == first.url and second.offset == MiB
    second.upload()
    got, _ = download(second.url)
    assert got == want
    assert upload_file(daemon.data_dir, upload_id).stat().st_size == source.stat().st_size
