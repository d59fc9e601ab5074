"""S3 multipart part sizing: each part's size is chosen when it is cut, so the 10,000-part
limit never caps an upload below S3's 5 TiB object limit (known length: parts grow as
needed; deferred length: they double every ``max_parts // 11`` parts). In equal-parts mode
(``equal_part_size``) an upload has one part size, fixed when it is created.
"""

from __future__ import annotations

from ...protocol.errors import SizeExceeded

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 << 40
#: Tiers of equal part size for deferred-length uploads (each doubles the previous).
DEFERRED_TIERS = 11


def part_size_for(part_number: int, *, base: int, length: int | None, done: int,
                  max_parts: int = MAX_PARTS) -> int:
    """The size of part ``part_number`` (1-based).

    ``done`` is the number of bytes already in parts ``1 .. part_number - 1`` and
    ``length`` the upload's total length (None while deferred). Raises ``SizeExceeded``
    when no part number is left (the upload is larger than S3 can hold).
    """
    if part_number > max_parts:
        raise SizeExceeded("upload too large for an S3 multipart upload (10,000 parts)")
    if length is not None:
        parts_left = max_parts - part_number + 1
        need = -(-max(length - done, 0) // parts_left)
        size = max(base, need)
    else:
        step = max(1, max_parts // DEFERRED_TIERS)
        size = base << min((part_number - 1) // step, 40)
    size = -(-size // MIB) * MIB
    return min(size, MAX_PART_SIZE)


def reachable_size(*, base: int, length: int | None, max_parts: int = MAX_PARTS) -> int:
    """How many bytes ``max_parts`` parts sized by ``part_size_for`` can hold (the last
    part counted at its full planned size). Used by tests and documentation."""
    total = 0
    for number in range(1, max_parts + 1):
        total += part_size_for(number, base=base, length=length, done=total, max_parts=max_parts)
        if length is not None and total >= length:
            return total
    return total


def equal_part_size(*, base: int, length: int | None, max_parts: int = MAX_PARTS) -> int:
    """The one size of every non-trailing part of an equal-parts upload: ``base`` (the
    configured part size), grown for a known ``length`` to what ``max_parts`` parts need
    (rounded up to 1 MiB). Raises ``SizeExceeded`` when that is beyond S3's 5 GiB."""
    size = base
    if length is not None:
        need = -(-length // max_parts)
        size = max(base, -(-need // MIB) * MIB)
    if size > MAX_PART_SIZE:
        raise SizeExceeded(equal_parts_exceeded(MAX_PART_SIZE, max_parts))
    return size


def equal_parts_exceeded(part_size: int, max_parts: int = MAX_PARTS) -> str:
    """The 413 text for an upload larger than ``max_parts`` equal parts of ``part_size``."""
    return (f"maximum upload size exceeded: equal S3 parts of {part_size} bytes hold at "
            f"most {part_size * max_parts} bytes ({max_parts} parts)")
