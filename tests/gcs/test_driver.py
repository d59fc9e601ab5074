"""The GCS driver at the contract level, against fake-gcs-server over real HTTP.

Two ``GCSStore`` instances on one bucket stand for two replicas.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.plugins import stores
from tests.plugins.stores import new_upload, read_all, started_stores
from tusd_py.protocol.errors import MismatchedOffset, NotFound, ServiceUnavailable, UploadBusy
from tusd_py.storage.base import Upload
from tusd_py.storage.gcs.store import GCSStore
from tusd_py.storage.ids import new_upload_id

KIB = 1 << 10
PREFIX = "up/"
PART = 64 * KIB

StoreFactory = Callable[..., Awaitable[GCSStore]]


@pytest.fixture
async def make_store(gcs_endpoint: str, gcs_bucket: str) -> AsyncIterator[StoreFactory]:
    async with started_stores() as start:
        async def factory(**kwargs: Any) -> GCSStore:
            options: dict[str, Any] = {"prefix": PREFIX, "endpoint_url": gcs_endpoint,
                                       "part_size": PART, **kwargs}
            return await start(GCSStore(options.pop("bucket", gcs_bucket), **options))

        yield factory


#: One PATCH in 16 KiB chunks (parts here are 64 KiB, so a PATCH spans several).
write = functools.partial(stores.write, piece=16 * KIB)


def names(objects: dict[str, int]) -> set[str]:
    return set(objects)


async def test_parts_across_patches_then_one_composed_object(make_store, gcs_objects, gcs_bucket):
    store = await make_store()
    data = os.urandom(5 * PART + 123)
    upload = await new_upload(store, len(data), metadata={"filetype": b"image/png",
                                                          "filename": b"a b.png"})
    key = PREFIX + upload.id
    # PATCH 1: two full parts and a small remainder part, published with the offset
    up = await write(store, upload.id, data[:2 * PART + 100])
    assert up.offset == 2 * PART + 100 and not up.is_complete
    state = (await store.read_record(upload.id))[0]  # type: ignore[index]
    assert [p["size"] for p in state["parts"]] == [PART, PART, 100]
    assert state["lease"] is None
    # PATCH 2: small; merged with the small last part by compose (no read-back)
    up = await write(store, upload.id, data[2 * PART + 100:2 * PART + 300])
    state = (await store.read_record(upload.id))[0]  # type: ignore[index]
    assert [p["size"] for p in state["parts"]] == [PART, PART, 300]
    objects = gcs_objects(gcs_bucket)
    assert {n for n in objects if n.startswith(key + ".p")} == {p["name"] for p in state["parts"]}
    # PATCH 3: the rest; completion composes every part and deletes them
    up = await write(store, upload.id, data[2 * PART + 300:])
    assert up.is_complete and up.offset == len(data)
    assert await read_all(store, up) == data
    assert names(gcs_objects(gcs_bucket)) == {key, key + ".info"}
    meta = await store.bucket.storage.download_metadata(gcs_bucket, key)
    assert meta["contentType"] == "image/png"
    assert meta["contentDisposition"].startswith('attachment; filename="a b.png"')
    # ranged read
    download = await store.download(up)
    assert b"".join([c async for c in download.read(PART - 10, 30)]) == data[PART - 10:PART + 20]


async def test_more_than_32_parts_compose_in_rounds(make_store, gcs_objects, gcs_bucket):
    store = await make_store()
    data = os.urandom(40 * PART + 7)  # staged parts are composed 32 at a time
    upload = await new_upload(store, len(data))
    lock = await store.lock(upload.id, 1)
    try:
        for i in range(0, 40 * PART, 32 * KIB):
            await lock.write(data[i:i + 32 * KIB])
        mid = await lock.commit()
        state = (await store.read_record(upload.id))[0]  # type: ignore[index]
        assert len(state["parts"]) == 9  # 40 parts uploaded: one segment of 32, then 8
        assert sum(p["size"] for p in state["parts"]) == mid.offset == 40 * PART
        await lock.write(data[40 * PART:])
        done = await lock.commit()
    finally:
        await lock.release()
    assert done.is_complete
    assert await read_all(store, done) == data
    assert names(gcs_objects(gcs_bucket)) == {PREFIX + upload.id, PREFIX + upload.id + ".info"}


async def test_final_compose_of_more_than_32_listed_parts(make_store, gcs_objects, gcs_bucket):
    """50 one-part PATCHes: the published list holds 50 parts, the completion composes
    them in two rounds (32 + 18, then 2)."""
    store = await make_store()
    pieces = [os.urandom(PART) for _ in range(50)]
    upload = await new_upload(store, 50 * PART)
    for i, piece in enumerate(pieces[:-1]):
        up = await write(store, upload.id, piece)
        assert up.offset == (i + 1) * PART
    state = (await store.read_record(upload.id))[0]  # type: ignore[index]
    assert len(state["parts"]) == 49
    done = await write(store, upload.id, pieces[-1])
    assert done.is_complete
    assert await read_all(store, done) == b"".join(pieces)
    assert names(gcs_objects(gcs_bucket)) == {PREFIX + upload.id, PREFIX + upload.id + ".info"}


async def test_part_list_is_compacted_beyond_64(make_store):
    store = await make_store()
    pieces = [os.urandom(PART) for _ in range(70)]
    upload = await new_upload(store, None)
    for piece in pieces:
        await write(store, upload.id, piece)
    state = (await store.read_record(upload.id))[0]  # type: ignore[index]
    assert len(state["parts"]) <= 64
    done = await write(store, upload.id, b"", length=70 * PART)
    assert done.is_complete and done.length == 70 * PART
    assert await read_all(store, done) == b"".join(pieces)


async def test_rollback_publishes_nothing(make_store, gcs_objects, gcs_bucket):
    store = await make_store()
    upload = await new_upload(store, 4 * PART)
    lock = await store.lock(upload.id, 1)
    await lock.write(os.urandom(3 * PART))
    await lock.rollback()
    await lock.release()
    found = await store.get(upload.id)
    assert found is not None and found.offset == 0
    assert not [n for n in gcs_objects(gcs_bucket) if ".p" in n]


async def test_lease_excludes_other_replicas_and_is_taken_over_when_expired(make_store):
    a = await make_store(lease_duration=1)
    b = await make_store(lease_duration=1)
    upload = await new_upload(a, 2 * PART)
    held = await a.lock(upload.id, 0)
    started = time.monotonic()
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0.3)
    assert time.monotonic() - started >= 0.25
    await held.write(os.urandom(PART))
    # A stalls: its renewal stops (as if the process froze) and the lease runs out.
    # (Private: nothing public stops one lock's renewal while its process goes on; the
    # process-level case, a replica killed mid-PATCH, is tests/gcs/test_replicas.py.)
    held._renewer.cancel()
    await asyncio.sleep(1.2)
    taken = await b.lock(upload.id, 0)
    assert taken.upload.offset == 0
    await taken.write(b"x" * 10)
    assert (await taken.commit()).offset == 10
    # A wakes up: it cannot publish anything.
    with pytest.raises((UploadBusy, MismatchedOffset)):
        await held.commit()
    await held.release()
    await taken.release()
    found = await a.get(upload.id)
    assert found is not None and found.offset == 10


async def test_two_replicas_racing_for_a_free_lease_one_wins(make_store):
    a = await make_store()
    b = await make_store()
    for _ in range(5):
        upload = await new_upload(a, 10)
        results = await asyncio.gather(a.lock(upload.id, 0), b.lock(upload.id, 0),
                                       return_exceptions=True)
        won = [r for r in results if not isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert isinstance(next(r for r in results if isinstance(r, BaseException)), UploadBusy)
        await won[0].release()


async def test_lock_of_missing_upload_is_not_found(make_store):
    store = await make_store()
    with pytest.raises(NotFound):
        await store.lock(new_upload_id(), 0)
    assert await store.get(new_upload_id()) is None


async def test_terminate_deletes_everything(make_store, gcs_objects, gcs_bucket):
    store = await make_store()
    upload = await new_upload(store, 10 * PART)
    await write(store, upload.id, os.urandom(3 * PART + 5))
    lock = await store.lock(upload.id, 0)
    await lock.write(os.urandom(2 * PART))  # staged, unpublished parts too
    await store.terminate(upload.id)
    await lock.release()
    assert gcs_objects(gcs_bucket) == {}
    assert await store.get(upload.id) is None


async def test_expired_lists_only_expired_records(make_store):
    store = await make_store()
    now = time.time()
    old = await new_upload(store, 5, expires_at=now - 10)
    await new_upload(store, 5, expires_at=now + 3600)
    await new_upload(store, 5)
    assert await store.expired(now) == [old.id]
    assert await store.expired(now) == [old.id]  # still listed until it is deleted


async def test_zero_length_upload_has_an_empty_object(make_store):
    store = await make_store()
    upload = await new_upload(store, 0, completed_at=time.time())
    assert (await store.download(upload)).size == 0
    found = await store.get(upload.id)
    assert found is not None and found.is_complete


async def test_writer_dying_during_completion_is_finished_by_the_next_reader(make_store):
    a = await make_store(lease_duration=1)
    b = await make_store(lease_duration=1)
    data = os.urandom(3 * PART)
    upload = await new_upload(a, len(data))
    await write(a, upload.id, data[:PART])
    lock = await a.lock(upload.id, 0)
    await lock.write(data[PART:])
    await lock._collect()
    staged = lock.parts.done
    # (Private: the process dies between its "completing" record and the compose;
    # killing a daemon there cannot be timed from outside.)
    lock._renewer.cancel()
    # the record says "completing" with every part, then the process dies
    await lock.publish(offset=len(data), parts=[*lock.record["parts"], *staged], completing=True)
    await asyncio.sleep(1.1)
    found = await b.get(upload.id)
    assert found is not None and found.is_complete and found.offset == len(data)
    assert await read_all(b, found) == data


async def test_sweeper_removes_orphans_only(make_store, gcs_objects, gcs_bucket):
    store = await make_store(lease_duration=1)
    live = await new_upload(store, 10 * PART)
    await write(store, live.id, os.urandom(PART + 10))
    dead = await new_upload(store, 10 * PART)
    lock = await store.lock(dead.id, 0)
    await lock.write(os.urandom(2 * PART))
    await lock._collect()
    lock._renewer.cancel()  # the writer dies: its staged parts are never published (private:
    # a kill -9 between a part's upload and the commit cannot be timed from outside)
    await store.bucket.put(PREFIX + new_upload_id() + ".p000000-0123456789ab", b"x", what="test")
    before = gcs_objects(gcs_bucket)
    assert await store.sweep_extra(time.time()) == 0  # everything is too young
    removed = await store.sweep_extra(time.time() + 5)
    assert removed == 3  # two unpublished parts, one part of an upload that is gone
    after = gcs_objects(gcs_bucket)
    assert set(before) - set(after) == {n for n in before if n.startswith(PREFIX + dead.id + ".p")
                                        } | {n for n in before if not n.startswith(
                                            (PREFIX + dead.id, PREFIX + live.id))}
    up = await write(store, live.id, os.urandom(9 * PART - 10))
    assert up.is_complete


async def test_missing_bucket_and_unreachable_storage_are_clear_errors(make_store, gcs_endpoint):
    store = await make_store(bucket="no-such-bucket-here")
    with pytest.raises(Exception, match="not found"):
        await store.ping()
    down = GCSStore("b", endpoint_url="http://127.0.0.1:9", retry_attempts=2)
    await down.start()
    try:
        with pytest.raises(ServiceUnavailable, match="unreachable"):
            await down.get(new_upload_id())
    finally:
        await down.stop()


async def test_deferred_length_declared_zero_completes_with_an_empty_object(make_store):
    store = await make_store()
    upload = await new_upload(store, None, metadata={"filename": b"empty.txt"})
    done = await write(store, upload.id, b"", length=0)
    assert done.is_complete and done.length == 0
    assert await read_all(store, done) == b""
    meta = await store.bucket.storage.download_metadata(store.bucket.name, PREFIX + upload.id)
    assert meta["contentDisposition"].startswith('attachment; filename="empty.txt"')


async def test_an_id_that_exists_is_refused(make_store):
    from tusd_py.protocol.errors import UploadExists

    store = await make_store()
    upload = await new_upload(store, 10)
    with pytest.raises(UploadExists):
        await store.create(Upload(id=upload.id, length=3, created_at=time.time()))
    found = await store.get(upload.id)
    assert found is not None and found.length == 10


async def test_a_waiting_replica_asks_the_holder_to_stop(make_store):
    """B waits for an upload A holds: A's request is told (``on_takeover_request``),
    and A's later writes merge over B's request instead of failing."""
    a = await make_store(lease_duration=3.0)
    b = await make_store(lease_duration=3.0)
    upload = await new_upload(a, 100)
    held = await a.lock(upload.id, 0)
    asked = asyncio.Event()
    held.on_takeover_request = asked.set
    await held.write(b"x" * 10)

    async def stop_when_asked() -> None:
        await asyncio.wait_for(asked.wait(), 3)
        await held.commit()  # still ours: the request did not break the lease
        await held.release()

    stopper = asyncio.create_task(stop_when_asked())
    taken = await b.lock(upload.id, 5)
    await stopper
    assert not held.lost
    assert taken.upload.offset == 10
    await taken.write(b"y" * 90)
    up = await taken.commit()
    await taken.release()
    assert await read_all(b, up) == b"x" * 10 + b"y" * 90
    state = (await b.read_record(upload.id))[0]  # type: ignore[index]
    assert state["lease"] is None and state["wanted"] is None


async def test_a_takeover_request_does_not_break_a_holder_that_is_not_listening(make_store):
    """Nobody listens for requests on A's lock: B's flag is merged by A's next write, A
    commits normally and B gets 423 until A releases."""
    a = await make_store()
    b = await make_store()
    upload = await new_upload(a, 20)
    held = await a.lock(upload.id, 0)
    await held.write(b"a" * 10)
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0.3)  # flags .info with "wanted"
    assert (await held.commit()).offset == 10
    await held.release()
    taken = await b.lock(upload.id, 0)
    await taken.write(b"b" * 10)
    assert (await taken.commit()).is_complete
    await taken.release()
