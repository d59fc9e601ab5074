"""Group commit: batched statements keep per-request outcomes."""

from __future__ import annotations

import asyncio
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
