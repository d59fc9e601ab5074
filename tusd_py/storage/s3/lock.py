"""The S3 driver's write lock: the record's lease plus the request's part buffer and part
uploads. Full parts upload while the body streams in; ``commit`` stores the tail and
publishes parts and offset in one conditional write of the record. Every write of body
bytes runs under ``bounded``, so a stale retry never lands over the next holder's part.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ...protocol.errors import StorageError, UploadBusy
from ..base import Upload
from ..object.buffer import ChunkBuffer, ChunksReader
from ..object.lease import LeasedLock
from ..object.parts import PartUploads
from .errors import (
    NOT_FOUND_CODES,
    Part,
    error_code,
    object_headers,
    s3_errors,
)
from .sizing import MIN_PART_SIZE, part_size_for

if TYPE_CHECKING:
    from .store import S3Store

log = logging.getLogger(__name__)

_TAIL_CHUNK = 64 * 1024  # reading back a tail larger than part_size


class _PartsMismatch(Exception):
    """CompleteMultipartUpload refused a part: S3 holds another part ``number``."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


class S3Lock(LeasedLock["S3Store"]):
    """A held lease on one upload, and the write buffer of the request holding it."""

    _log = log

    def __init__(self, store: S3Store, record: dict[str, Any], etag: str, token: str) -> None:
        #: The tail, then the body bytes not yet in a part: at most ``part_size`` of it
        #: in memory, the rest of a grown part in a spill file (``buffer``).
        self._buf = store.new_buffer()
        self._loaded = False  # _buf holds the stored tail
        #: Parts uploading while the body streams in, and those uploaded since the last
        #: commit (``parts.done``).
        self.parts: PartUploads[Part] = PartUploads(store.part_concurrency)
        super().__init__(store, record, etag, token)

    # -- writing ----------------------------------------------------------------------

    async def _load_tail(self) -> None:
        if self._loaded:
            return
        tail = self.record.get("tail")
        store = self.store
        self._buf.clear()
        cached = store._tail_cache.pop(self.upload.id, None)
        if tail and cached is not None and cached[0] == tail.get("etag"):
            self._buf = store.new_buffer(cached[1])  # this process wrote it last: not read back
        elif tail:
            async with s3_errors("reading the incomplete part"):
                try:
                    r = await store.s3.get_object(Bucket=store.bucket, Key=tail["key"])
                except Exception as exc:
                    if error_code(exc)[0] in NOT_FOUND_CODES:
                        raise StorageError("the upload's incomplete part object is missing") from None
                    raise
                async with (body := r["Body"]):
                    if tail["size"] <= store.part_size:
                        self._buf.append(await body.read())
                    else:  # the tail of a grown part: spilled beyond part_size
                        async for chunk in body.iter_chunks(_TAIL_CHUNK):
                            self._buf.append(chunk)
            if len(self._buf) != tail["size"]:
                raise StorageError("the upload's incomplete part object has the wrong size")
        self._loaded = True

    def _next_part_number(self) -> int:
        return len(self.record["parts"]) + self.parts.count + 1

    def _bytes_in_parts(self) -> int:
        return sum(p["size"] for p in self.record["parts"]) + self.parts.size

    def _target(self) -> int:
        length = self.upload.length
        return part_size_for(self._next_part_number(), base=self.store.part_size,
                             length=length, done=self._bytes_in_parts(),
                             max_parts=self.store.max_parts)

    async def write(self, data: bytes) -> None:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        if not self._loaded:
            await self._load_tail()
        self._buf.append(data)
        self.written += len(data)
        while len(self._buf) >= MIN_PART_SIZE:
            target = self._target()
            if len(self._buf) < target:
                break
            await self._cut(target)

    async def _cut(self, size: int) -> None:
        """Start uploading the first ``size`` bytes of the buffer as the next part."""
        await self.parts.room()
        self._check_lease()
        await self._ensure_mpu()
        body = self._buf.take(size)  # the chunks themselves: no copy of the part
        number = self._next_part_number()
        self.parts.start(self._upload_part(number, body), size)

    async def _upload_part(self, number: int, body: ChunkBuffer) -> Part:
        """Upload ``body`` as part ``number``, then free it (memory and spill file)."""
        store = self.store
        size = len(body)
        try:
            with ChunksReader(body.chunks()) as reader:
                async with self.bounded("uploading a part"), s3_errors("uploading a part"):
                    r = await store.s3.upload_part(
                        Bucket=store.bucket, Key=store.key(self.upload.id),
                        UploadId=self.record["mpu"], PartNumber=number, Body=reader,
                        ContentLength=size)
        finally:
            body.clear()
        return {"n": number, "etag": str(r["ETag"]), "size": size}

    async def _ensure_mpu(self) -> None:
        if self.record.get("mpu"):
            return
        store = self.store
        async with s3_errors("starting a multipart upload"):
            r = await store.s3.create_multipart_upload(
                Bucket=store.bucket, Key=store.key(self.upload.id),
                **object_headers(self.upload.metadata))
        # Recorded at once, so a crash before the next commit cannot orphan it.
        await self.publish(mpu=r["UploadId"])

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        changes, complete = self._commit_changes(length, expires_at)
        old_tail = self.record.get("tail")
        if complete or self.written:
            await self._load_tail()
            await self.parts.collect()
            self._check_lease()
            if complete:
                changes.update(await self._finish(changes), completed_at=time.time(),
                               tail=None, mpu=None, parts=[], completing=None)
            else:
                changes["parts"] = [*self.record["parts"], *self.parts.done]
                changes["tail"] = await self._store_tail(old_tail)
        await self.publish(**changes)
        self.parts.clear()
        self.written = 0
        if old_tail and old_tail != self.record.get("tail"):
            store = self.store
            with contextlib.suppress(Exception):  # a leftover is removed by the sweeper
                await store.s3.delete_object(Bucket=store.bucket, Key=old_tail["key"])
        if complete:
            self._buf.clear()
        return self.upload

    async def _store_tail(self, old: dict[str, Any] | None) -> dict[str, Any] | None:
        """Put the buffer as the tail object, in the slot the record does not point to."""
        if not self._buf:
            return None
        store = self.store
        slot = 1 if old and old["key"] == store.tail_key(self.upload.id, 0) else 0
        key = store.tail_key(self.upload.id, slot)
        async with self.bounded("storing the incomplete part"), \
                s3_errors("storing the incomplete part"):
            with self._reader() as reader:
                r = await store.s3.put_object(Bucket=store.bucket, Key=key, Body=reader,
                                              ContentLength=len(self._buf))
        return {"key": key, "size": len(self._buf), "etag": r["ETag"]}

    def _reader(self) -> ChunksReader:
        return ChunksReader(self._buf.chunks())

    async def _finish(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Make the final object from the published and collected parts and the buffer."""
        store = self.store
        key = store.key(self.upload.id)
        parts = [*self.record["parts"], *self.parts.done]
        mpu = self.record.get("mpu")
        if mpu is None:
            async with self.bounded("completing an upload"), s3_errors("completing an upload"):
                with self._reader() as reader:
                    r = await store.s3.put_object(Bucket=store.bucket, Key=key, Body=reader,
                                                  ContentLength=len(self._buf),
                                                  **object_headers(self.upload.metadata))
            return {"object_etag": r["ETag"]}
        if self._buf or not parts:
            number = len(parts) + 1
            if number > store.max_parts:
                raise StorageError("too many parts for one S3 object")
            parts.append(await self._upload_part(number, self._buf.take(len(self._buf))))
        # Record that every byte is in a part before completing: if the process dies
        # after CompleteMultipartUpload, the next lock (or HEAD) finishes the job
        # instead of finding a record that points at a multipart upload that is gone.
        await self.publish(**changes, parts=parts, tail=None, completing=True)
        self.parts.clear()
        try:
            return {"object_etag": await self._complete_mpu(mpu, parts)}
        except _PartsMismatch as exc:
            offset = await self._back_to_intact_parts(mpu, parts, exc.number)
            raise StorageError(
                f"part {exc.number} of the upload was overwritten in storage; the upload's "
                f"offset was moved back to {offset}: resume from there") from None

    async def _complete_mpu(self, mpu: str, parts: list[Part]) -> str:
        store = self.store
        key = store.key(self.upload.id)
        async with self.bounded("completing an upload"), s3_errors("completing an upload"):
            try:
                r = await store.s3.complete_multipart_upload(
                    Bucket=store.bucket, Key=key, UploadId=mpu, MultipartUpload={
                        "Parts": [{"PartNumber": p["n"], "ETag": p["etag"]} for p in parts]})
            except Exception as exc:
                code = error_code(exc)[0]
                if code == "InvalidPart":
                    raise _PartsMismatch(await self._first_changed_part(mpu, parts)) from None
                if code != "NoSuchUpload":
                    raise
                # Completed by a holder that died before recording it?
                head = await store.s3.head_object(Bucket=store.bucket, Key=key)
                if head["ContentLength"] != sum(p["size"] for p in parts):
                    raise StorageError("the upload's multipart upload is gone") from None
                return str(head["ETag"])
        return str(r["ETag"])

    async def _first_changed_part(self, mpu: str, parts: list[Part]) -> int:
        """The number of the first part the record lists that S3 no longer holds as
        listed (by ETag and size): ListParts, only once a completion was refused."""
        store = self.store
        held: dict[int, tuple[str, int]] = {}
        paginator = store.s3.get_paginator("list_parts")
        async for page in paginator.paginate(Bucket=store.bucket, Key=store.key(self.upload.id),
                                             UploadId=mpu):
            for p in page.get("Parts", ()):
                held[p["PartNumber"]] = (str(p["ETag"]).strip('"'), p["Size"])
        for p in parts:
            if held.get(p["n"]) != (p["etag"].strip('"'), p["size"]):
                return p["n"]
        return parts[-1]["n"] if parts else 0

    async def _back_to_intact_parts(self, mpu: str, parts: list[Part], number: int) -> int:
        """S3 holds another part ``number`` than the record lists (a stale write of a
        former holder landed over it): the bytes from that part on are lost. Rather than
        failing every request, publish the offset at the end of the intact parts, so
        the client resumes from there and the upload can still complete. Returns it."""
        intact = [p for p in parts if p["n"] < number]
        offset = sum(p["size"] for p in intact)
        log.error("upload %s: part %d in storage is not the one recorded (a stale write "
                  "landed); offset moved back from %d to %d", self.upload.id, number,
                  self.upload.offset, offset)
        await self.publish(offset=offset, parts=intact, tail=None, completing=None)
        self.parts.clear()
        self.written = 0
        self._buf.clear()
        self._loaded = True  # no tail: the next bytes start part ``number``
        return offset

    async def finish_completion(self) -> None:
        """Complete a multipart upload whose record says ``completing`` (see ``_finish``)."""
        mpu, parts = self.record["mpu"], self.record["parts"]
        try:
            etag = await self._complete_mpu(mpu, parts)
        except _PartsMismatch as exc:
            await self._back_to_intact_parts(mpu, parts, exc.number)
            return
        await self.publish(completed_at=time.time(), object_etag=etag, mpu=None, parts=[],
                           completing=None)

    async def rollback(self) -> None:
        """Forget what this request wrote: its uploaded parts stay unreferenced (they are
        overwritten by the next part with that number, or dropped at completion)."""
        await self.drain()
        self.parts.clear()
        self.written = 0
        self._buf.clear()
        self._loaded = False

    def _released(self) -> None:
        tail = self.record.get("tail")
        buf = self._buf
        if (self._loaded and not (self.written or self.terminated or self.lost) and tail
                and len(buf) == tail["size"] and buf.in_memory):
            self.store._cache_tail(self.upload.id, tail.get("etag"),
                                   [c for c in buf.chunks() if isinstance(c, bytes)])
        buf.clear()
