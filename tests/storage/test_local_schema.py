"""A database made by an older version (no ``finish_owed`` column) is migrated at start."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from tests.plugins.stores import new_upload, started_stores, write
from tusd_py.protocol.errors import StorageError
from tusd_py.storage.local.layout import FLAT, SHARDED, SHARDS
from tusd_py.storage.local.store import LocalStore

OLD_SCHEMA = """
CREATE TABLE uploads (
    id TEXT PRIMARY KEY, length INTEGER, upload_offset INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, expires_at REAL,
    is_partial INTEGER NOT NULL DEFAULT 0, final_of TEXT, completed_at REAL
) WITHOUT ROWID;
"""


async def test_old_database_gains_finish_owed_and_keeps_its_uploads(tmp_path):
    (tmp_path / "uploads").mkdir()
    upload_id = "0" * 32
    (tmp_path / "uploads" / upload_id).write_bytes(b"ab")
    with sqlite3.connect(tmp_path / "uploads.db") as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO uploads (id, length, upload_offset, created_at) VALUES (?, 4, 2, ?)",
                   (upload_id, time.time()))
    async with started_stores() as start:
        store = await start(LocalStore(str(tmp_path)))
        found = await store.get(upload_id)
        assert found is not None and (found.offset, found.finish_owed) == (2, False)
        done = await write(store, upload_id, b"cd")
        assert done.is_complete
        assert await store.owed_finishes(time.time() + 1) == []
    with sqlite3.connect(tmp_path / "uploads.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(uploads)")]
        indexes = [row[1] for row in db.execute("PRAGMA index_list(uploads)")]
    assert columns[-1] == "finish_owed" and "uploads_finish_owed" in indexes


async def test_owed_finishes_lists_completed_owed_uploads_oldest_first(tmp_path):
    async with started_stores() as start:
        store = await start(LocalStore(str(tmp_path)))
        owed = [await new_upload(store, 1, finish_owed=True) for _ in range(3)]
        other = await new_upload(store, 1)
        unfinished = await new_upload(store, 5, finish_owed=True)
        for upload in [owed[2], other, owed[0], owed[1]]:
            await write(store, upload.id, b"x")
        await write(store, unfinished.id, b"x")
        listed = await store.owed_finishes(time.time() + 1)
        assert listed == [owed[2].id, owed[0].id, owed[1].id]
        assert await store.owed_finishes(time.time() - 60) == []  # none finished that early
        lock = await store.lock(owed[0].id, 1)
        try:
            assert (await store.clear_finish_owed(lock)).finish_owed is False
        finally:
            await lock.release()
        assert await store.owed_finishes(time.time() + 1) == [owed[2].id, owed[1].id]
        assert (await store.get(owed[0].id)).finish_owed is False  # type: ignore[union-attr]


async def test_a_store_starting_while_another_process_makes_the_schema_waits_for_it(tmp_path):
    """Two processes making one schema at once can fail with "database is locked" without
    waiting (SQLITE_BUSY_SNAPSHOT): the set-up takes an flock on the uploads directory, so
    the second waits. Here the test holds that flock, as another starting process would."""
    import asyncio
    import fcntl
    import os

    (tmp_path / "uploads").mkdir()
    fd = os.open(tmp_path / "uploads", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    async with started_stores() as start:
        starting = asyncio.ensure_future(start(LocalStore(str(tmp_path))))
        try:
            await asyncio.sleep(0.3)
            assert not starting.done()
            assert not (tmp_path / "uploads.db").exists()  # not opened before the flock
        finally:
            os.close(fd)  # the other process's set-up is over
        store = await asyncio.wait_for(starting, 10)
        assert await store.get("0" * 32) is None


async def test_a_new_data_directory_is_sharded_and_an_old_one_stays_flat(tmp_path):
    """A data directory made by 0.1.0 (files in ``uploads/``) keeps that layout; a new one
    spreads its files over 256 shard directories (``layout.py``). Its database says which."""
    new, old = tmp_path / "new", tmp_path / "old"
    (old / "uploads").mkdir(parents=True)
    with sqlite3.connect(old / "uploads.db") as db:
        db.executescript(OLD_SCHEMA)
    async with started_stores() as start:
        sharded = await start(LocalStore(str(new)))
        flat = await start(LocalStore(str(old)))
        for store in (sharded, flat):
            upload = await new_upload(store, 2)
            await write(store, upload.id, b"ab")
            assert os.stat(store.layout.path(upload.id)).st_size == 2
        assert len(os.listdir(new / "uploads")) == SHARDS
        [entry] = os.listdir(old / "uploads")
        assert (old / "uploads" / entry).is_file()
    for directory, version in ((new, SHARDED), (old, FLAT)):
        with sqlite3.connect(directory / "uploads.db") as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == version
    async with started_stores() as start:  # started again: each keeps its own
        again = await start(LocalStore(str(old)))
        assert not again.layout.sharded


async def test_a_database_of_a_newer_layout_is_refused_at_start(tmp_path):
    async with started_stores() as start:
        await start(LocalStore(str(tmp_path)))
    with sqlite3.connect(tmp_path / "uploads.db") as db:
        db.execute("PRAGMA user_version=7")
    store = LocalStore(str(tmp_path))
    with pytest.raises(StorageError, match=r"newer version \(7\)"):
        await store.start()
    await store.stop()
