"""The local driver's group commit isolates a failing statement from the others of its
round, whatever the error (issue 16, item 3): before, only a constraint violation was."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import pytest

from tests.storage.test_group_commit import row
from tusd_py.storage.local.batch import GroupCommit
from tusd_py.storage.local.store import LocalStore


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[LocalStore]:
    s = LocalStore(str(tmp_path))
    await s.start()
    yield s
    await s.stop()


async def test_an_integer_sqlite_cannot_store_fails_only_its_own_insert(store: LocalStore):
    batch: GroupCommit = store.batch
    await asyncio.gather(*(batch.insert(row(f"c{i}")) for i in range(5)))
    results = await asyncio.gather(
        *(batch.insert(row(f"u{i}")) for i in range(30)), batch.insert(row("huge", 2**63)),
        *(batch.compare_and_set((f"c{i}", 4, 10, None, None, 0, 10)) for i in range(5)),
        return_exceptions=True)
    assert results[:30] == [None] * 30
    assert isinstance(results[30], OverflowError)
    assert results[31:] == [True] * 5
    count = await store.db.execute_fetchall("SELECT count(*) FROM uploads")
    assert count[0][0] == 35


async def test_a_statement_that_ends_the_transaction_fails_alone(store: LocalStore):
    """A trigger's RAISE(ROLLBACK) rolls the whole transaction back (as SQLITE_FULL or an
    I/O error may): the round's other statements still happen."""
    await store.db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON uploads WHEN NEW.id = 'bad'"
        " BEGIN SELECT RAISE(ROLLBACK, 'refused'); END")
    await store.db.execute(
        "CREATE TRIGGER refuse_update BEFORE UPDATE ON uploads WHEN NEW.upload_offset = 9"
        " BEGIN SELECT RAISE(ROLLBACK, 'refused'); END")
    batch = store.batch
    await asyncio.gather(*(batch.insert(row(f"c{i}")) for i in range(4)))
    results = await asyncio.gather(
        *(batch.insert(row(f"u{i}")) for i in range(10)), batch.insert(row("bad")),
        batch.compare_and_set(("c0", 9, 10, None, None, 0, 10)),
        *(batch.compare_and_set((f"c{i}", 3, 10, None, None, 0, 10)) for i in range(1, 4)),
        return_exceptions=True)
    assert results[:10] == [None] * 10
    assert isinstance(results[10], sqlite3.IntegrityError | sqlite3.OperationalError)
    assert isinstance(results[11], sqlite3.Error)
    assert results[12:] == [True] * 3
    offsets = dict(await store.db.execute_fetchall("SELECT id, upload_offset FROM uploads"))
    assert offsets == {**{f"u{i}": 0 for i in range(10)}, "c0": 0, "c1": 3, "c2": 3, "c3": 3}
