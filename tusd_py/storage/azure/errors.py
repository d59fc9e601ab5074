"""Azure error translation (SDK and network failures as ``TusError`` values), and what the
store and its lock share: block ids (they embed the writer's lease token) and their runs
in the record, and the final blob's headers.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import BlobBlock, BlockState, ContentSettings

from ...protocol.content import stored_content
from ...protocol.errors import ServiceUnavailable, StorageError, TusError
from ...protocol.headers import Metadata, format_metadata
from ..object.errors import Conflict

#: Azure limits all metadata of a blob to 8 KiB; the tus metadata copy stays below this.
MAX_METADATA_COPY = 7 << 10

#: Error codes meaning "slow down / try later" (the SDK retried them already).
BUSY_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})
#: A conditional write lost its race.
CONFLICT_CODES = frozenset({"ConditionNotMet", "BlobAlreadyExists", "LeaseIdMissing"})
NOT_FOUND_CODES = frozenset({"BlobNotFound", "ResourceNotFound"})
#: The service cannot Put Block From URL (Azurite before 3.37, some Azure Stack builds).
NOT_IMPLEMENTED_CODES = frozenset({"APINotImplemented", "NotImplemented"})



def block_id(token: str, number: int) -> str:
    """A block id: base64 of a fixed-length string (Azure wants equal lengths per blob).

    ``token`` is the writer's lease token, so blocks staged by a writer that lost its
    lease can never be mistaken for the blocks of the writer that took over."""
    return base64.b64encode(f"{token[:12]}{number:08d}".encode()).decode()


def block_runs(runs: list[list[Any]], token: str, numbers: list[int]) -> list[list[Any]]:
    """``runs`` with the blocks ``numbers`` of writer ``token`` appended.

    The record lists its blocks as runs ``[token[:12], first number, count]`` (the ids
    are ``block_id(token, n)``): one run per PATCH instead of one id per block, so the
    record of an upload with thousands of blocks stays small (it is rewritten at each
    commit and lease renewal)."""
    out = [list(run) for run in runs]
    key = token[:12]
    for number in numbers:
        last = out[-1] if out else None
        if last is not None and last[0] == key and last[1] + last[2] == number:
            last[2] += 1
        else:
            out.append([key, number, 1])
    return out


def block_ids(runs: list[list[Any]]) -> list[str]:
    """Every block id of ``runs``, in order."""
    return [block_id(key, n) for key, first, count in runs for n in range(first, first + count)]


def block_count(runs: list[list[Any]]) -> int:
    return sum(int(run[2]) for run in runs)


def blob_headers(metadata: Metadata, upload_id: str) -> tuple[ContentSettings, dict[str, str]]:
    """(content settings, blob metadata) for the final blob, from tus metadata: its
    Content-Type and Content-Disposition (``protocol.content.stored_content``), and the
    upload id and the tus metadata in its header form."""
    content_type, disposition = stored_content(metadata)
    blob_metadata = {"tus_id": upload_id}
    if metadata:
        text = format_metadata(metadata)
        if len(text) <= MAX_METADATA_COPY:
            blob_metadata["tus_metadata"] = text
    return ContentSettings(content_type=content_type,
                           content_disposition=disposition), blob_metadata


def block_list(ids: list[str]) -> list[BlobBlock]:
    """Put Block List entries: each id from the uncommitted blocks, or the committed ones
    when a writer that died had committed them already."""
    return [BlobBlock(block_id=ident, state=BlockState.LATEST) for ident in ids]


def error_code(exc: BaseException) -> tuple[str, int]:
    """(Azure error code, HTTP status) of an SDK error; ("", 0) for anything else."""
    if not isinstance(exc, HttpResponseError):
        return "", 0
    code = getattr(exc, "error_code", None)
    text = str(getattr(code, "value", code) or "")
    return text, int(exc.status_code or 0)


def translate(exc: BaseException, what: str) -> TusError:
    """An Azure/network failure as the error the client sees (after the SDK's retries)."""
    if isinstance(exc, TusError):
        return exc
    code, status = error_code(exc)
    if status:
        label = code or str(status)
        if code in BUSY_CODES or status in (429, 503) or status >= 500:
            return ServiceUnavailable(f"storage error {label} during {what}; retry later")
        if code == "ContainerNotFound":
            return StorageError(f"storage container does not exist ({what})")
        if status in (401, 403):
            return StorageError(f"storage refused {what} ({label}): check the credentials "
                                "and their permissions")
        return StorageError(f"storage error {label} during {what}")
    name = type(exc).__name__
    return ServiceUnavailable(f"storage unreachable during {what} ({name}); retry later")


@asynccontextmanager
async def azure_errors(what: str) -> AsyncIterator[None]:
    """Turn anything the Azure client raises into a ``TusError``."""
    try:
        yield
    except (TusError, Conflict):
        raise
    except (AzureError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise translate(exc, what) from exc
