"""S3 failures over real HTTP: a small reverse proxy in front of moto (``s3_proxy``)
answers some requests with 503 SlowDown, as S3 does when it throttles, or loses answers."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.http.helpers import TUS, create, download, head, patch
from tests.plugins.s3 import client_through_proxy, is_conditional_record_write, is_part_upload
from tests.plugins.stores import new_upload, read_all
from tusd_py.protocol.errors import MismatchedOffset, UploadBusy

MIB = 1 << 20


async def client_for(aiohttp_client: Any, config: dict[str, Any], endpoint: str,
                     retry_attempts: int = 3) -> Any:
    return await client_through_proxy(aiohttp_client, config, endpoint,
                                      store_options={"retry_attempts": retry_attempts})


async def test_throttled_part_uploads_are_retried(aiohttp_client, s3_storage_config, s3_proxy):
    throttle, endpoint = s3_proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint)
    data = os.urandom(6 * MIB)
    path = await create(client, len(data))
    throttle.rule, throttle.failures = is_part_upload, 2
    r = await patch(client, path, 0, data)
    assert r.status == 204, await r.text()
    assert throttle.refused == 2  # botocore backed off and retried each time
    assert await download(client, path) == data


async def test_persistent_throttling_is_503_with_a_clear_message_then_resumes(
        aiohttp_client, s3_storage_config, s3_proxy):
    throttle, endpoint = s3_proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint)
    data = os.urandom(6 * MIB)
    path = await create(client, len(data))
    throttle.rule, throttle.failures = is_part_upload, -1
    r = await patch(client, path, 0, data)
    assert r.status == 503
    text = await r.text()
    assert "throttling" in text and "SlowDown" in text, text
    assert throttle.refused >= 3  # retry_attempts, each backed off
    assert (await head(client, path)).headers["Upload-Offset"] == "0"  # nothing published
    throttle.failures = 0
    r = await patch(client, path, 0, data)
    assert r.status == 204, await r.text()
    assert await download(client, path) == data


async def test_readyz_503_while_s3_answers_5xx(aiohttp_client, s3_storage_config, s3_proxy):
    throttle, endpoint = s3_proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint, retry_attempts=1)
    assert (await client.get("/readyz")).status == 200
    throttle.rule, throttle.failures = (lambda request: True), -1
    r = await client.get("/readyz")
    assert r.status == 503
    throttle.failures = 0
    assert (await client.get("/readyz")).status == 200
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert r.status == 201


async def test_lost_responses_to_conditional_writes_are_recognised(
        aiohttp_client, s3_storage_config, s3_proxy):
    """Every conditional write of a record succeeds but its answer is lost: botocore's
    retry then fails its If-Match (the ETag moved). The lease holder token and the
    per-write nonce show the write was ours, so nothing is refused or lost."""
    throttle, endpoint = s3_proxy
    client = await client_for(aiohttp_client, s3_storage_config, endpoint)
    data = os.urandom(7 * MIB)
    path = await create(client, len(data))
    throttle.lose_rule, throttle.lose = is_conditional_record_write, 1000
    r = await patch(client, path, 0, data[:6 * MIB])  # lease, MPU record, commit, release
    assert r.status == 204, await r.text()
    r = await patch(client, path, 6 * MIB, data[6 * MIB:])  # + completing, completed
    assert r.status == 204, await r.text()
    assert throttle.lost >= 8
    throttle.lose = 0
    assert await download(client, path) == data
    r = await head(client, path)
    assert r.headers["Upload-Offset"] == str(len(data))
    # the lease was released too: another request gets the upload at once
    r = await client.delete(path, headers=TUS)
    assert r.status == 204


async def test_a_lost_answer_never_makes_another_writers_record_look_ours(s3_proxy, make_store):
    """A's conditional write of the record lands but its answer is lost, and botocore's
    retry is held back until B has taken the upload over (A's lease ran out meanwhile).
    The retry fails its If-Match; the record A then reads is B's, written over A's: it
    must not pass for A's own landed write (B's writes carry their own nonce), or A would
    go on writing over B's ETag."""
    proxy, endpoint = s3_proxy
    a = await make_store(endpoint_url=endpoint, lease_duration=3.0)
    b = await make_store(lease_duration=3.0)
    upload = await new_upload(a, 100)
    held = await a.lock(upload.id, 1)
    await held.write(b"a" * 10)

    writes = 0

    def hold_the_retry(request: Any) -> float:
        nonlocal writes
        if not is_conditional_record_write(request):
            return 0.0
        writes += 1
        return 30.0 if writes == 2 else 0.0

    # The next record write of A (its commit, or a renewal) lands, its answer is lost;
    # the retry is held back until B took over.
    proxy.lose_rule, proxy.lose, proxy.delay = is_conditional_record_write, 1, hold_the_retry
    committing = asyncio.create_task(held.commit())
    while not proxy.lost:
        await asyncio.sleep(0.01)
    taken = await b.lock(upload.id, 8)  # flags the upload, then takes it over
    proxy.let_go()  # A's retry reaches S3 now, before B writes the record again
    with pytest.raises((UploadBusy, MismatchedOffset)):
        await committing
    assert proxy.lost == 1 and writes >= 2
    await held.release()  # must not give B's lease away
    done = taken.upload.offset  # 10 if A's commit was the write that landed, else 0
    await taken.write(b"b" * (100 - done))
    up = await taken.commit()
    await taken.release()
    assert up.is_complete
    assert await read_all(b, up) == b"a" * done + b"b" * (100 - done)
