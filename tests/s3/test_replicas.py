"""Two daemon processes on one bucket behave like one server (moto over real HTTP).
The bodies are shared with the other object stores (``tests.plugins.replicas``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.plugins.daemon import Daemon
from tests.plugins.object_stores import without_index
from tests.plugins.replicas import (
    MIB,
    OCTET,
    TUS,
    concurrent_patches_exactly_one_wins,
    cooperating_clients,
    create,
    raw_patch,
    resume_after_kill,
    session,
    stalled_writer_yields,
)

PIECE = 256 * 1024


@pytest.fixture
def replicas(daemon_factory, s3_daemon_env) -> tuple[Daemon, Daemon]:  # type: ignore[no-untyped-def]
    env = {**s3_daemon_env, "TUSD_STORAGE__LEASE_DURATION": "2s"}
    return daemon_factory(env=env), daemon_factory(env=env)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with session() as s:
        yield s


async def test_concurrent_patches_across_replicas_exactly_one_wins(replicas, http):
    await concurrent_patches_exactly_one_wins(http, *replicas, size=6 * MIB, piece=PIECE)


async def test_cooperating_clients_on_two_replicas_never_double_write(replicas, http, s3_client,
                                                                      s3_bucket):
    """Six resuming clients (three per replica) push one upload: every byte is
    acknowledged exactly once and the object is intact."""
    await cooperating_clients(http, *replicas, os.urandom(11 * MIB + 5), chunk=1536 * 1024,
                              piece=PIECE)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


async def test_kill_9_mid_upload_then_resume_on_the_other_replica(replicas, http, s3_client,
                                                                  s3_bucket, s3_storage_config):
    a, b = replicas
    data = os.urandom(14 * MIB)
    path = await create(http, a, len(data))
    key = s3_storage_config["prefix"] + path.rsplit("/", 1)[1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    async with http.patch(a.root + path, data=data[:6 * MIB], headers=headers) as r:
        assert r.status == 204  # committed: part 1 (5 MiB) + a 1 MiB tail object

    # Second PATCH to A: announce 8 MiB, send 5 MiB (A uploads part 2), then A dies.
    _reader, writer = await raw_patch(a, path, 6 * MIB, 8 * MIB, data[6 * MIB:11 * MIB])
    [mpu] = s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    deadline = time.monotonic() + 15
    while len(s3_client.list_parts(Bucket=s3_bucket, Key=key,
                                   UploadId=mpu["UploadId"]).get("Parts", [])) < 2:
        assert time.monotonic() < deadline, "daemon A never uploaded part 2"
        await asyncio.sleep(0.05)
    a.kill()  # SIGKILL: no commit, no lease release
    writer.close()

    # B sees only what A acknowledged; the staged part 2 is not published.
    await resume_after_kill(http, b, path, data, 6 * MIB)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    names = without_index(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert names == {key, key + ".info"}


async def test_stalled_writer_on_one_replica_yields_to_a_client_on_the_other(replicas, http):
    """The client's connection to A went silent (no FIN); it reconnects through the load
    balancer to B. B flags the upload, A's request yields (it was idle) and commits what
    it had: B answers within lock_wait instead of 423 until A's 30 s idle timeout."""
    await stalled_writer_yields(http, *replicas)
