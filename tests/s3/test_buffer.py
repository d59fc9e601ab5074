"""The part buffer and its reader (what botocore gets as a part body), and spilling the
bytes of a grown part beyond the memory limit to an anonymous temporary file."""

from __future__ import annotations

import io
import os
from pathlib import Path

from tusd_py.storage.object.buffer import BufferGauge, ChunkBuffer, ChunksReader


def content(buf: ChunkBuffer) -> bytes:
    return ChunksReader(buf.chunks()).read()


def test_take_splits_at_most_one_chunk_and_keeps_order():
    data = os.urandom(10_000)
    buf = ChunkBuffer()
    for i in range(0, len(data), 700):
        buf.append(data[i:i + 700])
    assert len(buf) == len(data)
    first = buf.take(3_000)
    assert content(first) == data[:3_000]
    assert len(buf) == 7_000
    assert content(buf.take(100_000)) == data[3_000:]
    assert not buf and not buf.take(5)


def test_reader_reads_seeks_and_rereads_like_a_file():
    chunks = [b"abc", b"", b"defgh", b"ij"]
    reader = ChunksReader(chunks)
    assert len(reader) == 10
    assert reader.read(4) == b"abcd"
    assert reader.tell() == 4
    assert reader.read() == b"efghij"
    assert reader.read(1) == b""
    assert reader.seek(0, io.SEEK_END) == 10
    reader.seek(-3, io.SEEK_END)
    assert reader.read(2) == b"hi"
    reader.seek(0)
    assert io.BufferedReader(reader).read() == b"abcdefghij"  # type: ignore[arg-type]


def test_bytes_past_the_limit_spill_to_an_anonymous_file_freed_with_the_last_user(
        tmp_path: Path):
    gauge = BufferGauge()
    buf = ChunkBuffer(limit=1000, spill_dir=str(tmp_path), gauge=gauge)
    data = os.urandom(5000)
    for i in range(0, len(data), 300):
        buf.append(data[i:i + 300])
        assert buf.memory <= 1000 + 300  # the limit, plus the chunk that crossed it
    assert (buf.memory, len(buf), gauge.held, gauge.spilled) == (1200, 5000, 1200, 3800)
    assert gauge.files == 1 and os.listdir(tmp_path) == []  # unlinked from the start

    part = buf.take(3100)  # memory + a split file region
    assert content(part) == data[:3100] and content(buf) == data[3100:]
    reader = ChunksReader(part.chunks())
    reader.seek(1150)
    assert reader.read(100) == data[1150:1250]  # across memory and file
    assert part.memory == 1200 and buf.memory == 0
    buf.append(b"x" * 10)  # memory is free again: after the leftover, in memory
    assert content(buf) == data[3100:] + b"x" * 10 and buf.memory == 10
    part.clear()
    assert gauge.files == 1  # the leftover still refers to it
    rest = buf.take(len(buf))
    assert content(rest) == data[3100:] + b"x" * 10
    rest.clear()
    assert gauge.files == 0 and gauge.held == 0
    assert gauge.peak == 1210


def test_a_part_of_exactly_the_limit_never_spills(tmp_path: Path):
    """The hot path: a normal part is cut the moment it fills."""
    gauge = BufferGauge()
    buf = ChunkBuffer(limit=4096, spill_dir=str(tmp_path), gauge=gauge)
    for _ in range(10):
        while len(buf) < 4096:
            buf.append(os.urandom(1000))
        buf.take(4096).clear()
    assert gauge.spilled == 0 and gauge.files == 0
    assert gauge.peak < 4096 + 1000
