"""The tus 1.0.0 protocol as pure functions and types: no I/O, no aiohttp."""

from .checksum import ALGORITHMS, new_hasher
from .errors import TusError
from .headers import (
    MAX_INT,
    TUS_VERSION,
    ChecksumHeader,
    Metadata,
    UploadConcat,
    format_metadata,
    http_date,
    metadata_text,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_uint,
)

__all__ = [
    "ALGORITHMS", "MAX_INT", "TUS_VERSION", "ChecksumHeader", "Metadata", "TusError",
    "UploadConcat", "format_metadata", "http_date", "metadata_text", "new_hasher",
    "parse_checksum", "parse_concat", "parse_defer_length", "parse_metadata", "parse_uint",
]
