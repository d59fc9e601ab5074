"""The upload index of the object stores (``storage.object.index``) and the shared turns,
on each emulator: markers follow the record (a PATCH writes none), the sweep moves a
marker whose upload lives longer, old records are indexed once, and one process at a
time has a turn (the local driver's turn is a flock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.app import make_config
from tests.plugins.stores import new_upload, started_stores, write
from tusd_py.storage.base import CanTakeTurns, Store
from tusd_py.storage.object.index import DUE, OWED, due_of, marker, ms
from tusd_py.storage.object.lease import LeasedStore
from tusd_py.storage.registry import build_store

OBJECT_DRIVERS = ["s3", "gcs", "azure"]

Factory = Callable[[], Awaitable[Any]]


@pytest.fixture(params=OBJECT_DRIVERS)
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``await replicas()``: a started store on the test's bucket (one per replica)."""
    config = make_config(dict(request.getfixturevalue(f"{request.param}_storage_config")))
    async with started_stores() as start:
        async def factory() -> Any:
            return await start(build_store(config.storage))

        yield factory


async def markers(store: LeasedStore[Any], kind: str) -> list[str]:
    return [key[len(store.prefix):] async for key, _ in store.list_keys(store.prefix + kind)]


def counting(store: LeasedStore[Any], method: str) -> list[str]:
    """Record the keys ``store.<method>`` is called with from now on."""
    calls: list[str] = []
    original = getattr(store, method)

    async def wrapper(key: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(key[len(store.prefix):])
        return await original(key, *args, **kwargs)

    setattr(store, method, wrapper)
    return calls


async def test_a_patch_writes_no_marker_and_the_sweep_moves_a_later_one(replicas):
    store = await replicas()
    created = time.time()
    upload = await new_upload(store, 10, expires_at=created + 0.3)
    assert await markers(store, DUE) == [marker(DUE, due_of(created + 0.3), upload.id)]
    puts = counting(store, "put_marker")
    lock = await store.lock(upload.id, 1)
    try:
        await lock.write(b"12345")
        await lock.commit(expires_at=created + 3600)
    finally:
        await lock.release()
    assert puts == []  # the marker stays where it was; the sweep moves it when reached
    await asyncio.sleep(0.35)
    assert await store.expired(time.time()) == []
    assert await markers(store, DUE) == [marker(DUE, due_of(created + 3600), upload.id)]
    assert (await store.read_record(upload.id))[0]["due"] == due_of(created + 3600)


async def test_completion_removes_the_due_marker_and_owes_until_cleared(replicas):
    store = await replicas()
    upload = await new_upload(store, 2, expires_at=time.time() + 60, finish_owed=True)
    done = await write(store, upload.id, b"ok")
    assert done.is_complete and done.completed_at is not None
    assert await markers(store, DUE) == []
    assert await markers(store, OWED) == [marker(OWED, ms(done.completed_at), upload.id)]
    assert await store.owed_finishes(time.time() + 1) == [upload.id]
    lock = await store.lock(upload.id, 1)
    try:
        await store.clear_finish_owed(lock)
    finally:
        await lock.release()
    assert await markers(store, OWED) == []
    assert await store.owed_finishes(time.time() + 1) == []


async def test_records_written_before_the_index_are_indexed_once(replicas):
    old = await replicas()
    now = time.time()
    expired = await new_upload(old, 10, expires_at=now - 5)
    later = await new_upload(old, 10, expires_at=now + 3600)
    owed = await write(old, (await new_upload(old, 1, finish_owed=True)).id, b"x")
    for upload in (expired, later, owed):  # as an older version wrote them
        record, tag = await old.read_record(upload.id)
        del record["due"]
        await old.write_record(upload.id, record, etag=tag)
    for kind in (DUE, OWED):
        await old.index.delete(await markers(old, kind))
    await old.delete_object(old.prefix + ".index", "test")

    store = await replicas()  # the first start of this version on that bucket
    assert await store.expired(now) == [expired.id]
    assert await markers(store, DUE) == sorted([marker(DUE, due_of(now - 5), expired.id),
                                                marker(DUE, due_of(now + 3600), later.id)])
    assert await store.owed_finishes(time.time() + 1) == [owed.id]

    again = await replicas()  # the guard says it is done: nothing is read again
    reads = counting(again, "read_object")
    assert await again.expired(now) == [expired.id]
    assert reads == [".index", f"{expired.id}.info"]


@pytest.mark.parametrize("driver", ["local", *OBJECT_DRIVERS])
async def test_one_process_at_a_time_has_a_turn(request, driver: str, tmp_path: Path):
    if driver == "local":
        config = make_config({"driver": "local", "data_dir": str(tmp_path / "data")})
    else:
        config = make_config(dict(request.getfixturevalue(f"{driver}_storage_config")))
    async with started_stores() as start:
        a: Store = await start(build_store(config.storage))
        b: Store = await start(build_store(config.storage))
        assert isinstance(a, CanTakeTurns) and isinstance(b, CanTakeTurns)
        assert await a.take_turn("sweep", 30)
        assert not await b.take_turn("sweep", 30)
        assert await a.take_turn("sweep", 30)  # still a's
        assert await b.take_turn("redeliver", 30)  # another job: its own turn
        await a.stop()  # gives its turns back
        if driver != "local":
            b.turns._turns["sweep"].retry_at = 0  # type: ignore[attr-defined]  # ask now
        assert await b.take_turn("sweep", 30)
