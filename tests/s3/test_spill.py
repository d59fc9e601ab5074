"""Memory per PATCH is bounded by ``part_size`` even when parts had to grow: the rest
of a grown part is spilled to an anonymous temporary file (moto over real HTTP;
memory measured by the store's ``BufferGauge``)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.plugins.s3 import MIB, PART_SIZE, PREFIX
from tests.plugins.stores import new_upload, read_all

PIECE = 64 * 1024


async def test_grown_parts_keep_at_most_part_size_in_memory(make_store, s3_client, s3_bucket,
                                                            tmp_path: Path):
    # A simulated limit of 3 parts: a 45 MiB upload needs three 15 MiB parts (3 x part_size).
    spill = tmp_path / "spill"
    spill.mkdir()
    a = await make_store(max_parts=3, spill_dir=str(spill))
    b = await make_store(max_parts=3, spill_dir=str(spill))
    data = os.urandom(45 * MIB)
    upload = await new_upload(a, len(data))

    # A: 27 MiB: part 1 (15 MiB) uploads while 12 MiB more arrive, stored as a tail
    # segment (past the first half of the part numbers, the tail is not cut short):
    # at most part_size of each in memory, the rest spilled.
    lock = await a.lock(upload.id, 1)
    for i in range(0, 27 * MIB, PIECE):
        await lock.write(data[i:i + PIECE])
    assert a.buffer_gauge.peak <= 2 * PART_SIZE + PIECE  # the most it held at any moment
    assert a.buffer_gauge.files >= 1 and os.listdir(spill) == []  # anonymous
    await lock.commit()
    await lock.release()
    assert a.buffer_gauge.files == 0 and a.buffer_gauge.held == 0
    assert a.buffer_gauge.peak <= 2 * PART_SIZE + PIECE
    assert a.buffer_gauge.spilled == 17 * MIB  # 10 MiB of part 1, 7 MiB of the tail

    # B (no cached tail): reads the 12 MiB tail back, spilling past 5 MiB, into part 2
    # (15 MiB), then part 3 fills while part 2 uploads.
    lock = await b.lock(upload.id, 1)
    for i in range(27 * MIB, len(data), PIECE):
        await lock.write(data[i:i + PIECE])
    await lock.parts.collect()
    assert [p["size"] for p in lock.parts.done] == [15 * MIB, 15 * MIB]
    up = await lock.commit()
    await lock.release()
    assert up.is_complete
    gauge = b.buffer_gauge
    # One part filling (<= part_size in memory) while the previous one uploads (its
    # first part_size bytes in memory): 2 x part_size, not 2 x 15 MiB.
    assert gauge.peak <= 2 * PART_SIZE + PIECE
    # Part 2 keeps 5 MiB in memory: the 3 MiB that arrived and 2 MiB of the tail (its
    # other 10 MiB spilled); part 3 spills 10 MiB.
    assert 20 * MIB - 2 * PIECE <= gauge.spilled <= 20 * MIB
    assert gauge.files == 0 and gauge.held == 0
    assert os.listdir(spill) == []
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}{upload.id}")
    assert head["ETag"].endswith('-3"') and head["ContentLength"] == len(data)
    assert await read_all(b, up) == data


async def test_normal_parts_never_touch_the_disk(make_store):
    store = await make_store()
    data = os.urandom(3 * PART_SIZE + 123)
    upload = await new_upload(store, len(data))
    lock = await store.lock(upload.id, 1)
    for i in range(0, len(data), PIECE):
        await lock.write(data[i:i + PIECE])
    up = await lock.commit()
    await lock.release()
    assert up.is_complete and await read_all(store, up) == data
    assert store.buffer_gauge.spilled == 0
    assert store.buffer_gauge.peak <= 2 * PART_SIZE + PIECE
