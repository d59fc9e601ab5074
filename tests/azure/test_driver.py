"""The Azure driver at the contract level, against Azurite over real HTTP.

Two ``AzureStore`` instances on one container stand for two replicas.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.plugins.object_stores import without_index
from tests.plugins.stores import new_upload, read_all, started_stores, write
from tusd_py.protocol.errors import (
    MismatchedOffset,
    NotFound,
    ServiceUnavailable,
    StorageError,
    UploadBusy,
    UploadExists,
)
from tusd_py.storage.azure.sizing import block_size_for
from tusd_py.storage.azure.store import AzureStore
from tusd_py.storage.base import Upload
from tusd_py.storage.ids import new_upload_id

MIB = 1 << 20
KIB = 1 << 10
PREFIX = "up/"

StoreFactory = Callable[..., Awaitable[AzureStore]]


@pytest.fixture
async def make_store(azurite_connection_string: str,
                     azure_container: str) -> AsyncIterator[StoreFactory]:
    async with started_stores() as start:
        async def factory(**kwargs: Any) -> AzureStore:
            options: dict[str, Any] = {"prefix": PREFIX, "part_size": 256 * KIB,
                                       "connection_string": azurite_connection_string, **kwargs}
            return await start(AzureStore(options.pop("container", azure_container), **options))

        yield factory


def names(container: Any, uncommitted: bool = False) -> set[str]:
    include = ["uncommittedblobs"] if uncommitted else None
    return without_index(b.name for b in container.list_blobs(include=include))


def block_sizes(container: Any, name: str) -> tuple[list[int], list[int]]:
    committed, uncommitted = container.get_blob_client(name).get_block_list("all")
    return [b.size for b in committed], [b.size for b in uncommitted]


def test_block_runs_keep_the_record_small():
    from tusd_py.storage.azure.errors import block_id, block_ids, block_runs

    a, b = "a" * 32, "b" * 32
    runs = block_runs([], a, [0, 1, 2])
    runs = block_runs(runs, a, [5, 6])  # after a rollback dropped 3 and 4
    runs = block_runs(runs, b, [0])
    assert runs == [["a" * 12, 0, 3], ["a" * 12, 5, 2], ["b" * 12, 0, 1]]
    assert block_ids(runs) == [block_id(a, n) for n in (0, 1, 2, 5, 6)] + [block_id(b, 0)]
    assert len({len(i) for i in block_ids(runs)}) == 1  # Azure wants equal lengths


def test_block_sizes_grow_when_blocks_would_run_out():
    assert block_size_for(0, base=8 * MIB, length=100 * MIB, done=0) == 8 * MIB
    # 1 TiB in 8 MiB blocks would need 131,072 blocks: blocks grow to fit 50,000
    size = block_size_for(0, base=8 * MIB, length=1 << 40, done=0)
    assert size * 49_999 >= 1 << 40 and size % MIB == 0
    assert block_size_for(10_000, base=8 * MIB, length=None, done=0) == 32 * MIB


async def test_blocks_across_patches_and_replicas_then_one_commit(make_store, azure_container_client):
    store = await make_store()
    data = os.urandom(700 * KIB + 123)
    meta = {"filename": "r\u00e9sum\u00e9.pdf".encode(), "filetype": b"application/pdf"}
    upload = await new_upload(store, len(data), metadata=meta)
    name = PREFIX + upload.id
    info = name + ".info"

    # 300 KiB: one full block (256 KiB) and a short one (44 KiB), both uncommitted
    up = await write(store, upload.id, data[:300 * KIB])
    assert up.offset == 300 * KIB
    assert names(azure_container_client) == {info}  # no committed blob yet
    assert block_sizes(azure_container_client, name) == ([], [256 * KIB, 44 * KIB])
    assert (await store.get(upload.id)).offset == 300 * KIB  # HEAD: one GET of .info

    # a fresh "replica" goes on from the record alone
    other = await make_store()
    up = await write(other, upload.id, data[300 * KIB:600 * KIB])
    assert up.offset == 600 * KIB
    assert block_sizes(azure_container_client, name)[1] == [256 * KIB, 44 * KIB, 256 * KIB, 44 * KIB]
    state, _ = await store.read_record(upload.id)
    assert [run[1:] for run in state["blocks"]] == [[0, 2], [0, 2]]  # one run per PATCH

    up = await write(store, upload.id, data[600 * KIB:])
    assert up.is_complete and up.offset == len(data)
    committed, uncommitted = block_sizes(azure_container_client, name)
    assert sum(committed) == len(data) and uncommitted == []
    assert names(azure_container_client, uncommitted=True) == {info, name}
    props = azure_container_client.get_blob_client(name).get_blob_properties()
    assert props.content_settings.content_type == "application/pdf"
    assert props.content_settings.content_disposition == (
        "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf")
    assert props.metadata["tus_id"] == upload.id
    assert props.metadata["tus_metadata"].startswith("filename ")
    assert await read_all(store, up) == data
    download = await store.download(up)
    assert download.etag == props.etag
    chunk = b"".join([c async for c in download.read(256 * KIB - 10, 20)])
    assert chunk == data[256 * KIB - 10:256 * KIB + 10]


async def test_rollback_publishes_nothing(make_store):
    store = await make_store()
    upload = await new_upload(store, 2 * MIB)
    await write(store, upload.id, b"a" * KIB)
    lock = await store.lock(upload.id, 1)
    await lock.write(b"b" * (600 * KIB))  # two full blocks were staged
    await lock.rollback()
    await lock.release()
    assert (await store.get(upload.id)).offset == KIB
    up = await write(store, upload.id, b"c" * (2 * MIB - KIB))
    assert await read_all(store, up) == b"a" * KIB + b"c" * (2 * MIB - KIB)


async def test_deferred_length_declared_at_the_end(make_store):
    store = await make_store()
    upload = await new_upload(store, None)
    await write(store, upload.id, b"x" * 1000)
    up = await write(store, upload.id, b"y" * 24, length=1024)
    assert up.is_complete and up.length == 1024
    assert await read_all(store, up) == b"x" * 1000 + b"y" * 24


async def test_lease_excludes_other_replicas_and_is_taken_over_when_expired(make_store):
    a = await make_store(lease_duration=1.0)
    b = await make_store(lease_duration=1.0)
    upload = await new_upload(a, 100)
    held = await a.lock(upload.id, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0.3)
    assert 0.25 <= loop.time() - started < 10  # it waited its 0.3 s, then gave up
    await asyncio.sleep(1.2)  # the renewal keeps a live holder's lease past its 1 s
    with pytest.raises(UploadBusy):
        await b.lock(upload.id, 0)

    # The holder stalls (hung process, partition): it stops renewing; its lease expires.
    # (Private: nothing public stops one lock's renewal while its process goes on; the
    # process-level case, a replica killed mid-PATCH, is tests/azure/test_replicas.py.)
    held._renewer.cancel()
    await held.write(b"x" * 10)
    taken = await b.lock(upload.id, 3)
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


async def test_stale_writer_blocks_are_never_committed(make_store, azure_container_client):
    """A writer that lost its lease keeps staging blocks: they carry its token, so the
    new holder's block list can never pick them up."""
    a = await make_store(lease_duration=1.0)
    b = await make_store(lease_duration=1.0)
    upload = await new_upload(a, 512 * KIB)
    stale = await a.lock(upload.id, 0)
    stale._renewer.cancel()  # private: a stalled holder (see above)
    await asyncio.sleep(1.1)
    taken = await b.lock(upload.id, 0)
    await taken.write(b"n" * (256 * KIB))
    await taken.parts.collect()
    stale.lost = False
    stale.record["lease"]["until"] = time.time() + 60  # it still believes in its lease
    await stale.write(b"o" * (256 * KIB))  # stages a full block with the same number
    await stale.parts.collect()
    await taken.write(b"n" * (256 * KIB))
    up = await taken.commit()
    await taken.release()
    assert up.is_complete
    assert await read_all(b, up) == b"n" * (512 * KIB)
    with pytest.raises((MismatchedOffset, UploadBusy)):
        await stale.commit()
    await stale.release()


async def test_create_twice_is_upload_exists_and_missing_is_not_found(make_store):
    store = await make_store()
    upload = await new_upload(store, 10)
    with pytest.raises(UploadExists):
        await store.create(upload)
    with pytest.raises(NotFound):
        await store.lock(new_upload_id(), 0)
    assert await store.get(new_upload_id()) is None


async def test_terminate_deletes_record_blob_and_uncommitted_blocks(make_store, azure_container_client):
    store = await make_store()
    upload = await new_upload(store, 2 * MIB)
    await write(store, upload.id, os.urandom(300 * KIB))
    assert names(azure_container_client, uncommitted=True) == {PREFIX + upload.id + ".info",
                                                                PREFIX + upload.id}
    lock = await store.lock(upload.id, 1)
    await store.terminate(upload.id)
    await lock.release()
    assert names(azure_container_client, uncommitted=True) == set()
    assert await store.get(upload.id) is None


async def test_expired_lists_only_expired_records(make_store):
    store = await make_store()
    now = time.time()
    old = await new_upload(store, 10, expires_at=now - 5)
    await new_upload(store, 10, expires_at=now + 3600)
    await new_upload(store, 10)
    assert await store.expired(now) == [old.id]
    reads = 0
    read_record = store.read_record

    async def counting(upload_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await read_record(upload_id)

    store.read_record = counting  # type: ignore[method-assign]
    assert await store.expired(now) == [old.id]
    assert reads == 1  # the due upload's record only: the index lists no other
    await write(store, old.id, b"x")  # commit without expires_at: never expires now
    assert await store.expired(now) == []


async def test_sweep_extra_deletes_blobs_without_record(make_store, azure_container_client):
    store = await make_store(lease_duration=1.0)
    kept = await new_upload(store, 2 * MIB)
    await write(store, kept.id, b"k" * (300 * KIB))
    orphan = await new_upload(store, 2 * MIB)
    await write(store, orphan.id, b"o" * (300 * KIB))
    azure_container_client.get_blob_client(PREFIX + orphan.id + ".info").delete_blob()
    assert await store.sweep_extra(time.time()) == 1
    assert names(azure_container_client, uncommitted=True) == {PREFIX + kept.id + ".info",
                                                                PREFIX + kept.id}


async def test_zero_length_upload_has_an_empty_blob(make_store, azure_container_client):
    store = await make_store()
    upload = await store.create(Upload(id=new_upload_id(), length=0, created_at=time.time(),
                                       completed_at=time.time(), metadata={"filetype": b"text/plain"}))
    assert await read_all(store, upload) == b""
    assert (await store.download(upload)).size == 0
    props = azure_container_client.get_blob_client(PREFIX + upload.id).get_blob_properties()
    assert props.size == 0 and props.content_settings.content_type == "text/plain"


async def test_writer_dying_during_completion_is_finished_by_the_next_reader(make_store):
    """The holder published 'completing' and died before (or after) Put Block List."""
    a = await make_store(lease_duration=1.0)
    b = await make_store(lease_duration=1.0)
    for commits_first in (False, True):
        data = os.urandom(300 * KIB)
        upload = await new_upload(a, len(data))
        lock = await a.lock(upload.id, 1)
        await lock.write(data)
        lock.finish_completion = _noop  # type: ignore[method-assign]
        await lock.commit()
        if commits_first:  # it got as far as Put Block List
            await AzureLockProbe.commit_blocks(lock)
        # The process dies here (private: nothing public stops a lock half-way through
        # its completion; killing a daemon there cannot be timed from outside).
        lock._renewer.cancel()
        a._held.pop(upload.id)
        seen = await b.get(upload.id)
        assert seen is not None and seen.offset == len(data) and not seen.is_complete
        await asyncio.sleep(1.1)  # the dead holder's lease runs out
        seen = await b.get(upload.id)  # HEAD on another replica finishes the job
        assert seen is not None and seen.is_complete
        assert await read_all(b, seen) == data


async def _noop() -> None:
    return None


class AzureLockProbe:
    @staticmethod
    async def commit_blocks(lock: Any) -> None:
        from tusd_py.storage.azure.errors import block_ids, block_list

        await lock.store.blob(lock.upload.id).commit_block_list(
            block_list(block_ids(lock.record["blocks"])))


async def test_concatenation_copies_server_side(make_store, azure_container_client):
    store = await make_store()
    parts = [os.urandom(300 * KIB), b"", os.urandom(10), os.urandom(KIB)]
    partials = []
    for data in parts:
        p = await new_upload(store, len(data), is_partial=True,
                             **({"completed_at": time.time()} if not data else {}))
        if data:
            p = await write(store, p.id, data)
        partials.append(p)
    final = await new_upload(store, None, final_of=tuple(p.id for p in partials),
                             metadata={"filetype": b"image/png"})
    lock = await store.lock(final.id, 1)
    try:
        up = await store.concatenate(final, partials)
    finally:
        await lock.release()
    assert up.is_complete and up.offset == sum(map(len, parts))
    assert store.copy_from_url  # Azurite 3.37 has Put Block From URL
    assert await read_all(store, up) == b"".join(parts)
    committed, _ = block_sizes(azure_container_client, PREFIX + final.id)
    assert committed == [300 * KIB, 10, KIB]  # one block per partial range, none through us
    props = azure_container_client.get_blob_client(PREFIX + final.id).get_blob_properties()
    assert props.content_settings.content_type == "image/png"


async def test_concatenation_falls_back_to_copy_through_the_daemon(make_store):
    store = await make_store(part_size=128 * KIB)
    store.copy_from_url = False  # as after an APINotImplemented answer
    parts = [os.urandom(300 * KIB), os.urandom(5)]
    partials = [await write(store, (await new_upload(store, len(d), is_partial=True)).id, d)
                for d in parts]
    final = await new_upload(store, None, final_of=tuple(p.id for p in partials))
    lock = await store.lock(final.id, 1)
    try:
        up = await store.concatenate(final, partials)
    finally:
        await lock.release()
    assert await read_all(store, up) == b"".join(parts)


async def test_unreachable_service_is_503_and_missing_container_500(make_store, azure_container):
    store = await make_store(container="no-such-container")
    with pytest.raises(StorageError, match="container does not exist"):
        await store.ping()
    dead = AzureStore("c", connection_string=(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        + base64.b64encode(b"k" * 32).decode() + ";BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"))
    dead._client_options = lambda: {"retry_total": 0}  # type: ignore[method-assign]
    await dead.start()
    try:
        with pytest.raises(ServiceUnavailable, match="unreachable") as info:
            await dead.ping()
        assert info.value.status == 503
    finally:
        await dead.stop()


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


@pytest.fixture
async def no_copy_from_url_proxy(azurite_port: int) -> AsyncIterator[int]:
    """A real HTTP reverse proxy in front of Azurite that answers Put Block From URL
    with 501 APINotImplemented, as Azurite before 3.37 and some Azure Stack builds do."""
    import aiohttp
    from aiohttp import web
    from yarl import URL

    upstream = f"http://127.0.0.1:{azurite_port}"
    session = aiohttp.ClientSession(auto_decompress=False)
    refused: list[str] = []
    hop = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.query.get("comp") == "block" and "x-ms-copy-source" in request.headers:
            refused.append(request.path)
            return web.Response(status=501, content_type="application/xml",
                                headers={"x-ms-error-code": "APINotImplemented"},
                                text='<?xml version="1.0" encoding="utf-8"?><Error><Code>'
                                     "APINotImplemented</Code><Message>not here</Message></Error>")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with session.request(request.method, URL(upstream + request.raw_path, encoded=True),
                                   headers=headers, data=await request.read(),
                                   skip_auto_headers=["Content-Type", "Accept-Encoding"],
                                   allow_redirects=False) as r:
            body = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in hop}
            return web.Response(status=r.status, body=body, headers=out)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        assert refused, "the proxy never saw a Put Block From URL"
        await runner.cleanup()
        await session.close()


async def test_concatenation_falls_back_when_service_answers_api_not_implemented(
        make_store, no_copy_from_url_proxy):
    from tests.plugins.azure import connection_string

    store = await make_store(connection_string=connection_string(no_copy_from_url_proxy),
                             part_size=128 * KIB)
    parts = [os.urandom(300 * KIB), os.urandom(5)]
    partials = [await write(store, (await new_upload(store, len(d), is_partial=True)).id, d)
                for d in parts]
    final = await new_upload(store, None, final_of=tuple(p.id for p in partials))
    lock = await store.lock(final.id, 1)
    try:
        up = await store.concatenate(final, partials)
    finally:
        await lock.release()
    assert not store.copy_from_url  # learned once, for the rest of the process
    assert await read_all(store, up) == b"".join(parts)


async def test_account_url_with_a_sas(make_store, azurite_port, azure_container_client):
    """``account_url`` carrying an account SAS instead of a connection string.
    Concatenation signs its source URLs with that same SAS; Azurite 3.37 answers Put
    Block From URL under an account SAS with a 500 (its account-SAS table lacks the
    operation), so this also covers the fallback after a refused server-side copy."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from tests.plugins.azure import DEV_ACCOUNT, DEV_KEY

    sas = generate_account_sas(
        DEV_ACCOUNT, DEV_KEY, resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True,
                                         add=True),
        expiry=datetime.now(UTC) + timedelta(hours=1))
    store = await make_store(connection_string=None,
                             account_url=f"http://127.0.0.1:{azurite_port}/{DEV_ACCOUNT}?{sas}")
    await store.ping()
    parts = [os.urandom(100 * KIB), os.urandom(7)]
    partials = [await write(store, (await new_upload(store, len(d), is_partial=True)).id, d)
                for d in parts]
    final = await new_upload(store, None, final_of=tuple(p.id for p in partials))
    lock = await store.lock(final.id, 1)
    try:
        up = await store.concatenate(final, partials)
    finally:
        await lock.release()
    assert store.copy_from_url  # a refusal (not a 501) is not remembered
    assert await read_all(store, up) == b"".join(parts)
    committed, _ = block_sizes(azure_container_client, PREFIX + final.id)
    assert committed == [100 * KIB, 7]
