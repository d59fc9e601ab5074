"""Group commit: batched statements keep per-request outcomes."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import aiosqlite
import pytest

from tusd_py.storage.local.batch import GroupCommit
from tusd_py.storage.local.store import LocalStore


@pytest.fixture
async def store(tmp_path):
    s = LocalStore(str(tmp_path))
    await s.start()
    yield s
    await s.stop()


def row(upload_id: str, length: int | None = 10) -> tuple:
    return (upload_id, length, 0, "{}", 0.0, None, 0, None, None, 0)  # INSERT_COLUMNS order


async def test_concurrent_inserts_share_round_trips_and_fail_alone(store):
    batch: GroupCommit = store.batch
    await batch.insert(row("dup"))
    results = await asyncio.gather(
        *(batch.insert(row(f"u{i}")) for i in range(100)), batch.insert(row("dup")),
        return_exceptions=True)
    assert all(r is None for r in results[:100])
    assert isinstance(results[100], sqlite3.IntegrityError)
    rows = await store.db.execute_fetchall("SELECT count(*) FROM uploads")
    assert rows[0][0] == 101


async def test_concurrent_compare_and_set_reports_each_row(store):
    batch: GroupCommit = store.batch
    await asyncio.gather(*(batch.insert(row(f"c{i}")) for i in range(10)))
    outcomes = await asyncio.gather(*(
        # even ids expect the right old offset (0), odd ones a wrong one (7)
        batch.compare_and_set((f"c{i}", 5, 10, None, None, 0 if i % 2 == 0 else 7, 10))
        for i in range(10)))
    assert outcomes == [i % 2 == 0 for i in range(10)]
    offsets = dict(await store.db.execute_fetchall("SELECT id, upload_offset FROM uploads"))
    assert all(offsets[f"c{i}"] == (5 if i % 2 == 0 else 0) for i in range(10))
    # a deferred length (NULL) is compared with IS, not =
    await batch.insert(row("d", None))
    assert await batch.compare_and_set(("d", 3, None, None, None, 0, None))
    assert not await batch.compare_and_set(("d", 6, None, None, None, 3, 99))


async def test_errors_reach_every_waiter(tmp_path):
    db = await aiosqlite.connect(str(tmp_path / "x.db"), isolation_level=None)
    batch = GroupCommit(db)  # no uploads table: every statement fails
    results = await asyncio.gather(batch.insert(row("a")), batch.compare_and_set(
        ("a", 1, 1, None, None, 0, 1)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    await db.close()


async def test_rounds_run_on_the_loop_and_wait_on_the_thread_when_the_lock_is_taken(tmp_path):
    """Without fsync the rounds run on the event loop (no thread hop); one that finds the
    write lock taken (here: another connection in a write transaction, as another process
    would be) goes to aiosqlite's thread and waits there, never on the loop."""
    store = LocalStore(str(tmp_path))
    await store.start()
    try:
        batch: GroupCommit = store.batch
        await batch.insert(row("a"))
        assert batch._task is None  # the round ran inline: no thread round was needed
        other = sqlite3.connect(str(tmp_path / "uploads.db"), isolation_level=None,
                                check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        waiter = asyncio.ensure_future(batch.compare_and_set(("a", 5, 10, None, None, 0, 10)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.2)
        assert loop.time() - started < 0.5  # the loop was never blocked by the busy lock
        assert not waiter.done() and batch._task is not None  # waiting on the thread
        other.execute("COMMIT")
        assert await waiter is True
        other.close()
        rows = await store.db.execute_fetchall("SELECT upload_offset FROM uploads WHERE id = 'a'")
        assert rows[0][0] == 5
        # the next round is inline again
        assert await batch.compare_and_set(("a", 6, 10, None, None, 5, 10))
        assert batch._task is None
    finally:
        await store.stop()


async def test_the_wal_is_checkpointed_on_the_thread(tmp_path, monkeypatch):
    """The inline connection never checkpoints; every CHECKPOINT_ROUNDS rounds one runs on
    the thread and copies the WAL into the database file."""
    monkeypatch.setattr("tusd_py.storage.local.batch.CHECKPOINT_ROUNDS", 5)
    store = LocalStore(str(tmp_path))
    await store.start()
    try:
        for i in range(12):
            await store.batch.insert(row(f"w{i}"))
        assert store.batch._since_checkpoint < 5
        await store.batch.idle()  # a checkpoint runs after its round's statements returned
        # The database file alone (a copy without its WAL) holds what was checkpointed:
        # the rows of every round up to the last checkpoint's (the 12th).
        shutil.copy(tmp_path / "uploads.db", tmp_path / "alone.db")
        alone = sqlite3.connect(str(tmp_path / "alone.db"))
        count = alone.execute("SELECT count(*) FROM uploads").fetchone()[0]
        alone.close()
        assert count == 12
    finally:
        await store.stop()


async def test_durable_mode_runs_every_round_on_the_thread(tmp_path):
    store = LocalStore(str(tmp_path), fsync=True)
    await store.start()
    try:
        future = asyncio.ensure_future(store.batch.insert(row("f")))
        await asyncio.sleep(0)
        assert store.batch._task is not None  # synchronous=FULL commits wait on fsync
        await future
    finally:
        await store.stop()
