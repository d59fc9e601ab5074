"""The driver contract, the same tests on every driver (memory, local, S3 on moto, GCS on
fake-gcs-server, Azure on Azurite), each built from its ``storage`` config section by the
registry, as the daemon builds it. A new driver is done when it passes these.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.app import make_config
from tests.plugins.stores import new_upload, read_all, started_stores, stream, write
from tusd_py.protocol.errors import NotFound, UploadBusy, UploadExists
from tusd_py.storage.base import Store, Upload, capabilities_of
from tusd_py.storage.ids import new_upload_id
from tusd_py.storage.registry import build_store

CONTRACT_DRIVERS = ["memory", "local", "s3", "gcs", "azure"]
#: Every driver implements every optional capability today.
ALL_CAPABILITIES = {"termination", "concatenation", "concatenation-unfinished",
                    "creation-defer-length", "expiration", "download", "track-finish"}
#: More than a part of each object store's test config (S3: 5 MiB), so parts are written.
BIG = 5 * (1 << 20) + 4321


@pytest.fixture(params=CONTRACT_DRIVERS)
def driver_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "local":
        return {"driver": "local", "data_dir": str(tmp_path / "data")}
    return dict(request.getfixturevalue(f"{request.param}_storage_config"))


@pytest.fixture
async def store(driver_config: dict[str, Any]) -> AsyncIterator[Store]:
    async with started_stores() as start:
        yield await start(build_store(make_config(driver_config).storage))


async def test_capabilities_are_derived_from_what_the_driver_implements(store):
    assert {c.value for c in capabilities_of(store)} == ALL_CAPABILITIES
    assert store.capabilities == capabilities_of(store)


async def test_create_then_get_returns_the_record(store):
    now = time.time()
    metadata = {"filename": b"a b.txt", "empty": None}
    created = await new_upload(store, 11, metadata=metadata, expires_at=now + 60,
                               finish_owed=True)
    assert created.location
    got = await store.get(created.id)
    assert got is not None
    assert (got.id, got.length, got.offset, got.metadata, got.finish_owed) == (
        created.id, 11, 0, metadata, True)
    assert got.expires_at == pytest.approx(now + 60)
    assert got.completed_at is None and not got.is_partial and got.final_of == ()


async def test_an_id_is_created_once(store):
    upload = await new_upload(store, 3)
    with pytest.raises(UploadExists):
        await store.create(Upload(id=upload.id, length=5, created_at=time.time()))
    assert (await store.get(upload.id)).length == 3  # the first one is untouched


async def test_missing_upload_is_none_and_cannot_be_locked(store):
    missing = new_upload_id()
    assert await store.get(missing) is None
    with pytest.raises(NotFound):
        await store.lock(missing, 0)


async def test_bytes_committed_across_locks_read_back_whole(store):
    data = os.urandom(BIG + 10)
    upload = await new_upload(store, len(data))
    first = await write(store, upload.id, data[:BIG // 2])
    assert first.offset == BIG // 2 and not first.is_complete
    assert (await store.get(upload.id)).offset == BIG // 2
    done = await write(store, upload.id, data[BIG // 2:])
    assert done.offset == len(data) and done.is_complete
    assert await read_all(store, done) == data


async def test_rolled_back_bytes_are_never_published(store):
    data = os.urandom(BIG)
    upload = await new_upload(store, len(data) + 3)
    lock = await store.lock(upload.id, 1)
    try:
        await stream(lock, os.urandom(BIG))  # bytes that fail their checksum, say
        await lock.rollback()
        assert lock.written == 0
    finally:
        await lock.release()
    assert (await store.get(upload.id)).offset == 0
    await write(store, upload.id, data)
    done = await write(store, upload.id, b"end")
    assert await read_all(store, done) == data + b"end"


async def test_a_held_lock_excludes_others_until_released(store):
    upload = await new_upload(store, 4)
    held = await store.lock(upload.id, 1)
    try:
        with pytest.raises(UploadBusy):
            await store.lock(upload.id, 0)
    finally:
        await held.release()
    await held.release()  # idempotent
    again = await store.lock(upload.id, 1)
    await again.release()


async def test_deferred_length_is_declared_by_a_commit(store):
    upload = await new_upload(store, None)
    assert (await write(store, upload.id, b"abc")).length is None
    done = await write(store, upload.id, b"de", length=5)
    assert (done.length, done.offset, done.is_complete) == (5, 5, True)
    assert await read_all(store, done) == b"abcde"


async def test_expired_lists_only_uploads_past_their_expiry(store):
    now = time.time()
    old = await new_upload(store, 5, expires_at=now - 10)
    fresh = await new_upload(store, 5, expires_at=now + 3600)
    forever = await new_upload(store, 5)
    expired = await store.expired(now)
    assert old.id in expired
    assert fresh.id not in expired and forever.id not in expired


async def test_a_commit_moves_the_expiry(store):
    now = time.time()
    upload = await new_upload(store, 5, expires_at=now - 10)
    lock = await store.lock(upload.id, 1)
    try:
        await lock.write(b"ab")
        await lock.commit(expires_at=now + 3600)
    finally:
        await lock.release()
    assert upload.id not in await store.expired(now)
    assert (await store.get(upload.id)).expires_at == pytest.approx(now + 3600)


async def test_terminate_removes_record_and_bytes(store):
    upload = await new_upload(store, 10)
    await write(store, upload.id, b"12345")
    lock = await store.lock(upload.id, 1)
    try:
        await store.terminate(upload.id)
    finally:
        await lock.release()
    assert await store.get(upload.id) is None
    with pytest.raises(NotFound):
        await store.lock(upload.id, 0)


async def test_concatenate_joins_partials_in_order(store):
    a, b = os.urandom(BIG), b"tail bytes"
    first = await new_upload(store, len(a), is_partial=True)
    second = await new_upload(store, len(b), is_partial=True)
    first = await write(store, first.id, a)
    second = await write(store, second.id, b)
    final = await new_upload(store, None, final_of=(first.id, second.id))
    lock = await store.lock(final.id, 1)
    try:
        done = await store.concatenate(lock.upload, [first, second])
    finally:
        await lock.release()
    assert (done.offset, done.length, done.is_complete) == (len(a) + len(b),) * 2 + (True,)
    assert await read_all(store, done) == a + b
    assert (await store.get(final.id)).is_complete


async def test_download_reads_any_range(store):
    data = os.urandom(200_000)
    done = await write(store, (await new_upload(store, len(data))).id, data)
    download = await store.download(done)
    assert download.size == len(data) and download.etag
    middle = b"".join([c async for c in download.read(70_000, 100_001)])
    assert middle == data[70_000:170_001]


async def test_an_empty_upload_is_complete_and_downloads_empty(store):
    upload = await new_upload(store, 0, completed_at=time.time())
    assert (await store.get(upload.id)).is_complete
    assert await read_all(store, upload) == b""


async def test_owed_finishes_are_listed_until_cleared(store):
    owed = await new_upload(store, 2, finish_owed=True)
    unfinished = await new_upload(store, 2, finish_owed=True)
    await write(store, owed.id, b"ok")
    await write(store, unfinished.id, b"o")
    listed = await store.owed_finishes(time.time() + 1)
    assert owed.id in listed and unfinished.id not in listed
    lock = await store.lock(owed.id, 1)
    try:
        cleared = await store.clear_finish_owed(lock)
        assert cleared.finish_owed is False and lock.upload.finish_owed is False
    finally:
        await lock.release()
    assert owed.id not in await store.owed_finishes(time.time() + 1)
    assert (await store.get(owed.id)).finish_owed is False


def test_every_contract_driver_is_a_config_driver():
    from tusd_py.config import DRIVERS

    assert sorted(CONTRACT_DRIVERS) == sorted(DRIVERS)
