"""Group commit for the local driver: concurrent creates and offset commits share one
aiosqlite round trip and one SQLite transaction.

Every aiosqlite call is a hop to its worker thread and back, and every autocommit
statement a transaction (a WAL commit), both of which cost more than the SQL itself.
Under load many requests commit at the same moment, so statements are queued and each
round runs, in one hop, as one transaction:

* creates: one multi-row ``INSERT``;
* offset commits: one plain ``UPDATE ... WHERE id = ? AND upload_offset = ? AND length
  IS ?`` per row, each keeping its own compare-and-set condition; its row count tells
  the request whether it matched. (One ``UPDATE ... FROM (VALUES ...)`` statement for the
  whole batch was measured 2-4x slower: with the ``expires_at`` index SQLite updates it
  in two passes.)

If any statement of a round fails, whatever the error (an id a pre-create hook chose
twice, a value SQLite cannot store, a full disk), the round is rolled back and each of its
statements runs again alone, in its own transaction: only the failing ones' requests fail.

A statement waits at most for the round in flight plus its own; alone, it runs at once.

With an ``inline`` connection (``storage.fsync: false``) a round runs on the event loop
in the iteration after its statements were queued. It never waits there: a round that
finds the write lock taken (another process, this process's aiosqlite connection) runs
on aiosqlite's thread instead, and so do every ``CHECKPOINT_ROUNDS``-th round (it
checkpoints the WAL) and, without an inline connection (durable mode), every round.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

MAX_BATCH = 64  # rows per round and kind (10 parameters per insert, far below SQLite's limit)
#: Inline rounds between two rounds on the thread that checkpoint the WAL (each round
#: writes a few pages; SQLite's own auto-checkpoint comes every 1000).
CHECKPOINT_ROUNDS = 256

INSERT_COLUMNS = ("id", "length", "upload_offset", "metadata", "created_at", "expires_at",
                  "is_partial", "final_of", "completed_at", "finish_owed")

_UPDATE = ("UPDATE uploads SET upload_offset = ?, length = ?, expires_at = ?, completed_at = ?"
           " WHERE id = ? AND upload_offset = ? AND length IS ?")

Row = tuple[Any, ...]
T = TypeVar("T")


class GroupCommit:
    def __init__(self, db: aiosqlite.Connection, inline: sqlite3.Connection | None = None) -> None:
        self._db = db
        self._inline = inline
        self._inserts: list[tuple[Row, asyncio.Future[None]]] = []
        self._updates: list[tuple[Row, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None
        self._scheduled = False
        self._since_checkpoint = 0

    async def insert(self, row: Row) -> None:
        """INSERT one upload row (values in ``INSERT_COLUMNS`` order)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inserts.append((row, future))
        self._kick()
        await future

    async def compare_and_set(self, row: Row) -> bool:
        """``(id, new_offset, new_length, expires_at, completed_at, old_offset, old_length)``:
        apply the new values if the row still has the old offset and length."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._updates.append((row, future))
        self._kick()
        return await future

    async def idle(self) -> None:
        """Wait until every queued statement has run (before closing the database)."""
        while self._task is not None or self._inserts or self._updates:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._drain())
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._task is not None or self._scheduled:
            return  # the round in flight, or the one scheduled, takes these too
        if self._inline is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._inline_round)

    def _take(self) -> tuple[list[tuple[Row, asyncio.Future[None]]],
                             list[tuple[Row, asyncio.Future[bool]]]]:
        inserts, self._inserts = self._inserts[:MAX_BATCH], self._inserts[MAX_BATCH:]
        updates, self._updates = self._updates[:MAX_BATCH], self._updates[MAX_BATCH:]
        return inserts, updates

    def _inline_round(self) -> None:
        """One round on the event loop; to the thread when the write lock is taken or a
        checkpoint is due."""
        self._scheduled = False
        if self._task is not None:
            return
        inline = self._inline
        assert inline is not None
        if self._since_checkpoint >= CHECKPOINT_ROUNDS:
            self._task = asyncio.get_running_loop().create_task(self._drain(checkpoint=True))
            return
        inserts, updates = self._take()
        try:
            outcome = _apply(inline, [row for row, _ in inserts], [row for row, _ in updates])
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                _fail(inserts, updates, exc)
                self._again()
                return
            # Someone else writes: queue this round first, and wait for the lock on the
            # thread (busy_timeout there), not here.
            self._inserts[:0], self._updates[:0] = inserts, updates
            self._task = asyncio.get_running_loop().create_task(self._drain())
            return
        except Exception as exc:  # the transaction failed as a whole
            _fail(inserts, updates, exc)
        else:
            self._since_checkpoint += 1
            _settle(inserts, updates, *outcome)
        self._again()

    def _again(self) -> None:
        if self._inserts or self._updates:
            self._kick()

    async def _drain(self, checkpoint: bool = False) -> None:
        """Rounds on aiosqlite's thread until the queue is empty (or the lock is free
        again for the inline connection)."""
        try:
            while self._inserts or self._updates:
                inserts, updates = self._take()
                rows = ([row for row, _ in inserts], [row for row, _ in updates])
                try:
                    insert_errors, matched = await self._in_thread(_apply, *rows)
                except Exception as exc:  # the transaction failed as a whole
                    _fail(inserts, updates, exc)
                    continue
                _settle(inserts, updates, insert_errors, matched)
                if self._inline is not None:
                    break  # the rest inline again
            if checkpoint:
                self._since_checkpoint = 0
                await self._in_thread(_checkpoint)
        finally:
            self._task = None
            if self._inserts or self._updates:  # queued meanwhile, or after a failed round
                self._kick()

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on aiosqlite's thread, in one hop.

        aiosqlite has no public call for "run this function on the connection's thread"
        (its ``execute*`` methods are one statement each); ``_execute`` is the method they
        all go through, unchanged since aiosqlite 0.x. The suite fails loudly if it goes.
        """
        db = self._db
        return await db._execute(lambda: fn(db._conn, *args))


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY (any extended code): the lock is held elsewhere."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _fail(inserts: list[tuple[Row, asyncio.Future[None]]],
          updates: list[tuple[Row, asyncio.Future[bool]]], exc: Exception) -> None:
    futures: list[asyncio.Future[Any]] = [f for _, f in inserts]
    futures += [f for _, f in updates]
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _settle(inserts: list[tuple[Row, asyncio.Future[None]]],
            updates: list[tuple[Row, asyncio.Future[bool]]],
            insert_errors: list[Exception | None], matched: list[bool | Exception]) -> None:
    for (_, insert_future), error in zip(inserts, insert_errors, strict=True):
        if insert_future.done():
            continue
        if error is None:
            insert_future.set_result(None)
        else:
            insert_future.set_exception(error)
    for (_, update_future), ok in zip(updates, matched, strict=True):
        if update_future.done():
            continue
        if isinstance(ok, Exception):
            update_future.set_exception(ok)
        else:
            update_future.set_result(ok)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database without waiting for readers or writers."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _apply(conn: sqlite3.Connection, inserts: list[Row],
           updates: list[Row]) -> tuple[list[Exception | None], list[bool | Exception]]:
    """The round as one transaction; if a statement fails, each statement alone (see the
    module's docstring). Per-row outcomes: an insert's error, an update's match or error."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if inserts:
                _insert_rows(conn, inserts)
            matched: list[bool | Exception] = []
            for (upload_id, new_offset, new_length, expires_at, completed_at, old_offset,
                 old_length) in updates:  # _update, inline: this is every PATCH's commit
                cursor = conn.execute(_UPDATE, (new_offset, new_length, expires_at,
                                                completed_at, upload_id, old_offset, old_length))
                matched.append(cursor.rowcount == 1)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:  # a statement (or the commit) failed
                conn.execute("ROLLBACK")
    except Exception as exc:
        if len(inserts) + len(updates) == 1:
            raise  # nothing to isolate it from
        if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
            raise  # the write lock is held elsewhere: no statement of the round ran
        return ([_alone(conn, _insert_rows, [row]) for row in inserts],
                [_alone(conn, _update, row) for row in updates])
    return [None] * len(inserts), matched


def _alone(conn: sqlite3.Connection, statement: Callable[[sqlite3.Connection, Any], T],
           arg: Any) -> T | Exception:
    """``statement(conn, arg)`` in a transaction of its own; its error, if it fails."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = statement(conn, arg)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    except Exception as exc:
        return exc
    return result


def _insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """One multi-row INSERT."""
    placeholders = "(" + ", ".join("?" * len(INSERT_COLUMNS)) + ")"
    head = f"INSERT INTO uploads ({', '.join(INSERT_COLUMNS)}) VALUES "
    conn.execute(head + ", ".join([placeholders] * len(rows)), [v for row in rows for v in row])


def _update(conn: sqlite3.Connection, row: Row) -> bool:
    """One compare-and-set; True if the row still had the old offset and length."""
    (upload_id, new_offset, new_length, expires_at, completed_at, old_offset, old_length) = row
    cursor = conn.execute(_UPDATE, (new_offset, new_length, expires_at, completed_at,
                                    upload_id, old_offset, old_length))
    return cursor.rowcount == 1
