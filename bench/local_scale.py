"""The local driver at a million uploads: the expiry and owed-finish queries (their plans,
their cost), a sweep of expired uploads in batches while the event loop's stalls are
measured, the driver's start-up, and ext4 with a million upload files in one directory
(open, create and unlink latency as the directory grows).

Rows are written straight into the driver's SQLite schema (the driver creates it), each
with its upload file (empty); run it where the data dir may take a million inodes for a
while. The data directory is set to the flat layout of 0.1.0 (``layout.py``), the worst
case: every file in one directory (the sharded layout puts 1/256 of them in each).

Usage: .venv/bin/python -m bench.local_scale --rows 1000000 [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .loadgen import format_table, uvloop_run

#: Shares of the rows: expired unfinished, unfinished (expiring within a day), finished
#: and kept, finished owing post-finish.
EXPIRED, UNFINISHED, OWED = 0.01, 0.49, 0.001


def fill(data_dir: Path, rows: int, now: float) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Insert ``rows`` uploads in batches, each with its (empty) file in ``uploads/``;
    (counts by kind, file operation latencies as the directory grew)."""
    from tusd_py.storage.ids import new_time_ordered_upload_id

    counts = {"expired": 0, "unfinished": 0, "finished": 0, "owed": 0}
    files = data_dir / "uploads"
    marks = [m for m in (1_000, 10_000, 100_000, 1_000_000, rows) if m <= rows]
    growth: list[dict[str, Any]] = []
    names: list[str] = []
    rng = random.Random(7)
    started = time.perf_counter()
    with sqlite3.connect(data_dir / "uploads.db") as db:
        db.execute("PRAGMA journal_mode=WAL")
        while len(names) < rows:
            batch = []
            for _ in range(min(10_000, rows - len(names), marks[0] - len(names))):
                r = rng.random()
                upload_id = new_time_ordered_upload_id()
                if r < EXPIRED:
                    kind, expires, completed, owed = "expired", now - rng.random() * 3600, None, 0
                elif r < EXPIRED + UNFINISHED:
                    kind, expires, completed, owed = "unfinished", now + rng.random() * 86400, None, 0
                elif r < EXPIRED + UNFINISHED + OWED:
                    kind, expires, completed, owed = "owed", None, now - 120 - rng.random(), 1
                else:
                    kind, expires, completed, owed = "finished", None, now - rng.random() * 86400, 0
                counts[kind] += 1
                batch.append((upload_id, 10, 0, "{}", now - 3600, expires, 0, None, completed,
                              owed))
                os.close(os.open(files / upload_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
                names.append(upload_id)
            db.executemany("INSERT INTO uploads (id, length, upload_offset, metadata, created_at,"
                           " expires_at, is_partial, final_of, completed_at, finish_owed)"
                           " VALUES (?,?,?,?,?,?,?,?,?,?)", batch)
            db.commit()
            if len(names) == marks[0]:
                t = time.perf_counter()
                with os.scandir(files) as entries:
                    listed = sum(1 for _ in entries)
                growth.append({"files": len(names), **file_ops(files, names),
                               "scandir_s": round(time.perf_counter() - t, 2), "listed": listed,
                               "made_s": round(time.perf_counter() - started, 1)})
                print(json.dumps(growth[-1]), flush=True)
                marks = marks[1:] or [rows + 1]
    return counts, growth


def plans(db_path: Path) -> dict[str, list[str]]:
    from tusd_py.storage.local import store as local

    with sqlite3.connect(db_path) as db:
        return {name: [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
                for name, (sql, params) in {
                    "expired": (local.EXPIRED_QUERY, (time.time(), 1000)),
                    "owed": (local.OWED_QUERY, (time.time(), 100)),
                }.items()}


async def measure_loop(during: Any) -> tuple[Any, float]:
    """(what ``during`` returned, the longest stall of the event loop meanwhile, ms)."""
    worst = 0.0
    done = False

    async def watch() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    watcher = asyncio.create_task(watch())
    try:
        result = await during
    finally:
        done = True
        await watcher
    return result, worst * 1000


async def sweep_bench(data_dir: Path, now: float) -> dict[str, Any]:
    from tusd_py.config import load_config
    from tusd_py.core.sweeper import BATCH, sweep_once
    from tusd_py.http.app import create_app
    from tusd_py.http.keys import HANDLER, STORE

    config = load_config(path="/dev/null", env={
        "TUSD_STORAGE__DATA_DIR": str(data_dir), "TUSD_EXPIRATION__SWEEP_INTERVAL": "0"})
    app = create_app(config)
    store = app[STORE]
    started = time.perf_counter()
    _, start_stall = await measure_loop(store.start())
    start_s = time.perf_counter() - started
    try:
        t = time.perf_counter()
        (expired, stall_query) = await measure_loop(store.expired(now, BATCH))  # type: ignore[attr-defined]
        query_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        (owed, stall_owed) = await measure_loop(store.owed_finishes(now))  # type: ignore[attr-defined]
        owed_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        deleted, stall_sweep = await measure_loop(sweep_once(app[HANDLER], now))
        sweep_s = time.perf_counter() - t
    finally:
        await store.stop()
    return {"start_s": round(start_s, 2), "start_stall_ms": round(start_stall, 1),
            "expired_batch": len(expired), "expired_query_ms": round(query_ms, 1),
            "expired_query_stall_ms": round(stall_query, 1), "owed": len(owed),
            "owed_query_ms": round(owed_ms, 1), "owed_query_stall_ms": round(stall_owed, 1),
            "swept": deleted, "sweep_s": round(sweep_s, 2),
            "sweep_ms_per_upload": round(1000 * sweep_s / max(deleted, 1), 2),
            "sweep_stall_ms": round(stall_sweep, 1)}


def file_ops(directory: Path, names: list[str], samples: int = 2000) -> dict[str, float]:
    """Median microseconds of open+fstat+close of existing files, of creating new ones and
    of unlinking them, in a directory of len(names) files."""
    rng = random.Random(len(names))
    picks = [names[rng.randrange(len(names))] for _ in range(samples)]
    t_open = []
    for name in picks:
        t = time.perf_counter()
        fd = os.open(directory / name, os.O_RDWR)
        os.fstat(fd)
        os.close(fd)
        t_open.append(time.perf_counter() - t)
    fresh = [f"zz{os.urandom(15).hex()}" for _ in range(samples)]
    t_create, t_unlink = [], []
    for name in fresh:
        t = time.perf_counter()
        os.close(os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        t_create.append(time.perf_counter() - t)
    for name in fresh:
        t = time.perf_counter()
        os.unlink(directory / name)
        t_unlink.append(time.perf_counter() - t)
    return {f"{k}_us": round(1e6 * statistics.median(v), 1) for k, v in
            (("open", t_open), ("create", t_create), ("unlink", t_unlink))}


async def bench(args: argparse.Namespace) -> int:
    from tusd_py.storage.local.layout import FLAT
    from tusd_py.storage.local.store import LocalStore

    root = Path(tempfile.mkdtemp(prefix="tusd-local-scale-", dir=args.dir))
    try:
        data_dir = root / "data"
        store = LocalStore(str(data_dir))
        await store.start()  # the schema and indexes
        await store.stop()
        with contextlib.closing(sqlite3.connect(data_dir / "uploads.db")) as db:
            db.execute(f"PRAGMA user_version={FLAT}")  # all files in uploads/ (see above)
        now = time.time()
        t = time.perf_counter()
        counts, files = await asyncio.to_thread(fill, data_dir, args.rows, now)
        print(json.dumps({"rows": args.rows, **counts, "fill_s": round(time.perf_counter() - t, 1)}),
              flush=True)
        print(json.dumps({"plans": plans(data_dir / "uploads.db")}), flush=True)
        sweep = await sweep_bench(data_dir, now)
        print(json.dumps({"sweep": sweep}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [["files in one dir", "open+fstat us", "create us", "unlink us", "scandir s"]]
    rows += [[str(f["files"]), str(f["open_us"]), str(f["create_us"]), str(f["unlink_us"]),
              str(f["scandir_s"])] for f in files]
    print(f"\n{args.rows} rows: sweep {json.dumps(sweep)}\n" + format_table(rows)
          + f"\nload average now {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_scale",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="uploads (rows, and files in one directory)")
    parser.add_argument("--dir", help="where the data goes (default: the system temp dir)")
    args = parser.parse_args(argv)
    return int(uvloop_run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
