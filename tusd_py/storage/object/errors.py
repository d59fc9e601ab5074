"""What a conditional write of an object store raises when its condition failed."""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "TaggedRecord"]

#: A record and the tag (ETag or generation) it was read with.
TaggedRecord = tuple[dict[str, Any], str]


class Conflict(Exception):
    """A conditional write failed: the object changed (or vanished) since it was read."""

    #: The record and tag found after the failure (None: gone, or not read).
    current: TaggedRecord | None = None
