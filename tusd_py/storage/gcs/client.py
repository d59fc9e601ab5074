"""The GCS driver's view of a bucket: gcloud-aio-storage calls retried on transient
failures, conditional writes, and what still fails as a ``TusError`` (503 "retry later"
for throttling, outages and network errors, 500 with the reason otherwise); and the
final object's headers.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from gcloud.aio.storage import Storage

from ...protocol.content import stored_content
from ...protocol.errors import ServiceUnavailable, StorageError, TusError
from ...protocol.headers import Metadata
from ..object.errors import Conflict
from ..object.index import next_page

log = logging.getLogger(__name__)

T = TypeVar("T")

#: GCS compose takes at most this many source objects per request.
COMPOSE_LIMIT = 32
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Missing(Exception):
    """The object (or a compose source) does not exist."""


def status_of(exc: BaseException) -> int:
    return int(getattr(exc, "status", 0) or 0) if isinstance(exc, aiohttp.ClientResponseError) else 0


def translate(exc: BaseException, what: str) -> TusError:
    """A GCS/network failure, after retries, as the error the client sees."""
    if isinstance(exc, TusError):
        return exc
    status = status_of(exc)
    if status == 429:
        return ServiceUnavailable(f"storage is throttling requests during {what}; retry later")
    if status >= 500:
        return ServiceUnavailable(f"storage error {status} during {what}; retry later")
    if status in (401, 403):
        return StorageError(f"storage refused {what} ({status}): check the credentials "
                            "(GOOGLE_APPLICATION_CREDENTIALS) and the bucket's permissions")
    if status == 404:
        return StorageError(f"storage bucket or object not found during {what}")
    if status:
        return StorageError(f"storage error {status} during {what}")
    return ServiceUnavailable(f"storage unreachable during {what} ({type(exc).__name__}); "
                              "retry later")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError))


class Bucket:
    """One bucket through gcloud-aio-storage, with retries (``attempts`` tries per call)."""

    def __init__(self, name: str, *, endpoint_url: str | None, attempts: int = 5,
                 timeout: float = 120.0, connections: int = 64, kms_key_name: str | None = None,
                 storage_class: str | None = None) -> None:
        """``kms_key_name`` and ``storage_class`` come checked from ``config.GCSStorage``."""
        self.name = name
        self.kms_key_name = kms_key_name
        self.storage_class = storage_class
        self.endpoint_url = endpoint_url
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60))
        if self.endpoint_url:
            # An http:// endpoint is an emulator (no credentials); https:// gets the
            # usual Google credentials.
            self._storage = Storage(api_root=self.endpoint_url.rstrip("/"), session=self._session,  # type: ignore[arg-type]
                                    api_is_dev=self.endpoint_url.startswith("http://"))
        else:  # STORAGE_EMULATOR_HOST, or Google's default credentials
            self._storage = Storage(session=self._session)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._storage is not None:
            await self._storage.close()
            self._storage = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise StorageError("store is not started")
        return self._storage

    async def call(self, what: str, fn: Callable[[], Awaitable[T]], *,
                   conflict: bool = False, missing: bool = False) -> T:
        """Run ``fn`` with retries. 412 raises ``Conflict`` when ``conflict``, 404 raises
        ``Missing`` when ``missing``; anything else that fails becomes a ``TusError``."""
        delay = 0.05
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except (TusError, Conflict, Missing):
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status = status_of(exc)
                if status == 412 and conflict:
                    raise Conflict() from None
                if status == 404 and missing:
                    raise Missing() from None
                if attempt < self.attempts and _transient(exc):
                    log.info("GCS %s failed (%s), retry %d", what, status or type(exc).__name__,
                             attempt)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                raise translate(exc, what) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def write_args(self) -> tuple[dict[str, str], dict[str, str]]:
        """What every request that makes an object carries: the query parameters
        (``kmsKeyName``: CMEK), and the resource fields of one that sends a resource
        (``storageClass``, in gcloud-aio's ``Storage-Class`` spelling of metadata keys).
        Part objects are uploaded without a resource (``put``): they stay in the
        bucket's default class (compose needs sources of one class), and a final object
        composed from them is rewritten into ``storage_class`` (``compose``)."""
        params = {"kmsKeyName": self.kms_key_name} if self.kms_key_name else {}
        resource = {"Storage-Class": self.storage_class} if self.storage_class else {}
        return params, resource

    # -- objects ------------------------------------------------------------------

    async def read(self, name: str, what: str) -> tuple[bytes, str] | None:
        """(content, generation) of a small object, or None if it does not exist."""

        async def get() -> tuple[bytes, str]:
            stream = await self.storage.download_stream(self.name, name, timeout=30)
            async with stream as response:
                return await response.read(), response.headers.get("x-goog-generation", "")

        try:
            return await self.call(what, get, missing=True)
        except Missing:
            return None

    async def write(self, name: str, data: bytes, *, if_generation: str, what: str,
                    content_type: str = "application/json") -> str:
        """Conditional write (``ifGenerationMatch``; "0": only if absent) as a multipart
        upload, the form on which both GCS and fake-gcs-server enforce the condition.
        Returns the new generation; raises ``Conflict`` if the condition failed."""

        params, resource = self.write_args()

        async def put() -> dict[str, Any]:
            return await self.storage.upload(
                self.name, name, data, content_type=content_type,
                metadata={"Cache-Control": "no-store", **resource},
                parameters={"ifGenerationMatch": if_generation, **params},
                force_resumable_upload=False, timeout=30)

        return str((await self.call(what, put, conflict=True))["generation"])

    async def put(self, name: str, data: bytes | io.RawIOBase, *, what: str,
                  headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Upload a new object in one request (``ifGenerationMatch=0``: never overwrites),
        from bytes or a seekable file (read from its start at each attempt)."""
        content_type = (headers or {}).get("Content-Type", "application/octet-stream")
        metadata = {k: v for k, v in (headers or {}).items() if k != "Content-Type"}
        params, _ = self.write_args()  # no resource: a part streams as a media upload

        async def put() -> dict[str, Any]:
            if not isinstance(data, bytes):
                data.seek(0)
            return await self.storage.upload(
                self.name, name, data, content_type=content_type,
                metadata=metadata or None, parameters={"ifGenerationMatch": "0", **params},
                force_resumable_upload=False, timeout=int(self.timeout))

        try:
            return await self.call(what, put, conflict=True)
        except Conflict:  # a retry of a write that landed; names are never reused
            return await self.call(what, lambda: self.storage.download_metadata(self.name, name))

    async def put_replacing(self, name: str, data: bytes, *, what: str,
                            headers: dict[str, str]) -> dict[str, Any]:
        """Upload an object, replacing what is there (final objects)."""
        params, resource = self.write_args()
        metadata = {**{k: v for k, v in headers.items() if k != "Content-Type"}, **resource}

        async def put() -> dict[str, Any]:
            return await self.storage.upload(
                self.name, name, data, content_type=headers["Content-Type"],
                metadata=metadata or None, parameters=dict(params), force_resumable_upload=False,
                timeout=int(self.timeout))

        return await self.call(what, put)

    async def compose(self, dest: str, sources: list[str], *, what: str,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Server-side concatenation of at most 32 sources into ``dest``, with the
        Content-Type (and Content-Disposition, patched on) of ``headers``. A final object
        (``headers`` given) is then rewritten into ``storage_class``, if one is set: a
        composite has its sources' class."""
        assert 0 < len(sources) <= COMPOSE_LIMIT
        content_type = (headers or {}).get("Content-Type", "application/octet-stream")
        params, _ = self.write_args()

        async def compose() -> dict[str, Any]:
            return await self.storage.compose(self.name, dest, sources, params=dict(params),
                                              content_type=content_type, timeout=60)

        result = await self.call(what, compose)
        if headers is not None and self.storage_class:
            return await self.rewrite(dest, headers, what=what)
        disposition = (headers or {}).get("Content-Disposition")
        if disposition:
            result = await self.call(what, lambda: self.storage.patch_metadata(
                self.name, dest, {"contentDisposition": disposition}))
        return result

    async def rewrite(self, name: str, headers: dict[str, str], *, what: str) -> dict[str, Any]:
        """Rewrite an object in place into ``storage_class``, with ``headers`` and the
        CMEK key (gcloud-aio's ``copy``: as many rewriteTo calls as GCS needs); the new
        resource."""
        params, resource = self.write_args()
        query = {"destinationKmsKeyName": params["kmsKeyName"]} if params else {}

        async def rewrite() -> dict[str, Any]:
            return await self.storage.copy(self.name, name, self.name,
                                           metadata={**headers, **resource},
                                           params=dict(query), timeout=int(self.timeout))

        answer = await self.call(what, rewrite)
        if not answer.get("done") or "resource" not in answer:
            raise StorageError(f"storage did not finish a rewrite during {what}")
        return dict(answer["resource"])

    async def delete(self, name: str, what: str) -> bool:
        """Delete an object; False if it was not there."""
        try:
            await self.call(what, lambda: self.storage.delete(self.name, name), missing=True)
        except Missing:
            return False
        return True

    @property
    def is_open(self) -> bool:
        return self._storage is not None

    async def list(self, prefix: str, what: str, *, page: int = 1000, end: str | None = None,
                   fields: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every object under ``prefix`` (name, size, generation, updated...; only
        ``fields`` of each when given) and before ``end``, in name order, a page at a
        time as the caller goes on: ``page`` objects, then ``next_page`` of that."""
        token = ""
        while True:
            params = {"prefix": prefix, "maxResults": str(page)}
            if end is not None:
                params["endOffset"] = end
            if fields is not None:
                params["fields"] = f"items({fields}),nextPageToken"
            if token:
                params["pageToken"] = token
            listed = await self.call(what, lambda p=params: self.storage.list_objects(  # type: ignore[misc]
                self.name, params=p))
            for item in listed.get("items", ()):
                yield item
            token = listed.get("nextPageToken") or ""
            if not token:
                return
            page = next_page(page)

    async def stream(self, name: str, start: int, end: int, what: str,
                     chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an object, streamed with one ranged GET."""
        response = await self.call(what, lambda: self.storage.download_stream(
            self.name, name, headers={"Range": f"bytes={start}-{end}"}, timeout=60))
        try:
            async with response as r:
                async for data in r.content.iter_chunked(chunk):
                    yield data
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise translate(exc, what) from exc

    async def bucket_metadata(self) -> dict[str, Any]:
        return await self.call(f"access to bucket {self.name}",
                               lambda: self.storage.get_bucket_metadata(self.name, timeout=5))


def etag_of(result: dict[str, Any]) -> str:
    """The ETag the driver gives an object, from GCS's answer about it (its generation)."""
    return f'"{result.get("generation") or result.get("etag") or ""}"'


def object_headers(metadata: Metadata) -> dict[str, str]:
    """Content-Type (and Content-Disposition) of the final object, from tus metadata
    (``protocol.content.stored_content``)."""
    content_type, disposition = stored_content(metadata)
    headers = {"Content-Type": content_type}
    if disposition is not None:
        headers["Content-Disposition"] = disposition
    return headers
