"""The local driver's remembered records never hide another process's changes.

Two LocalStore instances on one directory stand in for two daemon processes."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from tests.plugins.local_files import upload_file, upload_files
from tests.plugins.stores import started_stores, write
from tusd_py.protocol.errors import MismatchedOffset
from tusd_py.storage.base import Upload
from tusd_py.storage.local import store as store_module
from tusd_py.storage.local.store import LocalStore


@pytest.fixture
async def started():
    """``await started(store)``: started now, stopped at teardown (pass or fail)."""
    async with started_stores() as start:
        yield start


@pytest.fixture
async def stores(tmp_path, started):
    return await started(LocalStore(str(tmp_path))), await started(LocalStore(str(tmp_path)))


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




class RacingStore(LocalStore):
    """Start-up reconcile that lets another process commit between its listing and its
    flock (the window a second daemon on the same directory can hit)."""

    other: LocalStore

    async def _reconcile_one(self, upload_id: str, listed_offset: int) -> bool:
        await write(self.other, upload_id, b"b" * 100)  # acknowledged elsewhere meanwhile
        return await super()._reconcile_one(upload_id, listed_offset)


async def test_reconcile_never_cuts_bytes_committed_by_another_process(tmp_path, started):
    a = await started(LocalStore(str(tmp_path)))
    await a.create(Upload(id="u4", length=1000))
    await write(a, "u4", b"a" * 100)
    with open(upload_file(tmp_path, "u4"), "ab") as f:
        f.write(b"x" * 50)  # looks unacknowledged when listed: offset 100, a file of 150
    racing = RacingStore(str(tmp_path))
    racing.other = a
    await started(racing)  # lists offset 100: then a commits 200 before the flock
    assert (await a.get("u4")).offset == 200
    assert (upload_file(tmp_path, "u4")).stat().st_size == 200
    # An unacknowledged tail (a crash mid-PATCH) is still cut at the next start.
    with open(upload_file(tmp_path, "u4"), "ab") as f:
        f.write(b"x" * 50)
    b = await started(LocalStore(str(tmp_path)))
    assert (upload_file(tmp_path, "u4")).stat().st_size == 200
    lock = await b.lock("u4", 1)
    assert lock.upload.offset == 200
    await lock.release()


async def test_files_without_a_record_are_removed_at_start_unless_locked(tmp_path, started,
                                                                        monkeypatch):
    """Whatever their age (a kill -9 during DELETEs leaves fresh ones); a file another
    live process holds the flock of (a create in flight) stays."""
    monkeypatch.setattr(store_module, "ORPHAN_GRACE", 0.0)  # ctime cannot be set back
    a = await started(LocalStore(str(tmp_path)))
    await a.create(Upload(id="kept", length=3))
    await write(a, "kept", b"abc")  # complete: kept (it has a record)
    for name in ("orphan", "fresh-orphan", "held-orphan"):
        upload_file(tmp_path, name).write_bytes(b"zz")
    stranger = tmp_path / "uploads" / "00" / "not.an.id"
    stranger.write_bytes(b"zz")
    old = time.time() - 7200
    for path in (upload_file(tmp_path, "orphan"), upload_file(tmp_path, "kept"), stranger):
        os.utime(path, (old, old))
    held = os.open(upload_file(tmp_path, "held-orphan"), os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        await started(LocalStore(str(tmp_path)))
    finally:
        os.close(held)
    assert upload_files(tmp_path) == ["held-orphan", "kept"]
    assert stranger.exists()  # not an upload's: left alone


async def test_finish_owed_cleared_elsewhere_is_seen(stores):
    """The other process delivered post-finish and cleared the flag: the next lock here
    must not see it still owed (that would deliver post-finish twice)."""
    a, b = stores
    await a.create(Upload(id="u9", length=2, finish_owed=True))
    assert (await write(a, "u9", b"ok")).is_complete  # a remembers it complete and owed
    lock = await b.lock("u9", 1)
    assert lock.upload.finish_owed
    await b.clear_finish_owed(lock)
    await lock.release()
    lock = await a.lock("u9", 1)
    assert lock.upload.finish_owed is False
    await lock.release()


async def test_release_after_terminate_closes_the_file_off_the_event_loop(stores, monkeypatch):
    """The last close of a deleted file frees its blocks (56 ms for 512 MiB here): the
    lock's release closes it in a thread."""
    import threading

    a, _ = stores
    await a.create(Upload(id="u10", length=4))
    await write(a, "u10", b"data")
    lock = await a.lock("u10", 1)
    fd = lock.fd
    await a.terminate("u10")
    closed_in: list[str] = []
    real_close = os.close

    def close(descriptor: int) -> None:
        if descriptor == fd:
            closed_in.append(threading.current_thread().name)
        real_close(descriptor)

    monkeypatch.setattr(os, "close", close)
    await lock.release()
    assert closed_in and closed_in != [threading.main_thread().name]
    assert a._unlinked == set()  # private: the store forgets the file (nothing public shows it)
    assert lock.fd is None
