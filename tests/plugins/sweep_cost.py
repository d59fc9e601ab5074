"""The cost of a sweep against the number of stored uploads, shared by the S3, GCS and
Azure tests: requests counted by a ``StoreProxy`` between the daemon's store and the
emulator, with an empty bucket and with thousands of uploads (finished and not).

The thousands are made through the driver itself (``Store.create``, 32 at once, on a
second store talking to the emulator directly), so they are exactly what the daemon
writes; a hundred are finished by a real PATCH (create, write, complete).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from tests.plugins.app import make_config
from tests.plugins.proxy import Forwarded, StoreProxy
from tests.plugins.stores import new_upload, write
from tusd_py.core.sweeper import sweep_once
from tusd_py.http.app import create_app
from tusd_py.http.keys import HANDLER, STORE
from tusd_py.storage.base import CanTrackFinish, Store
from tusd_py.storage.registry import build_store

#: Sweep rounds (a sweep and a listing of owed post-finish deliveries) counted per state.
ROUNDS = 3


def cost_of(log: list[Forwarded], is_list: Callable[[Forwarded], bool]) -> dict[str, int]:
    """Requests by kind: LIST, GET (reads), PUT/POST (writes), DELETE."""
    kinds: Counter[str] = Counter()
    for f in log:
        if is_list(f):
            kinds["LIST"] += 1
        elif f.method in ("GET", "HEAD"):
            kinds["GET"] += 1
        elif f.method == "DELETE":
            kinds["DELETE"] += 1
        else:
            kinds["WRITE"] += 1
    return dict(kinds)


async def rounds(client: TestClient, proxy: StoreProxy,
                 is_list: Callable[[Forwarded], bool]) -> tuple[dict[str, int], int, int]:
    """(requests by kind per round, bytes still allocated after the rounds, peak bytes
    allocated during them) of ``ROUNDS`` sweep rounds as the daemon runs them:
    ``sweep_once`` with the turn, then the owed post-finish listing."""
    handler, store = client.app[HANDLER], client.app[STORE]
    assert isinstance(store, CanTrackFinish)
    await sweep_once(handler, hold=60)  # warm: nothing allocated once is counted
    proxy.log.clear()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(ROUNDS):
            assert await sweep_once(handler, hold=60) == 0
            await store.owed_finishes(time.time())
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = cost_of(proxy.log, is_list)
    return {k: v // ROUNDS for k, v in total.items() if v}, now - start, peak - start


async def populate(store: Store, count: int, *, finished_by_patch: int = 100) -> dict[str, list[str]]:
    """``count`` uploads: half unfinished (expiring in an hour), half finished and kept
    (``finished_by_patch`` of them through a PATCH that completes them, the rest created
    complete with length 0); ids by kind."""
    now = time.time()
    semaphore = asyncio.Semaphore(32)
    made: dict[str, list[str]] = {"unfinished": [], "finished": []}

    async def one(kind: str, patched: bool) -> None:
        async with semaphore:
            if kind == "unfinished":
                upload = await new_upload(store, 10, expires_at=now + 3600)
            elif patched:
                upload = await new_upload(store, 2, expires_at=now + 3600)
                upload = await write(store, upload.id, b"ok")
                assert upload.is_complete
            else:
                upload = await new_upload(store, 0, completed_at=now)
            made[kind].append(upload.id)

    half = count // 2
    await asyncio.gather(*(one("unfinished", False) for _ in range(half)),
                         *(one("finished", i < finished_by_patch) for i in range(count - half)))
    return made


async def check_sweep_cost_is_flat(aiohttp_client: Any, config: dict[str, Any],
                                   through_proxy: dict[str, Any], proxy: StoreProxy,
                                   is_list: Callable[[Forwarded], bool], *,
                                   stored: int = 3000, expired: int = 3) -> None:
    """A daemon's store talks to the emulator through ``proxy`` (``config`` updated with
    ``through_proxy``); the requests of a sweep round are the same with an empty bucket
    and with ``stored`` uploads, the ``expired`` ones are swept on time, the others kept,
    and the memory a round allocates does not grow with the bucket."""
    client = await aiohttp_client(create_app(make_config(
        {**config, **through_proxy}, expiration={"after": 3600, "sweep_interval": 0},
        hooks={"redeliver_after": 0})))
    handler = client.app[HANDLER]
    await sweep_once(handler, hold=60)  # the first: the index guard, the turn, the audit
    empty, empty_kept, empty_peak = await rounds(client, proxy, is_list)
    # a round is one LIST of due markers and one of owed ones, nothing else
    assert empty == {"LIST": 2}, empty

    direct = build_store(make_config(config).storage)
    await direct.start()
    try:
        started = time.monotonic()
        made = await populate(direct, stored)
        stale = [(await new_upload(direct, 10, expires_at=time.time() - 1)).id
                 for _ in range(expired)]
        took = time.monotonic() - started
    finally:
        await direct.stop()

    proxy.log.clear()
    assert await sweep_once(handler, hold=60) == expired  # swept on time
    sweeping = cost_of(proxy.log, is_list)
    full, kept, peak = await rounds(client, proxy, is_list)
    assert full == empty, (full, empty, f"{stored} uploads made in {took:.1f}s")
    # Nothing per stored upload stays in memory (a per-upload cache of records would keep
    # 200 bytes or more for each: 600 KB here; what does stay is the HTTP connections'
    # buffers), and a round holds one page of markers at most (MARKER_PAGE).
    assert kept < empty_kept + (128 << 10), (kept, empty_kept)
    assert peak < empty_peak + (1 << 20), (peak, empty_peak)
    # the expired ones cost requests of their own, not of the bucket's size
    assert sum(sweeping.values()) < 2 * sum(empty.values()) + 30 * expired, sweeping

    store = client.app[STORE]
    for upload_id in stale:
        assert await store.get(upload_id) is None
    for kind, ids in made.items():
        for upload_id in ids[:20] + ids[-20:]:
            found = await store.get(upload_id)
            assert found is not None and found.is_complete == (kind == "finished")
