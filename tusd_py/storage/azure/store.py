"""Azure Blob Storage driver (azure-storage-blob, aio): stateless replicas over one container.

Per upload ``id`` under ``prefix``: ``{id}.info``, the record (the only source of
truth), and the block blob ``{id}``, whose bytes stay uncommitted blocks until
completion commits them in order. The write lock is in ``lock``, block ids and error
translation in ``errors``, block sizing in ``sizing``. Azure discards uncommitted
blocks of a blob that saw no Put Block for a week: keep ``expiration.after`` below that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (
    BlobSasPermissions,
    ContentSettings,
    StandardBlobTier,
    generate_blob_sas,
)
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry

from ...config import ConfigError
from ...protocol.errors import StorageError, UploadExists
from ..base import Download, Upload
from ..ids import is_upload_id, object_key
from ..object.index import next_page
from ..object.lease import LeasedStore
from ..object.record import decode_upload, new_record
from .errors import (
    CONFLICT_CODES,
    NOT_FOUND_CODES,
    NOT_IMPLEMENTED_CODES,
    Conflict,
    azure_errors,
    blob_headers,
    block_id,
    block_list,
    error_code,
)
from .lock import AzureLock
from .sizing import MAX_BLOCKS

__all__ = ["AzureDownload", "AzureLock", "AzureStore"]

log = logging.getLogger(__name__)

MIB = 1 << 20
#: Concatenation copies each partial in server-side ranges of at most this (Put Block
#: From URL takes 100 MiB on every service version, 4000 MiB on recent ones).
_COPY_RANGE = 100 * MIB
_DOWNLOAD_CHUNK = 2 * MIB


class AzureStore(LeasedStore[AzureLock]):
    name = "azure"
    lock_class = AzureLock
    _log = log

    def __init__(self, container: str, *, connection_string: str | None = None,
                 account_url: str | None = None, credential: Any = None, prefix: str = "",
                 part_size: int = 8 << 20, lease_duration: float = 10.0,
                 create_container: bool = False, part_concurrency: int = 1,
                 spill_dir: str | None = None, access_tier: str | None = None) -> None:
        """The values come checked from ``config.AzureStorage`` (which also reads
        AZURE_STORAGE_CONNECTION_STRING when neither credential is configured, and
        refuses the Archive tier)."""
        if not connection_string and not account_url:
            raise ValueError("AzureStore needs a connection_string or an account_url")
        super().__init__(lease_duration, prefix)
        self.spill_dir = spill_dir
        self.container = container
        self.part_size = part_size
        #: Blocks staged at once per PATCH while the body keeps streaming in.
        self.part_concurrency = max(1, part_concurrency)
        self.create_container = create_container
        self.access_tier = access_tier
        self._connection_string = connection_string
        self._account_url = account_url
        self._credential = credential
        self._owned_credential: Any = None
        self._service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        #: (user delegation key, its expiry), reused for SAS signing (Entra ID sign-in).
        self._delegation: tuple[Any, datetime] | None = None
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
            if self.create_container:
                await self._create_container()
            await self.ping()
        except Exception as exc:  # start anyway; /readyz reports it until it works
            log.warning("Azure container %s is not reachable yet: %s", self.container, exc)

    async def _create_container(self) -> None:
        """Create the (private) container unless it exists (``storage.create_container``)."""
        async with azure_errors(f"creating container {self.container}"):
            try:
                await self.client.create_container()
                log.info("created Azure container %s", self.container)
            except HttpResponseError as exc:
                if error_code(exc)[0] != "ContainerAlreadyExists" and error_code(exc)[1] != 409:
                    raise

    async def stop(self) -> None:
        for lock in list(self._held.values()):
            await lock.release()
        if self._container is not None:
            await self.turns.give_back()
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

    def key(self, upload_id: str) -> str:
        return object_key(self.prefix, upload_id)

    def blob(self, upload_id: str) -> BlobClient:
        return self.client.get_blob_client(self.key(upload_id))

    def write_args(self) -> dict[str, Any]:
        """The access tier argument of every request that makes a blob (Put Blob, Put
        Block List; staged blocks have no tier of their own)."""
        if self.access_tier is None:
            return {}
        return {"standard_blob_tier": StandardBlobTier(self.access_tier)}

    def _location(self, upload_id: str) -> str:
        return f"azure://{self.container}/{self.key(upload_id)}"

    # -- small objects (records, index markers, turns) ------------------------------

    async def read_object(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(content, ETag), or None if there is no such blob."""
        async with azure_errors(what):
            try:
                downloader = await self.client.get_blob_client(key).download_blob()
                data = await downloader.readall()
            except Exception as exc:
                if error_code(exc)[0] in NOT_FOUND_CODES or error_code(exc)[1] == 404:
                    return None
                raise
        return data, str(downloader.properties.etag)

    async def write_object(self, key: str, data: bytes, *, etag: str | None, what: str) -> str:
        """Conditional put: ``If-Match: etag``, or ``If-None-Match: *`` when ``etag`` is
        None. Returns the new ETag; raises ``Conflict`` if the condition failed."""
        if etag is None:
            condition: dict[str, Any] = {"overwrite": False}
        else:
            condition = {"overwrite": True, "etag": etag,
                         "match_condition": MatchConditions.IfNotModified}
        async with azure_errors(what):
            try:
                r = await self.client.get_blob_client(key).upload_blob(
                    data, content_settings=ContentSettings(content_type="application/json"),
                    **condition, **self.write_args())
            except Exception as exc:
                code, status = error_code(exc)
                if code in CONFLICT_CODES or status in (409, 412) or (
                        etag is not None and (code in NOT_FOUND_CODES or status == 404)):
                    raise Conflict(code or str(status)) from None
                raise
        return str(r["etag"])

    async def put_marker(self, key: str) -> None:
        async with azure_errors("writing an index marker"):
            await self.client.get_blob_client(key).upload_blob(b"", overwrite=True,
                                                               **self.write_args())

    async def delete_object(self, key: str, what: str) -> None:
        async with azure_errors(what):
            try:
                await self.client.get_blob_client(key).delete_blob()
            except Exception as exc:
                if error_code(exc)[0] not in NOT_FOUND_CODES and error_code(exc)[1] != 404:
                    raise

    async def list_keys(self, prefix: str, *, page: int = 1000,
                        end: str | None = None) -> AsyncIterator[tuple[str, float]]:
        token: str | None = None
        while True:
            async with azure_errors("listing blobs"):
                pages = self.client.list_blobs(name_starts_with=prefix or None,
                                               results_per_page=page).by_page(token)
                try:
                    items = [item async for item in await pages.__anext__()]
                except StopAsyncIteration:
                    return
            for item in items:
                modified = item.last_modified
                yield item.name, modified.timestamp() if modified is not None else 0.0
            token = pages.continuation_token  # type: ignore[attr-defined]
            if not token:
                return
            page = next_page(page)

    def decode_record(self, record: dict[str, Any]) -> Upload:
        return decode_upload(record, self._location(record["id"]))

    # -- Store ----------------------------------------------------------------------

    async def create(self, upload: Upload) -> Upload:
        record = new_record(
            upload,
            blocks=[],  # published blocks in blob order, as runs (see block_runs)
            completing=None,  # True between publishing the last block and Put Block List
            blob_etag=None,  # ETag of the final blob once complete
        )
        if upload.is_complete:  # zero-length upload: the (empty) blob exists at once
            record["blob_etag"] = await self.put_empty(upload)
        await self.index_new(record)
        try:
            await self.write_record(upload.id, record, etag=None)
        except Conflict:
            raise UploadExists() from None
        return upload.copy(location=self._location(upload.id))

    async def put_empty(self, upload: Upload) -> str:
        settings, metadata = blob_headers(upload.metadata, upload.id)
        async with azure_errors("creating an empty blob"):
            r = await self.blob(upload.id).upload_blob(
                b"", overwrite=True, metadata=metadata, content_settings=settings,
                **self.write_args())
        return str(r["etag"])

    # -- optional capabilities ----------------------------------------------------

    async def clean_leftovers(self, upload_id: str, *, keep_upload: bool = False) -> int:
        """Delete the upload's blob (its uncommitted blocks go with it). A finished blob
        has nothing left over: Put Block List discards the blocks it does not list."""
        if keep_upload:
            return 0
        await self.delete_object(self.key(upload_id), "removing an upload")
        return 1

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
        now = datetime.now(UTC)
        cached = self._delegation
        if cached is not None and cached[1] > now + timedelta(hours=1):
            return cached[0]  # valid for at least as long as the SAS made from it
        try:
            expiry = now + timedelta(hours=6)
            key = await service.get_user_delegation_key(now - timedelta(minutes=5), expiry)
        except Exception as exc:
            log.info("no user delegation key (%s): concatenation copies through the daemon", exc)
            return None
        self._delegation = (key, expiry)
        return key

    async def concatenate(self, final: Upload, partials: list[Upload]) -> Upload:
        """Server-side: Put Block From URL of each partial (ranges of at most 100 MiB),
        reading the partials through a short read-only SAS, then one Put Block List.

        Server-side copying is an optimisation: if the service cannot copy from a URL
        (501 APINotImplemented: remembered for the life of the process), refuses this
        copy (the SAS could not be verified, an emulator's error...), or no SAS can be
        signed, the remaining ranges are read and staged again through the daemon, at
        most ``part_size`` at a time; that path surfaces real failures (a partial gone,
        the service down) as errors."""
        lock = self._held.get(final.id)
        if lock is None:
            raise StorageError("concatenate needs the final upload's lock")
        total = sum(p.offset for p in partials)
        target = self.blob(final.id)
        ids: list[str] = []
        server_side = self.copy_from_url
        async with azure_errors("concatenating uploads"):
            if total == 0:
                etag = await self.put_empty(final)
            else:
                delegation_key = await self._delegation_key() if server_side else None
                for partial in partials:
                    source = self.blob(partial.id)
                    url = self._read_sas_url(source, delegation_key) if server_side else None
                    for start in range(0, partial.offset, _COPY_RANGE):
                        size = min(_COPY_RANGE, partial.offset - start)
                        if url is not None:
                            ident = block_id(lock.token, len(ids))
                            try:
                                await target.stage_block_from_url(
                                    ident, url, source_offset=start, source_length=size,
                                    retry_total=1)
                            except HttpResponseError as exc:
                                code, status = error_code(exc)
                                if code in NOT_IMPLEMENTED_CODES or status == 501:
                                    self.copy_from_url = False
                                log.warning("Put Block From URL failed (%s): concatenation of "
                                            "%s copies through the daemon",
                                            f"{status} {code}".strip(), final.id)
                                server_side, url = False, None
                            else:
                                ids.append(ident)
                                continue
                        await self._copy_through(source, target, lock.token, ids, start, size)
                if len(ids) > MAX_BLOCKS:
                    raise StorageError("too many blocks for one Azure blob")
                settings, metadata = blob_headers(final.metadata, final.id)
                r = await target.commit_block_list(
                    block_list(ids), metadata=metadata, content_settings=settings,
                    **self.write_args())
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

    async def sweep_extra(self, now: float) -> int:
        """Delete upload blobs whose record is gone (a terminate that died half-way, or a
        writer that lost its lease and staged a block after the upload was deleted).

        A blob is only ever made after its record, and ``{id}.info`` sorts after
        ``{id}``: a blob is an orphan once the listing (in name order) has passed its
        record's name without seeing it; the record is read once more before the blob
        goes. Returns how many blobs went."""
        removed = 0
        orphans: list[str] = []
        pending: dict[str, None] = {}  # upload blobs whose record was not listed yet
        async with azure_errors("sweeping stray blobs"):
            async for item in self.client.list_blobs(name_starts_with=self.prefix or None,
                                                     include=["uncommittedblobs"]):
                name = item.name
                while pending and next(iter(pending)) + ".info" < name:
                    orphans.append(_pop_first(pending))
                if name.endswith(".info"):
                    pending.pop(name[:-5], None)
                elif is_upload_id(name[len(self.prefix):]):
                    pending[name] = None
            orphans.extend(pending)
            for name in orphans:
                if await self.read_record(name[len(self.prefix):]) is not None:
                    continue  # listed while it was being made
                try:
                    await self.client.get_blob_client(name).delete_blob()
                except Exception as exc:
                    if error_code(exc)[1] != 404:
                        raise
                else:
                    log.info("deleted stray blob %s", name)
                    removed += 1
        return removed

    async def download(self, upload: Upload) -> Download:
        found = await self.read_record(upload.id)
        etag = (found[0].get("blob_etag") if found else None) or f'"{upload.id}-{upload.offset}"'
        return AzureDownload(size=upload.offset, etag=etag,
                             last_modified=upload.completed_at or upload.created_at,
                             blob=self.blob(upload.id))


def _pop_first(names: dict[str, None]) -> str:
    first = next(iter(names))
    del names[first]
    return first


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
