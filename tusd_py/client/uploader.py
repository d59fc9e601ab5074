"""The low-level uploader: one tus upload, chunk by chunk, with retries and resume.

:class:`Source` is what gets uploaded: a seekable file (read with ``os.pread`` when it has a
file descriptor, so parts of one file can be read concurrently) or a one-way stream such as
a pipe or stdin (uploaded with a deferred length; the current chunk stays in memory so a
failed request can be sent again). Nothing ever reads a whole file into memory: a chunk
is streamed to the server in pieces of at most 256 KiB.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

import aiohttp

from .errors import TusClientError, TusResponseError, UploadNotFound

if TYPE_CHECKING:
    from .client import TusClient
    from .fingerprint import Fingerprinter

__all__ = ["PIECE_SIZE", "Progress", "Source", "Uploader", "encode_metadata"]

log = logging.getLogger("tusd_py.client")

#: Largest piece of a chunk read from the file and handed to the socket at once.
PIECE_SIZE = 256 * 1024

#: ``progress(bytes_confirmed_or_sent, total_or_None)``
Progress = Callable[[int, int | None], Any]

#: Errors of the network (or of a server that went away) that a retry may cure.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError)


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task is being cancelled (Ctrl-C under asyncio.run, or
    a caller's cancel): aiohttp may surface a cancellation mid-request as a network error,
    and a retry would swallow it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def encode_metadata(metadata: Mapping[str, str | bytes | None] | None) -> str:
    """``Upload-Metadata``: ``key base64(value)`` pairs, comma separated (key-only allowed)."""
    parts = []
    for key, value in (metadata or {}).items():
        if not key or any(c in key for c in " ,") or not key.isascii():
            raise ValueError(f"invalid metadata key {key!r}")
        if value is None:
            parts.append(key)
            continue
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        parts.append(f"{key} {base64.b64encode(raw).decode('ascii')}")
    return ",".join(parts)


class Source:
    """The bytes of one upload: all of a file, a range of it, or a one-way stream."""

    def __init__(self, fileobj: IO[bytes], *, owned: bool = False, base: int = 0,
                 length: int | None = None, name: str | None = None,
                 _lock: threading.Lock | None = None) -> None:
        self.fileobj = fileobj
        self.owned = owned
        self.base = base
        self.name = name
        self._lock = _lock or threading.Lock()
        self._fd: int | None = None
        size: int | None = None
        try:
            fd = fileobj.fileno()
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                self._fd, size = fd, st.st_size
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        seekable = self._fd is not None
        if not seekable:
            try:
                seekable = bool(fileobj.seekable())
            except (AttributeError, OSError, ValueError):
                seekable = False
            if seekable and length is None:
                with self._lock:
                    size = fileobj.seek(0, io.SEEK_END)
        self.seekable = seekable
        if length is None and size is not None:
            length = max(0, size - base)
        #: None for a stream whose end is not known yet.
        self.length = length

    @classmethod
    def open(cls, source: Any) -> Source:
        if isinstance(source, Source):
            return source
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            return cls(open(path, "rb"), owned=True, name=os.path.basename(path))
        if isinstance(source, (bytes, bytearray, memoryview)):
            return cls(io.BytesIO(bytes(source)), owned=True)
        if hasattr(source, "read"):
            name = getattr(source, "name", None)
            if not isinstance(name, str) or (name.startswith("<") and name.endswith(">")):
                name = None  # a descriptor number, or a pseudo-name such as "<stdin>"
            return cls(source, name=os.path.basename(name) if name else None)
        raise TypeError(f"cannot upload {type(source).__name__}")

    def part(self, base: int, length: int) -> Source:
        """A range of this (seekable) source; shares the file and its lock."""
        if not self.seekable:
            raise TusClientError("only a seekable source can be split into parts")
        return Source(self.fileobj, base=self.base + base, length=length, name=self.name,
                      _lock=self._lock)

    async def fingerprint(self, fingerprinter: Fingerprinter) -> str:
        def compute() -> str:
            with self._lock:
                return fingerprinter.get_fingerprint(self.fileobj)
        return await asyncio.to_thread(compute)

    def _read_at(self, offset: int, size: int) -> bytes:
        position = self.base + offset
        if self._fd is not None:
            out = bytearray()
            while len(out) < size:
                data = os.pread(self._fd, size - len(out), position + len(out))
                if not data:
                    break
                out += data
            return bytes(out)
        with self._lock:
            self.fileobj.seek(position)
            return self.fileobj.read(size)

    async def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of this source (fewer only at the end of the file)."""
        return await asyncio.to_thread(self._read_at, offset, size)

    def _read_stream(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            data = self.fileobj.read(size - len(out))
            if not data:
                break
            out += data
        return bytes(out)

    async def read_stream(self, size: int) -> bytes:
        """The next ``size`` bytes of a stream; fewer only at its end."""
        return await asyncio.to_thread(self._read_stream, size)

    def close(self) -> None:
        if self.owned:
            self.fileobj.close()


class _Retry(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Uploader:
    """One upload, driven chunk by chunk.

    ``await prepare()`` finds the upload URL (an explicit ``url``, a stored one that the
    server still knows, or a new upload), ``await upload_chunk()`` moves the offset by at
    most one chunk (retrying network errors, 5xx, 423, 409 and 460 with backoff, and
    re-reading the server's offset with HEAD before every retry), ``await upload()`` does
    the rest. ``resumed_from`` is the offset an existing upload was picked up at.

    If the server loses the upload part-way (404/410 on a PATCH or HEAD: it expired or
    was terminated), its URL storage entry is removed and the upload starts over once,
    from zero, with a new POST; ``restarted`` tells it happened. An upload given by an
    explicit ``url`` (and a stream whose first bytes are no longer buffered) is not
    restarted: :class:`UploadNotFound` is raised.
    """

    def __init__(self, client: TusClient, source: Any, *, url: str | None = None,
                 metadata: Mapping[str, str | bytes | None] | None = None,
                 chunk_size: int | None = None, fingerprint: str | None = None,
                 partial: bool = False, store_url: bool = True,
                 forget_when_done: bool = True) -> None:
        self.client = client
        self.source = Source.open(source)
        self.url = url
        self.metadata = dict(metadata or {})
        self.chunk_size = chunk_size or client.chunk_size
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.fingerprint = fingerprint
        self.partial = partial
        self.store_url = store_url and client.url_storage is not None and self.source.seekable
        self.forget_when_done = forget_when_done
        self.offset = 0
        self.length: int | None = self.source.length
        self.resumed_from: int | None = None
        self.key: str | None = None
        self.restart_when_lost = url is None
        self.restarted = False
        self._prepared = False
        self._length_declared = self.source.seekable
        # stream state: the chunk read last and where it starts; whether the stream ended
        self._buffer = b""
        self._buffer_offset = 0
        self._eof = False

    # -- state ----------------------------------------------------------------------

    @property
    def is_complete(self) -> bool:
        return self.url is not None and self.length is not None and self.offset >= self.length

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.source.close()

    # -- finding the upload -----------------------------------------------------------

    async def prepare(self) -> str:
        """Resume an explicit or stored upload if the server still has it, else create one."""
        self._prepared = True
        if self.url is not None:
            info = await self.client.info(self.url)
            if info.offset is None:
                raise TusClientError(f"{self.url} is a final upload and cannot be resumed")
            if self.length is not None and info.length is not None and info.length != self.length:
                raise TusClientError(f"{self.url} has length {info.length}, the file {self.length}")
            self.offset = info.offset
            self.length = info.length if info.length is not None else self.length
            self.resumed_from = info.offset
            return self.url
        if self.store_url:
            storage = self.client.url_storage
            assert storage is not None
            if self.fingerprint is None:
                self.fingerprint = await self.source.fingerprint(self.client.fingerprinter)
            for key in self.client.lookup_keys(self.fingerprint):
                stored = await asyncio.to_thread(storage.get_url, key)
                if not stored:
                    continue
                if key == self.fingerprint and not self.client.same_origin(stored):
                    continue  # tuspy's entry for another server: neither ours to use nor to drop
                offset = await self._check_stored(stored)
                if offset is not None:
                    self.key = key  # removed under the key it was found under when done
                    self.url, self.offset, self.resumed_from = stored, offset, offset
                    log.info("resuming %s from offset %d of %s", stored, offset, self.length)
                    return stored
                await asyncio.to_thread(storage.remove_url, key)
        return await self.create()

    async def _check_stored(self, url: str) -> int | None:
        """The server offset of a stored upload that can be continued, else None."""
        try:
            info = await self.client.info(url)
        except UploadNotFound:
            return None
        except TusResponseError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                return None  # forbidden, gone in another way: start afresh
            raise
        if info.offset is None or info.length != self.length or info.offset > (self.length or 0):
            return None
        if self.partial != (info.concat == "partial"):
            return None
        return info.offset

    async def create(self) -> str:
        """POST a new upload (deferred length for a stream) and remember its URL."""
        server = await self.client.server_info()
        if server.max_size is not None and self.length is not None and self.length > server.max_size:
            raise TusClientError(f"the upload ({self.length} bytes) is larger than the server's "
                                 f"Tus-Max-Size ({server.max_size} bytes)")
        headers = {}
        if self.length is not None and self.source.seekable:
            headers["Upload-Length"] = str(self.length)
        else:
            headers["Upload-Defer-Length"] = "1"
        if self.metadata:
            headers["Upload-Metadata"] = encode_metadata(self.metadata)
        if self.partial:
            headers["Upload-Concat"] = "partial"
        resp = await self.client.request("POST", self.client.url, headers, expect=(201,),
                                         what="create upload")
        self.url = self.client.location(resp)
        self._prepared = True
        self.offset = 0
        self.resumed_from = None
        if self.store_url and self.fingerprint is not None:
            self.key = self.client.storage_key(self.fingerprint)
        if self.store_url and self.key is not None:
            assert self.client.url_storage is not None
            await asyncio.to_thread(self.client.url_storage.set_url, self.key, self.url)
        return self.url

    async def forget(self) -> None:
        """Remove this upload's entry from the URL storage."""
        if self.key is not None and self.client.url_storage is not None:
            await asyncio.to_thread(self.client.url_storage.remove_url, self.key)

    # -- sending ----------------------------------------------------------------------

    async def upload(self, progress: Progress | None = None) -> str:
        """Upload everything that is left; returns the upload URL."""
        if not self._prepared:
            await self.prepare()
        if progress:
            progress(self.offset, self.length)
        while not self.is_complete:
            await self.upload_chunk(progress)
        if self.forget_when_done:
            await self.forget()
        assert self.url is not None
        return self.url

    async def upload_chunk(self, progress: Progress | None = None) -> int:
        """Send at most one chunk; returns the new offset (retries included)."""
        if not self._prepared:
            await self.prepare()
        if self.is_complete:
            return self.offset
        try:
            return await self._send_chunk(progress)
        except UploadNotFound as exc:
            if not await self._start_over(exc):
                raise
        if progress:
            progress(self.offset, self.length)
        if self.is_complete:
            return self.offset
        return await self._send_chunk(progress)

    async def _start_over(self, error: UploadNotFound) -> bool:
        """The server lost the upload: forget it and create a new one, once."""
        if not self.restart_when_lost or self.restarted:
            return False
        if not self.source.seekable and self._buffer_offset != 0:
            return False  # the stream's first bytes are gone
        self.restarted = True
        log.warning("%s no longer exists on the server (HTTP %s); starting over from zero",
                    self.url, error.status)
        await self.forget()
        self.key = None
        if not self.source.seekable:
            self.length, self._length_declared = None, False
        await self.create()
        return True

    async def _send_chunk(self, progress: Progress | None) -> int:
        attempt = 0
        while True:
            try:
                self.offset = await self._patch(progress)
                if progress:
                    progress(self.offset, self.length)
                return self.offset
            except _Retry as retry:
                raise_if_cancelling()
                attempt += 1
                if attempt > self.client.retries:
                    raise retry.error from None
                log.info("PATCH %s at %d failed (%s); retry %d of %d", self.url, self.offset,
                         retry.error, attempt, self.client.retries)
                await self.client.backoff_sleep(attempt, retry.error)
                await self._resync()
                if progress:
                    progress(self.offset, self.length)

    async def _resync(self) -> None:
        """After a failure: the server's offset is the truth (HEAD)."""
        assert self.url is not None
        info = await self.client.info(self.url)
        if info.offset is None:
            raise TusClientError(f"{self.url} is not an upload that takes PATCH")
        self.offset = info.offset
        if info.length is not None:
            self.length = info.length
            self._length_declared = True

    async def _next_stream_bytes(self) -> bytes:
        """The bytes from ``self.offset`` on, out of the buffered chunk of a stream."""
        end = self._buffer_offset + len(self._buffer)
        while self.offset > end and not self._eof:
            # Resuming a stream that starts at byte 0: skip what the server already has.
            want = min(self.chunk_size, self.offset - end)
            skipped = await self.source.read_stream(want)
            self._eof = len(skipped) < want
            self._buffer, self._buffer_offset = b"", end + len(skipped)
            end = self._buffer_offset
        if self.offset < self._buffer_offset or self.offset > end:
            raise TusClientError(
                f"server offset {self.offset} is outside the buffered stream range "
                f"{self._buffer_offset}-{end}; a stream cannot be rewound")
        if self.offset == end and not self._eof:
            self._buffer = await self.source.read_stream(self.chunk_size)
            self._buffer_offset = end
            if len(self._buffer) < self.chunk_size:
                self._eof = True
        return self._buffer[self.offset - self._buffer_offset:]

    async def _patch(self, progress: Progress | None) -> int:
        assert self.url is not None
        offset = self.offset
        data: bytes | None = None
        declare: int | None = None
        if self.source.seekable:
            assert self.length is not None
            size = min(self.chunk_size, self.length - offset)
        else:
            data = await self._next_stream_bytes()
            size = len(data)
            if self._eof and not self._length_declared:
                declare = self._buffer_offset + len(self._buffer)
        headers = {
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(size),
        }
        if declare is not None:
            headers["Upload-Length"] = str(declare)
        algorithm = await self.client.checksum_algorithm()
        if algorithm and size:
            digest = (hashlib.new(algorithm, data).digest() if data is not None
                      else await self._digest(algorithm, offset, size))
            headers["Upload-Checksum"] = f"{algorithm} {base64.b64encode(digest).decode('ascii')}"
        body = self._body(offset, size, data, progress)
        try:
            resp = await self.client.request("PATCH", self.url, headers, data=body, retry=False,
                                             expect=(204, 200), what="upload chunk")
        except TusResponseError as exc:
            if exc.status in (404, 410) or exc.status is None:
                raise
            if exc.status in (409, 423, 460) or exc.status >= 500:
                raise _Retry(exc) from exc
            raise
        except NETWORK_ERRORS as exc:
            raise _Retry(exc) from exc
        new_offset = _int_header(resp.headers, "Upload-Offset")
        if new_offset is None or not offset <= new_offset <= offset + size:
            raise TusClientError(f"server answered PATCH with a bad Upload-Offset {new_offset!r}")
        if declare is not None:
            self.length = declare
            self._length_declared = True
        return new_offset

    async def _digest(self, algorithm: str, offset: int, size: int) -> bytes:
        hasher = hashlib.new(algorithm)
        done = 0
        while done < size:
            piece = await self.source.read_at(offset + done, min(PIECE_SIZE, size - done))
            if not piece:
                raise TusClientError("the file shrank during the upload")
            hasher.update(piece)
            done += len(piece)
        return hasher.digest()

    async def _body(self, offset: int, size: int, data: bytes | None,
                    progress: Progress | None) -> AsyncIterator[bytes]:
        piece_size = self.client.piece_size()
        sent = 0
        while sent < size:
            n = min(piece_size, size - sent)
            if data is not None:
                piece = data[sent:sent + n]
            else:
                piece = await self.source.read_at(offset + sent, n)
                if not piece:
                    raise TusClientError("the file shrank during the upload")
            # Everything happens before the yield: aiohttp stops iterating once it has
            # sent Content-Length bytes, so code after the last yield would never run.
            await self.client.throttle(len(piece))
            sent += len(piece)
            if progress:
                progress(offset + sent, self.length)
            yield piece


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None or not value.isdigit():
        return None
    return int(value)
