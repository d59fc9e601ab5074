"""Azure block sizing: no upload size ceiling from the 50,000-block limit."""

from __future__ import annotations

from ...protocol.errors import SizeExceeded

MIB = 1 << 20
#: The service limits the driver plans with (Azure block blobs).
MAX_BLOCKS = 50_000  # committed blocks per blob
MAX_BLOCK_SIZE = 4000 << 20  # bytes per staged block (service version 2019-12-12+)


def block_size_for(used: int, *, base: int, length: int | None, done: int) -> int:
    """The size of the next full block, given ``used`` blocks holding ``done`` bytes.

    Known length: ``max(base, ceil(bytes still to come / blocks left))`` (whole MiB
    when above ``base``), so the 50,000 blocks never run out. Deferred length: ``base``, doubling every 4,545
    blocks (eleven tiers reach Azure's 190.7 TiB from any base)."""
    left = MAX_BLOCKS - used - 1  # one block kept for a short last one
    if left <= 0:
        raise SizeExceeded("upload has too many blocks for one Azure blob (50,000)")
    if length is not None:
        need = -(-max(length - done, 0) // left)
        size = base if need <= base else -(-need // MIB) * MIB
    else:
        size = base << min(used // (MAX_BLOCKS // 11), 12)
    return min(size, MAX_BLOCK_SIZE)
