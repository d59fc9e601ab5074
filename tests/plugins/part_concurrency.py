"""Concurrent part uploads (``storage.part_concurrency``), shared by the S3, GCS and Azure
tests: at most that many parts of one PATCH in flight at once, and that many when the
store is slow (a proxy adds latency to each part upload); the bytes come back intact;
and the memory a PATCH holds stays within part_size x 2 plus a body chunk, the parts
waiting their turn in spill files that nothing outlives (measured with tracemalloc on a
store talking to the emulator directly, so the proxy's own copies are not counted)."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.plugins.proxy import StoreProxy
from tests.plugins.stores import new_upload, read_all, write
from tusd_py.storage.base import Store
from tusd_py.storage.object.lease import LeasedStore

#: Latency the proxy adds to each part upload.
DELAY = 0.3
CHUNK = 64 * 1024


async def check_parts_upload_at_once(store: Store, proxy: StoreProxy,
                                     is_part: Callable[[web.Request], bool], *,
                                     part_size: int, concurrency: int) -> None:
    in_flight = peak = 0
    handle = proxy.handle

    async def slow_parts(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        if not is_part(request):
            return await handle(request)
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(DELAY)
            return await handle(request)
        finally:
            in_flight -= 1

    proxy.handle = slow_parts  # type: ignore[method-assign]
    parts = 3 * concurrency
    data = os.urandom(parts * part_size + 1234)
    upload = await new_upload(store, len(data))
    done = await write(store, upload.id, data)
    assert done.is_complete
    assert peak == concurrency, peak  # that many held back by the proxy at once, never more
    assert await read_all(store, done) == data


async def check_memory_bound(store: LeasedStore[Any], *, part_size: int,
                             concurrency: int) -> int:
    """Peak bytes allocated by one PATCH of many parts; returns it. The driver's buffers
    (its gauge) stay within the documented bound, part_size x 2 + a chunk; everything
    allocated stays within it plus the HTTP clients' buffers (aiohttp reads a body
    256 KiB at a time, botocore hashes it 1 MiB at a time, responses wait for the
    garbage collector): 2 MiB per part in flight, and for one more."""
    data = os.urandom(6 * concurrency * part_size + 4321)
    upload = await new_upload(store, len(data) + 1)  # stays open: no final object yet
    lock = await store.lock(upload.id, 1)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(data), CHUNK):
            await lock.write(data[i:i + CHUNK])
        await lock.commit()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        await lock.release()
    bound = part_size * 2 + CHUNK
    gauge = store.buffer_gauge
    assert gauge.peak <= bound, (gauge.peak, bound)
    assert peak < bound + (concurrency + 1) * (2 << 20), (peak, bound)
    assert gauge.spilled and gauge.files == 0 and gauge.held == 0  # parts waited on disk
    return peak
