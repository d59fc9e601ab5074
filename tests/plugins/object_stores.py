"""Checks shared by the S3, GCS and Azure tests (each run against its own emulator)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import create, head, patch
from tusd_py.http.keys import STORE
from tusd_py.protocol.errors import StorageError


def without_index(names: Iterable[str]) -> set[str]:
    """The object names that belong to uploads: not the store's own bookkeeping (index
    markers ``.due/...`` and ``.owed/...``, ``.index``, ``.sweep-lease``), whose names
    start with a dot after the prefix."""
    return {name for name in names if "/." not in "/" + name}


#: Bytes that are no record: not UTF-8, not JSON.
GARBAGE = b"\xff{not json"
#: The response body of a request that found such a record.
REASON = "unreadable .info record\n"


async def check_corrupt_record(client: TestClient, corrupt: Callable[[str], None]) -> None:
    """Create an upload through ``client``, let ``corrupt(upload_id)`` overwrite its
    ``.info`` behind the driver's back, then check that every way in (PATCH, HEAD, GET,
    the store's ``get`` and ``lock``) is a storage error with the reason (500), never
    an unhandled exception."""
    path = await create(client, 10)
    upload_id = path.rsplit("/", 1)[1]
    corrupt(upload_id)
    # (asserts in this module are not rewritten by pytest: each says what it got)
    r = await patch(client, path, 0, b"0123456789")
    got = r.status, await r.text()
    assert got == (500, REASON), ("PATCH", got)
    r = await client.get(path)
    got = r.status, await r.text()
    assert got == (500, REASON), ("GET", got)
    status = (await head(client, path)).status
    assert status == 500, ("HEAD", status)
    store = client.app[STORE]
    with pytest.raises(StorageError, match=r"unreadable \.info record"):
        await store.get(upload_id)
    with pytest.raises(StorageError, match=r"unreadable \.info record"):
        await store.lock(upload_id, 0)
