"""Two daemon processes on one bucket behave like one server (fake-gcs-server over real
HTTP). The bodies are shared with the other object stores (``tests.plugins.replicas``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.plugins.daemon import Daemon
from tests.plugins.gcs import PART_SIZE
from tests.plugins.replicas import (
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

PIECE = 64 * 1024


@pytest.fixture
def replicas(daemon_factory, gcs_daemon_env) -> tuple[Daemon, Daemon]:  # type: ignore[no-untyped-def]
    env = {**gcs_daemon_env, "TUSD_STORAGE__LEASE_DURATION": "2s"}
    return daemon_factory(env=env), daemon_factory(env=env)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with session() as s:
        yield s


async def test_concurrent_patches_across_replicas_exactly_one_wins(replicas, http):
    await concurrent_patches_exactly_one_wins(http, *replicas, size=3 * PART_SIZE + 1000,
                                              piece=PIECE)


async def test_cooperating_clients_on_two_replicas_never_double_write(replicas, http, gcs_objects,
                                                                      gcs_bucket):
    """Six resuming clients (three per replica) push one upload: every byte is
    acknowledged exactly once and the object is intact."""
    path = await cooperating_clients(http, *replicas, os.urandom(7 * PART_SIZE + 5),
                                     chunk=300 * 1024, piece=PIECE)
    key = path.rsplit("/", 1)[1]
    assert {n for n in gcs_objects(gcs_bucket) if key in n} == {f"up/{key}", f"up/{key}.info"}


async def test_kill_9_mid_upload_then_resume_on_the_other_replica(replicas, http, gcs_objects,
                                                                  gcs_bucket, gcs_storage_config):
    a, b = replicas
    data = os.urandom(10 * PART_SIZE)
    path = await create(http, a, len(data))
    key = gcs_storage_config["prefix"] + path.rsplit("/", 1)[1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    async with http.patch(a.root + path, data=data[:3 * PART_SIZE + 100], headers=headers) as r:
        assert r.status == 204  # committed: 3 full parts + a 100-byte part

    def parts() -> set[str]:
        return {n for n in gcs_objects(gcs_bucket) if n.startswith(key + ".p")}

    published = parts()
    assert len(published) == 4
    # Second PATCH to A: announce the rest, send two more parts' worth, then A dies.
    start = 3 * PART_SIZE + 100
    _reader, writer = await raw_patch(a, path, start, len(data) - start,
                                      data[start:start + 2 * PART_SIZE + 10])
    deadline = time.monotonic() + 15
    while len(parts() - published) < 1:
        assert time.monotonic() < deadline, "daemon A never uploaded a part"
        await asyncio.sleep(0.05)
    a.kill()  # SIGKILL: no commit, no lease release
    writer.close()

    # B sees only what A acknowledged; A's staged parts are not published.
    await resume_after_kill(http, b, path, data, start)
    # A's unpublished part is left for the sweeper (B runs it every second; it waits
    # lease_duration before taking anything), and then only the upload remains.
    deadline = time.monotonic() + 15
    while set(gcs_objects(gcs_bucket)) != {key, key + ".info"}:
        assert time.monotonic() < deadline, gcs_objects(gcs_bucket)
        await asyncio.sleep(0.2)


async def test_stalled_writer_on_one_replica_yields_to_a_client_on_the_other(replicas, http):
    """The client's connection to A went silent (no FIN); it reconnects to B. B flags the
    upload in .info, A's request yields (it was idle) and commits what it had: B answers
    within lock_wait instead of 423 until A's 30 s idle timeout."""
    await stalled_writer_yields(http, *replicas)
