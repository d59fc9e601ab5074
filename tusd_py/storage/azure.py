"""Azure Blob Storage driver (azure-storage-blob, aio): stateless replicas over one container.

Blobs, for an upload ``id`` under ``prefix``:

* ``{prefix}{id}.info``: the record (JSON, see ``azure_info``): tus fields, the ids of
  the blocks published so far, write lease, revision. The only source of truth; HEAD is
  one GET of it.
* ``{prefix}{id}``: a block blob. While the upload is written its bytes are *uncommitted*
  blocks of this blob (Put Block); completion commits them in order (Put Block List)
  with the blob's Content-Type/Content-Disposition (from ``filetype``/``filename``) and
  metadata. No byte is ever copied twice.

Writes: ``lock`` takes a lease by compare-and-set of ``.info`` (``If-Match`` on its
ETag); a lease whose ``until`` has passed (its holder died) is taken over. While a
PATCH streams, a task renews the lease every ``lease_duration / 3``. Body bytes are
buffered up to one block (``part_size``) and each full block is staged while the body
keeps streaming (memory per PATCH: about two blocks, one filling, one in flight).
``commit`` stages the bytes that do not fill a block as a smaller block, then publishes
the new block ids and offset in one conditional write of the record: an acknowledged
offset always has its bytes behind it, on every replica, and a writer whose lease was
taken over cannot publish (its ETag is stale). Block ids embed the writer's lease token,
so a stale writer's blocks can never be committed by anybody.

Completion is crash-safe: the record is first published with every block and
``completing``; then Put Block List runs with ``If-None-Match: *``; then the record is
marked complete. A process that dies between the steps leaves ``completing`` behind,
and the next lock (or HEAD) on any replica finishes the job with the same block list.

Limits: a blob holds at most 50,000 blocks; each PATCH adds ``ceil(bytes / block)`` + at
most one short block. With a known length the block size grows past ``part_size`` when
the upload would not fit otherwise. Azure discards uncommitted blocks of a blob that saw
no Put Block for a week: keep ``expiration.after`` below that.

Clocks: lease expiry compares wall clocks of replicas; keep them NTP-synchronised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry

from ..config import ConfigError
from ..protocol.errors import MismatchedOffset, NotFound, SizeExceeded, StorageError, UploadBusy, UploadExists
from .azure_info import (
    CONFLICT_CODES,
    MAX_BLOCK_SIZE,
    MAX_BLOCKS,
    NOT_FOUND_CODES,
    NOT_IMPLEMENTED_CODES,
    Conflict,
    azure_errors,
    blob_headers,
    block_id,
    block_list,
    decode_upload,
    dump,
    encode_upload,
    error_code,
    load,
)
from .base import Capability, Download, Store, Upload, UploadLock
from .ids import check_upload_id, is_upload_id

log = logging.getLogger(__name__)

MIB = 1 << 20
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
_POLL_MIN, _POLL_MAX = 0.05, 0.5  # lock polling backoff while another replica holds it
#: Concatenation copies each partial in server-side ranges of at most this (Put Block
#: From URL takes 100 MiB on every service version, 4000 MiB on recent ones).
_COPY_RANGE = 100 * MIB
_DOWNLOAD_CHUNK = 2 * MIB


def block_size_for(used: int, *, base: int, length: int | None, done: int) -> int:
    """The size of the next full block, given ``used`` blocks holding ``done`` bytes.

    Known length: ``max(base, ceil(bytes still to come / blocks left))`` (whole MiB
    when above ``base``),
    so the 50,000 blocks never run out. Deferred length: ``base``, doubling every 4,545
    blocks (eleven tiers reach Azure's 190.7 TiB from any base)."""
    left = MAX_BLOCKS - used - 1  # one block kept for a short last one
    if left <= 0:
        raise SizeExceeded("upload has too many blocks for one Azure blob (50,000)")
    if length is not None:
        need = -(-max(length - done, 0) // left)
        size = base if need <= base else -(-need // MIB) * MIB
    else:
        size = base << min(used // (MAX_BLOCKS // 11), 12)
    return min(size, MAX_BLOCK_SIZE)


class AzureStore(Store):
    name = "azure"
    capabilities = frozenset({
        Capability.TERMINATE, Capability.CONCATENATE, Capability.CONCATENATE_UNFINISHED,
        Capability.DEFER_LENGTH, Capability.EXPIRE, Capability.DOWNLOAD,
    })

    def __init__(self, container: str | None, *, connection_string: str | None = None,
                 account_url: str | None = None, credential: Any = None, prefix: str = "",
                 part_size: int = 8 << 20, lease_duration: float = 10.0,
                 env: Mapping[str, str] | None = None) -> None:
        if not container:
            raise ConfigError("storage.container: required for the azure driver")
        if part_size < 64 << 10 or part_size > MAX_BLOCK_SIZE:
            raise ConfigError("storage.part_size: must be between 64KiB and 4000MiB "
                              "for the azure driver")
        if lease_duration < 1:
            raise ConfigError("storage.lease_duration: must be at least 1s")
        if not connection_string and not account_url:
            connection_string = (os.environ if env is None else env).get(CONNECTION_STRING_ENV)
        if not connection_string and not account_url:
            raise ConfigError("storage.connection_string or storage.account_url: one is "
                              f"required for the azure driver (or set {CONNECTION_STRING_ENV})")
        self.container = container
        self.prefix = prefix
        self.part_size = part_size
        self.lease_duration = lease_duration
        self._connection_string = connection_string
        self._account_url = account_url
        self._credential = credential
        self._owned_credential: Any = None
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        #: Locks this process holds, so terminate/concatenate can write under them.
        self._held: dict[str, AzureLock] = {}
        #: id -> (ETag of .info, expires_at), so a sweep GETs only records that changed.
        self._expiry_cache: dict[str, tuple[str, float | None]] = {}
        #: Blob name -> when a sweep first saw it without a record (``sweep_extra``).
        self._orphans: dict[str, float] = {}
        #: False once the service answered Put Block From URL with "not implemented".
        self.copy_from_url = True

    # -- lifecycle --------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            # The SDK retries 408/429/5xx and connection errors; its default first
            # backoff (15 s) is longer than a client's PATCH timeout.
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=4,
                                             random_jitter_range=1),
            "connection_timeout": 10, "read_timeout": 60,
            "max_single_get_size": _DOWNLOAD_CHUNK, "max_chunk_get_size": _DOWNLOAD_CHUNK,
        }

    async def start(self) -> None:
        options = self._client_options()
        if self._connection_string:
            try:
                self._service = BlobServiceClient.from_connection_string(
                    self._connection_string, **options)
            except ValueError as exc:
                raise ConfigError(f"storage.connection_string: {exc}") from None
        else:
            credential = self._credential
            if credential is None and "sig=" not in (self._account_url or ""):
                try:
                    from azure.identity.aio import DefaultAzureCredential
                except ImportError:
                    raise ConfigError("storage.account_url without a SAS needs azure-identity "
                                      "(pip install azure-identity) or a connection_string") from None
                credential = self._owned_credential = DefaultAzureCredential()
            self._service = BlobServiceClient(self._account_url or "", credential=credential, **options)
        self._container = self._service.get_container_client(self.container)
        try:
            await self.ping()
        except Exception as exc:  # start anyway; /readyz reports it until it works
            log.warning("Azure container %s is not reachable yet: %s", self.container, exc)

    async def stop(self) -> None:
        for lock in list(self._held.values()):
            await lock.release()
        if self._service is not None:
            await self._service.close()
            self._service = None
            self._container = None
        if self._owned_credential is not None:
            await self._owned_credential.close()
            self._owned_credential = None

    @property
    def client(self) -> ContainerClient:
        if self._container is None:
            raise StorageError("store is not started")
        return self._container

    async def ping(self) -> None:
        async with azure_errors(f"access to container {self.container}"):
            await self.client.get_container_properties()

    # -- names ----------------------------------------------------------------------

    def name_of(self, upload_id: str) -> str:
        return self.prefix + check_upload_id(upload_id)

    def blob(self, upload_id: str) -> BlobClient:
        return self.client.get_blob_client(self.name_of(upload_id))

    def info_blob(self, upload_id: str) -> BlobClient:
        return self.client.get_blob_client(self.name_of(upload_id) + ".info")

    def _location(self, upload_id: str) -> str:
        return f"azure://{self.container}/{self.name_of(upload_id)}"

    # -- the record ---------------------------------------------------------------

    async def read_info(self, upload_id: str) -> tuple[dict[str, Any], str] | None:
        """(record, ETag), or None if there is no such upload."""
        async with azure_errors("reading an upload record"):
            try:
                downloader = await self.info_blob(upload_id).download_blob()
                data = await downloader.readall()
            except Exception as exc:
                if error_code(exc)[0] in NOT_FOUND_CODES or error_code(exc)[1] == 404:
                    return None
                raise
        return load(data), str(downloader.properties.etag)

    async def write_info(self, upload_id: str, state: dict[str, Any], *, etag: str | None) -> str:
        """Conditional put of the record: ``If-Match: etag``, or ``If-None-Match: *`` when
        ``etag`` is None. Returns the new ETag; raises ``Conflict`` if the condition failed."""
        if etag is None:
            condition: dict[str, Any] = {"overwrite": False}
        else:
            condition = {"overwrite": True, "etag": etag,
                         "match_condition": MatchConditions.IfNotModified}
        async with azure_errors("writing an upload record"):
            try:
                r = await self.info_blob(upload_id).upload_blob(
                    dump(state), content_settings=ContentSettings(content_type="application/json"),
                    **condition)
            except Exception as exc:
                code, status = error_code(exc)
                if code in CONFLICT_CODES or status in (409, 412) or (
                        etag is not None and (code in NOT_FOUND_CODES or status == 404)):
                    raise Conflict(code or str(status)) from None
                raise
        return str(r["etag"])

    async def cas_info(self, upload_id: str, state: dict[str, Any], etag: str) -> str:
        """``write_info`` with ``If-Match`` that survives an ambiguous retry (the first
        attempt landed, its response was lost, the SDK's retry failed the condition):
        every write carries a fresh nonce ``w``, so the stored record shows whether it
        was ours."""
        state["w"] = uuid.uuid4().hex[:16]
        try:
            return await self.write_info(upload_id, state, etag=etag)
        except Conflict as exc:
            current = await self.read_info(upload_id)
            if current is not None and current[0].get("w") == state["w"]:
                return current[1]
            exc.current = current
            raise

    # -- Store ----------------------------------------------------------------------

    async def create(self, upload: Upload) -> Upload:
        state = encode_upload(upload)
        if upload.is_complete:  # zero-length upload: the (empty) blob exists at once
            state["blob_etag"] = await self.put_empty(upload)
        try:
            await self.write_info(upload.id, state, etag=None)
        except Conflict:
            raise UploadExists() from None
        return upload.copy(location=self._location(upload.id))

    async def put_empty(self, upload: Upload) -> str:
        settings, metadata = blob_headers(upload.metadata, upload.id)
        async with azure_errors("creating an empty blob"):
            r = await self.blob(upload.id).upload_blob(
                b"", overwrite=True, metadata=metadata, content_settings=settings)
        return str(r["etag"])

    async def get(self, upload_id: str) -> Upload | None:
        found = await self.read_info(upload_id)
        if found is None:
            return None
        if found[0].get("completing") and upload_id not in self._held:
            try:  # a writer died while completing it: finish the job now
                await (await self.lock(upload_id, 0)).release()
                found = await self.read_info(upload_id) or found
            except UploadBusy:
                pass
        return decode_upload(found[0], self._location(upload_id))

    async def lock(self, upload_id: str, wait: float) -> AzureLock:
        """Take the upload's lease: CAS of ``.info`` when free or expired, polling until
        ``wait`` while another request (any replica) holds a live one."""
        check_upload_id(upload_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        token = uuid.uuid4().hex
        delay = _POLL_MIN
        asked = False
        while True:
            found = await self.read_info(upload_id)
            if found is None:
                raise NotFound()
            state, etag = found
            lease = state.get("lease")
            now = time.time()
            if lease is not None and lease.get("holder") == token:  # our retried write landed
                return await self._locked(upload_id, state, etag, token)
            if lease is None or lease["until"] <= now:
                if lease is not None:
                    log.info("upload %s: taking over an expired lease", upload_id)
                new = dict(state, lease={"holder": token, "until": now + self.lease_duration},
                           wanted=None, rev=state["rev"] + 1)
                try:
                    etag = await self.write_info(upload_id, new, etag=etag)
                except Conflict:
                    continue  # somebody else changed it: look again
                return await self._locked(upload_id, new, etag, token)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UploadBusy()
            if not asked and remaining > _POLL_MIN:
                # Ask the live holder (another process or replica) to stop: a writer
                # whose client went silent then commits what it has and lets us in.
                asked = True
                with contextlib.suppress(Conflict):
                    await self.write_info(upload_id, dict(state, wanted={"by": token, "at": now}),
                                          etag=etag)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    async def _locked(self, upload_id: str, state: dict[str, Any], etag: str,
                      token: str) -> AzureLock:
        lock = AzureLock(self, state, etag, token)
        self._held[upload_id] = lock
        if state.get("completing"):
            try:
                await lock.finish_completion()
            except BaseException:
                await lock.release()
                raise
        return lock

    # -- optional capabilities ----------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        """Delete the record, then the blob (its uncommitted blocks go with it)."""
        lock = self._held.get(upload_id)
        if lock is not None:
            await lock.drain()
            lock.terminated = True
        async with azure_errors("terminating an upload"):
            for blob in (self.info_blob(upload_id), self.blob(upload_id)):
                try:
                    await blob.delete_blob()
                except Exception as exc:
                    if error_code(exc)[0] not in NOT_FOUND_CODES and error_code(exc)[1] != 404:
                        raise
        self._expiry_cache.pop(upload_id, None)

    def _read_sas_url(self, blob: BlobClient, delegation_key: Any) -> str | None:
        """The blob's URL with a short read-only SAS, or None if no key can sign one."""
        service = self._service
        assert service is not None
        account_key = getattr(service.credential, "account_key", None)
        expiry = datetime.now(UTC) + timedelta(hours=1)
        if account_key is None and delegation_key is None:
            # A SAS credential (connection string or account_url) rides on the URL;
            # the service refuses the copy if it does not grant read.
            return blob.url if "sig=" in blob.url else None
        sas = generate_blob_sas(
            service.account_name or "", self.container, blob.blob_name,
            account_key=account_key, user_delegation_key=delegation_key,
            permission=BlobSasPermissions(read=True), expiry=expiry,
            start=datetime.now(UTC) - timedelta(minutes=5))
        return f"{blob.url}?{sas}"

    async def _delegation_key(self) -> Any:
        """A user delegation key when the store signs in with Entra ID (no account key)."""
        service = self._service
        assert service is not None
        if getattr(service.credential, "account_key", None) is not None:
            return None
        if not hasattr(service.credential, "get_token"):
            return None
        try:
            now = datetime.now(UTC)
            return await service.get_user_delegation_key(now - timedelta(minutes=5),
                                                         now + timedelta(hours=1))
        except Exception as exc:
            log.info("no user delegation key (%s): concatenation copies through the daemon", exc)
            return None

    async def concatenate(self, final: Upload, partials: list[Upload]) -> Upload:
        """Server-side: Put Block From URL of each partial (ranges of at most 100 MiB),
        reading the partials through a short read-only SAS, then one Put Block List. If
        the service cannot copy from a URL (or no SAS can be signed), the ranges go
        through the daemon instead, at most ``part_size`` at a time."""
        lock = self._held.get(final.id)
        if lock is None:
            raise StorageError("concatenate needs the final upload's lock")
        total = sum(p.offset for p in partials)
        target = self.blob(final.id)
        ids: list[str] = []
        async with azure_errors("concatenating uploads"):
            if total == 0:
                etag = await self.put_empty(final)
            else:
                delegation_key = await self._delegation_key() if self.copy_from_url else None
                for partial in partials:
                    source = self.blob(partial.id)
                    url = self._read_sas_url(source, delegation_key) if self.copy_from_url else None
                    for start in range(0, partial.offset, _COPY_RANGE):
                        size = min(_COPY_RANGE, partial.offset - start)
                        if url is not None:
                            number = len(ids)
                            try:
                                await target.stage_block_from_url(
                                    block_id(lock.token, number), url, source_offset=start,
                                    source_length=size)
                                ids.append(block_id(lock.token, number))
                                continue
                            except Exception as exc:
                                code, status = error_code(exc)
                                if code not in NOT_IMPLEMENTED_CODES and status != 501:
                                    raise
                                log.warning("storage cannot Put Block From URL (%s): concatenation "
                                            "copies through the daemon", code or status)
                                self.copy_from_url = False
                                url = None
                        await self._copy_through(source, target, lock.token, ids, start, size)
                if len(ids) > MAX_BLOCKS:
                    raise StorageError("too many blocks for one Azure blob")
                settings, metadata = blob_headers(final.metadata, final.id)
                r = await target.commit_block_list(
                    block_list(ids), metadata=metadata, content_settings=settings)
                etag = str(r["etag"])
        await lock.publish(length=total, offset=total, completed_at=time.time(),
                           expires_at=final.expires_at, blob_etag=etag, blocks=[])
        return lock.upload

    async def _copy_through(self, source: BlobClient, target: BlobClient, token: str,
                            ids: list[str], start: int, size: int) -> None:
        """Copy a range by reading it and staging it again, ``part_size`` at a time."""
        end = start + size
        while start < end:
            step = min(self.part_size, end - start)
            data = await (await source.download_blob(offset=start, length=step)).readall()
            if len(data) != step:
                raise StorageError("a partial upload's blob is shorter than its record")
            await target.stage_block(block_id(token, len(ids)), data, length=step)
            ids.append(block_id(token, len(ids)))
            start += step

    async def expired(self, now: float, limit: int = 1000) -> list[str]:
        """Records whose ``expires_at`` has passed. One List Blobs per 5,000 blobs, plus
        a GET only of records whose ETag changed since the previous sweep."""
        seen: dict[str, str] = {}
        async with azure_errors("listing uploads"):
            async for item in self.client.list_blobs(name_starts_with=self.prefix or None):
                name = item.name[len(self.prefix):]
                if name.endswith(".info") and is_upload_id(name[:-5]):
                    seen[name[:-5]] = str(item.etag)
        for stale in set(self._expiry_cache) - set(seen):
            del self._expiry_cache[stale]
        changed = [i for i, etag in seen.items() if self._expiry_cache.get(i, ("",))[0] != etag]
        semaphore = asyncio.Semaphore(8)

        async def refresh(upload_id: str) -> None:
            async with semaphore:
                found = await self.read_info(upload_id)
            if found is not None:
                self._expiry_cache[upload_id] = (found[1], found[0].get("expires_at"))

        await asyncio.gather(*(refresh(i) for i in changed))
        out = [i for i, (_, expires_at) in self._expiry_cache.items()
               if expires_at is not None and expires_at < now]
        return out[:limit]

    async def sweep_extra(self, now: float) -> int:
        """Delete upload blobs whose record is gone (a terminate that died half-way, or a
        writer that lost its lease and staged a block after the upload was deleted).

        A blob is deleted once it has been seen without a record for ``lease_duration``
        (listings of blobs with only uncommitted blocks carry no usable timestamp, so
        the first sighting is remembered). Returns how many blobs went."""
        grace = self.lease_duration
        removed = 0
        found: dict[str, Any] = {}
        async with azure_errors("sweeping stray blobs"):
            async for item in self.client.list_blobs(name_starts_with=self.prefix or None,
                                                     include=["uncommittedblobs"]):
                found[item.name] = item
            orphans = {name for name in found
                       if is_upload_id(name[len(self.prefix):]) and name + ".info" not in found}
            self._orphans = {name: self._orphans.get(name, now) for name in orphans}
            for name, first_seen in list(self._orphans.items()):
                if now - first_seen < grace:
                    continue
                if await self.read_info(name[len(self.prefix):]) is not None:
                    continue  # created since the listing
                try:
                    await self.client.get_blob_client(name).delete_blob()
                except Exception as exc:
                    if error_code(exc)[1] != 404:
                        raise
                else:
                    log.info("deleted stray blob %s", name)
                    removed += 1
                del self._orphans[name]
        return removed

    async def download(self, upload: Upload) -> Download:
        found = await self.read_info(upload.id)
        etag = (found[0].get("blob_etag") if found else None) or f'"{upload.id}-{upload.offset}"'
        return AzureDownload(size=upload.offset, etag=etag,
                             last_modified=upload.completed_at or upload.created_at,
                             blob=self.blob(upload.id))


class AzureDownload(Download):
    def __init__(self, *, size: int, etag: str, last_modified: float, blob: BlobClient) -> None:
        super().__init__(size=size, etag=etag, last_modified=last_modified)
        self.blob = blob

    async def read(self, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start``: ranged GETs of 2 MiB, passed through."""
        if length <= 0:
            return
        async with azure_errors("reading an upload"):
            downloader = await self.blob.download_blob(offset=start, length=length)
            async for chunk in downloader.chunks():
                yield chunk


class AzureLock(UploadLock):
    """A held lease on one upload, and the write buffer of the request holding it."""

    def __init__(self, store: AzureStore, state: dict[str, Any], etag: str, token: str) -> None:
        self.store = store
        self.state = state
        self.etag = etag
        self.token = token
        self.upload = decode_upload(state, store._location(state["id"]))
        self.written = 0
        self.terminated = False
        self.released = False
        #: Set when the lease was taken over (it expired while we could not renew it).
        self.lost = False
        self._buf = bytearray()  # body bytes not yet in a block
        self._numbers = 0  # block ids used under this lease
        self._staged: list[str] = []  # blocks staged since the last commit, in order
        self._staged_size = 0
        #: Blocks being staged, oldest first: (task, id, size).
        self._pending: list[tuple[asyncio.Task[None], str, int]] = []
        self._io = asyncio.Lock()  # orders record writes (renewal vs commit)
        #: Called (once) when another process or replica asks for this upload; a handler
        #: sets it to end a stalled request's read early (like an in-process takeover).
        self.on_takeover_request: Callable[[], None] | None = None
        self._stop_asked = False
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew(), name=f"azure-lease-{self.upload.id}")

    # -- lease ------------------------------------------------------------------------

    @property
    def lease_until(self) -> float:
        return float((self.state.get("lease") or {}).get("until", 0.0))

    def _check_lease(self) -> None:
        if self.lost or self.released or time.time() > self.lease_until - 0.5:
            self.lost = True
            raise UploadBusy("the upload was taken over by another request")

    def _stop_wanted(self) -> None:
        """Another process or replica waits for this upload: tell our request."""
        if self._stop_asked:
            return
        self._stop_asked = True
        if self.on_takeover_request is not None:
            try:
                self.on_takeover_request()
            except Exception:
                log.exception("upload %s: takeover callback failed", self.upload.id)

    async def _renew(self) -> None:
        """Renew the lease every ``lease_duration / 3``; in between, once a second, look
        for a takeover request if somebody listens for one."""
        renew_every = self.store.lease_duration / 3
        tick = min(1.0, renew_every)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            try:
                if time.monotonic() - last < renew_every:
                    if self.on_takeover_request is not None and not self._stop_asked:
                        found = await self.store.read_info(self.upload.id)
                        if (found is not None and found[1] != self.etag and found[0].get("wanted")
                                and (found[0].get("lease") or {}).get("holder") == self.token):
                            self._stop_wanted()
                    continue
                async with self._io:
                    if self.released or self.terminated:
                        return
                    await self._write_state({})
                last = time.monotonic()
            except Conflict:
                log.warning("upload %s: lease taken over by another request", self.upload.id)
                self.lost = True
                return
            except Exception as exc:
                log.warning("upload %s: lease renewal failed: %s", self.upload.id, exc)
                if time.time() > self.lease_until:
                    self.lost = True
                    return

    async def _write_state(self, changes: dict[str, Any], *, release: bool = False) -> None:
        """CAS the record with ``changes`` and a renewed (or, with ``release``, no) lease.
        The caller holds ``_io``.

        While our lease is live the only other writer of the record is a waiter adding
        a takeover request (``wanted``); such a conflict is merged (the request noted,
        our record written over it). Any other conflict means the lease was lost."""
        for _ in range(5):
            lease = None if release else {
                "holder": self.token, "until": time.time() + self.store.lease_duration}
            new = dict(self.state, **changes, lease=lease, wanted=None, rev=self.state["rev"] + 1)
            try:
                self.etag = await self.store.cas_info(self.upload.id, new, self.etag)
            except Conflict as exc:
                current = exc.current
                if current is None or (current[0].get("lease") or {}).get("holder") != self.token:
                    raise
                if current[0].get("wanted"):
                    self._stop_wanted()
                self.etag = current[1]
                continue
            self.state = new
            return
        raise Conflict("the record keeps changing")

    async def publish(self, **changes: Any) -> None:
        """Write ``changes`` into the record under this lease and refresh ``upload``."""
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        async with self._io:
            try:
                await self._write_state(changes)
            except Conflict:
                self.lost = True
                raise MismatchedOffset("the upload changed underneath this request") from None
        self.upload = decode_upload(self.state, self.upload.location)

    # -- writing ----------------------------------------------------------------------

    def _used_blocks(self) -> int:
        return len(self.state["blocks"]) + len(self._staged) + len(self._pending)

    def _bytes_in_blocks(self) -> int:
        return self.upload.offset + self.written - len(self._buf)

    def _target(self) -> int:
        return block_size_for(self._used_blocks(), base=self.store.part_size,
                              length=self.upload.length, done=self._bytes_in_blocks())

    async def write(self, data: bytes) -> None:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        self._buf += data
        self.written += len(data)
        while self._buf:
            target = self._target()
            if len(self._buf) < target:
                break
            await self._cut(target)

    async def _cut(self, size: int) -> None:
        """Start staging the first ``size`` bytes of the buffer as the next block."""
        while self._pending:  # one block in flight while the next one fills
            await self._settle_one()
        self._check_lease()
        # bytes, not the bytearray: the SDK and aiohttp slice the body to its length,
        # a copy for a bytearray but the very object for bytes. The old buffer is freed
        # at once, so the block is held once while it is staged.
        with memoryview(self._buf) as view:
            body = bytes(view[:size])
            rest = bytearray(view[size:])
        self._buf = rest
        number = self._numbers
        self._numbers += 1
        ident = block_id(self.token, number)
        task = asyncio.get_running_loop().create_task(self._stage(ident, body))
        self._pending.append((task, ident, len(body)))

    async def _stage(self, ident: str, body: bytes) -> None:
        async with azure_errors("staging a block"):
            await self.store.blob(self.upload.id).stage_block(ident, body, length=len(body))

    async def _settle_one(self) -> None:
        """Wait for the oldest in-flight block and stage it."""
        task, ident, size = self._pending[0]
        try:
            await task
        except BaseException:
            await self.drain()
            raise
        self._pending.pop(0)
        self._staged.append(ident)
        self._staged_size += size

    async def _settle(self) -> None:
        while self._pending:
            await self._settle_one()

    async def drain(self) -> None:
        """Let in-flight stagings finish (or fail) without keeping them."""
        pending, self._pending = self._pending, []
        for task, _, _ in pending:
            with contextlib.suppress(Exception):
                await task

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        upload = self.upload
        new_length = length if length is not None else upload.length
        new_offset = upload.offset + self.written
        if new_length is not None and new_offset > new_length:
            raise StorageError("more bytes than the upload's length")
        complete = new_length is not None and new_offset == new_length
        changes: dict[str, Any] = {"length": new_length, "offset": new_offset,
                                   "expires_at": expires_at}
        if self.written or complete:
            await self._settle()
            if self._buf:  # the short block: nothing received is lost across replicas
                self._check_lease()
                await self._cut(len(self._buf))
                await self._settle()
            self._check_lease()
            changes["blocks"] = [*self.state["blocks"], *self._staged]
            if complete:
                # Published with every block before Put Block List: a crash in between
                # is finished by the next lock (see finish_completion).
                await self.publish(**changes, completing=True)
                self._staged, self._staged_size, self.written = [], 0, 0
                await self.finish_completion()
                return self.upload
        await self.publish(**changes)
        self._staged, self._staged_size, self.written = [], 0, 0
        return self.upload

    async def finish_completion(self) -> None:
        """Commit the record's blocks as the blob (``If-None-Match: *``: a second commit,
        by a writer that died half-way or lost its lease, cannot replace the blob) and
        mark the record complete."""
        store = self.store
        blob = store.blob(self.upload.id)
        blocks = list(self.state["blocks"])
        settings, metadata = blob_headers(self.upload.metadata, self.upload.id)
        async with azure_errors("completing an upload"):
            if not blocks:
                etag = await store.put_empty(self.upload)
            else:
                try:
                    r = await blob.commit_block_list(
                        block_list(blocks), metadata=metadata, content_settings=settings,
                        match_condition=MatchConditions.IfMissing)
                    etag = str(r["etag"])
                except Exception as exc:
                    code, status = error_code(exc)
                    if code not in CONFLICT_CODES and status not in (409, 412):
                        raise
                    # Committed already, by a holder that died before recording it?
                    props = await blob.get_blob_properties()
                    if props.size != self.state["offset"]:
                        raise StorageError("the upload's blob exists with another size") from None
                    etag = str(props.etag)
        await self.publish(completed_at=time.time(), blob_etag=etag, blocks=[], completing=None)

    async def rollback(self) -> None:
        """Forget what this request wrote: its staged blocks stay unreferenced (Azure
        drops uncommitted blocks that are not in the list at completion)."""
        await self.drain()
        self._staged, self._staged_size, self.written = [], 0, 0
        self._buf = bytearray()

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        await self.drain()
        if self.store._held.get(self.upload.id) is self:
            del self.store._held[self.upload.id]
        if self.terminated or self.lost:
            return
        try:
            async with self._io:
                await self._write_state({}, release=True)
        except Exception as exc:  # the lease runs out on its own
            log.info("upload %s: lease not released (%s); it expires in %.0fs",
                     self.upload.id, exc, self.store.lease_duration)
