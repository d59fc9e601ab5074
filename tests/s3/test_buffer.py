"""The part buffer and its reader (what botocore gets as a part body)."""

from __future__ import annotations

import io
import os

from tusd_py.storage.s3_buffer import ChunkBuffer, ChunksReader


def test_take_splits_at_most_one_chunk_and_keeps_order():
    data = os.urandom(10_000)
    buf = ChunkBuffer()
    for i in range(0, len(data), 700):
        buf.append(data[i:i + 700])
    assert len(buf) == len(data)
    first = buf.take(3_000)
    assert b"".join(first) == data[:3_000]
    assert len(buf) == 7_000
    assert b"".join(buf.take(100_000)) == data[3_000:]
    assert not buf and buf.take(5) == []


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
