"""GET of a finished upload: safe response headers, one Range decided for every driver
(RFC 9110 section 14), and streaming for object stores (the local driver's files go out
through ``web.FileResponse``: sendfile)."""

from __future__ import annotations

import os
import re
from email.utils import parsedate_to_datetime
from typing import Any

from aiohttp import hdrs, web

from ..protocol import Metadata
from ..protocol.content import download_content
from ..storage.base import Download
from .keys import CORS


def download_headers(metadata: Metadata) -> dict[str, str]:
    """Content-Type and Content-Disposition for a download, from the upload's metadata."""
    content_type, disposition = download_content(metadata)
    return {"Content-Type": content_type, "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff"}


_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)


class Unsatisfiable(Exception):
    """The Range selects no byte of the representation (416)."""


def requested_range(headers: Any, size: int, etag: str,
                    last_modified: float) -> tuple[int, int] | None:
    """The one byte range to send, as (first, last) inclusive, or None for all of it.

    RFC 9110 section 14: a Range the server cannot or will not honour (another unit,
    several ranges, bad syntax) is ignored, so the whole representation is sent with 200;
    so is a Range whose If-Range (a strong ETag or a date) no longer matches. Raises
    ``Unsatisfiable`` for a valid range that selects nothing (``bytes=-0``, a first byte
    past the end, any range of an empty upload).
    """
    value = headers.get(hdrs.RANGE)
    if value is None:
        return None
    if_range = headers.get(hdrs.IF_RANGE)
    if if_range is not None and not _if_range_holds(if_range.strip(), etag, last_modified):
        return None
    match = _BYTE_RANGE.fullmatch(value.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first_text, last_text = match.groups()
    if not first_text:  # suffix range: the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(size - suffix, 0), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # an invalid range-spec: the header is ignored
    if first >= size:
        raise Unsatisfiable()
    return first, min(int(last_text), size - 1) if last_text else size - 1


def _if_range_holds(value: str, etag: str, last_modified: float) -> bool:
    if value.startswith(('"', "W/")):
        return value == etag and not etag.startswith("W/")  # strong comparison
    try:
        date = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return False
    return int(last_modified) <= date


def file_etag(path: str) -> tuple[str, float]:
    """The ETag and mtime ``web.FileResponse`` sends for ``path`` (for If-Range)."""
    st = os.stat(path)
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"', st.st_mtime


class FileDownload(web.FileResponse):
    """``web.FileResponse`` with the Range already decided by ``requested_range``."""

    def __init__(self, path: str, byte_range: tuple[int, int] | None,
                 headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._byte_range = byte_range

    async def prepare(self, request: web.BaseRequest) -> Any:
        headers = request.headers.copy()
        headers.popall(hdrs.RANGE, None)
        headers.popall(hdrs.IF_RANGE, None)
        if self._byte_range is not None:
            headers[hdrs.RANGE] = "bytes={}-{}".format(*self._byte_range)
        return await super().prepare(request.clone(headers=headers))


def unsatisfiable(size: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})


async def stream_download(request: web.Request, source: Download,
                          headers: dict[str, str]) -> web.StreamResponse:
    """Serve a ``Download`` without a local path (object stores), honouring one Range."""
    size = source.size
    start, end = 0, size - 1
    status = 200
    headers["Accept-Ranges"] = "bytes"
    headers["ETag"] = source.etag
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None and _etag_listed(if_none_match, source.etag):
        response = web.StreamResponse(status=304, headers=headers)
        response.last_modified = source.last_modified
        return response
    try:
        byte_range = requested_range(request.headers, size, source.etag, source.last_modified)
    except Unsatisfiable:
        raise unsatisfiable(size) from None
    if byte_range is not None:
        start, end = byte_range
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start + 1 if size else 0
    response.last_modified = source.last_modified
    cors = request.app[CORS]
    if cors is not None:  # prepared here, so the front middleware cannot add them
        cors(request, response.headers)
    await response.prepare(request)
    if size:
        async for chunk in source.read(start, end - start + 1):
            await response.write(chunk)
    await response.write_eof()
    return response


def _etag_listed(if_none_match: str, etag: str) -> bool:
    """If-None-Match (weak comparison): ``*`` or any listed tag equal to ``etag``."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    bare = etag.removeprefix("W/")
    return "*" in tags or any(tag.removeprefix("W/") == bare for tag in tags)
