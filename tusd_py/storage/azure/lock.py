"""The Azure driver's write lock: the record's lease plus the request's block stagings.
Full blocks are staged while the body streams in; ``commit`` stages the remainder as a
short block and publishes the block ids and offset in one conditional write of the
record; completion commits the blocks as the blob.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions

from ...protocol.errors import StorageError, UploadBusy
from ..base import Upload
from ..object.buffer import ChunkBuffer, ChunksReader
from ..object.lease import LeasedLock
from ..object.parts import PartUploads
from .errors import (
    CONFLICT_CODES,
    azure_errors,
    blob_headers,
    block_count,
    block_id,
    block_ids,
    block_list,
    block_runs,
    error_code,
)
from .sizing import block_size_for

if TYPE_CHECKING:
    from .store import AzureStore

log = logging.getLogger(__name__)


class AzureLock(LeasedLock["AzureStore"]):
    """A held lease on one upload, and the write buffer of the request holding it."""

    _log = log

    def __init__(self, store: AzureStore, record: dict[str, Any], etag: str, token: str) -> None:
        #: Body bytes not yet in a block, as received (no copy is made of a block).
        self._buf = store.new_buffer()
        self._numbers = 0  # block ids used under this lease
        #: Blocks staging (``part_concurrency`` at most) while the next one fills, and the
        #: numbers of the blocks staged since the last commit (``parts.done``).
        self.parts: PartUploads[int] = PartUploads(store.part_concurrency)
        super().__init__(store, record, etag, token)

    # -- writing ----------------------------------------------------------------------

    def _used_blocks(self) -> int:
        return block_count(self.record["blocks"]) + self.parts.count

    def _bytes_in_blocks(self) -> int:
        return self.upload.offset + self.written - len(self._buf)

    def _target(self) -> int:
        return block_size_for(self._used_blocks(), base=self.store.part_size,
                              length=self.upload.length, done=self._bytes_in_blocks())

    async def write(self, data: bytes) -> None:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        self._buf.append(data)
        self.written += len(data)
        while self._buf:
            target = self._target()
            if len(self._buf) < target:
                break
            await self._cut(target)

    async def _cut(self, size: int) -> None:
        """Start staging the first ``size`` bytes of the buffer as the next block."""
        await self.parts.room()
        self._check_lease()
        body = self._buf.take(size)  # the chunks themselves: no copy of the block
        await self.store.park(body, self.parts)
        number = self._numbers
        self._numbers += 1
        self.parts.start(self._stage(number, body), size)

    async def _stage(self, number: int, body: ChunkBuffer) -> int:
        """Stage ``body`` as block ``number`` of this lease, then free it; returns the
        number. (The SDK's retries seek the reader back to its start.)"""
        try:
            async with azure_errors("staging a block"):
                with ChunksReader(body.chunks()) as reader:
                    await self.store.blob(self.upload.id).stage_block(
                        block_id(self.token, number), reader, length=len(body))
        finally:
            body.clear()
        return number

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        changes, complete = self._commit_changes(length, expires_at)
        if self.written or complete:
            await self.parts.collect()
            if self._buf:  # the short block: nothing received is lost across replicas
                self._check_lease()
                await self._cut(len(self._buf))
                await self.parts.collect()
            self._check_lease()
            changes["blocks"] = block_runs(self.record["blocks"], self.token, self.parts.done)
            if complete:
                # Published with every block before Put Block List: a crash in between
                # is finished by the next lock (see finish_completion).
                await self.publish(**changes, completing=True)
                self.parts.clear()
                self.written = 0
                await self.finish_completion()
                return self.upload
        await self.publish(**changes)
        self.parts.clear()
        self.written = 0
        return self.upload

    async def finish_completion(self) -> None:
        """Commit the record's blocks as the blob (``If-None-Match: *``: a second commit,
        by a writer that died half-way or lost its lease, cannot replace the blob) and
        mark the record complete."""
        store = self.store
        blob = store.blob(self.upload.id)
        blocks = block_ids(self.record["blocks"])
        settings, metadata = blob_headers(self.upload.metadata, self.upload.id)
        async with azure_errors("completing an upload"):
            if not blocks:
                etag = await store.put_empty(self.upload)
            else:
                try:
                    r = await blob.commit_block_list(
                        block_list(blocks), metadata=metadata, content_settings=settings,
                        match_condition=MatchConditions.IfMissing, **store.write_args())
                    etag = str(r["etag"])
                except Exception as exc:
                    code, status = error_code(exc)
                    if code not in CONFLICT_CODES and status not in (409, 412):
                        raise
                    # Committed already, by a holder that died before recording it?
                    props = await blob.get_blob_properties()
                    if props.size != self.record["offset"]:
                        raise StorageError("the upload's blob exists with another size") from None
                    etag = str(props.etag)
        await self.publish(completed_at=time.time(), blob_etag=etag, blocks=[], completing=None)

    async def rollback(self) -> None:
        """Forget what this request wrote: its staged blocks stay unreferenced (Azure
        drops uncommitted blocks that are not in the list at completion)."""
        await self.drain()
        self.parts.clear()
        self.written = 0
        self._buf.clear()
