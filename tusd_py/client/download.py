"""Downloads: GET a finished upload, retried and continued with ``Range``."""

from __future__ import annotations

import logging
import os
import re
from typing import IO, TYPE_CHECKING

import aiohttp

from .errors import TusClientError, TusResponseError, UploadNotFound
from .uploader import NETWORK_ERRORS, PIECE_SIZE, Progress

if TYPE_CHECKING:
    from .client import TusClient

log = logging.getLogger("tusd_py.client")


async def download(client: TusClient, url: str, dest: str | os.PathLike[str] | IO[bytes], *,
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
                async with client.session.get(url, headers={**client.headers, **headers}) as resp:
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
                if attempt > client.retries:
                    raise error from None
                log.info("GET %s failed at %d (%s); retry %d of %d", url, written, error,
                         attempt, client.retries)
                await client.backoff_sleep(attempt, error)
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
