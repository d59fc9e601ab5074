"""The S3 driver at the contract level, against moto over real HTTP.

Two ``S3Store`` instances on one bucket stand for two replicas.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from tests.plugins.object_stores import without_index
from tests.plugins.s3 import MIB, PREFIX
from tests.plugins.stores import new_upload, read_all, write
from tusd_py.protocol.errors import MismatchedOffset, NotFound, UploadBusy
from tusd_py.storage.base import Upload
from tusd_py.storage.ids import new_upload_id


def keys(s3_client: Any, bucket: str) -> set[str]:
    return without_index(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", ()))


def mpus(s3_client: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", ()))


async def test_multipart_upload_with_tail_segments_across_patches(make_store, s3_client, s3_bucket):
    store = await make_store()
    data = os.urandom(12 * MIB + 123)
    meta = {"filename": "r\u00e9sum\u00e9.pdf".encode(), "filetype": b"application/pdf"}
    upload = await new_upload(store, len(data), metadata=meta)
    record_key = f"{PREFIX}{upload.id}.info"

    def tail(offset: int) -> set[str]:
        """The tail segment stored at ``offset`` (its name ends with a random part)."""
        found = {k for k in keys(s3_client, s3_bucket) if k.startswith(f"{PREFIX}{upload.id}.t")}
        assert [k.rsplit(".t", 1)[1][:15] for k in found] == [f"{offset:015d}"], found
        return found

    # 3 MiB: less than a part, kept as a tail segment
    up = await write(store, upload.id, data[:3 * MIB])
    assert up.offset == 3 * MIB
    assert keys(s3_client, s3_bucket) == {record_key} | tail(0)
    assert s3_client.head_object(Bucket=s3_bucket, Key=tail(0).pop())["ContentLength"] == 3 * MIB
    assert mpus(s3_client, s3_bucket) == []

    # +4 MiB: the tail and new bytes make part 1 (5 MiB), 2 MiB become a new segment
    up = await write(store, upload.id, data[3 * MIB:7 * MIB])
    assert up.offset == 7 * MIB
    assert keys(s3_client, s3_bucket) == {record_key} | tail(5 * MIB)
    [mpu] = mpus(s3_client, s3_bucket)
    parts = s3_client.list_parts(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}",
                                 UploadId=mpu["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [5 * MIB]
    assert (await store.get(upload.id)).offset == 7 * MIB  # HEAD: one GET of .info

    # a fresh "replica" finishes it
    other = await make_store()
    up = await write(other, upload.id, data[7 * MIB:])
    assert up.is_complete and up.offset == len(data)
    assert keys(s3_client, s3_bucket) == {record_key, f"{PREFIX}{upload.id}"}
    assert mpus(s3_client, s3_bucket) == []
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}")
    assert head["ContentType"] == "application/pdf"
    assert head["ContentDisposition"] == (
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf")
    assert head["ETag"].endswith('-3"')  # 5 MiB + 5 MiB + the rest
    assert await read_all(store, up) == data
    download = await store.download(up)
    assert b"".join([c async for c in download.read(5 * MIB - 10, 20)]) == data[5 * MIB - 10:5 * MIB + 10]


async def test_small_upload_is_one_put_object(make_store, s3_client, s3_bucket):
    store = await make_store()
    upload = await new_upload(store, 10)
    await write(store, upload.id, b"hello")
    up = await write(store, upload.id, b"world")
    assert up.is_complete
    assert mpus(s3_client, s3_bucket) == []
    assert await read_all(store, up) == b"helloworld"
    assert keys(s3_client, s3_bucket) == {f"{PREFIX}{upload.id}.info", f"{PREFIX}{upload.id}"}


async def test_parts_grow_when_the_part_count_would_run_out(make_store, s3_client, s3_bucket):
    # A simulated limit of 2 parts: a 12 MiB upload needs 6 MiB parts, not 5 MiB ones.
    store = await make_store(max_parts=2)
    data = os.urandom(12 * MIB)
    upload = await new_upload(store, len(data))
    lock = await store.lock(upload.id, 1)
    for i in range(0, len(data), 64 * 1024):
        await lock.write(data[i:i + 64 * 1024])
    await lock.parts.collect()
    sizes = [p["size"] for p in lock.parts.done]
    up = await lock.commit()
    await lock.release()
    assert sizes == [6 * MIB, 6 * MIB]
    assert up.is_complete
    assert s3_client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}")["ETag"].endswith('-2"')
    assert await read_all(store, up) == data


async def test_deferred_length_parts_grow(make_store, s3_client, s3_bucket):
    store = await make_store(max_parts=3)  # deferred: 5 MiB, then 10 MiB, then 20 MiB
    data = os.urandom(16 * MIB)
    upload = await new_upload(store, None)
    up = await write(store, upload.id, data[:15 * MIB + 1])
    [mpu] = mpus(s3_client, s3_bucket)
    parts = s3_client.list_parts(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}",
                                 UploadId=mpu["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [5 * MIB, 10 * MIB]
    assert up.offset == 15 * MIB + 1 and up.length is None
    up = await write(store, upload.id, data[15 * MIB + 1:], length=len(data))
    assert up.is_complete and up.length == len(data)
    assert await read_all(store, up) == data


async def test_rollback_publishes_nothing(make_store):
    store = await make_store()
    upload = await new_upload(store, 8 * MIB)
    await write(store, upload.id, b"a" * MIB)
    lock = await store.lock(upload.id, 1)
    await lock.write(b"b" * (6 * MIB))  # a full part was uploaded
    await lock.rollback()
    await lock.release()
    assert (await store.get(upload.id)).offset == MIB
    up = await write(store, upload.id, b"c" * (7 * MIB))
    assert await read_all(store, up) == b"a" * MIB + b"c" * (7 * MIB)


async def test_lease_excludes_other_replicas_and_is_taken_over_when_expired(make_store):
    a = await make_store(lease_duration=2.0)
    b = await make_store(lease_duration=2.0)
    upload = await new_upload(a, 100)
    held = await a.lock(upload.id, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0.3)
    assert 0.25 <= loop.time() - started < 10  # it waited its 0.3 s, then gave up
    await asyncio.sleep(2.5)  # the renewal keeps a live holder's lease past its 2 s
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0)

    # The holder stalls (hung process, partition): it stops renewing; its lease expires.
    # (Private: nothing public stops one lock's renewal while its process goes on; the
    # process-level case, a replica killed mid-PATCH, is tests/s3/test_replicas.py.)
    held._renewer.cancel()
    await held.write(b"x" * 10)
    taken = await b.lock(upload.id, 5)
    await taken.write(b"y" * 20)
    assert (await taken.commit()).offset == 20

    # The old holder can publish nothing: its lease is gone, its ETag is stale.
    with pytest.raises(UploadBusy):
        await held.commit()
    held.lost = False
    held.written = 0
    with pytest.raises((MismatchedOffset, UploadBusy)):
        await held.commit(expires_at=time.time() + 60)
    await held.release()  # must not free the new holder's lease
    with pytest.raises(UploadBusy):
        await a.lock(upload.id, 0)
    await taken.release()
    up = await write(a, upload.id, b"z" * 80)
    assert up.is_complete
    assert await read_all(a, up) == b"y" * 20 + b"z" * 80


async def test_lock_of_missing_upload_is_not_found(make_store):
    store = await make_store()
    with pytest.raises(NotFound):
        await store.lock(new_upload_id(), 0)
    assert await store.get(new_upload_id()) is None


async def test_terminate_aborts_and_deletes_everything(make_store, s3_client, s3_bucket):
    store = await make_store()
    upload = await new_upload(store, 20 * MIB)
    await write(store, upload.id, os.urandom(6 * MIB))
    assert mpus(s3_client, s3_bucket) and keys(s3_client, s3_bucket)
    lock = await store.lock(upload.id, 1)
    await store.terminate(upload.id)
    await lock.release()
    assert mpus(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == set()
    assert await store.get(upload.id) is None


async def test_expired_lists_only_expired_records(make_store):
    store = await make_store()
    now = time.time()
    old = await new_upload(store, 10, expires_at=now - 5)
    await new_upload(store, 10, expires_at=now + 3600)
    await new_upload(store, 10)
    assert await store.expired(now) == [old.id]
    assert await store.expired(now) == [old.id]  # still listed until it is deleted
    await write(store, old.id, b"x")  # commit without expires_at: never expires now
    assert await store.expired(now) == []


async def test_zero_length_upload_has_an_empty_object(make_store):
    store = await make_store()
    upload = await store.create(Upload(id=new_upload_id(), length=0, created_at=time.time(),
                                       completed_at=time.time()))
    assert await read_all(store, upload) == b""
    assert (await store.download(upload)).size == 0


async def test_writer_dying_during_completion_is_finished_by_the_next_reader(make_store):
    """The holder completed the multipart upload and died before recording it."""
    a = await make_store(lease_duration=1.0)
    b = await make_store(lease_duration=1.0)
    data = os.urandom(7 * MIB)
    upload = await new_upload(a, len(data))
    lock = await a.lock(upload.id, 1)
    for i in range(0, len(data), 64 * 1024):
        await lock.write(data[i:i + 64 * 1024])
    await lock.parts.collect()
    # commit() up to CompleteMultipartUpload, then the process is gone (no final record)
    await lock._finish({"length": len(data), "offset": len(data), "expires_at": None})
    # (Private: nothing public stops a commit between CompleteMultipartUpload and the
    # final record; killing a daemon there cannot be timed from outside.)
    lock._renewer.cancel()
    seen = await b.get(upload.id)
    assert seen is not None and seen.offset == len(data) and not seen.is_complete
    await asyncio.sleep(1.1)  # the dead holder's lease runs out
    seen = await b.get(upload.id)  # HEAD on another replica finishes the job
    assert seen is not None and seen.is_complete
    assert await read_all(b, seen) == data


async def test_a_sticky_writer_does_not_read_its_own_tail_back(make_store, s3_proxy):
    """A process that stored a tail keeps it: its next PATCH sends no GET for it (the
    requests counted by the proxy in front of moto), and the bytes are right."""
    proxy, endpoint = s3_proxy
    a = await make_store(endpoint_url=endpoint)
    upload = await new_upload(a, 8 * MIB)
    await write(a, upload.id, b"a" * (2 * MIB))  # a 2 MiB tail segment
    since = len(proxy.log)
    up = await write(a, upload.id, b"b" * (6 * MIB))
    assert up.is_complete
    tail = f"{upload.id}.t"
    assert [f.path for f in proxy.log[since:] if f.method == "GET" and tail in f.path] == []
    assert await read_all(a, up) == b"a" * (2 * MIB) + b"b" * (6 * MIB)


async def test_tail_cache_never_serves_another_replicas_tail(make_store):
    """A keeps the tail segment it wrote in memory; B then cuts it into a part and leaves
    segments of its own. A must not use its copy (the record no longer lists it) and
    reads B's segments from S3."""
    a = await make_store()
    b = await make_store()
    upload = await new_upload(a, 8 * MIB)
    await write(a, upload.id, b"a" * (2 * MIB))  # a tail segment, 2 MiB
    # (A keeps it: see test_a_sticky_writer_does_not_read_its_own_tail_back)
    await write(b, upload.id, b"b" * (4 * MIB))  # part 1 (5 MiB) + a segment of 1 MiB
    await write(b, upload.id, b"c" * MIB)  # another segment, 1 MiB
    up = await write(a, upload.id, b"d" * MIB)
    assert up.is_complete
    assert await read_all(a, up) == b"a" * (2 * MIB) + b"b" * (4 * MIB) + b"c" * MIB + b"d" * MIB


async def test_create_with_a_taken_id_is_refused_and_changes_nothing(make_store):
    from tusd_py.protocol.errors import UploadExists

    store = await make_store()
    first = await new_upload(store, 3)
    await write(store, first.id, b"abc")
    for length, done in ((10, None), (0, time.time())):
        with pytest.raises(UploadExists):
            await store.create(Upload(id=first.id, length=length, created_at=time.time(),
                                      completed_at=done))
    up = await store.get(first.id)
    assert up is not None and up.length == 3 and up.is_complete
    assert await read_all(store, up) == b"abc"


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
    assert taken.upload.offset == 10
    await taken.write(b"y" * 90)
    up = await taken.commit()
    await taken.release()
    assert await read_all(b, up) == b"x" * 10 + b"y" * 90
