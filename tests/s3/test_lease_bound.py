"""A writer's part uploads never outlive its lease (moto behind ``s3_proxy``).

Replica A reaches S3 through the proxy, which holds A's part uploads back (a slow
network path); replica B talks to moto directly. Once A's lease could have been taken
over, none of A's attempts may still reach S3: a stale part N landing after B's part N
would replace B's bytes (and break the completion, whose part ETags are B's).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import pytest

from tests.plugins.proxy import StoreProxy
from tests.plugins.s3 import MIB, PREFIX, is_conditional_record_write, is_part_upload
from tests.plugins.stores import new_upload, read_all, stream, write
from tusd_py.protocol.errors import ServiceUnavailable, StorageError, UploadBusy


def parts_from(proxy: StoreProxy, since: float) -> list[Any]:
    return [f for f in proxy.log if f.method == "PUT" and "partNumber" in f.query
            and f.started >= since]


async def test_a_held_back_part_of_an_expired_lease_never_lands(make_store, s3_proxy):
    """A's lease renewals are refused and its part upload is held back past the lease's
    expiry. A's upload is cut off before the lease ends, B takes over and finishes with
    its own bytes; A's part never reaches S3."""
    proxy, endpoint = s3_proxy
    a = await make_store(endpoint_url=endpoint, lease_duration=2.0, retry_attempts=2)
    b = await make_store(lease_duration=2.0)
    first, stale, fresh = os.urandom(6 * MIB), os.urandom(4 * MIB), os.urandom(5 * MIB)
    upload = await new_upload(a, 11 * MIB)
    await write(a, upload.id, first)  # part 1 + a 1 MiB tail

    held = await a.lock(upload.id, 1)
    proxy.rule, proxy.failures = is_conditional_record_write, -1  # renewals fail
    proxy.delay = lambda request: 4.0 if is_part_upload(request) else 0.0
    started = time.monotonic()

    async def old_writer() -> None:
        await stream(held, stale)  # tail + 4 MiB: part 2 starts, held back by the proxy
        await held.commit()

    writer = asyncio.create_task(old_writer())
    while not proxy.held:
        await asyncio.sleep(0.01)
    taken = await b.lock(upload.id, 6)  # once A's 2 s lease ran out
    assert time.monotonic() - started > 1.5
    await stream(taken, fresh[:4 * MIB])  # B's part 2
    assert (await taken.commit()).offset == 10 * MIB
    await taken.release()
    with pytest.raises((ServiceUnavailable, UploadBusy)):
        await writer
    assert time.monotonic() - started < 4.0  # cut off, not waiting for the proxy
    await held.release()
    # When A's held-back part would have landed (over B's part 2), B completes.
    await asyncio.sleep(max(0.0, started + 4.5 - time.monotonic()))
    up = await write(b, upload.id, fresh[4 * MIB:])
    assert up.is_complete
    assert await read_all(b, up) == first + fresh

    assert proxy.dropped == 1
    assert parts_from(proxy, started) == []


async def test_part_uploads_are_cancelled_as_soon_as_the_lease_is_lost(
        make_store, s3_proxy, s3_client, s3_bucket):
    """Another writer took the lease early (a replica whose clock runs ahead): A's next
    renewal finds out and cancels its in-flight part at once, before its own deadline."""
    proxy, endpoint = s3_proxy
    a = await make_store(endpoint_url=endpoint, lease_duration=6.0)
    upload = await new_upload(a, 12 * MIB)
    held = await a.lock(upload.id, 1)
    await held._ensure_mpu()
    proxy.delay = lambda request: 4.2 if is_part_upload(request) else 0.0
    started = time.monotonic()
    await stream(held, os.urandom(5 * MIB))  # part 1 is on its way (held back 4.2 s)
    while not proxy.held:
        await asyncio.sleep(0.01)

    # Private: the record's JSON, written behind the driver's back, stands for a replica
    # whose clock runs ahead (nothing public makes a store take a live lease).
    key = f"{PREFIX}{upload.id}.info"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)
    record = json.loads(body["Body"].read())
    record["lease"] = {"holder": "someone-else", "until": time.time() + 60}
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(record).encode(),
                         IfMatch=body["ETag"])

    with pytest.raises(UploadBusy):
        await held.commit()
    # The renewal (every 2 s) found the lease gone: cancelled before the proxy would
    # have passed the part on (4.2 s) and before A's own deadline (4.5 s).
    assert time.monotonic() - started < 4.0
    await asyncio.sleep(max(0.0, started + 4.5 - time.monotonic()))
    await held.release()
    assert proxy.dropped == 1
    assert parts_from(proxy, started) == []


async def test_a_completion_whose_part_was_overwritten_is_rolled_back_to_intact_parts(
        make_store, s3_proxy, s3_client, s3_bucket):
    """A record left ``completing`` while S3 holds a part other than the one it lists
    (a stale write landed): the next reader does not loop on 500s. It moves the offset
    back to the end of the intact parts; the client resumes from there."""
    proxy, endpoint = s3_proxy
    # A 4 s lease: A's part uploads of 5 MiB through the proxy outlived a 1 s one on a
    # loaded CI machine (ServiceUnavailable before the completion this test is about).
    a = await make_store(endpoint_url=endpoint, lease_duration=4.0, retry_attempts=1)
    b = await make_store(lease_duration=4.0)
    data = os.urandom(12 * MIB)
    upload = await new_upload(a, len(data))
    await write(a, upload.id, data[:11 * MIB])  # parts 1, 2 + a 1 MiB tail

    def is_completion(request: Any) -> bool:
        return request.method == "POST" and "uploadId" in request.query

    proxy.rule, proxy.failures = is_completion, -1
    with pytest.raises(ServiceUnavailable):
        await write(a, upload.id, data[11 * MIB:])  # completing; S3 refuses to complete
    proxy.failures = 0
    [mpu] = s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    s3_client.upload_part(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}", UploadId=mpu["UploadId"],
                          PartNumber=2, Body=os.urandom(5 * MIB))  # a stale part 2

    seen = await b.get(upload.id)  # HEAD on another replica
    assert seen is not None and not seen.is_complete
    assert seen.offset == 5 * MIB  # part 1 is intact; part 2 and 3 must be sent again
    assert (await b.get(upload.id)).offset == 5 * MIB  # no longer 'completing'
    up = await write(b, upload.id, data[5 * MIB:])
    assert up.is_complete
    assert await read_all(b, up) == data


async def test_a_patch_completing_over_an_overwritten_part_fails_clearly(
        make_store, s3_client, s3_bucket):
    store = await make_store()
    data = os.urandom(11 * MIB)
    upload = await new_upload(store, len(data))
    await write(store, upload.id, data[:10 * MIB])  # parts 1, 2
    [mpu] = s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    s3_client.upload_part(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}", UploadId=mpu["UploadId"],
                          PartNumber=1, Body=os.urandom(5 * MIB))
    with pytest.raises(StorageError, match=r"part 1 .*overwritten.*moved back to 0") as err:
        await write(store, upload.id, data[10 * MIB:])
    assert err.value.status == 500
    assert (await store.get(upload.id)).offset == 0
    up = await write(store, upload.id, data)
    assert up.is_complete and await read_all(store, up) == data


async def test_a_lease_whose_release_failed_is_taken_back_at_once_by_its_process(
        make_store, s3_proxy):
    """The write that gives a lease back fails (seen: it timed out behind 160 part
    uploads): the record still names the lease. Another replica must wait for it to run
    out; the process that gave it up knows nobody writes under it and takes it at once,
    so a DELETE right after the PATCH does not get 423."""
    proxy, endpoint = s3_proxy
    a = await make_store(endpoint_url=endpoint, lease_duration=30.0, retry_attempts=1)
    b = await make_store(lease_duration=30.0)
    data = os.urandom(1000)
    upload = await new_upload(a, len(data))
    held = await a.lock(upload.id, 0)
    proxy.rule, proxy.failures = is_conditional_record_write, -1
    await held.release()  # refused: logged, the lease left in the record
    proxy.failures = 0
    assert proxy.refused >= 1
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0)  # another replica: the lease looks live for 30 s
    started = time.monotonic()
    again = await a.lock(upload.id, 0)
    assert time.monotonic() - started < 5.0  # not the 30 s of the lease
    await stream(again, data)
    assert (await again.commit()).is_complete
    await again.release()
    assert await read_all(b, await b.get(upload.id)) == data
