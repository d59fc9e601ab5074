"""The local driver's remembered records never hide another process's changes.

Two LocalStore instances on one directory stand in for two daemon processes."""

from __future__ import annotations

import pytest

from tusd_py.protocol.errors import MismatchedOffset
from tusd_py.storage.base import Upload
from tusd_py.storage.local import LocalStore


@pytest.fixture
async def stores(tmp_path):
    a, b = LocalStore(str(tmp_path)), LocalStore(str(tmp_path))
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def write(store: LocalStore, upload_id: str, data: bytes, length: int | None = None) -> Upload:
    lock = await store.lock(upload_id, 1)
    try:
        await lock.write(data)
        return await lock.commit(length=length)
    finally:
        await lock.release()


async def test_offset_advanced_elsewhere_is_seen(stores):
    a, b = stores
    await a.create(Upload(id="u1", length=10))
    await write(b, "u1", b"abc")  # the other process advances the offset
    lock = await a.lock("u1", 1)  # a remembers offset 0, but the file says otherwise
    assert lock.upload.offset == 3
    await lock.release()


async def test_length_declared_elsewhere_fails_the_compare_and_set(stores):
    a, b = stores
    await a.create(Upload(id="u2", length=None))
    await write(b, "u2", b"", length=4)  # declared by the other process, no bytes
    lock = await a.lock("u2", 1)
    assert lock.upload.length is None  # a's remembered record is stale here...
    await lock.write(b"abcdef")
    with pytest.raises(MismatchedOffset):  # ...so the commit refuses, nothing published
        await lock.commit()
    await lock.rollback()
    await lock.release()
    lock = await a.lock("u2", 1)  # and the next lock reads the truth
    assert (lock.upload.length, lock.upload.offset) == (4, 0)
    await lock.release()
    assert (await b.get("u2")).offset == 0


async def test_terminated_elsewhere_is_not_found(stores):
    from tusd_py.protocol.errors import NotFound

    a, b = stores
    await a.create(Upload(id="u3", length=5))
    lock = await b.lock("u3", 1)
    await b.terminate("u3")
    await lock.release()
    with pytest.raises(NotFound):
        await a.lock("u3", 1)
