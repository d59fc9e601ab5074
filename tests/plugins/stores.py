"""Driver-level test helpers shared by every store's tests: start stores and always stop
them, create an upload, write one PATCH's worth of bytes, read a finished upload back.

Each driver's ``make_store`` fixture is ``started_stores()`` around its own constructor.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from tusd_py.storage.base import Store, Upload, UploadLock
from tusd_py.storage.ids import new_upload_id

S = TypeVar("S", bound=Store)


@contextlib.asynccontextmanager
async def started_stores() -> AsyncIterator[Callable[[S], Awaitable[S]]]:
    """``start(store)`` starts a store; every one started is stopped when the block ends,
    pass or fail (an unclosed connection thread would keep the test process alive)."""
    stores: list[Store] = []

    async def start(store: S) -> S:
        await store.start()
        stores.append(store)
        return store

    try:
        yield start
    finally:
        for store in stores:
            await store.stop()


async def new_upload(store: Store, length: int | None, **fields: Any) -> Upload:
    return await store.create(Upload(id=new_upload_id(), length=length, created_at=time.time(),
                                     **fields))


async def stream(lock: UploadLock, data: bytes, piece: int = 64 * 1024) -> None:
    """Feed ``data`` to a held lock in ``piece``-sized chunks, as handlers do."""
    for i in range(0, len(data), piece):
        await lock.write(data[i:i + piece])


async def write(store: Store, upload_id: str, data: bytes, *, length: int | None = None,
                piece: int = 64 * 1024) -> Upload:
    """One PATCH: lock, stream in chunks (as handlers do), commit, release."""
    lock = await store.lock(upload_id, 1)
    try:
        await stream(lock, data, piece)
        return await lock.commit(length=length)
    finally:
        await lock.release()


async def read_all(store: Store, upload: Upload) -> bytes:
    download = await store.download(upload)
    return b"".join([chunk async for chunk in download.read(0, download.size)])
