"""The local driver's sweep and owed post-finish listing stay cheap at scale: their
queries read only their partial indexes (SQLite's plan says so), the sweep takes
expired uploads in batches until none is left, and the event loop keeps running
meanwhile. ``bench/local_scale.py`` measures the same at a million rows."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from bench.local_scale import measure_loop
from tests.plugins.app import make_config
from tusd_py.core.sweeper import BATCH, sweep_once
from tusd_py.http.app import create_app
from tusd_py.http.keys import HANDLER, STORE
from tusd_py.storage.base import Upload
from tusd_py.storage.ids import new_time_ordered_upload_id
from tusd_py.storage.local.store import EXPIRED_QUERY, OWED_QUERY, LocalStore


async def test_the_sweep_and_owed_queries_read_only_their_indexes(tmp_path: Path):
    store = LocalStore(str(tmp_path))
    await store.start()
    await store.stop()
    with sqlite3.connect(tmp_path / "uploads.db") as db:
        expired = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + EXPIRED_QUERY, (0, 1))]
        owed = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + OWED_QUERY, (0, 1))]
    assert expired == ["SEARCH uploads USING COVERING INDEX uploads_expires_at "
                       "(expires_at>? AND expires_at<?)"]
    assert owed == ["SEARCH uploads USING INDEX uploads_finish_owed (completed_at<?)"]


async def test_the_sweep_takes_expired_uploads_in_batches_without_stalling_the_loop(
        aiohttp_client, tmp_path: Path):
    client = await aiohttp_client(create_app(make_config(
        {"driver": "local", "data_dir": str(tmp_path / "data")},
        expiration={"sweep_interval": 0})))
    store = client.app[STORE]
    now = time.time()
    count = 2 * BATCH + 321
    await asyncio.gather(*(store.create(Upload(
        id=new_time_ordered_upload_id(), length=10, created_at=now, expires_at=now - 1))
        for _ in range(count)))
    kept = await store.create(Upload(id=new_time_ordered_upload_id(), length=10,
                                     created_at=now, expires_at=now + 3600))
    swept, stall_ms = await measure_loop(sweep_once(client.app[HANDLER], now))
    assert swept == count  # every batch, one sweep
    assert await store.expired(now) == []  # type: ignore[attr-defined]
    assert await store.get(kept.id) is not None
    assert stall_ms < 100, stall_ms  # measured: a few ms (bench/local_scale.py)
