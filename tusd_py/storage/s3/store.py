"""S3 storage driver (aioboto3): stateless replicas over one bucket.

Per upload ``id`` under ``prefix``: ``{id}.info``, the record (the only source of
truth); ``{id}``, the multipart upload, then the final object; ``{id}.t{offset}-{random}``,
the segments of the incomplete tail (bytes past the last part; names never reused).
The write lock is in ``lock``, error translation in ``errors``, part sizing in
``sizing``; the part buffer is ``object.buffer``. With ``equal_parts`` every multipart
upload the store completes has all parts but the last of one size (Cloudflare R2).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import aioboto3
from botocore.config import Config as BotoConfig

from ...protocol.errors import (
    StorageError,
    UploadExists,
)
from ...protocol.headers import Metadata
from ..base import Download, Upload
from ..ids import is_upload_id, object_key
from ..object.buffer import ChunkBuffer, ChunksReader
from ..object.index import next_page
from ..object.lease import LeasedStore
from ..object.record import decode_upload, new_record
from .errors import (
    CONFLICT_CODES,
    NOT_FOUND_CODES,
    Conflict,
    Segment,
    error_code,
    object_headers,
    s3_errors,
    segments_of,
)
from .lock import S3Lock
from .sizing import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, equal_part_size

__all__ = ["S3Download", "S3Lock", "S3Store"]

log = logging.getLogger(__name__)

#: What follows ``{id}`` in the name of a tail segment (``.part``, ``.part.1``: written by
#: versions that kept the tail in one object of two slots).
_TAIL_SUFFIX = re.compile(r"\.t[0-9]{15}-[0-9a-f]{8}|\.part|\.part\.1")
_READ_CHUNK = 64 * 1024


class S3Store(LeasedStore[S3Lock]):
    name = "s3"
    lock_class = S3Lock
    _log = log

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, part_size: int = 8 << 20,
                 lease_duration: float = 10.0, max_parts: int = MAX_PARTS,
                 max_pool_connections: int = 64, retry_attempts: int = 5,
                 part_concurrency: int = 1, spill_dir: str | None = None,
                 server_side_encryption: str | None = None, sse_kms_key_id: str | None = None,
                 bucket_key_enabled: bool | None = None,
                 storage_class: str | None = None, equal_parts: bool = False) -> None:
        """The values come checked from ``config.S3Storage`` (part size within S3's limits;
        encryption and storage class are S3's own names, combined as S3 allows)."""
        super().__init__(lease_duration, prefix)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.max_parts = max_parts
        #: Parts uploaded at once per PATCH while the body keeps streaming in; memory per
        #: PATCH is at most (1 + part_concurrency) x part_size (+ one body chunk).
        self.part_concurrency = max(1, part_concurrency)
        #: Where the bytes of a grown part beyond part_size are spilled (anonymous temp
        #: files; None: the system's temp directory, TMPDIR).
        self.spill_dir = spill_dir
        self._write_args: dict[str, Any] = {
            key: value for key, value in (
                ("ServerSideEncryption", server_side_encryption),
                ("SSEKMSKeyId", sse_kms_key_id), ("BucketKeyEnabled", bucket_key_enabled),
                ("StorageClass", storage_class)) if value is not None}
        #: New uploads get one part size, fixed in their record (``sizing.equal_part_size``),
        #: and concatenation re-cuts partials into parts of one size.
        self.equal_parts = equal_parts
        self._boto_config = BotoConfig(
            # botocore's standard mode retries throttling, 5xx and connection errors
            # with exponential backoff and jitter.
            retries={"mode": "standard", "max_attempts": retry_attempts},
            connect_timeout=5, read_timeout=60, max_pool_connections=max_pool_connections,
            # Checksums only where S3 requires them: S3-compatible servers differ on the
            # newer flexible checksums, and parts are verified by their ETags at completion.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._s3: Any = None
        #: Tail segment key -> (ETag, bytes, size) of segments this process wrote, so a
        #: sticky client's PATCHes need not read them back (bounded: _tail_cache_budget).
        self._tail_cache: OrderedDict[str, tuple[str, list[bytes], int]] = OrderedDict()
        self._tail_cache_budget = 4 * part_size

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        session = aioboto3.Session(region_name=self.region)
        self._stack = contextlib.AsyncExitStack()
        self._s3 = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.endpoint_url, config=self._boto_config))
        try:
            await self.ping()
        except Exception as exc:  # start anyway; /readyz reports it until it works
            log.warning("S3 bucket %s is not reachable yet: %s", self.bucket, exc)

    async def stop(self) -> None:
        for lock in list(self._held.values()):
            await lock.release()
        if self._s3 is not None:
            await self.turns.give_back()
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self._s3 = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            raise StorageError("store is not started")
        return self._s3

    async def ping(self) -> None:
        async with s3_errors(f"access to bucket {self.bucket}"):
            await self.s3.head_bucket(Bucket=self.bucket)

    def new_buffer(self, chunks: list[bytes] | tuple[()] = (), *,
                   limit: int | None = None) -> ChunkBuffer:
        """A part buffer keeping at most ``limit`` (default ``part_size``) in memory; the
        rest spills."""
        return ChunkBuffer(chunks, limit=self.part_size if limit is None else limit,
                           spill_dir=self.spill_dir, gauge=self.buffer_gauge)

    def write_args(self) -> dict[str, Any]:
        """The encryption and storage class arguments of every request that makes an
        object (PutObject, CreateMultipartUpload): what a bucket policy may demand. Parts
        (UploadPart, UploadPartCopy) take their multipart upload's."""
        return dict(self._write_args)

    def object_args(self, metadata: Metadata) -> dict[str, Any]:
        """The arguments of a request that makes an upload's final object: its metadata
        headers and ``write_args``."""
        return {**object_headers(metadata), **self._write_args}

    def _cache_segment(self, segment: Segment, data: list[bytes]) -> None:
        """Remember the bytes of a tail segment this process wrote (oldest dropped first
        beyond the budget)."""
        size = sum(len(c) for c in data)
        if size != segment["size"] or size > self._tail_cache_budget:
            return
        cache = self._tail_cache
        cache[segment["key"]] = (segment["etag"], data, size)
        used = sum(entry[2] for entry in cache.values())
        while used > self._tail_cache_budget:
            _, (_, _, dropped) = cache.popitem(last=False)
            used -= dropped

    # -- keys ---------------------------------------------------------------------

    def key(self, upload_id: str) -> str:
        return object_key(self.prefix, upload_id)

    def segment_key(self, upload_id: str, offset: int) -> str:
        """A new tail segment's key: its offset in the upload, and a random part."""
        return f"{self.key(upload_id)}.t{offset:015d}-{uuid.uuid4().hex[:8]}"

    def _location(self, upload_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(upload_id)}"

    # -- small objects (records, index markers, turns) ------------------------------

    async def read_object(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(content, ETag), or None if there is no such object."""
        async with s3_errors(what):
            try:
                r = await self.s3.get_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if error_code(exc)[0] in NOT_FOUND_CODES:
                    return None
                raise
            async with (body := r["Body"]):
                data = await body.read()
        return data, r["ETag"]

    async def write_object(self, key: str, data: bytes, *, etag: str | None, what: str) -> str:
        """Conditional put: ``If-Match: etag``, or ``If-None-Match: *`` when ``etag`` is
        None. Returns the new ETag; raises ``Conflict`` if the condition failed."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        async with s3_errors(what):
            try:
                r = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data,
                                             ContentType="application/json", **condition,
                                             **self.write_args())
            except Exception as exc:
                code = error_code(exc)[0]
                if code in CONFLICT_CODES or (etag is not None and code in NOT_FOUND_CODES):
                    raise Conflict(code) from None
                raise
        return str(r["ETag"])

    async def put_marker(self, key: str) -> None:
        async with s3_errors("writing an index marker"):
            await self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"", **self.write_args())

    async def delete_object(self, key: str, what: str) -> None:
        async with s3_errors(what):
            await self.s3.delete_object(Bucket=self.bucket, Key=key)

    async def list_keys(self, prefix: str, *, page: int = 1000,
                        end: str | None = None) -> AsyncIterator[tuple[str, float]]:
        """ListObjectsV2 pages, fetched as the caller goes on."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            async with s3_errors("listing objects"):
                r = await self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix,
                                                  MaxKeys=page, **extra)
            for obj in r.get("Contents", ()):
                yield obj["Key"], obj["LastModified"].timestamp()
            token = r.get("NextContinuationToken")
            if not r.get("IsTruncated") or not token:
                return
            page = next_page(page)

    def decode_record(self, record: dict[str, Any]) -> Upload:
        return decode_upload(record, self._location(record["id"]))

    # -- Store ----------------------------------------------------------------------

    async def create(self, upload: Upload) -> Upload:
        record = new_record(
            upload,
            mpu=None,  # multipart upload id, once the first full part is written
            parts=[],  # published parts: [{"n", "etag", "size"}]
            tail=None,  # {"key": ..., "size": ...}: bytes that do not fill a part yet
            object_etag=None,  # ETag of the final object once complete
            # equal-parts mode: the size of every part but the last (None: sized per part)
            part_size=equal_part_size(base=self.part_size, length=upload.length,
                                      max_parts=self.max_parts) if self.equal_parts else None,
        )
        key = self.key(upload.id)
        if upload.is_complete:  # zero-length upload: the (empty) object exists at once
            async with s3_errors("creating an upload"):
                try:
                    r = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"",
                                                 IfNoneMatch="*", **self.object_args(upload.metadata))
                except Exception as exc:
                    if error_code(exc)[0] in CONFLICT_CODES:
                        raise UploadExists() from None
                    raise
            record["object_etag"] = r["ETag"]
        await self.index_new(record)
        try:
            await self.write_record(upload.id, record, etag=None)
        except Conflict:
            if upload.is_complete:  # the id's other upload had no object yet: not ours
                with contextlib.suppress(Exception):
                    await self.s3.delete_object(Bucket=self.bucket, Key=key)
            raise UploadExists() from None
        return upload.copy(location=self._location(upload.id))

    # -- optional capabilities ----------------------------------------------------

    async def clean_leftovers(self, upload_id: str, *, keep_upload: bool = False) -> int:
        """Abort the upload's multipart uploads and delete its objects (one
        ListMultipartUploads and one LIST, scoped to the upload)."""
        key = self.key(upload_id)
        keep = {key, self.record_key(upload_id)} if keep_upload else set()
        removed = 0
        async with s3_errors("removing an upload's leftovers"):
            r = await self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for mpu in r.get("Uploads", ()):
                if mpu["Key"] == key:
                    await self._abort(key, mpu["UploadId"])
                    removed += 1
        async for name, _ in self.list_keys(key):
            if (name == key or name.startswith(key + ".")) and name not in keep:
                await self.delete_object(name, "removing an upload's leftovers")
                removed += 1
        return removed

    async def _abort(self, key: str, mpu: str) -> None:
        try:
            await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=mpu)
        except Exception as exc:
            if error_code(exc)[0] not in ("NoSuchUpload", *NOT_FOUND_CODES):
                raise

    async def concatenate(self, final: Upload, partials: list[Upload]) -> Upload:
        """Server-side: UploadPartCopy of each partial (ranges of at most 5 GiB); partials,
        or remainders, under 5 MiB are read and re-uploaded through a buffer of at most
        5 MiB, since only the last part may be smaller. With ``equal_parts``: re-cut into
        parts of one size (``_concatenate_equal``)."""
        lock = self._held.get(final.id)
        if lock is None:
            raise StorageError("concatenate needs the final upload's lock")
        if self.equal_parts:
            object_etag = await self._concatenate_equal(final, partials)
            return await self._concatenated(lock, final, sum(p.offset for p in partials),
                                            object_etag)
        key = self.key(final.id)
        headers = self.object_args(final.metadata)
        mpu: str | None = None
        parts: list[dict[str, Any]] = []
        buf = bytearray()

        async def start_mpu() -> str:
            nonlocal mpu
            if mpu is None:
                r = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, **headers)
                mpu = str(r["UploadId"])
            return mpu

        async def flush() -> None:
            upload_id = await start_mpu()
            number = len(parts) + 1
            r = await self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                          PartNumber=number, Body=bytes(buf))
            parts.append({"PartNumber": number, "ETag": r["ETag"]})
            buf.clear()

        async def read_into(source: str, start: int, length: int) -> None:
            r = await self.s3.get_object(Bucket=self.bucket, Key=source,
                                         Range=f"bytes={start}-{start + length - 1}")
            async with (body := r["Body"]):
                buf.extend(await body.read())

        total = sum(p.offset for p in partials)
        try:
            async with s3_errors("concatenating uploads"):
                for index, partial in enumerate(partials):
                    source, size, pos = self.key(partial.id), partial.offset, 0
                    last = index == len(partials) - 1
                    if buf and size:
                        take = min(size, MIN_PART_SIZE - len(buf))
                        await read_into(source, 0, take)
                        pos = take
                        if len(buf) >= MIN_PART_SIZE:
                            await flush()
                    remaining = size - pos
                    if not remaining:
                        continue
                    if remaining >= MIN_PART_SIZE or (last and not buf and (parts or mpu)):
                        count = -(-remaining // MAX_PART_SIZE)
                        step = -(-remaining // count)
                        upload_id = await start_mpu()
                        for start in range(pos, size, step):
                            end = min(start + step, size) - 1
                            number = len(parts) + 1
                            r = await self.s3.upload_part_copy(
                                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                CopySource={"Bucket": self.bucket, "Key": source},
                                CopySourceRange=f"bytes={start}-{end}")
                            parts.append({"PartNumber": number,
                                          "ETag": r["CopyPartResult"]["ETag"]})
                    else:
                        await read_into(source, pos, remaining)
                if len(parts) + (1 if buf else 0) > self.max_parts:
                    raise StorageError("too many parts for one S3 object")
                if mpu is not None:
                    if buf:
                        await flush()
                    r = await self.s3.complete_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=mpu, MultipartUpload={"Parts": parts})
                else:
                    r = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buf),
                                                 **headers)
                object_etag = r["ETag"]
        except BaseException:
            if mpu is not None:
                with contextlib.suppress(Exception):
                    await self._abort(key, mpu)
            raise
        return await self._concatenated(lock, final, total, object_etag)

    async def _concatenated(self, lock: S3Lock, final: Upload, total: int,
                            object_etag: str) -> Upload:
        """Publish a final upload whose object was assembled (``total`` bytes)."""
        await lock.publish(length=total, offset=total, completed_at=time.time(),
                           expires_at=final.expires_at, object_etag=object_etag)
        return lock.upload

    async def _concatenate_equal(self, final: Upload, partials: list[Upload]) -> str:
        """Assemble a final in parts of one size (``equal_part_size`` of the total); its
        ETag. A part within one partial is a ranged UploadPartCopy; one spanning partials
        is read and uploaded through a part buffer (at most ``part_size`` in memory, the
        rest spills)."""
        key = self.key(final.id)
        headers = self.object_args(final.metadata)
        pieces = [(self.key(p.id), p.offset) for p in partials if p.offset]
        total = sum(size for _, size in pieces)
        size = equal_part_size(base=self.part_size, length=total, max_parts=self.max_parts)
        mpu: str | None = None
        parts: list[dict[str, Any]] = []
        object_etag = ""
        try:
            async with s3_errors("concatenating uploads"):
                if not total:
                    r = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"", **headers)
                    object_etag = r["ETag"]
                for start in range(0, total, size):
                    end = min(start + size, total)
                    spans = _spans(pieces, start, end)
                    if len(spans) > 1 and end == total and mpu is None:  # one part: one put
                        object_etag = await self._put_spans(key, spans, end - start, final.metadata)
                        break
                    if mpu is None:
                        r = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                                  **headers)
                        mpu = str(r["UploadId"])
                    number = len(parts) + 1
                    if len(spans) == 1:
                        source, first, stop = spans[0]
                        r = await self.s3.upload_part_copy(
                            Bucket=self.bucket, Key=key, UploadId=mpu, PartNumber=number,
                            CopySource={"Bucket": self.bucket, "Key": source},
                            CopySourceRange=f"bytes={first}-{stop - 1}")
                        etag = r["CopyPartResult"]["ETag"]
                    else:
                        body = await self._read_spans(spans, end - start)
                        try:
                            with ChunksReader(body.chunks()) as reader:
                                r = await self.s3.upload_part(
                                    Bucket=self.bucket, Key=key, UploadId=mpu,
                                    PartNumber=number, Body=reader, ContentLength=end - start)
                        finally:
                            body.clear()
                        etag = r["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
                if mpu is not None:
                    r = await self.s3.complete_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=mpu, MultipartUpload={"Parts": parts})
                    object_etag = r["ETag"]
        except BaseException:
            if mpu is not None:  # whatever was copied is junk
                with contextlib.suppress(Exception):
                    await self._abort(key, mpu)
            raise
        return str(object_etag)

    async def _read_spans(self, spans: list[tuple[str, int, int]], size: int) -> ChunkBuffer:
        """The bytes of ``spans`` ((key, start, end) ranges of objects) in a part buffer."""
        body = self.new_buffer()
        try:
            for source, first, stop in spans:
                r = await self.s3.get_object(Bucket=self.bucket, Key=source,
                                             Range=f"bytes={first}-{stop - 1}")
                async with (stream := r["Body"]):
                    async for chunk in stream.iter_chunks(_READ_CHUNK):
                        body.append(chunk)
            if len(body) != size:
                raise StorageError("a partial upload is shorter than its record says")
        except BaseException:
            body.clear()
            raise
        return body

    async def _put_spans(self, key: str, spans: list[tuple[str, int, int]], size: int,
                         metadata: Metadata) -> str:
        """PutObject of the bytes of ``spans`` (a final of one part); its ETag."""
        headers = self.object_args(metadata)
        body = await self._read_spans(spans, size)
        try:
            with ChunksReader(body.chunks()) as reader:
                r = await self.s3.put_object(Bucket=self.bucket, Key=key, Body=reader,
                                             ContentLength=size, **headers)
        finally:
            body.clear()
        return str(r["ETag"])

    async def sweep_extra(self, now: float) -> int:
        """Abort multipart uploads nobody owns and delete stray tail objects.

        A multipart upload under the prefix is dangling when its ``.info`` is gone, or
        names another multipart upload and nobody holds a live lease on it (a writer that
        died between creating one and recording it). Returns how many objects/uploads
        were removed.
        """
        removed = 0
        records: dict[str, dict[str, Any] | None] = {}

        async def record_of(upload_id: str) -> dict[str, Any] | None:
            if upload_id not in records:
                found = await self.read_record(upload_id)
                records[upload_id] = found[0] if found else None
            return records[upload_id]

        def idle(record: dict[str, Any] | None) -> bool:
            lease = (record or {}).get("lease")
            return lease is None or lease["until"] <= now

        grace = self.lease_duration
        async with s3_errors("sweeping multipart uploads"):
            paginator = self.s3.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for mpu in page.get("Uploads", ()):
                    upload_id = mpu["Key"][len(self.prefix):]
                    if not is_upload_id(upload_id):
                        continue
                    initiated = mpu.get("Initiated")
                    if initiated is not None and initiated.replace(
                            tzinfo=initiated.tzinfo or UTC).timestamp() > now - grace:
                        continue  # just created; its writer records it next
                    record = await record_of(upload_id)
                    if record is not None and (record.get("mpu") == mpu["UploadId"] or not idle(record)):
                        continue
                    await self._abort(mpu["Key"], mpu["UploadId"])
                    log.info("aborted dangling multipart upload for %s", upload_id)
                    removed += 1
            paginator = self.s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(self.prefix):]
                    upload_id, dot, rest = name.partition(".")
                    if not is_upload_id(upload_id) or not _TAIL_SUFFIX.fullmatch(dot + rest):
                        continue
                    if obj["LastModified"].timestamp() > now - grace:
                        continue
                    record = await record_of(upload_id)
                    listed = {segment["key"] for segment in segments_of(record or {})}
                    if record is not None and (obj["Key"] in listed or not idle(record)):
                        continue
                    await self.s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed += 1
        return removed

    async def download(self, upload: Upload) -> Download:
        found = await self.read_record(upload.id)
        etag = (found[0].get("object_etag") if found else None) or f'"{upload.id}-{upload.offset}"'
        return S3Download(size=upload.offset, etag=etag,
                          last_modified=upload.completed_at or upload.created_at,
                          store=self, key=self.key(upload.id))


def _spans(pieces: list[tuple[str, int]], start: int, end: int) -> list[tuple[str, int, int]]:
    """The ranges ``(key, first, stop)`` of ``pieces`` ((key, size), laid end to end)
    that bytes ``start .. end - 1`` of the whole are made of."""
    spans: list[tuple[str, int, int]] = []
    offset = 0
    for source, size in pieces:
        if offset + size > start and offset < end:
            spans.append((source, max(start, offset) - offset, min(end, offset + size) - offset))
        offset += size
        if offset >= end:
            break
    return spans


class S3Download(Download):
    def __init__(self, *, size: int, etag: str, last_modified: float, store: S3Store,
                 key: str) -> None:
        super().__init__(size=size, etag=etag, last_modified=last_modified)
        self.store = store
        self.key = key

    async def read(self, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start``: one ranged GET, passed through."""
        if length <= 0:
            return
        async with s3_errors("reading an upload"):
            r = await self.store.s3.get_object(Bucket=self.store.bucket, Key=self.key,
                                               Range=f"bytes={start}-{start + length - 1}")
            async with (body := r["Body"]):
                async for chunk in body.iter_chunks(_READ_CHUNK):
                    yield chunk
