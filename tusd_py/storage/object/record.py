"""The record of an upload in an object store (``{id}.info``), one codec for S3, GCS and
Azure: ``new_record`` (an upload's first record, with the driver's own fields),
``decode_upload`` (the upload a record describes), ``dump`` and ``load`` (its stored
bytes; bytes that are not a record are a ``StorageError``, never a crash).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ...protocol.errors import StorageError
from ..base import Upload

__all__ = ["decode_upload", "dump", "load", "new_record"]


def new_record(upload: Upload, **fields: Any) -> dict[str, Any]:
    """A new record, as stored in ``.info``: the tus fields of ``upload``, the driver's
    own ``fields``, no lease, revision 0."""
    return {
        "v": 1,
        "id": upload.id,
        "length": upload.length,
        "offset": upload.offset,
        "metadata": {k: None if v is None else base64.b64encode(v).decode()
                     for k, v in upload.metadata.items()},
        "created_at": upload.created_at,
        "expires_at": upload.expires_at,
        "is_partial": upload.is_partial,
        "final_of": list(upload.final_of),
        "completed_at": upload.completed_at,
        "finish_owed": upload.finish_owed,
        "due": None,  # the upload's due marker (``object.index``); absent in older records
        **fields,
        "lease": None,  # {"holder": token, "until": epoch seconds}
        "rev": 0,
    }


def decode_upload(record: dict[str, Any], location: str) -> Upload:
    """The upload a record describes."""
    return Upload(
        id=record["id"], length=record["length"], offset=record["offset"],
        metadata={k: None if v is None else base64.b64decode(v)
                  for k, v in record["metadata"].items()},
        created_at=record["created_at"], expires_at=record["expires_at"],
        is_partial=bool(record["is_partial"]), final_of=tuple(record["final_of"]),
        completed_at=record["completed_at"], location=location,
        finish_owed=bool(record.get("finish_owed", False)),
    )


def dump(record: dict[str, Any]) -> bytes:
    """The record as stored: compact JSON."""
    return json.dumps(record, separators=(",", ":")).encode()


def load(body: bytes) -> dict[str, Any]:
    """The record stored as ``body``; ``StorageError`` if it is none (not JSON, not an
    object, or another version of the format)."""
    try:
        record = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        record = None
    if not isinstance(record, dict) or record.get("v") != 1:
        raise StorageError("unreadable .info record")
    return record
