"""Part sizing: S3's 10,000-part limit never caps an upload below S3's 5 TiB object limit."""

from __future__ import annotations

import pytest

from tusd_py.protocol.errors import SizeExceeded
from tusd_py.storage.s3.sizing import equal_part_size, part_size_for, reachable_size

MIB = 1 << 20
# Amazon S3's multipart upload limits (S3 User Guide, "Amazon S3 multipart upload limits"):
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MIB  # every part but the last
MAX_PART_SIZE = 5 << 30
MAX_OBJECT_SIZE = 5 << 40
#: Deferred-length uploads double their part size every 909 parts (README, S3 driver):
#: eleven doublings fit in 10,000 parts.
DOUBLING_STEP = 909


def test_known_length_uses_base_part_size_while_it_suffices():
    base = 8 * MIB
    length = base * MAX_PARTS  # 78 GiB: exactly what fixed 8 MiB parts can hold
    assert part_size_for(1, base=base, length=length, done=0) == base
    assert part_size_for(5000, base=base, length=length, done=4999 * base) == base
    assert part_size_for(1, base=base, length=10 * MIB, done=0) == base


def test_known_length_beyond_78_gib_grows_parts():
    base = 8 * MIB
    length = 100 << 30
    size = part_size_for(1, base=base, length=length, done=0)
    assert size > base and size % MIB == 0
    assert size * MAX_PARTS >= length


@pytest.mark.parametrize("base", [MIN_PART_SIZE, 8 * MIB, 64 * MIB])
def test_5_tib_upload_fits_in_10000_parts(base):
    assert reachable_size(base=base, length=MAX_OBJECT_SIZE) >= MAX_OBJECT_SIZE
    # every part stays within S3's per-part limits
    done = 0
    for number in (1, 2, 5000, MAX_PARTS):
        size = part_size_for(number, base=base, length=MAX_OBJECT_SIZE, done=done)
        assert MIN_PART_SIZE <= size <= MAX_PART_SIZE


@pytest.mark.parametrize("base", [MIN_PART_SIZE, 8 * MIB])
def test_deferred_length_parts_double_and_reach_5_tib(base):
    assert part_size_for(1, base=base, length=None, done=0) == base
    step = DOUBLING_STEP
    assert part_size_for(step, base=base, length=None, done=0) == base
    assert part_size_for(step + 1, base=base, length=None, done=0) == 2 * base
    assert part_size_for(MAX_PARTS, base=base, length=None, done=0) <= MAX_PART_SIZE
    assert reachable_size(base=base, length=None) >= MAX_OBJECT_SIZE


def test_small_simulated_limit():
    # what tests/s3/test_driver.py relies on for its "parts had to grow" upload
    assert part_size_for(1, base=5 * MIB, length=12 * MIB, done=0, max_parts=2) == 6 * MIB
    assert part_size_for(2, base=5 * MIB, length=12 * MIB, done=6 * MIB, max_parts=2) == 6 * MIB
    sizes = [part_size_for(n, base=5 * MIB, length=None, done=0, max_parts=3) for n in (1, 2, 3)]
    assert sizes == [5 * MIB, 10 * MIB, 20 * MIB]


def test_no_part_number_left_is_413():
    with pytest.raises(SizeExceeded):
        part_size_for(MAX_PARTS + 1, base=8 * MIB, length=None, done=0)


@pytest.mark.parametrize("base,length,size", [
    (8 * MIB, None, 8 * MIB),  # deferred: part_size, so at most 78.1 GiB
    (8 * MIB, 10 * MIB, 8 * MIB),
    (8 * MIB, 8 * MIB * MAX_PARTS, 8 * MIB),  # exactly what 8 MiB parts hold
    (8 * MIB, 8 * MIB * MAX_PARTS + 1, 9 * MIB),  # one byte more: grown by a MiB
    (8 * MIB, 100 << 30, 11 * MIB),  # 10.24 MiB needed, rounded up
    (8 * MIB, MAX_OBJECT_SIZE, 525 * MIB),
    (64 * MIB, MAX_OBJECT_SIZE, 525 * MIB),
    (5 * MIB + 1, None, 5 * MIB + 1),  # part_size as configured, not rounded
])
def test_equal_parts_have_one_size_fixed_at_creation(base, length, size):
    assert equal_part_size(base=base, length=length) == size
    if length is not None:
        assert size * MAX_PARTS >= length


def test_equal_parts_beyond_5_gib_parts_is_413():
    assert equal_part_size(base=8 * MIB, length=MAX_PART_SIZE * MAX_PARTS) == MAX_PART_SIZE
    with pytest.raises(SizeExceeded, match="maximum upload size exceeded"):
        equal_part_size(base=8 * MIB, length=MAX_PART_SIZE * MAX_PARTS + 1)
    with pytest.raises(SizeExceeded):
        equal_part_size(base=8 * MIB, length=2 * MAX_PART_SIZE + 1, max_parts=2)
