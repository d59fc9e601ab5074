"""S3 error translation (botocore and network failures as ``TusError`` values), and what
the store and its lock share: the record's part entries and the final object's headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from ...protocol.content import stored_content
from ...protocol.errors import ServiceUnavailable, StorageError, TusError
from ...protocol.headers import Metadata
from ..object.errors import Conflict

#: S3 error codes meaning "slow down"; botocore's standard retry mode already retried them.
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "ProvisionedThroughputExceededException",
})
#: A conditional write lost its race (412; 409 when S3 saw two at once).
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class Part(TypedDict):
    n: int
    etag: str
    size: int


class Segment(TypedDict):
    """A stored piece of the tail: bytes past the last part, in an object of its own."""

    key: str
    size: int
    etag: str


def segments_of(record: dict[str, Any]) -> list[Segment]:
    """The tail segments a record lists, in order (older records: one, or none)."""
    tail = record.get("tail")
    if not tail:
        return []
    return list(tail) if isinstance(tail, list) else [tail]


def object_headers(metadata: Metadata) -> dict[str, str]:
    """ContentType (and ContentDisposition) arguments for the final object, from tus
    metadata (``protocol.content.stored_content``)."""
    content_type, disposition = stored_content(metadata)
    headers = {"ContentType": content_type}
    if disposition is not None:
        headers["ContentDisposition"] = disposition
    return headers


def error_code(exc: BaseException) -> tuple[str, int]:
    """(code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def translate(exc: BaseException, what: str) -> TusError:
    """An S3/network failure as the error the client sees (after botocore's retries)."""
    if isinstance(exc, TusError):
        return exc
    code, status = error_code(exc)
    if code:
        if code in THROTTLING_CODES or status == 503:
            return ServiceUnavailable(f"storage is throttling requests ({code}) during {what}; "
                                      "retry later")
        if status >= 500:
            return ServiceUnavailable(f"storage error {code} during {what}; retry later")
        if code == "NoSuchBucket":
            return StorageError(f"storage bucket does not exist ({what})")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StorageError(f"storage refused {what} ({code}): check credentials and policy")
        return StorageError(f"storage error {code} during {what}")
    name = type(exc).__name__
    return ServiceUnavailable(f"storage unreachable during {what} ({name}); retry later")


@asynccontextmanager
async def s3_errors(what: str) -> AsyncIterator[None]:
    """Turn anything the S3 client raises into a ``TusError``."""
    try:
        yield
    except (TusError, Conflict):
        raise
    except (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise translate(exc, what) from exc
