"""Two daemon processes on one Azure container behave like one server (Azurite over
real HTTP). The bodies are shared with the other object stores
(``tests.plugins.replicas``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

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

PIECE = 128 * 1024


@pytest.fixture
def replicas(daemon_factory, azure_daemon_env) -> tuple[Daemon, Daemon]:  # type: ignore[no-untyped-def]
    env = {**azure_daemon_env, "TUSD_STORAGE__LEASE_DURATION": "2s"}
    return daemon_factory(env=env), daemon_factory(env=env)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with session() as s:
        yield s


def blob_names(container: Any) -> set[str]:
    return without_index(b.name for b in container.list_blobs(include=["uncommittedblobs"]))


async def test_concurrent_patches_across_replicas_exactly_one_wins(replicas, http):
    await concurrent_patches_exactly_one_wins(http, *replicas, size=3 * MIB + 7, piece=PIECE)


async def test_cooperating_clients_on_two_replicas_never_double_write(replicas, http):
    """Six resuming clients (three per replica) push one upload: every byte is
    acknowledged exactly once and the blob is intact."""
    await cooperating_clients(http, *replicas, os.urandom(5 * MIB + 5), chunk=768 * 1024,
                              piece=PIECE)


async def test_kill_9_mid_upload_then_resume_on_the_other_replica(
        replicas, http, azure_container_client, azure_storage_config):
    a, b = replicas
    data = os.urandom(5 * MIB)
    path = await create(http, a, len(data))
    name = azure_storage_config["prefix"] + path.rsplit("/", 1)[1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    async with http.patch(a.root + path, data=data[:MIB + 100], headers=headers) as r:
        assert r.status == 204  # committed: a 1 MiB block + a 100-byte block

    # Second PATCH to A: announce 3 MiB, send 2 MiB (A stages blocks), then A dies.
    _reader, writer = await raw_patch(a, path, MIB + 100, 3 * MIB,
                                      data[MIB + 100:3 * MIB + 100])
    blob = azure_container_client.get_blob_client(name)
    deadline = time.monotonic() + 15
    while len(blob.get_block_list("uncommitted")[1]) < 3:
        assert time.monotonic() < deadline, "daemon A never staged a block of the 2nd PATCH"
        await asyncio.sleep(0.05)
    a.kill()  # SIGKILL: no commit, no lease release
    writer.close()

    # B sees only what A acknowledged; the blocks A staged are not published.
    await resume_after_kill(http, b, path, data, MIB + 100)
    committed, uncommitted = blob.get_block_list("all")
    assert sum(block.size for block in committed) == len(data) and uncommitted == []
    assert blob_names(azure_container_client) == {name, name + ".info"}


async def test_stalled_writer_on_one_replica_yields_to_a_client_on_the_other(replicas, http):
    """The client's connection to A went silent (no FIN); it reconnects to B. B flags the
    upload in .info, A's request yields (it was idle) and commits what it had: B answers
    within lock_wait instead of 423 until A's 30 s idle timeout."""
    await stalled_writer_yields(http, *replicas)
