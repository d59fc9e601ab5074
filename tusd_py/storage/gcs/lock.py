"""The GCS driver's write lock: the record's lease plus the request's part uploads. Full
parts upload (from the body chunks as received) while the body streams in; ``commit``
uploads the remainder as a smaller part and publishes the part list (kept short by
server-side composes) and offset in one conditional write of the record.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, TypedDict

from ...protocol.errors import UploadBusy
from ..base import Upload
from ..object.buffer import ChunkBuffer, ChunksReader
from ..object.lease import LeasedLock, holder_of
from ..object.parts import PartUploads
from .client import COMPOSE_LIMIT, etag_of, object_headers

if TYPE_CHECKING:
    from .store import GCSStore

log = logging.getLogger(__name__)

#: The published part list is compacted (32 parts composed into one) beyond this.
_MAX_LISTED_PARTS = 2 * COMPOSE_LIMIT


class Part(TypedDict):
    name: str
    size: int


class GCSLock(LeasedLock["GCSStore"]):
    """A held lease on one upload, and the write buffer of the request holding it."""

    _log = log

    def __init__(self, store: GCSStore, record: dict[str, Any], generation: str,
                 token: str) -> None:
        #: Body bytes not yet in a part, as received (no copy is made of a part).
        self._buf = store.new_buffer()
        #: Parts uploading (``part_concurrency`` at most) while the next one fills, and
        #: the parts uploaded since the last commit (``parts.done``).
        self.parts: PartUploads[Part] = PartUploads(store.part_concurrency)
        super().__init__(store, record, generation, token)

    def _merges(self, current: dict[str, Any]) -> bool:
        """Without a nonce, only a record that still names our lease at our revision was
        changed by a waiter alone (our own landed write is found by ``own_write``)."""
        return bool(holder_of(current) == self.token and current.get("rev") == self.record["rev"])

    # -- writing ----------------------------------------------------------------------

    def _next_index(self) -> int:
        return len(self.record["parts"]) + self.parts.count

    async def write(self, data: bytes) -> None:
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        self._buf.append(data)
        self.written += len(data)
        size = self.store.part_size
        while len(self._buf) >= size:
            await self._cut(size)

    async def _cut(self, size: int) -> None:
        """Start uploading the first ``size`` bytes of the buffer as the next part."""
        await self.parts.room()
        await self._compact()
        self._check_lease()
        body = self._buf.take(size)  # the chunks themselves: no copy of the part
        await self.store.park(body, self.parts)
        name = self.store.part_name(self.upload.id, self._next_index())
        self.parts.start(self._upload(name, body), size)

    async def _upload(self, name: str, body: ChunkBuffer) -> Part:
        """Upload ``body`` as the part object ``name``, then free it."""
        try:
            with ChunksReader(body.chunks()) as reader:
                await self.store.bucket.put(name, reader, what="uploading a part")
            return {"name": name, "size": len(body)}
        finally:
            body.clear()

    async def _collect(self) -> None:
        """Wait for the parts in flight and collect them (``_compact``)."""
        await self.parts.collect()
        await self._compact()

    async def _compact(self) -> None:
        """Compose the first 32 collected parts into one, while there are 32 (they are not
        published yet, so the originals go at once); the rest, and the parts still in
        flight, come after them (a collect can bring up to ``part_concurrency`` at once)."""
        parts = self.parts
        while len(parts.done) >= COMPOSE_LIMIT:
            self._check_lease()
            head, rest = parts.done[:COMPOSE_LIMIT], parts.done[COMPOSE_LIMIT:]
            parts.done = [await self._compose(head), *rest]
            await self.store.delete_quietly(p["name"] for p in head)

    async def _compose(self, parts: list[Part]) -> Part:
        name = self.store.part_name(self.upload.id, self._next_index())
        await self.store.bucket.compose(name, [p["name"] for p in parts],
                                        what="composing parts")
        return {"name": name, "size": sum(p["size"] for p in parts)}

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
            await self._collect()
            if self._buf:  # the remainder becomes a (smaller) part: nothing stays in memory
                await self._cut(len(self._buf))
                await self.parts.collect()
            self._check_lease()
            published: list[Part] = self.record["parts"]
            if complete:
                changes.update(parts=[*published, *self.parts.done], completing=True)
            else:
                changes["parts"], garbage = await self._tidy(published, self.parts.done)
        await self.publish(**changes)
        self.parts.clear()
        self.written = 0
        await self.store.delete_quietly(garbage)
        if complete:
            await self.finish_completion()
        return self.upload

    async def finish_completion(self) -> None:
        """Compose the parts of a record that says ``completing`` into the final object,
        record the finished upload, then delete the parts."""
        store = self.store
        parts: list[Part] = self.record["parts"]
        headers = object_headers(self.upload.metadata)
        key = store.key(self.upload.id)
        self._check_lease()
        if parts:
            result = await store.compose_all(self.upload.id, key, [p["name"] for p in parts],
                                             headers=headers, what="completing an upload")
        else:
            result = await store.bucket.put_replacing(key, b"", what="completing an upload",
                                                      headers=headers)
        await self.publish(completed_at=time.time(), object_etag=etag_of(result), parts=[],
                           completing=None)
        await store.delete_quietly(p["name"] for p in parts)

    async def rollback(self) -> None:
        """Forget what this request wrote; its unpublished parts are deleted."""
        with contextlib.suppress(Exception):
            await self._collect()  # let the part in flight land, so it is deleted too
        done = self.parts.done
        self.parts.clear()
        self.written = 0
        self._buf.clear()
        await self.store.delete_quietly(p["name"] for p in done)
