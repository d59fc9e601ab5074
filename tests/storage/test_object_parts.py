"""The part pipeline shared by the object stores (``storage.object.parts``), on real
asyncio tasks: the concurrency bound, collection in order, and a failed upload."""

from __future__ import annotations

import asyncio

import pytest

from tusd_py.storage.object.parts import PartUploads


async def test_room_bounds_the_uploads_in_flight_and_collects_in_order():
    parts: PartUploads[int] = PartUploads(2)
    gates = [asyncio.Event() for _ in range(4)]
    running = 0
    peak = 0

    async def upload(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gates[n].wait()
        running -= 1
        return n

    for n in range(4):
        # each ends before the one started before it: collected in order all the same
        asyncio.get_running_loop().call_later(0.01 * (4 - n), gates[n].set)
        await parts.room()
        parts.start(upload(n), 10 + n)
        assert parts.count == n + 1 and parts.size == sum(10 + i for i in range(n + 1))
    await parts.collect()
    assert peak == 2
    assert parts.done == [0, 1, 2, 3] and parts.done_size == 46
    parts.clear()
    assert (parts.done, parts.count, parts.size) == ([], 0, 0)


async def test_a_failed_upload_is_raised_once_the_others_ended():
    parts: PartUploads[int] = PartUploads(3)
    ended: list[int] = []

    async def upload(n: int, fail: bool = False) -> int:
        await asyncio.sleep(0.01 * n)
        ended.append(n)
        if fail:
            raise OSError(f"part {n}")
        return n

    parts.start(upload(1), 1)
    parts.start(upload(2, fail=True), 1)
    parts.start(upload(3), 1)
    with pytest.raises(OSError, match="part 2"):
        await parts.collect()
    assert ended == [1, 2, 3]  # the third was waited for, not left running
    assert parts.done == [1] and parts.count == 1 and parts.size == 1


async def test_drain_waits_without_collecting():
    parts: PartUploads[int] = PartUploads()
    done = asyncio.Event()

    async def upload() -> int:
        await asyncio.sleep(0.01)
        done.set()
        return 1

    parts.start(upload(), 5)
    await parts.drain()
    assert done.is_set()
    assert (parts.done, parts.count, parts.size) == ([], 0, 0)
