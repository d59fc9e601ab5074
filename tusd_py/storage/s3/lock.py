"""The S3 driver's write lock: the record's lease plus the request's part buffer and part
uploads. Full parts upload while the body streams in; ``commit`` stores what fills no
part as a new tail segment (once the tail reaches S3's 5 MiB minimum, as a part) and
publishes parts, tail and offset in one conditional write of the record. Every write of
body bytes runs under ``bounded``, so a stale retry never lands over the next holder's
part. An upload whose record fixes its ``part_size`` (equal-parts mode) has every part
but the last of exactly that size: its tail waits in segments until it fills one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ...protocol.errors import SizeExceeded, StorageError, UploadBusy
from ..base import Upload
from ..object.buffer import ChunkBuffer, ChunksReader
from ..object.lease import LeasedLock
from ..object.parts import PartUploads
from .errors import (
    NOT_FOUND_CODES,
    Part,
    Segment,
    error_code,
    s3_errors,
    segments_of,
)
from .sizing import MIN_PART_SIZE, equal_parts_exceeded, part_size_for

if TYPE_CHECKING:
    from .store import S3Store

log = logging.getLogger(__name__)

_TAIL_CHUNK = 64 * 1024  # reading back a tail larger than part_size


class _PartsMismatch(Exception):
    """CompleteMultipartUpload refused a part: S3 holds another part ``number``."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


class _UnequalParts(Exception):
    """CompleteMultipartUpload refused parts of different sizes (R2 and the like)."""


#: What the client gets when the store refused parts of different sizes.
UNEQUAL_PARTS = ("storage refused parts of different sizes (Cloudflare R2 and some "
                 "S3-compatible stores do): set storage.equal_parts for new uploads")


def _wants_equal_parts(exc: BaseException) -> bool:
    """Whether a refused CompleteMultipartUpload says the store wants parts of one size
    (R2: "All non-trailing parts must have the same length."), not that a part changed."""
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    message = str(error.get("Message", ""))
    return "same length" in message or "same size" in message


class S3Lock(LeasedLock["S3Store"]):
    """A held lease on one upload, and the write buffer of the request holding it."""

    _log = log

    def __init__(self, store: S3Store, record: dict[str, Any], etag: str, token: str) -> None:
        #: The body bytes not yet in a part: at most ``part_size`` of it in memory, the
        #: rest of a grown part in a spill file (``object.buffer``).
        self._buf = store.new_buffer()
        #: The stored tail segments not yet in a part (``tail`` in the record), read back
        #: only when a part is cut from them; and those cut into parts since the last
        #: commit (deleted once it is published).
        self._tail: list[Segment] = []
        self._tail_size = 0  # bytes in ``_tail``
        self._consumed: list[Segment] = []
        self._set_tail(segments_of(record))
        #: Parts uploading while the body streams in, and those uploaded since the last
        #: commit (``parts.done``).
        self.parts: PartUploads[Part] = PartUploads(store.part_concurrency)
        super().__init__(store, record, etag, token)

    # -- writing ----------------------------------------------------------------------

    def _set_tail(self, segments: list[Segment]) -> None:
        self._tail = segments
        self._tail_size = sum(segment["size"] for segment in segments)

    async def _take(self, size: int) -> ChunkBuffer:
        """The next ``size`` bytes of the upload as a part body: the tail segments (read
        back, or from this process's cache of what it wrote), then the buffer's first
        bytes. The segments move to ``_consumed``."""
        if not self._tail:
            return self._buf.take(size)
        # The part keeps at most part_size in memory: what the buffer holds, and as much
        # of the tail as fits besides (the rest of a grown part's tail spills).
        body = await self._read_segments(self._tail, self.store.part_size - self._buf.memory)
        self._consumed += self._tail
        self._set_tail([])
        body.extend(self._buf.take(size - len(body)))
        return body

    async def _read_segments(self, segments: list[Segment], memory: int) -> ChunkBuffer:
        """The stored bytes of ``segments``, at most ``memory`` of them in memory."""
        store = self.store
        body = store.new_buffer(limit=max(0, memory))
        for segment in segments:
            cached = store._tail_cache.pop(segment["key"], None)
            if cached is not None and cached[0] == segment.get("etag"):
                for chunk in cached[1]:  # this process wrote it: not read back
                    body.append(chunk)
                continue
            async with s3_errors("reading the incomplete part"):
                try:
                    r = await store.s3.get_object(Bucket=store.bucket, Key=segment["key"])
                except Exception as exc:
                    if error_code(exc)[0] in NOT_FOUND_CODES:
                        raise StorageError("the upload's incomplete part object is missing") from None
                    raise
                async with (stream := r["Body"]):
                    async for chunk in stream.iter_chunks(_TAIL_CHUNK):
                        body.append(chunk)
        if len(body) != sum(segment["size"] for segment in segments):
            body.clear()
            raise StorageError("the upload's incomplete part object has the wrong size")
        return body

    def _next_part_number(self) -> int:
        return len(self.record["parts"]) + self.parts.count + 1

    def _bytes_in_parts(self) -> int:
        return sum(p["size"] for p in self.record["parts"]) + self.parts.size

    @property
    def fixed_part_size(self) -> int | None:
        """The upload's one part size (equal-parts mode, fixed in the record when it was
        created); None: each part is sized when it is cut."""
        size = self.record.get("part_size")
        return int(size) if size else None

    def _check_capacity(self, end: int) -> None:
        """``SizeExceeded`` when an upload of equal parts cannot reach ``end`` bytes."""
        fixed, max_parts = self.fixed_part_size, self.store.max_parts
        if fixed is not None and end > fixed * max_parts:
            raise SizeExceeded(equal_parts_exceeded(fixed, max_parts))

    def _target(self) -> int:
        fixed = self.fixed_part_size
        if fixed is not None:
            if self._next_part_number() > self.store.max_parts:
                raise SizeExceeded(equal_parts_exceeded(fixed, self.store.max_parts))
            return fixed
        length = self.upload.length
        return part_size_for(self._next_part_number(), base=self.store.part_size,
                             length=length, done=self._bytes_in_parts(),
                             max_parts=self.store.max_parts)

    async def write(self, data: bytes) -> None:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        self._check_capacity(self.upload.offset + self.written + len(data))
        self._buf.append(data)
        self.written += len(data)
        while (pending := self._tail_size + len(self._buf)) >= MIN_PART_SIZE:
            target = self._target()
            if pending < target:
                break
            await self._cut(target)

    async def _cut(self, size: int) -> None:
        """Start uploading the upload's next ``size`` bytes (``_take``) as the next part."""
        await self.parts.room()
        self._check_lease()
        await self._ensure_mpu()
        body = await self._take(size)  # the chunks themselves: no copy of the part
        await self.store.park(body, self.parts)
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
                **store.object_args(self.upload.metadata))
        # Recorded at once, so a crash before the next commit cannot orphan it.
        await self.publish(mpu=r["UploadId"])

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        changes, complete = self._commit_changes(length, expires_at)
        if length is not None:
            self._check_capacity(length)
        written: tuple[Segment, list[bytes]] | None = None
        if complete or self.written:
            await self.parts.collect()
            self._check_lease()
            if complete:
                changes.update(await self._finish(changes), completed_at=time.time(),
                               tail=None, mpu=None, parts=[], completing=None)
            else:
                pending = self._tail_size + len(self._buf)
                if (pending >= MIN_PART_SIZE and self.fixed_part_size is None
                        and self._next_part_number() <= self.store.max_parts // 2):
                    # Keep the tail in a part once it reaches S3's minimum: its bytes are
                    # sent once more now rather than later, and this PATCH's only once.
                    await self._cut(pending)
                    await self.parts.collect()
                elif self._buf:
                    written = await self._store_segment()
                    self._set_tail([*self._tail, written[0]])
                changes["parts"] = [*self.record["parts"], *self.parts.done]
                changes["tail"] = list(self._tail) or None
        await self.publish(**changes)
        self.parts.clear()
        self.written = 0
        self._buf.clear()
        store = self.store
        if written is not None:
            store._cache_segment(written[0], written[1])
        consumed, self._consumed = self._consumed, []
        for segment in consumed:
            with contextlib.suppress(Exception):  # a leftover is removed by the audit
                await store.s3.delete_object(Bucket=store.bucket, Key=segment["key"])
        return self.upload

    async def _store_segment(self) -> tuple[Segment, list[bytes]]:
        """Put the buffer as a new tail segment (a name of its own: no stored byte is
        ever overwritten); the segment, and its chunks if they are all in memory."""
        store = self.store
        start = self.upload.offset + self.written - len(self._buf)
        key = store.segment_key(self.upload.id, start)
        size = len(self._buf)
        async with self.bounded("storing the incomplete part"), \
                s3_errors("storing the incomplete part"):
            with self._reader() as reader:
                r = await store.s3.put_object(Bucket=store.bucket, Key=key, Body=reader,
                                              ContentLength=size, **store.write_args())
        chunks = [c for c in self._buf.chunks() if isinstance(c, bytes)]
        return {"key": key, "size": size, "etag": str(r["ETag"])}, chunks

    def _reader(self) -> ChunksReader:
        return ChunksReader(self._buf.chunks())

    async def _finish(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Make the final object from the published and collected parts and the buffer."""
        store = self.store
        key = store.key(self.upload.id)
        parts = [*self.record["parts"], *self.parts.done]
        mpu = self.record.get("mpu")
        rest = self._tail_size + len(self._buf)
        if mpu is None:
            body = await self._take(rest)
            try:
                async with self.bounded("completing an upload"), \
                        s3_errors("completing an upload"):
                    with ChunksReader(body.chunks()) as reader:
                        r = await store.s3.put_object(Bucket=store.bucket, Key=key, Body=reader,
                                                      ContentLength=rest,
                                                      **store.object_args(self.upload.metadata))
            finally:
                body.clear()
            return {"object_etag": r["ETag"]}
        if rest or not parts:
            number = len(parts) + 1
            if number > store.max_parts:
                raise StorageError("too many parts for one S3 object")
            parts.append(await self._upload_part(number, await self._take(rest)))
        # Record that every byte is in a part before completing: if the process dies
        # after CompleteMultipartUpload, the next lock (or HEAD) finishes the job
        # instead of finding a record that points at a multipart upload that is gone.
        await self.publish(**changes, parts=parts, tail=None, completing=True)
        self.parts.clear()
        try:
            return {"object_etag": await self._complete_mpu(mpu, parts)}
        except _UnequalParts:
            await self.publish(completing=None)  # not retried by every HEAD; deletable
            raise StorageError(UNEQUAL_PARTS) from None
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
                if code == "InvalidPart" and _wants_equal_parts(exc):
                    raise _UnequalParts() from None
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
        self._set_tail([])  # no tail: the next bytes start part ``number``
        self._consumed = []
        return offset

    async def finish_completion(self) -> None:
        """Complete a multipart upload whose record says ``completing`` (see ``_finish``)."""
        mpu, parts = self.record["mpu"], self.record["parts"]
        try:
            etag = await self._complete_mpu(mpu, parts)
        except _UnequalParts:
            log.error("upload %s: %s", self.upload.id, UNEQUAL_PARTS)
            await self.publish(completing=None)
            return
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
        self._set_tail(segments_of(self.record))
        self._consumed = []

    def _released(self) -> None:
        self._buf.clear()
