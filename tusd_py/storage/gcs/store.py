"""Google Cloud Storage driver (gcloud-aio-storage): stateless replicas over one bucket.

Objects, for an upload ``id`` under ``prefix``:

* ``{prefix}{id}.info``: the record (JSON, see ``client``): tus fields, the published
  part objects, a write lease and a revision. The only source of truth; HEAD is one GET
  of it. Every change is a conditional write (``ifGenerationMatch`` on the generation
  read; ``ifGenerationMatch=0`` on create), so two writers can never both succeed.
* ``{prefix}{id}.p{n:06d}-{random}``: part objects while the upload is written. Names
  are never reused, so a writer whose lease was taken over (a stalled replica) cannot
  overwrite a part another writer published; whatever it leaves is unreferenced and
  swept.
* ``{prefix}{id}``: the final object, composed from the parts at completion
  (Content-Type/Content-Disposition from the ``filetype``/``filename`` metadata); the
  parts are deleted afterwards.

Writes (the lease protocol is shared, see ``leased``): ``lock`` takes a lease by
compare-and-set of ``.info``; a lease whose ``until`` has passed (its holder died) is
taken over. While a PATCH streams, a task renews the lease every ``lease_duration / 3``.
Body bytes are buffered up to ``part_size`` and each full part is uploaded while the
body keeps streaming (memory per PATCH: about two parts). ``commit`` uploads the
remainder as a smaller part, then publishes parts and offset in
one conditional write of the record: an acknowledged offset always has its bytes behind
it, in any replica, after any crash. The part list stays short: a small last part is
merged with the next PATCH's small remainder by compose (server-side, no bytes through
the daemon), and runs of 32 parts are composed into one segment once the list passes 64.

Completion records ``completing`` with the final part list first, then composes (in
rounds of 32 sources) and records the finished upload; a replica that dies in between
leaves a record from which the next lock or HEAD finishes the job.

Clocks: lease expiry compares wall clocks of replicas; keep them NTP-synchronised
(skew well under ``lease_duration``).
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
from typing import Any, TypedDict

from ...config import ConfigError
from ...protocol.errors import StorageError, UploadBusy, UploadExists
from ..base import Download, Upload
from ..ids import check_upload_id, is_upload_id
from ..object.lease import LeasedLock, LeasedStore, holder_of
from .client import (
    COMPOSE_LIMIT,
    Bucket,
    Conflict,
    decode_upload,
    dump,
    encode_upload,
    load,
    object_headers,
)

log = logging.getLogger(__name__)

MIN_PART_SIZE = 64 << 10
#: The published part list is compacted (32 parts composed into one) beyond this.
_MAX_LISTED_PARTS = 2 * COMPOSE_LIMIT
_DELETE_CONCURRENCY = 8
#: What follows ``{id}.`` in the names of part and temporary objects.
_TEMP_SUFFIX = re.compile(r"(?:p[0-9]{6}|c)-[0-9a-f]{12}")


class Part(TypedDict):
    name: str
    size: int


class GCSStore(LeasedStore["GCSLock"]):
    name = "gcs"
    _log = log

    def __init__(self, bucket: str | None, *, prefix: str = "", endpoint_url: str | None = None,
                 part_size: int = 8 << 20, lease_duration: float = 10.0,
                 retry_attempts: int = 5) -> None:
        if not bucket:
            raise ConfigError("storage.bucket: required for the gcs driver")
        if part_size < MIN_PART_SIZE:
            raise ConfigError("storage.part_size: must be at least 64KiB for the gcs driver")
        super().__init__(lease_duration)
        self.bucket = Bucket(bucket, endpoint_url=endpoint_url, attempts=retry_attempts)
        self.prefix = prefix
        self.part_size = part_size

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
        await self.bucket.close()

    async def ping(self) -> None:
        await self.bucket.bucket_metadata()

    # -- names --------------------------------------------------------------------

    def key(self, upload_id: str) -> str:
        return self.prefix + check_upload_id(upload_id)

    def info_key(self, upload_id: str) -> str:
        return self.key(upload_id) + ".info"

    def part_name(self, upload_id: str, index: int) -> str:
        return f"{self.key(upload_id)}.p{index:06d}-{uuid.uuid4().hex[:12]}"

    def temp_name(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}.c-{uuid.uuid4().hex[:12]}"

    def _location(self, upload_id: str) -> str:
        return f"gs://{self.bucket.name}/{self.key(upload_id)}"

    # -- the record ---------------------------------------------------------------

    async def read_info(self, upload_id: str) -> tuple[dict[str, Any], str] | None:
        """(record, generation), or None if there is no such upload."""
        found = await self.bucket.read(self.info_key(upload_id), "reading an upload record")
        if found is None:
            return None
        return load(found[0]), found[1]

    async def write_info(self, upload_id: str, state: dict[str, Any], *,
                         etag: str | None) -> str:
        """Conditional write of the record (``etag``: the generation read; None: only if
        absent). Returns the new generation; raises ``Conflict`` if the condition failed."""
        return await self.bucket.write(self.info_key(upload_id), dump(state),
                                       if_generation=etag or "0",
                                       what="writing an upload record")

    def decode_record(self, state: dict[str, Any]) -> Upload:
        return decode_upload(state, self._location(state["id"]))

    def stamp(self, state: dict[str, Any]) -> None:
        """No nonce: a landed write is recognised by its revision and lease holder."""

    def own_write(self, written: dict[str, Any], current: dict[str, Any]) -> bool:
        return bool(current.get("rev") == written["rev"]
                    and holder_of(current) == holder_of(written))

    # -- Store ----------------------------------------------------------------------

    async def create(self, upload: Upload) -> Upload:
        state = encode_upload(upload)
        if upload.is_complete:  # zero-length upload: the (empty) object exists at once
            r = await self.bucket.put_replacing(self.key(upload.id), b"", what="creating an upload",
                                                headers=object_headers(upload.metadata))
            state["object_etag"] = _etag(r)
        try:
            await self.write_info(upload.id, state, etag=None)
        except Conflict:
            found = await self.bucket.read(self.info_key(upload.id), "creating an upload")
            if found is None or found[0] != dump(state):  # not our own retried write
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

    async def terminate(self, upload_id: str) -> None:
        lock = self._held.get(upload_id)
        if lock is not None:
            await lock.drain()
            lock.terminated = True
        key = self.key(upload_id)
        # The record goes first: once it is gone the upload no longer exists.
        await self.bucket.delete(self.info_key(upload_id), "terminating an upload")
        names = [item["name"] async for item in self.bucket.list(key + ".", "terminating an upload")]
        await self.delete_quietly([*names, key])
        self._record_cache.pop(upload_id, None)

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
                           expires_at=final.expires_at, object_etag=_etag(r))
        return lock.upload

    async def list_records(self) -> dict[str, str]:
        """id -> generation of every ``.info`` under the prefix (one LIST per 1,000)."""
        seen: dict[str, str] = {}
        async for item in self.bucket.list(self.prefix, "listing uploads"):
            name = item["name"][len(self.prefix):]
            if name.endswith(".info") and is_upload_id(name[:-5]):
                seen[name[:-5]] = str(item.get("generation", ""))
        return seen

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
                found = await self.read_info(upload_id)
                records[upload_id] = found[0] if found else None
            state = records[upload_id]
            if state is None:
                doomed.append(name)
                continue
            lease = state.get("lease")
            if lease is not None and lease["until"] > now:
                continue  # a live writer's parts are not yet listed in the record
            if name not in {p["name"] for p in state.get("parts", ())}:
                doomed.append(name)
        await self.delete_quietly(doomed)
        return len(doomed)

    async def download(self, upload: Upload) -> Download:
        found = await self.read_info(upload.id)
        etag = (found[0].get("object_etag") if found else None) or f'"{upload.id}-{upload.offset}"'
        return GCSDownload(size=upload.offset, etag=etag,
                           last_modified=upload.completed_at or upload.created_at,
                           store=self, key=self.key(upload.id))


def _etag(result: dict[str, Any]) -> str:
    return f'"{result.get("generation") or result.get("etag") or ""}"'


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


class GCSLock(LeasedLock[GCSStore]):
    """A held lease on one upload, and the write buffer of the request holding it."""

    _log = log

    def __init__(self, store: GCSStore, state: dict[str, Any], generation: str,
                 token: str) -> None:
        self._buf = bytearray()  # body bytes not yet in a part
        self._staged: list[Part] = []  # parts uploaded since the last commit
        self._pending: list[asyncio.Task[Part]] = []  # at most one part in flight
        super().__init__(store, state, generation, token)

    def _merges(self, current: dict[str, Any]) -> bool:
        """Without a nonce, only a record that still names our lease at our revision was
        changed by a waiter alone (our own landed write is found by ``own_write``)."""
        return bool(holder_of(current) == self.token and current.get("rev") == self.state["rev"])

    # -- writing ----------------------------------------------------------------------

    def _next_index(self) -> int:
        return len(self.state["parts"]) + len(self._staged) + len(self._pending)

    async def write(self, data: bytes) -> None:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        self._buf += data
        self.written += len(data)
        size = self.store.part_size
        while len(self._buf) >= size:
            await self._cut(size)

    async def _cut(self, size: int) -> None:
        """Start uploading the first ``size`` bytes of the buffer as the next part."""
        while self._pending:
            await self._settle_one()
        self._check_lease()
        body = bytes(memoryview(self._buf)[:size])
        del self._buf[:size]
        name = self.store.part_name(self.upload.id, self._next_index())
        self._pending.append(asyncio.get_running_loop().create_task(self._upload(name, body)))

    async def _upload(self, name: str, body: bytes) -> Part:
        await self.store.bucket.put(name, body, what="uploading a part")
        return {"name": name, "size": len(body)}

    async def _settle_one(self) -> None:
        """Wait for the oldest in-flight part and stage it; 32 staged parts are composed
        into one (they are not published yet, so the originals go at once)."""
        try:
            part = await self._pending[0]
        except BaseException:
            await self.drain()
            raise
        self._pending.pop(0)
        self._staged.append(part)
        if len(self._staged) >= COMPOSE_LIMIT:
            self._check_lease()
            staged, self._staged = self._staged, []
            self._staged = [await self._compose(staged)]
            await self.store.delete_quietly(p["name"] for p in staged)

    async def _settle(self) -> None:
        while self._pending:
            await self._settle_one()

    async def _compose(self, parts: list[Part]) -> Part:
        name = self.store.part_name(self.upload.id, self._next_index())
        await self.store.bucket.compose(name, [p["name"] for p in parts],
                                        what="composing parts")
        return {"name": name, "size": sum(p["size"] for p in parts)}

    async def drain(self) -> None:
        """Let in-flight part uploads finish (or fail) without staging them."""
        pending, self._pending = self._pending, []
        for task in pending:
            with contextlib.suppress(Exception):
                await task

    async def _tidy(self, published: list[Part], new: list[Part]) -> tuple[list[Part], list[str]]:
        """The part list to publish, kept short by server-side composes; and the objects
        that become garbage once it is published."""
        garbage: list[str] = []
        if (published and new and published[-1]["size"] + new[0]["size"] <= self.store.part_size):
            # a small last part and a small remainder: merge them
            merged = await self._compose([published[-1], new[0]])
            garbage += [published[-1]["name"], new[0]["name"]]
            parts = [*published[:-1], merged, *new[1:]]
        else:
            parts = [*published, *new]
        while len(parts) > _MAX_LISTED_PARTS:
            head = parts[:COMPOSE_LIMIT]
            parts = [await self._compose(head), *parts[COMPOSE_LIMIT:]]
            garbage += [p["name"] for p in head]
        return parts, garbage

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        changes, complete = self._commit_changes(length, expires_at)
        garbage: list[str] = []
        if complete or self.written:
            await self._settle()
            if self._buf:  # the remainder becomes a (smaller) part: nothing stays in memory
                self._check_lease()
                body, self._buf = bytes(self._buf), bytearray()
                name = self.store.part_name(self.upload.id, self._next_index())
                self._staged.append(await self._upload(name, body))
            self._check_lease()
            published: list[Part] = self.state["parts"]
            if complete:
                changes.update(parts=[*published, *self._staged], completing=True)
            else:
                changes["parts"], garbage = await self._tidy(published, self._staged)
        await self.publish(**changes)
        self._staged, self.written = [], 0
        await self.store.delete_quietly(garbage)
        if complete:
            await self.finish_completion()
        return self.upload

    async def finish_completion(self) -> None:
        """Compose the parts of a record that says ``completing`` into the final object,
        record the finished upload, then delete the parts."""
        store = self.store
        parts: list[Part] = self.state["parts"]
        headers = object_headers(self.upload.metadata)
        key = store.key(self.upload.id)
        self._check_lease()
        if parts:
            result = await store.compose_all(self.upload.id, key, [p["name"] for p in parts],
                                             headers=headers, what="completing an upload")
        else:
            result = await store.bucket.put_replacing(key, b"", what="completing an upload",
                                                      headers=headers)
        await self.publish(completed_at=time.time(), object_etag=_etag(result), parts=[],
                           completing=None)
        await store.delete_quietly(p["name"] for p in parts)

    async def rollback(self) -> None:
        """Forget what this request wrote; its unpublished parts are deleted."""
        with contextlib.suppress(Exception):
            await self._settle()  # let the part in flight land, so it is deleted too
        staged, self._staged = self._staged, []
        self.written = 0
        self._buf = bytearray()
        await self.store.delete_quietly(p["name"] for p in staged)


GCSStore.lock_class = GCSLock
