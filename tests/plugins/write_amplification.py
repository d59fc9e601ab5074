"""Write amplification of small PATCHes (bytes the driver sends to the store per byte a
client sent), counted by a ``StoreProxy`` in front of the emulator; shared by the S3,
GCS and Azure tests."""

from __future__ import annotations

import os

from tests.plugins.proxy import StoreProxy
from tests.plugins.stores import new_upload, read_all, write
from tusd_py.storage.base import Store


async def amplification(store: Store, proxy: StoreProxy, *, patch: int, patches: int) -> float:
    """Upload ``patches`` PATCHes of ``patch`` bytes (the last completes the upload);
    returns request body bytes sent to the store / bytes uploaded. The bytes come back
    intact."""
    data = os.urandom(patch * patches)
    upload = await new_upload(store, len(data))
    proxy.log.clear()
    for start in range(0, len(data), patch):
        done = await write(store, upload.id, data[start:start + patch])
    sent = sum(f.sent for f in proxy.log)
    assert done.is_complete
    assert await read_all(store, done) == data
    return sent / len(data)
