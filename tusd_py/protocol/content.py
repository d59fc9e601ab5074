"""Content-Type and Content-Disposition from an upload's ``filetype`` and ``filename``
metadata, sanitised so that an upload cannot become a stored XSS. Pure: no I/O.

Two policies: ``download_content`` for downloads through the daemon (inline only for
``SAFE_INLINE_TYPES``, with their charset; anything else an octet-stream attachment)
and ``stored_content`` for the final object in a bucket (any well-formed MIME type,
always an attachment: objects may be served straight from the bucket).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from .headers import Metadata, metadata_text

__all__ = ["SAFE_INLINE_TYPES", "download_content", "stored_content"]

#: filetype values served inline with their own Content-Type; everything else is sent
#: as application/octet-stream + attachment, so an upload cannot become a stored XSS.
SAFE_INLINE_TYPES = frozenset({
    "text/plain", "image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp",
    "audio/wave", "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/webm", "audio/ogg",
    "audio/mpeg", "video/webm", "video/ogg", "video/mp4", "application/ogg", "application/pdf",
})
OCTET_STREAM = "application/octet-stream"

_CHARSET = re.compile(r"(?:^|;)\s*charset=\"?([a-z0-9._-]{1,40})\"?\s*(?:;|$)")
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


def download_content(metadata: Metadata) -> tuple[str, str]:
    """(Content-Type, Content-Disposition) of a download: a type of
    ``SAFE_INLINE_TYPES`` is ``inline`` (its charset, the one parameter worth keeping,
    is kept), anything else is ``application/octet-stream`` as an ``attachment``."""
    filetype = (metadata_text(metadata, "filetype") or "").strip().lower()
    media_type, _, params = filetype.partition(";")
    media_type = media_type.strip()
    inline = media_type in SAFE_INLINE_TYPES
    content_type = OCTET_STREAM
    if inline:
        charset = _CHARSET.search(params)
        content_type = media_type + (f"; charset={charset.group(1)}" if charset else "")
    disposition = "inline" if inline else "attachment"
    filename = metadata_text(metadata, "filename")
    if filename:
        disposition += _filename_params(filename)
    return content_type, disposition


def stored_content(metadata: Metadata) -> tuple[str, str | None]:
    """(Content-Type, Content-Disposition or None) of a final object in a bucket: a
    well-formed MIME type (lower-cased, no parameters) or ``application/octet-stream``;
    always an ``attachment``, set only when there is a filename."""
    filetype = (metadata_text(metadata, "filetype") or "").strip()
    content_type = filetype.lower() if _MIME.fullmatch(filetype) else OCTET_STREAM
    filename = metadata_text(metadata, "filename")
    return content_type, "attachment" + _filename_params(filename) if filename else None


def _filename_params(name: str) -> str:
    """RFC 6266 filename parameters of the last path segment of ``name``: an ASCII
    fallback plus the exact UTF-8 form."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1][:255]
    ascii_name = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f'; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(name, safe="")}'
