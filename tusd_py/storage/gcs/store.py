"""Google Cloud Storage driver (gcloud-aio-storage): stateless replicas over one bucket.

Per upload ``id`` under ``prefix``: ``{id}.info``, the record (the only source of
truth); part objects ``{id}.p{n:06d}-{random}`` (names never reused) while it is
written; ``{id}``, composed from the parts at completion. The write lock is in
``lock``, the bucket calls (retries, conditional writes, errors) in ``client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from ...protocol.errors import StorageError, UploadExists
from ..base import Download, Upload
from ..ids import is_upload_id, object_key
from ..object.lease import LeasedStore, holder_of
from ..object.record import decode_upload, dump, new_record
from .client import (
    COMPOSE_LIMIT,
    Bucket,
    Conflict,
    etag_of,
    object_headers,
)
from .lock import GCSLock

log = logging.getLogger(__name__)

_DELETE_CONCURRENCY = 8
#: What follows ``{id}.`` in the names of part and temporary objects.
_TEMP_SUFFIX = re.compile(r"(?:p[0-9]{6}|c)-[0-9a-f]{12}")


class GCSStore(LeasedStore[GCSLock]):
    name = "gcs"
    lock_class = GCSLock
    _log = log

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 part_size: int = 8 << 20, lease_duration: float = 10.0,
                 retry_attempts: int = 5, part_concurrency: int = 1,
                 spill_dir: str | None = None, kms_key_name: str | None = None,
                 storage_class: str | None = None) -> None:
        """The values come checked from ``config.GCSStorage``; every object is written
        through ``bucket`` (``Bucket.write_args``: CMEK key and storage class)."""
        super().__init__(lease_duration, prefix)
        self.spill_dir = spill_dir
        self.bucket = Bucket(bucket, endpoint_url=endpoint_url, attempts=retry_attempts,
                             kms_key_name=kms_key_name, storage_class=storage_class)
        self.part_size = part_size
        #: Part objects uploaded at once per PATCH while the body keeps streaming in.
        self.part_concurrency = max(1, part_concurrency)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        await self.bucket.open()
        try:
            await self.ping()
        except Exception as exc:  # start anyway; /readyz reports it until it works
            log.warning("GCS bucket %s is not reachable yet: %s", self.bucket.name, exc)

    async def stop(self) -> None:
        for lock in list(self._held.values()):
            await lock.release()
        if self.bucket.is_open:
            await self.turns.give_back()
        await self.bucket.close()

    async def ping(self) -> None:
        await self.bucket.bucket_metadata()

    # -- names --------------------------------------------------------------------

    def key(self, upload_id: str) -> str:
        return object_key(self.prefix, upload_id)

    def part_name(self, upload_id: str, index: int) -> str:
        return f"{self.key(upload_id)}.p{index:06d}-{uuid.uuid4().hex[:12]}"

    def temp_name(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}.c-{uuid.uuid4().hex[:12]}"

    def _location(self, upload_id: str) -> str:
        return f"gs://{self.bucket.name}/{self.key(upload_id)}"

    # -- small objects (records, index markers, turns) ------------------------------

    async def read_object(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(content, generation), or None if there is no such object."""
        return await self.bucket.read(key, what)

    async def write_object(self, key: str, data: bytes, *, etag: str | None, what: str) -> str:
        """Conditional write (``etag``: the generation read; None: only if absent).
        Returns the new generation; raises ``Conflict`` if the condition failed."""
        return await self.bucket.write(key, data, if_generation=etag or "0", what=what)

    async def put_marker(self, key: str) -> None:
        with contextlib.suppress(Conflict):  # there already
            await self.bucket.write(key, b"", if_generation="0", what="writing an index marker",
                                    content_type="application/octet-stream")

    async def delete_object(self, key: str, what: str) -> None:
        await self.bucket.delete(key, what)

    async def list_keys(self, prefix: str, *, page: int = 1000,
                        end: str | None = None) -> AsyncIterator[tuple[str, float]]:
        async for item in self.bucket.list(prefix, "listing objects", page=page, end=end,
                                           fields="name,updated"):
            yield item["name"], _timestamp(item.get("updated")) or 0.0

    def decode_record(self, record: dict[str, Any]) -> Upload:
        return decode_upload(record, self._location(record["id"]))

    def stamp(self, record: dict[str, Any]) -> None:
        """No nonce: a landed write is recognised by its revision and lease holder."""

    def own_write(self, written: dict[str, Any], current: dict[str, Any]) -> bool:
        return bool(current.get("rev") == written["rev"]
                    and holder_of(current) == holder_of(written))

    # -- Store ----------------------------------------------------------------------

    async def create(self, upload: Upload) -> Upload:
        record = new_record(
            upload,
            parts=[],  # published part objects, in order: [{"name", "size"}]
            completing=None,  # True while the parts are being composed into the object
            object_etag=None,  # of the final object once complete
        )
        if upload.is_complete:  # zero-length upload: the (empty) object exists at once
            r = await self.bucket.put_replacing(self.key(upload.id), b"", what="creating an upload",
                                                headers=object_headers(upload.metadata))
            record["object_etag"] = etag_of(r)
        await self.index_new(record)
        try:
            await self.write_record(upload.id, record, etag=None)
        except Conflict:
            found = await self.bucket.read(self.record_key(upload.id), "creating an upload")
            if found is None or found[0] != dump(record):  # not our own retried write
                raise UploadExists() from None
        return upload.copy(location=self._location(upload.id))

    # -- compose / delete helpers ---------------------------------------------------

    async def compose_all(self, upload_id: str, dest: str, sources: list[str], *,
                          headers: dict[str, str] | None = None,
                          what: str = "composing an upload") -> dict[str, Any]:
        """Compose any number of sources into ``dest``: rounds of at most 32 sources
        into temporary objects, then the final compose. Temporaries are deleted."""
        temps: list[str] = []
        try:
            while len(sources) > COMPOSE_LIMIT:
                level: list[str] = []
                for i in range(0, len(sources), COMPOSE_LIMIT):
                    group = sources[i:i + COMPOSE_LIMIT]
                    if len(group) == 1:
                        level.append(group[0])
                        continue
                    temp = self.temp_name(upload_id)
                    temps.append(temp)
                    await self.bucket.compose(temp, group, what=what)
                    level.append(temp)
                sources = level
            return await self.bucket.compose(dest, sources, what=what, headers=headers)
        finally:
            await self.delete_quietly(temps)

    async def delete_quietly(self, names: Iterable[str]) -> None:
        """Best-effort deletes of objects nothing references any more (leftovers are
        removed by the sweeper)."""
        semaphore = asyncio.Semaphore(_DELETE_CONCURRENCY)

        async def one(name: str) -> None:
            async with semaphore:
                try:
                    await self.bucket.delete(name, "deleting an unused object")
                except Exception as exc:
                    log.info("could not delete %s (the sweeper will): %s", name, exc)

        await asyncio.gather(*(one(name) for name in names))

    # -- optional capabilities ----------------------------------------------------

    async def clean_leftovers(self, upload_id: str, *, keep_upload: bool = False) -> int:
        """Delete the upload's part and temporary objects (one LIST), and its object
        unless ``keep_upload``."""
        key = self.key(upload_id)
        names = [item["name"] async for item in self.bucket.list(key + ".", "removing an upload")
                 if item["name"] != self.record_key(upload_id)]
        await self.delete_quietly(names if keep_upload else [*names, key])
        return len(names)

    async def concatenate(self, final: Upload, partials: list[Upload]) -> Upload:
        """Server-side compose of the partials' objects (no byte through the daemon)."""
        lock = self._held.get(final.id)
        if lock is None:
            raise StorageError("concatenate needs the final upload's lock")
        total = sum(p.offset for p in partials)
        headers = object_headers(final.metadata)
        key = self.key(final.id)
        sources = [self.key(p.id) for p in partials]
        if sources:
            r = await self.compose_all(final.id, key, sources, headers=headers,
                                       what="concatenating uploads")
        else:
            r = await self.bucket.put_replacing(key, b"", what="concatenating uploads",
                                                headers=headers)
        await lock.publish(length=total, offset=total, completed_at=time.time(),
                           expires_at=final.expires_at, object_etag=etag_of(r))
        return lock.upload

    async def sweep_extra(self, now: float) -> int:
        """Delete objects nothing references: parts and temporaries (names this driver
        makes, ``{id}.p...-{random}`` and ``{id}.c-{random}``) of uploads that are gone,
        or that no live writer holds and the record does not list (left by a replica
        that died or lost its lease mid-PATCH). Other objects, final ones included, are
        never touched. The LIST comes before the records are read, and only objects
        older than ``lease_duration`` are candidates, so a writer's fresh parts are never
        taken."""
        grace = now - self.lease_duration
        candidates: list[tuple[str, str]] = []  # (object, upload id)
        async for item in self.bucket.list(self.prefix, "sweeping stray objects"):
            name = item["name"][len(self.prefix):]
            upload_id, _, rest = name.partition(".")
            if not is_upload_id(upload_id) or not _TEMP_SUFFIX.fullmatch(rest):
                continue
            if (updated := _timestamp(item.get("updated"))) is None or updated > grace:
                continue
            candidates.append((item["name"], upload_id))
        records: dict[str, dict[str, Any] | None] = {}
        doomed: list[str] = []
        for name, upload_id in candidates:
            if upload_id not in records:
                found = await self.read_record(upload_id)
                records[upload_id] = found[0] if found else None
            record = records[upload_id]
            if record is None:
                doomed.append(name)
                continue
            lease = record.get("lease")
            if lease is not None and lease["until"] > now:
                continue  # a live writer's parts are not yet listed in the record
            if name not in {p["name"] for p in record.get("parts", ())}:
                doomed.append(name)
        await self.delete_quietly(doomed)
        return len(doomed)

    async def download(self, upload: Upload) -> Download:
        found = await self.read_record(upload.id)
        etag = (found[0].get("object_etag") if found else None) or f'"{upload.id}-{upload.offset}"'
        return GCSDownload(size=upload.offset, etag=etag,
                           last_modified=upload.completed_at or upload.created_at,
                           store=self, key=self.key(upload.id))


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class GCSDownload(Download):
    def __init__(self, *, size: int, etag: str, last_modified: float, store: GCSStore,
                 key: str) -> None:
        super().__init__(size=size, etag=etag, last_modified=last_modified)
        self.store = store
        self.key = key

    async def read(self, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start``: one ranged GET, passed through."""
        if length <= 0:
            return
        async for chunk in self.store.bucket.stream(self.key, start, start + length - 1,
                                                    "reading an upload"):
            yield chunk
