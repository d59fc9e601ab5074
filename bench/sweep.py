"""What a sweep costs against the number of stored uploads, per object-store emulator: the
requests (LIST, GET, ...) of one sweep round as the daemon runs it (``sweep_once`` with
the turn, then the listing of owed post-finish deliveries), its duration, and the RSS of
the process doing it, for N = 1k, 10k, 50k stored uploads (half unfinished, half
finished and kept).

The uploads are made through the driver itself (``Store.create``, 64 at once) straight
to the emulator (fake-gcs-server with its filesystem backend: its memory backend makes
each write scan the whole bucket, so N creations cost N^2); the rounds run in a fresh
process per N, whose store reaches the emulator through ``bench.shaper`` (no latency: it
only counts). Beside the rounds it times a LIST of a prefix that holds nothing ("empty
LIST ms"): the emulator's own cost of a listing, which grows with the bucket where the
emulator scans all of it.

Usage: .venv/bin/python -m bench.sweep --drivers s3,gcs,azure --counts 1000,10000,50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .emulators import AWS_ENV, _create_bucket, emulator_process
from .loadgen import format_table, uvloop_run
from .shaped import ROOT, control, shaper, storage_env

ROUNDS = 5
#: Creations in flight at once while the uploads are made.
CREATORS = 64


def config_for(driver: str, endpoint: str, bucket: str) -> Any:
    from tusd_py.config import load_config

    env = storage_env(driver, endpoint, bucket)
    env.update(TUSD_EXPIRATION__AFTER="3600", TUSD_EXPIRATION__SWEEP_INTERVAL="0")
    return load_config(path="/dev/null", env=env)


async def populate(driver: str, endpoint: str, bucket: str, count: int) -> float:
    """Make ``count`` more uploads through the driver; seconds it took."""
    from tusd_py.storage.base import Upload
    from tusd_py.storage.ids import new_upload_id
    from tusd_py.storage.registry import build_store

    store = build_store(config_for(driver, endpoint, bucket).storage)
    await store.start()
    started = time.monotonic()
    now = time.time()
    numbers = iter(range(count))

    async def worker() -> None:
        for i in numbers:  # shared: each number is taken by one worker
            if i % 2:
                await store.create(Upload(id=new_upload_id(), length=10, created_at=now,
                                          expires_at=now + 3600))
            else:
                await store.create(Upload(id=new_upload_id(), length=0, created_at=now,
                                          completed_at=now))
    try:
        await asyncio.gather(*(worker() for _ in range(CREATORS)))
    finally:
        await store.stop()
    return time.monotonic() - started


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, MB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, rest = line.split(":", 1)
                values[key] = int(rest.split()[0]) / 1024
    return round(values["VmRSS"], 1), round(values["VmHWM"], 1)


async def empty_list_ms(store: Any) -> float:
    """Median milliseconds of a LIST of a prefix no object is under (through the
    driver's ``list_keys``)."""
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        async for _key in store.list_keys(store.prefix + ".none/"):
            raise AssertionError("an object under the empty prefix")
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


async def child(args: argparse.Namespace) -> int:
    """Sweep rounds in this (fresh) process; prints one JSON line."""
    from tusd_py.core.sweeper import sweep_once
    from tusd_py.http.app import create_app
    from tusd_py.http.keys import HANDLER, STORE
    from tusd_py.storage.base import CanTrackFinish

    app = create_app(config_for(args.driver, args.endpoint, args.bucket))
    store = app[STORE]
    await store.start()
    try:
        handler = app[HANDLER]
        assert isinstance(store, CanTrackFinish)
        await sweep_once(handler, hold=600)  # warm: the guard, the turn
        rounds = []
        for _ in range(ROUNDS):
            control(args.control, "/reset")
            started = time.perf_counter()
            await sweep_once(handler, hold=600)
            await store.owed_finishes(time.time())
            took = time.perf_counter() - started
            stats = control(args.control, "/stats")
            rounds.append({"seconds": took, "requests": stats["requests"]})
        rss, hwm = rss_mb()
        empty_ms = await empty_list_ms(store)
    finally:
        await store.stop()
    kinds: dict[str, list[int]] = {}
    for r in rounds:
        for kind, n in r["requests"].items():
            kinds.setdefault(kind, []).append(n)
    print(json.dumps({
        "requests_per_round": {k: statistics.median(v) for k, v in kinds.items()},
        "round_ms": round(1000 * statistics.median(r["seconds"] for r in rounds), 1),
        "empty_list_ms": empty_ms, "rss_mb": rss, "hwm_mb": hwm}))
    return 0


async def bench(args: argparse.Namespace) -> int:
    os.environ.update(AWS_ENV)  # botocore's credentials for the uploads made here
    counts = [int(c) for c in args.counts.split(",")]
    rows = [["driver", "stored", "LIST/round", "GET/round", "other/round", "round ms",
             "empty LIST ms", "RSS MB", "peak RSS MB", "made in s"]]
    results = []
    for driver in args.drivers.split(","):
        work = Path(tempfile.mkdtemp(prefix="tusd-sweep-"))
        with emulator_process(driver, work, env={**os.environ, **AWS_ENV},
                              on_disk=True) as emulator:
            bucket = "bench-sweep"
            _create_bucket(driver, emulator, bucket)
            if driver == "azure":  # the driver makes it (storage.create_container)
                await populate(driver, emulator, bucket, 0)
            with shaper(emulator, "0ms", "0", work) as (endpoint, ctl):
                stored, made = 0, 0.0
                for target in [0, *counts]:
                    made = await populate(driver, emulator, bucket, target - stored)
                    stored = target
                    out = await asyncio.to_thread(
                        subprocess.run,
                        [sys.executable, "-m", "bench.sweep", "--child", "--drivers", driver,
                         "--endpoint", endpoint, "--control", ctl, "--bucket", bucket],
                        cwd=ROOT, env={**os.environ, **AWS_ENV}, capture_output=True,
                        text=True, timeout=600, check=False)
                    if out.returncode:
                        print(out.stderr[-3000:], file=sys.stderr)
                        return 1
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    result.update(driver=driver, stored=stored, made_s=round(made, 1),
                                  loadavg=os.getloadavg()[0])
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    kinds = result["requests_per_round"]
                    rows.append([driver, str(stored), str(kinds.get("LIST", 0)),
                                 str(kinds.get("GET", 0)),
                                 str(sum(v for k, v in kinds.items() if k not in ("LIST", "GET"))),
                                 str(result["round_ms"]), str(result["empty_list_ms"]),
                                 str(result["rss_mb"]), str(result["hwm_mb"]),
                                 str(result["made_s"])])
    print("\nsweep rounds (sweep_once + owed listing), medians of "
          f"{ROUNDS}; load average now {os.getloadavg()[0]:.2f}\n" + format_table(rows),
          file=sys.stderr)
    flat = all(r["requests_per_round"] == results[i - 1]["requests_per_round"]
               for i, r in enumerate(results) if i and results[i - 1]["driver"] == r["driver"])
    print(f"{'PASS' if flat else 'MISS'} requests per round flat from 0 to "
          f"{max(counts)} stored uploads on every driver", file=sys.stderr)
    return 0 if flat else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--drivers", default="s3,gcs,azure")
    parser.add_argument("--counts", default="1000,10000,50000")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--control", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.driver = args.drivers
        return int(uvloop_run(child(args)))
    return int(uvloop_run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
