"""GET of a finished upload: safe response headers, and streaming for object stores
(the local driver's files go out through ``web.FileResponse``: sendfile, Range, ETag)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from .protocol import Metadata, metadata_text
from .storage.base import Download

#: filetype values served inline with their own Content-Type; everything else is sent
#: as application/octet-stream + attachment, so an upload cannot become a stored XSS.
SAFE_INLINE_TYPES = frozenset({
    "text/plain", "image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp",
    "audio/wave", "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/webm", "audio/ogg",
    "audio/mpeg", "video/webm", "video/ogg", "video/mp4", "application/ogg", "application/pdf",
})


def download_headers(metadata: Metadata) -> dict[str, str]:
    """Content-Type and Content-Disposition for a download, from the upload's metadata."""
    filetype = (metadata_text(metadata, "filetype") or "").strip().lower()
    inline = filetype in SAFE_INLINE_TYPES
    content_type = filetype if inline else "application/octet-stream"
    disposition = "inline" if inline else "attachment"
    filename = metadata_text(metadata, "filename")
    if filename:
        disposition += _disposition_filename(filename)
    return {"Content-Type": content_type, "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff"}


def _disposition_filename(name: str) -> str:
    """RFC 6266 filename parameters: an ASCII fallback plus the exact UTF-8 form."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1][:255]
    ascii_name = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f'; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(name, safe="")}'


async def stream_download(request: web.Request, source: Download,
                          headers: dict[str, str]) -> web.StreamResponse:
    """Serve a ``Download`` without a local path (object stores), honouring one Range."""
    size = source.size
    start, end = 0, size - 1
    status = 200
    try:
        http_range = request.http_range
    except ValueError:
        http_range = slice(None, None)
    if http_range.start is not None or http_range.stop is not None:
        start = http_range.start or 0
        if start < 0:
            start = max(size + start, 0)
        end = min((http_range.stop or size) - 1, size - 1)
        if start > end or start >= size:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Accept-Ranges"] = "bytes"
    headers["ETag"] = source.etag
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start + 1 if size else 0
    response.last_modified = source.last_modified
    await response.prepare(request)
    if size:
        async for chunk in source.read(start, end - start + 1):
            await response.write(chunk)
    await response.write_eof()
    return response
