"""The in-memory driver: the whole contract, every capability, in about 200 lines.

Records and bytes live in this process's memory and are gone when it exits, so it serves
tests, trying tusd-py out, and driver authors, for whom it is the reference: each method
below is what a driver must do, with nothing else in the way (docs/internals.md, "Writing
a driver"). One process only: its lock is an ``asyncio.Lock`` per upload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ...protocol.errors import MismatchedOffset, NotFound, UploadBusy, UploadExists
from ..base import Download, Store, Upload, UploadLock
from ..ids import check_upload_id

_READ_CHUNK = 64 * 1024


class MemoryStore(Store):
    name = "memory"

    def __init__(self) -> None:
        self._records: dict[str, Upload] = {}
        self._data: dict[str, bytearray] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ping(self) -> None:
        return None

    # -- the required contract --------------------------------------------------

    async def create(self, upload: Upload) -> Upload:
        if upload.id in self._records:
            raise UploadExists()
        upload = upload.copy(location=f"memory:{upload.id}")
        self._records[upload.id] = upload
        self._data[upload.id] = bytearray()
        self._locks[upload.id] = asyncio.Lock()
        return upload

    async def get(self, upload_id: str) -> Upload | None:
        return self._records.get(check_upload_id(upload_id))

    async def lock(self, upload_id: str, wait: float) -> MemoryLock:
        lock = self._locks.get(check_upload_id(upload_id))
        if lock is None:
            raise NotFound()
        if lock.locked():
            if wait <= 0:
                raise UploadBusy()
            try:
                await asyncio.wait_for(lock.acquire(), wait)
            except TimeoutError:
                raise UploadBusy() from None
        else:
            await lock.acquire()  # free: taken at once, without yielding
        upload = self._records.get(upload_id)
        if upload is None:  # terminated while we waited
            lock.release()
            raise NotFound()
        return MemoryLock(self, upload, lock)

    def _commit(self, lock: MemoryLock, length: int | None,
                expires_at: float | None) -> Upload:
        """The compare-and-set: publish ``lock``'s bytes if the record is as it read it."""
        upload = lock.upload
        current = self._records.get(upload.id)
        if current is None or current.offset != upload.offset or current.length != upload.length:
            raise MismatchedOffset("upload changed underneath the lock")
        data = self._data[upload.id]
        for chunk in lock.pending:
            data += chunk
        new_length = length if length is not None else upload.length
        new_offset = len(data)
        complete = new_length is not None and new_offset == new_length
        committed = upload.copy(offset=new_offset, length=new_length, expires_at=expires_at,
                                completed_at=time.time() if complete else None)
        self._records[upload.id] = committed
        return committed

    # -- optional capabilities --------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        self._records.pop(upload_id, None)
        self._data.pop(upload_id, None)
        self._locks.pop(upload_id, None)

    async def concatenate(self, final: Upload, partials: list[Upload]) -> Upload:
        data = bytearray()
        for partial in partials:
            data += self._data[partial.id][:partial.offset]
        self._data[final.id] = data
        final = final.copy(length=len(data), offset=len(data), completed_at=time.time())
        self._records[final.id] = final
        return final

    async def expired(self, now: float, limit: int = 1000) -> list[str]:
        return [u.id for u in self._records.values() if u.is_expired(now)][:limit]

    async def download(self, upload: Upload) -> Download:
        return MemoryDownload(self._data[upload.id], upload)

    async def owed_finishes(self, before: float, limit: int = 100) -> list[str]:
        owed = sorted((u.completed_at, u.id) for u in self._records.values()
                      if u.finish_owed and u.completed_at is not None and u.completed_at < before)
        return [upload_id for _, upload_id in owed[:limit]]

    async def clear_finish_owed(self, lock: UploadLock) -> Upload:
        lock.upload = lock.upload.copy(finish_owed=False)
        self._records[lock.upload.id] = lock.upload
        return lock.upload


class MemoryLock(UploadLock):
    """The held ``asyncio.Lock`` of one upload and the bytes written under it."""

    def __init__(self, store: MemoryStore, upload: Upload, lock: asyncio.Lock) -> None:
        self.store = store
        self.upload = upload
        self.written = 0
        #: Written, not yet committed: invisible to readers until ``commit``.
        self.pending: list[bytes] = []
        self._lock: asyncio.Lock | None = lock

    async def write(self, data: bytes) -> None:
        self.pending.append(data)
        self.written += len(data)

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        self.upload = self.store._commit(self, length, expires_at)
        self.pending, self.written = [], 0
        return self.upload

    async def rollback(self) -> None:
        self.pending, self.written = [], 0

    async def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class MemoryDownload(Download):
    def __init__(self, data: bytearray, upload: Upload) -> None:
        super().__init__(size=upload.offset, etag=f'"{upload.id}-{upload.offset}"',
                         last_modified=upload.completed_at or upload.created_at)
        self._bytes = data

    async def read(self, start: int, length: int) -> AsyncIterator[bytes]:
        end = start + length
        for position in range(start, end, _READ_CHUNK):
            yield bytes(self._bytes[position:min(position + _READ_CHUNK, end)])
