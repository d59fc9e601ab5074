"""Group commit for the local driver: concurrent creates and offset commits share one
aiosqlite round trip.

Every aiosqlite call is a hop to its worker thread and back, which costs more CPU (queue,
wake-up, GIL hand-over) than the SQL itself. Under load many requests commit at the same
moment, so statements are queued and each batch runs as one statement:

* creates: one multi-row ``INSERT`` (if it fails, e.g. on an id a pre-create hook chose
  twice, each row is retried alone so only its own request fails);
* offset commits: one ``UPDATE ... FROM (VALUES ...) ... RETURNING id``: every row keeps
  its own compare-and-set condition and each request learns whether its row matched.

A statement waits at most for the batch in flight plus its own; alone, it runs at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiosqlite

MAX_BATCH = 64  # rows per statement (7 parameters each, far below SQLite's limit)

INSERT_COLUMNS = ("id", "length", "upload_offset", "metadata", "created_at", "expires_at",
                  "is_partial", "final_of", "completed_at")

Row = tuple[Any, ...]


class GroupCommit:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._inserts: list[tuple[Row, asyncio.Future[None]]] = []
        self._updates: list[tuple[Row, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None

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
        while self._task is not None:
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._inserts or self._updates:
                inserts, self._inserts = self._inserts[:MAX_BATCH], self._inserts[MAX_BATCH:]
                updates, self._updates = self._updates[:MAX_BATCH], self._updates[MAX_BATCH:]
                if inserts:
                    await self._insert_batch(inserts)
                if updates:
                    await self._update_batch(updates)
        finally:
            self._task = None
            if self._inserts or self._updates:  # queued while the last batch failed out
                self._kick()

    async def _insert_batch(self, batch: list[tuple[Row, asyncio.Future[None]]]) -> None:
        placeholders = "(" + ", ".join("?" * len(INSERT_COLUMNS)) + ")"
        sql = (f"INSERT INTO uploads ({', '.join(INSERT_COLUMNS)}) VALUES "
               + ", ".join([placeholders] * len(batch)))
        try:
            await self._db.execute(sql, [v for row, _ in batch for v in row])
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            for item in batch:  # find the culprit: one row at a time
                await self._insert_batch([item])
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _update_batch(self, batch: list[tuple[Row, asyncio.Future[bool]]]) -> None:
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(batch))
        sql = (
            f"WITH v(id, new_offset, new_length, expires_at, completed_at, old_offset, old_length)"
            f" AS (VALUES {values})"
            " UPDATE uploads SET upload_offset = v.new_offset, length = v.new_length,"
            " expires_at = v.expires_at, completed_at = v.completed_at"
            " FROM v WHERE uploads.id = v.id AND uploads.upload_offset = v.old_offset"
            " AND uploads.length IS v.old_length RETURNING uploads.id"
        )
        try:
            rows = await self._db.execute_fetchall(sql, [v for row, _ in batch for v in row])
        except Exception as exc:
            _fail(batch, exc)
            return
        matched = {row[0] for row in rows}
        for row, future in batch:
            if not future.done():
                future.set_result(row[0] in matched)


def _fail(batch: list[tuple[Row, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
