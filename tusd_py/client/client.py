"""The async tus client (aiohttp)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import TusClientError, TusResponseError, UploadNotFound
from .fingerprint import Fingerprinter, MD5Fingerprint
from .storage import TuspyStorage, URLStorage, as_url_storage
from .uploader import NETWORK_ERRORS, PIECE_SIZE, Progress, Source, Uploader, encode_metadata

__all__ = ["Response", "ServerInfo", "TusClient", "UploadInfo"]

log = logging.getLogger("tusd_py.client")

TUS_VERSION = "1.0.0"
T = TypeVar("T")
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


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


def split_ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (start, length) ranges covering ``size`` bytes, as equal as possible."""
    parts = max(1, min(parts, size))
    step, extra = divmod(size, parts)
    ranges, start = [], 0
    for i in range(parts):
        length = step + (1 if i < extra else 0)
        ranges.append((start, length))
        start += length
    return ranges


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
    bytes per second.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, checksum: str | None = "sha1",
                 retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 timeout: float = 30.0, url_storage: URLStorage | TuspyStorage | None = None,
                 fingerprinter: Fingerprinter | None = None,
                 session: aiohttp.ClientSession | None = None,
                 limit_rate: float | None = None, tuspy_keys: bool = False) -> None:
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

    async def backoff_sleep(self, attempt: int) -> None:
        await asyncio.sleep(self.delay(attempt))

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
            except NETWORK_ERRORS as exc:
                if not retry or attempt >= self.retries:
                    raise
                error: BaseException = exc
            else:
                if result.status in expect:
                    return result
                error = self._error(result, what or f"{method} {url}")
                if not retry or attempt >= self.retries or not (
                        result.status >= 500 or result.status == 423):
                    raise error
            attempt += 1
            log.info("%s %s failed (%s); retry %d of %d", method, url, error, attempt, self.retries)
            await self.backoff_sleep(attempt)

    @staticmethod
    def _error(resp: Response, what: str) -> TusResponseError:
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
                except (TusClientError, *NETWORK_ERRORS) as exc:  # type: ignore[misc]
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
                    return await self._upload_parallel(src, meta, progress, parallel, chunk_size,
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

    async def _upload_parallel(self, src: Source, metadata: dict[str, str | bytes | None],
                               progress: Progress | None, parallel: int, chunk_size: int | None,
                               on_resume: Callable[[int, int | None], Any] | None) -> str:
        assert src.length is not None
        fingerprint = None
        if self.url_storage is not None:
            fingerprint = await src.fingerprint(self.fingerprinter)
            final = await self._stored_final(fingerprint, src.length)
            if final is not None:
                if on_resume:
                    on_resume(src.length, src.length)
                if progress:
                    progress(src.length, src.length)
                return final
        ranges = split_ranges(src.length, parallel)
        n = len(ranges)
        parts = [
            Uploader(self, src.part(start, length), chunk_size=chunk_size, partial=True,
                     fingerprint=f"{fingerprint}--part:{i + 1}/{n}" if fingerprint else None,
                     forget_when_done=False)
            for i, (start, length) in enumerate(ranges)
        ]
        await _all(p.prepare() for p in parts)
        if on_resume and any(p.resumed_from is not None for p in parts):
            on_resume(sum(p.offset for p in parts), src.length)
        done = [p.offset for p in parts]

        def part_progress(i: int) -> Progress:
            def report(offset: int, _total: int | None) -> None:
                done[i] = offset
                if progress:
                    progress(sum(done), src.length)
            return report

        urls = await _all(p.upload(part_progress(i)) for i, p in enumerate(parts))
        headers = {"Upload-Concat": "final;" + " ".join(urls)}
        if metadata:
            headers["Upload-Metadata"] = encode_metadata(metadata)
        # Creation is retried like any POST: if an attempt reached the server but its answer
        # was lost, that final is an orphan (the parts stay intact; the server expires it).
        resp = await self.request("POST", self.url, headers, expect=(201,), what="create final upload")
        final = self.location(resp)
        if fingerprint is not None:
            # Stored before the parts are forgotten: a run that dies in between finds the
            # final (see _stored_final) instead of creating a second one from the parts.
            assert self.url_storage is not None
            key = self.storage_key(fingerprint)
            await asyncio.to_thread(self.url_storage.set_url, key, final)
            for p in parts:
                await p.forget()
            await asyncio.to_thread(self.url_storage.remove_url, key)
        return final

    async def _stored_final(self, fingerprint: str, length: int) -> str | None:
        """A final upload of this file that an earlier run created but did not finish
        cleaning up after (its parts' entries are forgotten now)."""
        assert self.url_storage is not None
        key = self.storage_key(fingerprint)
        url = await asyncio.to_thread(self.url_storage.get_url, key)
        if not url:
            return None
        try:
            info = await self.info(url)
        except UploadNotFound:
            await asyncio.to_thread(self.url_storage.remove_url, key)
            return None
        if not (info.concat or "").startswith("final;") or info.length != length:
            return None  # an ordinary upload of the whole file: not this path's business
        log.info("%s: final upload created by an earlier run", url)
        await self._forget_parts(fingerprint, len((info.concat or "")[6:].split()))
        await asyncio.to_thread(self.url_storage.remove_url, key)
        return url

    async def _forget_parts(self, fingerprint: str, n: int) -> None:
        assert self.url_storage is not None
        for i in range(n):
            for key in self.lookup_keys(f"{fingerprint}--part:{i + 1}/{n}"):
                await asyncio.to_thread(self.url_storage.remove_url, key)

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
        """GET a finished upload into a path or binary file; returns the byte count.

        Network errors, 5xx and 423 are retried with the client's backoff; a download
        cut short is continued with ``Range`` (from the start again when the server
        ignores ``Range`` and ``dest`` is a path). ``Content-Length`` and
        ``Content-Range`` are checked: a body of the wrong length or a range that does
        not start where asked (or a size that changed) fails with :class:`TusClientError`.
        """
        own = isinstance(dest, (str, os.PathLike))
        out: IO[bytes] = open(dest, "wb") if isinstance(dest, (str, os.PathLike)) else dest
        written = 0
        size: int | None = None  # the whole body's length, once a response told it
        attempt = 0
        try:
            while True:
                headers = {"Range": f"bytes={written}-"} if written else {}
                try:
                    async with self.session.get(url, headers={**self.headers, **headers}) as resp:
                        if resp.status in (404, 410):
                            raise UploadNotFound("download", resp.status, await resp.text())
                        if resp.status >= 500 or resp.status == 423:
                            raise _RetryableStatus(
                                TusResponseError(f"GET {url}", resp.status, await resp.text()))
                        if resp.status == 200 and written:
                            if not own:
                                raise TusClientError("server ignored Range; cannot restart download")
                            out.seek(0)
                            out.truncate()
                            written = 0
                        elif resp.status != 200 and not (resp.status == 206 and written):
                            raise TusResponseError(f"GET {url}", resp.status, await resp.text())
                        size = _body_size(resp, written, size)
                        async for piece in resp.content.iter_chunked(PIECE_SIZE):
                            if size is not None and written + len(piece) > size:
                                raise TusClientError(f"GET {url}: more bytes than the {size} "
                                                     "announced")
                            out.write(piece)
                            written += len(piece)
                            if progress:
                                progress(written, size)
                        if size is not None and written < size:
                            raise aiohttp.ClientPayloadError(
                                f"connection closed at byte {written} of {size}")
                        return written
                except (_RetryableStatus, *NETWORK_ERRORS) as exc:  # type: ignore[misc]
                    error = exc.error if isinstance(exc, _RetryableStatus) else exc
                    attempt += 1
                    if attempt > self.retries:
                        raise error from None
                    log.info("GET %s failed at %d (%s); retry %d of %d", url, written, error,
                             attempt, self.retries)
                    await self.backoff_sleep(attempt)
        finally:
            if own:
                out.close()


class _RetryableStatus(Exception):
    def __init__(self, error: TusResponseError) -> None:
        super().__init__(str(error))
        self.error = error


def _body_size(resp: aiohttp.ClientResponse, start: int, known: int | None) -> int | None:
    """The full length of what is downloaded, from Content-Length (a 200) or
    Content-Range (a 206 to ``Range: bytes=start-``), checked against what came before."""
    what = f"GET {resp.url}"
    size: int | None
    if resp.status == 206:
        match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*",
                             resp.headers.get("Content-Range", ""))
        if not match:
            raise TusClientError(f"{what}: 206 with a bad Content-Range "
                                 f"{resp.headers.get('Content-Range')!r}")
        first, last = int(match.group(1)), int(match.group(2))
        total = None if match.group(3) == "*" else int(match.group(3))
        if first != start or last < first or (total is not None and last != total - 1):
            raise TusClientError(f"{what}: asked for bytes {start}- and got Content-Range "
                                 f"{resp.headers['Content-Range']!r}")
        if resp.content_length is not None and resp.content_length != last - first + 1:
            raise TusClientError(f"{what}: Content-Length {resp.content_length} does not match "
                                 f"Content-Range {resp.headers['Content-Range']!r}")
        size = total if total is not None else last + 1
    else:
        size = resp.content_length
    if known is not None and size is not None and size != known:
        raise TusClientError(f"{what}: the upload changed size during the download "
                             f"({known} -> {size} bytes)")
    return size if size is not None else known


async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; the first failure cancels the others and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [t.result() for t in tasks]


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
