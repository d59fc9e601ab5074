"""S3 multipart part sizing: no upload size ceiling from the 10,000-part limit.

S3 multipart uploads have at most 10,000 parts, each 5 MiB..5 GiB except the last,
and the object is at most 5 TiB. Fixed 8 MiB parts would cap an upload near 78 GiB, so
the size of each part is chosen when it is cut:

* known length: ``max(part_size, ceil(bytes still to come / parts still available))``,
  rounded up to whole MiB. Up to ``part_size x 10,000`` (78 GiB at 8 MiB) every part is
  ``part_size``; beyond, parts are as large as they must be and the count never runs out.
* deferred length: the part size doubles every ``max_parts // 11`` parts (909 on S3), so
  even from a 5 MiB start the 10,000 parts reach more than S3's 5 TiB object limit
  (parts are capped at 5 GiB). Once the length is declared, the known-length rule takes
  over for the remaining parts.
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
