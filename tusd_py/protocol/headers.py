"""Pure parsing and formatting of tus headers (no I/O, no aiohttp).

Every function either returns a well-formed value or raises a ``TusError``
subclass with the message the client will see.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from email.utils import formatdate

from .errors import BadRequest

TUS_VERSION = "1.0.0"
#: Largest integer a length or offset header may carry (signed 64-bit, as tusd).
MAX_INT = 2**63 - 1
MAX_METADATA_BYTES = 4096
MAX_METADATA_PAIRS = 64

_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")

Metadata = dict[str, bytes | None]


def _is_base64(text: str) -> bool:
    """``_B64.fullmatch``, by ``str`` methods when the text is letters and digits with
    at most two ``=`` of padding (nearly every value), by the regex otherwise."""
    data = text.rstrip("=")
    if len(text) - len(data) <= 2 and data.isascii() and data.isalnum():
        return True
    return _B64.fullmatch(text) is not None


def parse_uint(value: str | None, header: str, *, required: bool = True) -> int | None:
    """A non-negative decimal integer: digits only, no sign, no spaces, at most 2**63-1."""
    if value is None:
        if required:
            raise BadRequest(f"missing {header} header")
        return None
    if not (value.isdigit() and value.isascii() and len(value) <= 19):  # [0-9]{1,19}
        raise BadRequest(f"invalid {header} header")
    number = int(value)
    if number > MAX_INT:
        raise BadRequest(f"invalid {header} header")
    return number


def parse_defer_length(value: str | None) -> bool:
    if value is None:
        return False
    if value != "1":
        raise BadRequest("invalid Upload-Defer-Length header")
    return True


def parse_metadata(value: str | None) -> Metadata:
    """Parse ``Upload-Metadata``: ``key base64,key2 base64,key3`` (key-only allowed).

    Keys are unique printable ASCII without spaces or commas; values strict base64.
    """
    if value is None or value.strip() == "":
        return {}
    if len(value) > MAX_METADATA_BYTES:
        raise BadRequest("Upload-Metadata header too large")
    result: Metadata = {}
    pairs = value.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise BadRequest("too many Upload-Metadata pairs")
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise BadRequest("invalid Upload-Metadata header")
        key = parts[0]
        # printable ASCII but space and comma (the splits above took those out), by
        # ``str`` methods: a regex match costs 1.9 k instructions
        if not (key.isascii() and key.isprintable()):
            raise BadRequest("invalid Upload-Metadata key")
        if key in result:
            raise BadRequest(f"duplicate Upload-Metadata key {key!r}")
        if len(parts) == 1 or parts[1] == "":
            result[key] = None
            continue
        encoded = parts[1]
        if len(encoded) % 4 or not _is_base64(encoded):
            raise BadRequest(f"invalid base64 in Upload-Metadata value for {key!r}")
        try:
            # what b64decode(validate=True) calls, without its two Python-level steps
            result[key] = binascii.a2b_base64(encoded, strict_mode=True)
        except binascii.Error as exc:  # pragma: no cover - regex already screens
            raise BadRequest(f"invalid base64 in Upload-Metadata value for {key!r}") from exc
    return result


def format_metadata(metadata: Metadata) -> str:
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value).decode('ascii')}"
        for key, value in metadata.items()
    )


def metadata_text(metadata: Metadata, key: str) -> str | None:
    """A metadata value as text (UTF-8, undecodable bytes replaced), or None."""
    value = metadata.get(key)
    return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True)
class UploadConcat:
    partial: bool
    final_urls: tuple[str, ...] = ()

    @property
    def final(self) -> bool:
        return bool(self.final_urls)


def parse_concat(value: str | None) -> UploadConcat | None:
    """``partial`` or ``final;/files/a /files/b`` (absolute URLs allowed)."""
    if value is None:
        return None
    if value == "partial":
        return UploadConcat(partial=True)
    if value.startswith("final;"):
        urls = tuple(u for u in value[len("final;"):].split(" ") if u)
        if not urls:
            raise BadRequest("invalid Upload-Concat header: no partial uploads")
        if len(urls) > 1024:
            raise BadRequest("invalid Upload-Concat header: too many partial uploads")
        return UploadConcat(partial=False, final_urls=urls)
    raise BadRequest("invalid Upload-Concat header")


@dataclass(frozen=True)
class ChecksumHeader:
    algorithm: str
    digest: bytes


def parse_checksum(value: str | None, supported: tuple[str, ...]) -> ChecksumHeader | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; 400 for unknown algorithms."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise BadRequest("invalid Upload-Checksum header")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in supported:
        raise BadRequest(f"unsupported checksum algorithm {parts[0]!r}")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise BadRequest("invalid base64 in Upload-Checksum header") from exc
    return ChecksumHeader(algorithm, digest)


_last_date: tuple[int, str] = (-1, "")


def http_date(timestamp: float) -> str:
    """RFC 7231 IMF-fixdate, as Upload-Expires requires (whole seconds).

    The last second's text is kept: under load consecutive responses name the same
    second, and ``formatdate`` costs more than the rest of the header."""
    global _last_date
    second = int(timestamp)
    if second != _last_date[0]:
        _last_date = (second, formatdate(second, usegmt=True))
    return _last_date[1]


def effective_method(method: str, override: str | None) -> str:
    """The method a request means: a POST's ``X-HTTP-Method-Override`` (for clients and
    proxies that send only GET and POST), else its own."""
    if override and method == "POST":
        return override.strip().upper()
    return method
