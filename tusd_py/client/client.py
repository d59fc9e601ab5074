"""The async tus client (aiohttp)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .download import download as _download
from .errors import TusClientError, TusResponseError, UploadNotFound
from .fingerprint import Fingerprinter, MD5Fingerprint
from .parallel import upload_parallel
from .storage import TuspyStorage, URLStorage, as_url_storage
from .uploader import NETWORK_ERRORS, PIECE_SIZE, Progress, Source, Uploader, raise_if_cancelling

__all__ = ["Response", "RetryListener", "ServerInfo", "TusClient", "UploadInfo"]

log = logging.getLogger("tusd_py.client")

TUS_VERSION = "1.0.0"
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: ``on_retry(attempt, retries, delay_seconds, error)``: told before each retry's wait.
RetryListener = Callable[[int, int, float, BaseException], Any]


@dataclass(frozen=True)
class Response:
    """What the client keeps of a small response (the body is read and released)."""

    status: int
    headers: CIMultiDictProxy[str]
    url: str
    text: str = ""


@dataclass(frozen=True)
class ServerInfo:
    """What OPTIONS says about the server (``known`` is False when OPTIONS failed)."""

    known: bool = False
    versions: tuple[str, ...] = ()
    extensions: frozenset[str] = frozenset()
    checksum_algorithms: tuple[str, ...] = ()
    max_size: int | None = None


@dataclass(frozen=True)
class UploadInfo:
    """What HEAD says about an upload."""

    url: str
    offset: int | None
    length: int | None
    deferred: bool = False
    metadata: dict[str, bytes | None] = field(default_factory=dict)
    expires: str | None = None
    concat: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset is not None and self.offset >= self.length

    def metadata_text(self) -> dict[str, str | None]:
        return {k: None if v is None else v.decode("utf-8", "replace") for k, v in self.metadata.items()}


def decode_metadata(value: str | None) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for pair in (value or "").split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, b64 = pair.partition(" ")
        try:
            out[key] = base64.b64decode(b64.strip(), validate=True) if b64.strip() else None
        except (binascii.Error, ValueError):
            out[key] = None
    return out


class TusClient:
    """A tus 1.0.0 client on one ``aiohttp.ClientSession``.

    ``url`` is the creation endpoint (``https://host/files/``). ``checksum`` names the
    ``Upload-Checksum`` algorithm sent with every chunk when the server advertises it
    (OPTIONS); ``None`` turns checksums off. ``retries``/``backoff``: network errors,
    5xx, 423 and 409 are retried up to ``retries`` times with exponential backoff
    (``backoff * 2**n``, capped at ``max_backoff``) and jitter. Creation (POST) is
    retried too, as tus-js-client does: an attempt that reached the server but whose
    answer was lost leaves an orphan upload for the server to expire. ``url_storage`` (any
    :class:`URLStorage`, or a tuspy storage) makes uploads resumable across processes,
    keyed by ``fingerprinter`` (tuspy's MD5 fingerprint by default) and the endpoint;
    an entry tuspy wrote (under the bare fingerprint) for a URL on this endpoint's origin
    is resumed too, and ``tuspy_keys=True`` stores new entries under the bare
    fingerprint so that tuspy can resume them. ``limit_rate`` caps the upload rate in
    bytes per second. ``on_retry(attempt, retries, delay, error)`` is called before each
    retry's wait (the CLI shows it); a server that cannot be reached is not retried twice
    over (OPTIONS no longer falls back to the core protocol on a network error).
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, checksum: str | None = "sha1",
                 retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 timeout: float = 30.0, url_storage: URLStorage | TuspyStorage | None = None,
                 fingerprinter: Fingerprinter | None = None,
                 session: aiohttp.ClientSession | None = None,
                 limit_rate: float | None = None, tuspy_keys: bool = False,
                 on_retry: RetryListener | None = None) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.url = url
        self.headers = dict(headers or {})
        self.chunk_size = chunk_size
        self.checksum = checksum.lower() if checksum else None
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.url_storage = as_url_storage(url_storage)
        self.fingerprinter = fingerprinter or MD5Fingerprint()
        self.limit_rate = limit_rate
        self.tuspy_keys = tuspy_keys
        self.on_retry = on_retry
        self._session = session
        self._own_session = session is None
        self._server_info: ServerInfo | None = None
        self._info_lock = asyncio.Lock()
        self._rate_start: float | None = None
        self._rate_bytes = 0

    # -- lifecycle --------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                            sock_read=self.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> TusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------

    def storage_key(self, fingerprint: str) -> str:
        """The URL storage key new uploads are stored under: the file's fingerprint scoped
        to this endpoint (the same file may be uploaded to two servers), or with
        ``tuspy_keys`` the bare fingerprint, as tuspy stores it."""
        return fingerprint if self.tuspy_keys else f"{fingerprint}--endpoint:{self.url}"

    def lookup_keys(self, fingerprint: str) -> list[str]:
        """Where a stored upload of ``fingerprint`` is looked for, in order: under our
        endpoint-scoped key, then under the bare fingerprint (tuspy's key; such an entry
        is used only if :meth:`same_origin` says its URL is on this server)."""
        return [f"{fingerprint}--endpoint:{self.url}", fingerprint]

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` has the endpoint's scheme, host and port."""
        def origin(u: str) -> tuple[str, str | None, int | None]:
            parts = urlsplit(u)
            scheme = parts.scheme.lower()
            try:
                port = parts.port or {"http": 80, "https": 443}.get(scheme)
            except ValueError:
                port = None
            return scheme, parts.hostname, port
        return origin(url) == origin(self.url)

    def location(self, resp: Response) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise TusClientError("server created an upload but sent no Location header")
        return urljoin(resp.url, location)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter for retry ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def backoff_sleep(self, attempt: int, error: BaseException | None = None) -> None:
        """Wait before retry ``attempt``; ``on_retry`` hears of it first (with ``error``)."""
        delay = self.delay(attempt)
        if self.on_retry is not None and error is not None:
            self.on_retry(attempt, self.retries, delay, error)
        await asyncio.sleep(delay)

    def piece_size(self) -> int:
        if self.limit_rate:
            return max(1024, min(PIECE_SIZE, int(self.limit_rate / 10)))
        return PIECE_SIZE

    async def throttle(self, sent: int) -> None:
        """Keep the average upload rate at or below ``limit_rate``."""
        if not self.limit_rate:
            return
        now = time.monotonic()
        if self._rate_start is None:
            self._rate_start = now
        self._rate_bytes += sent
        ahead = self._rate_bytes / self.limit_rate - (now - self._rate_start)
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None, *,
                      data: Any = None, expect: tuple[int, ...] = (200, 204), retry: bool = True,
                      what: str = "") -> Response:
        """One tus request; network errors, 5xx and 423 are retried when ``retry``."""
        all_headers = CIMultiDict({"Tus-Resumable": TUS_VERSION})
        all_headers.update(self.headers)
        all_headers.update(headers or {})
        attempt = 0
        while True:
            try:
                async with self.session.request(method, url, headers=all_headers, data=data,
                                                allow_redirects=False) as resp:
                    text = await resp.text(errors="replace") if method not in ("HEAD",) else ""
                    result = Response(resp.status, resp.headers, str(resp.url), text)
            except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):  # no retry cures it
                raise TusClientError(f"{url} is not an http:// or https:// URL") from None
            except NETWORK_ERRORS as exc:
                raise_if_cancelling()
                if not retry or attempt >= self.retries:
                    raise
                error: BaseException = exc
            else:
                if result.status in expect:
                    return result
                error = self._error(result, what or f"{method} {url}", method)
                if not retry or attempt >= self.retries or not (
                        result.status >= 500 or result.status == 423):
                    raise error
            attempt += 1
            log.info("%s %s failed (%s); retry %d of %d", method, url, error, attempt, self.retries)
            await self.backoff_sleep(attempt, error)

    @staticmethod
    def _error(resp: Response, what: str, method: str = "") -> TusResponseError:
        if method == "POST" and resp.status in (404, 405):
            # Creation never answers these: the URL is not a tus endpoint.
            return TusResponseError(f"{resp.url} is not a tus creation URL (POST)", resp.status,
                                    resp.text)
        if resp.status in (404, 410):
            return UploadNotFound(f"{what}: no such upload {resp.url}", resp.status, resp.text)
        return TusResponseError(what, resp.status, resp.text)

    # -- server capabilities -----------------------------------------------------------

    async def server_info(self, refresh: bool = False) -> ServerInfo:
        """OPTIONS on the endpoint, once per client."""
        async with self._info_lock:
            if self._server_info is None or refresh:
                try:
                    resp = await self.request("OPTIONS", self.url, expect=(200, 204), what="OPTIONS")
                except TusClientError as exc:  # the server answered, but not OPTIONS
                    log.info("OPTIONS %s failed (%s); assuming core protocol only", self.url, exc)
                    self._server_info = ServerInfo()
                else:
                    h = resp.headers

                    def items(name: str) -> list[str]:
                        return [x.strip() for x in h.get(name, "").split(",") if x.strip()]
                    max_size = h.get("Tus-Max-Size", "")
                    self._server_info = ServerInfo(
                        known=True, versions=tuple(items("Tus-Version")),
                        extensions=frozenset(items("Tus-Extension")),
                        checksum_algorithms=tuple(a.lower() for a in items("Tus-Checksum-Algorithm")),
                        max_size=int(max_size) if max_size.isdigit() else None)
            return self._server_info

    async def checksum_algorithm(self) -> str | None:
        """The algorithm to send Upload-Checksum with, if the server advertises it."""
        if not self.checksum:
            return None
        info = await self.server_info()
        if "checksum" in info.extensions and self.checksum in info.checksum_algorithms:
            return self.checksum
        return None

    # -- uploads ----------------------------------------------------------------------

    def uploader(self, source: Any, *, url: str | None = None,
                 metadata: Mapping[str, str | bytes | None] | None = None,
                 chunk_size: int | None = None, **kwargs: Any) -> Uploader:
        """A low-level :class:`Uploader` for ``source`` (path, bytes or binary file object)."""
        return Uploader(self, source, url=url, metadata=metadata, chunk_size=chunk_size, **kwargs)

    async def upload(self, source: Any, *, metadata: Mapping[str, str | bytes | None] | None = None,
                     progress: Progress | None = None, parallel: int = 1,
                     chunk_size: int | None = None,
                     on_resume: Callable[[int, int | None], Any] | None = None) -> str:
        """Upload a path, bytes or binary file object; returns the upload URL.

        Resumes a stored upload of the same file when a URL storage is configured.
        A stream that cannot seek (a pipe, stdin) goes up with a deferred length.
        ``parallel > 1`` splits the file into that many partial uploads sent at once
        and concatenates them (when the server has the concatenation extension).
        ``on_resume(offset, length)`` is called when an existing upload is continued.
        """
        src = opened = Source.open(source)
        meta = dict(metadata or {})
        if src.name and "filename" not in meta:
            meta["filename"] = src.name
        spool: IO[bytes] | None = None
        try:
            if not src.seekable:
                info = await self.server_info()
                if info.known and "creation-defer-length" not in info.extensions:
                    spool = await asyncio.to_thread(_spool, src)
                    src = Source(spool, name=src.name)
            if parallel > 1 and src.seekable and (src.length or 0) >= 2:
                info = await self.server_info()
                if "concatenation" in info.extensions:
                    return await upload_parallel(self, src, meta, progress, parallel, chunk_size,
                                                 on_resume)
                log.info("server has no concatenation extension; uploading in one part")
            uploader = Uploader(self, src, metadata=meta, chunk_size=chunk_size)
            await uploader.prepare()
            if uploader.resumed_from is not None and on_resume:
                on_resume(uploader.resumed_from, uploader.length)
            return await uploader.upload(progress)
        finally:
            opened.close()
            if spool is not None:
                spool.close()

    async def resume(self, url: str, source: Any, *, progress: Progress | None = None,
                     chunk_size: int | None = None) -> str:
        """Continue the upload at ``url`` with ``source``, from the server's offset."""
        async with Uploader(self, source, url=url, chunk_size=chunk_size, store_url=False) as up:
            return await up.upload(progress)

    # -- other requests ---------------------------------------------------------------

    async def info(self, url: str) -> UploadInfo:
        """HEAD: offset, length, metadata, expiry and concatenation state of an upload."""
        resp = await self.request("HEAD", url, expect=(200, 204), what="HEAD")
        h = resp.headers

        def number(name: str) -> int | None:
            value = h.get(name)
            return int(value) if value is not None and value.isdigit() else None
        return UploadInfo(url=url, offset=number("Upload-Offset"), length=number("Upload-Length"),
                          deferred=h.get("Upload-Defer-Length") == "1",
                          metadata=decode_metadata(h.get("Upload-Metadata")),
                          expires=h.get("Upload-Expires"), concat=h.get("Upload-Concat"))

    async def delete(self, url: str) -> None:
        """Terminate an upload (the termination extension)."""
        await self.request("DELETE", url, expect=(204, 200), what="DELETE")

    async def download(self, url: str, dest: str | os.PathLike[str] | IO[bytes], *,
                       progress: Progress | None = None) -> int:
        """GET a finished upload into a path or binary file; returns the byte count
        (see :func:`tusd_py.client.download.download`)."""
        return await _download(self, url, dest, progress=progress)

def _spool(src: Source) -> IO[bytes]:
    """Copy a stream into a temporary file (for servers without deferred length)."""
    spool = tempfile.TemporaryFile()
    while True:
        data = src.fileobj.read(PIECE_SIZE)
        if not data:
            break
        spool.write(data)
    spool.flush()
    return spool
