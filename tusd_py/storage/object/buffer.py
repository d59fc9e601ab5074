"""The object stores' part buffer: body chunks kept as received and sent without joining
(``ChunksReader``), so a part's bytes exist once in memory; beyond ``limit`` bytes in
memory the rest of a grown part (S3) spills to an anonymous temporary file.
``BufferGauge`` counts what is held.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections import deque
from collections.abc import Iterable


class BufferGauge:
    """Upload bytes held in memory by a store's part buffers (and the bodies of parts
    in flight), with the peak since ``reset``; and the spill files open now."""

    __slots__ = ("files", "held", "peak", "spilled")

    def __init__(self) -> None:
        self.held = 0
        self.peak = 0
        self.spilled = 0  # bytes written to spill files, ever
        self.files = 0  # spill files open now

    def add(self, n: int) -> None:
        self.held += n
        if self.held > self.peak:
            self.peak = self.held

    def reset(self) -> None:
        self.peak = self.held
        self.spilled = 0


class SpillFile:
    """An anonymous temporary file that bytes past a buffer's memory limit go to. It is
    closed (and so gone) when the last reference to it is dropped (``unref``)."""

    __slots__ = ("_file", "_gauge", "fd", "refs", "size")

    def __init__(self, directory: str | None, gauge: BufferGauge) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # closed by unref
        self.fd = self._file.fileno()
        self.size = 0
        self.refs = 1  # the buffer appending to it
        self._gauge = gauge
        gauge.files += 1

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end; returns where it starts."""
        start = self.size
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.size)
            self.size += n
            view = view[n:]
        self._gauge.spilled += len(data)
        return start

    def unref(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self._file.close()
            self._gauge.files -= 1


class FileRegion:
    """``length`` bytes of a spill file from ``offset``: one segment of a buffer."""

    __slots__ = ("file", "length", "offset")

    def __init__(self, file: SpillFile, offset: int, length: int) -> None:
        self.file = file
        self.offset = offset
        self.length = length
        file.refs += 1

    def __len__(self) -> int:
        return self.length


Segment = bytes | FileRegion


class ChunkBuffer:
    """Bytes in arrival order: append at the end, take whole parts from the front.

    Without a ``limit`` everything stays in memory. With one, a chunk arriving while
    ``limit`` bytes or more are in memory goes to a spill file (in ``spill_dir``);
    ``spill`` moves all of it there."""

    __slots__ = ("_chunks", "_file", "_gauge", "_limit", "_spill_dir", "memory", "size")

    def __init__(self, chunks: Iterable[bytes] = (), *, limit: int | None = None,
                 spill_dir: str | None = None, gauge: BufferGauge | None = None) -> None:
        self._chunks: deque[Segment] = deque(c for c in chunks if c)
        self.size = sum(len(c) for c in self._chunks)
        #: Bytes of this buffer in memory (the rest is in spill files).
        self.memory = self.size
        self._limit = sys.maxsize if limit is None else limit
        self._spill_dir = spill_dir
        self._gauge = gauge if gauge is not None else BufferGauge()
        self._file: SpillFile | None = None  # the spill file appended to
        self._gauge.add(self.memory)

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    @property
    def in_memory(self) -> bool:
        """Whether no byte of it is in a spill file."""
        return self.memory == self.size

    def append(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        if self.memory >= self._limit:
            self._spill(data)
            return
        self._chunks.append(bytes(data))
        self.size += n
        self.memory += n
        gauge = self._gauge  # BufferGauge.add, inlined: this runs for every body chunk
        gauge.held += n
        if gauge.held > gauge.peak:
            gauge.peak = gauge.held

    def _spill(self, data: bytes) -> None:
        file = self._file
        if file is None:
            file = self._file = SpillFile(self._spill_dir, self._gauge)
        start = file.append(data)
        last = self._chunks[-1] if self._chunks else None
        if isinstance(last, FileRegion) and last.file is file and last.offset + last.length == start:
            last.length += len(data)
        else:
            self._chunks.append(FileRegion(file, start, len(data)))
        self.size += len(data)

    def take(self, n: int) -> ChunkBuffer:
        """Remove the first ``n`` bytes and return them as a buffer of their own (at
        most one segment is split; chunks and file regions move, nothing is copied).
        Release it with ``clear`` once it is no longer needed."""
        out = ChunkBuffer(gauge=self._gauge)
        need = min(n, self.size)
        self.size -= need
        out.size = need
        if self._file is not None and need:
            # What spilled so far belongs to the part being cut (and its leftover):
            # later bytes go to a new file, so a file never outgrows about one part.
            self._file.unref()
            self._file = None
        chunks, taken = self._chunks, out._chunks
        while need:
            chunk = chunks.popleft()
            if len(chunk) > need:
                if isinstance(chunk, bytes):
                    taken.append(chunk[:need])
                    chunks.appendleft(chunk[need:])
                    self.memory -= need
                    out.memory += need
                else:
                    taken.append(FileRegion(chunk.file, chunk.offset, need))
                    chunk.offset += need
                    chunk.length -= need
                    chunks.appendleft(chunk)
                break
            taken.append(chunk)
            if isinstance(chunk, bytes):
                self.memory -= len(chunk)
                out.memory += len(chunk)
            need -= len(chunk)
        return out

    def spill(self, directory: str | None) -> None:
        """Move the bytes this buffer holds in memory to a new spill file (in
        ``directory``): a part waiting its turn to upload. Blocking (writes into the page
        cache): call it in a thread."""
        if not self.memory:
            return
        file = SpillFile(directory, self._gauge)
        moved: deque[Segment] = deque()
        for chunk in self._chunks:
            if isinstance(chunk, bytes):
                start = file.append(chunk)
                last = moved[-1] if moved else None
                if isinstance(last, FileRegion) and last.file is file \
                        and last.offset + last.length == start:
                    last.length += len(chunk)
                else:
                    moved.append(FileRegion(file, start, len(chunk)))
            else:
                moved.append(chunk)
        file.unref()  # the regions keep it open
        self._chunks = moved
        self._gauge.held -= self.memory
        self.memory = 0

    def extend(self, other: ChunkBuffer) -> None:
        """Move every segment of ``other`` (a buffer ``take`` made) to the end of this
        one; ``other`` is left empty. Nothing is copied."""
        self._chunks.extend(other._chunks)
        self.size += other.size
        self.memory += other.memory
        other._chunks.clear()
        other.size = other.memory = 0

    def chunks(self) -> list[Segment]:
        return list(self._chunks)

    def clear(self) -> None:
        """Drop every byte (memory and spill files) of the buffer."""
        for chunk in self._chunks:
            if isinstance(chunk, FileRegion):
                chunk.file.unref()
        self._chunks.clear()
        if self._file is not None:
            self._file.unref()
            self._file = None
        self._gauge.held -= self.memory
        self.size = self.memory = 0


class ChunksReader(io.RawIOBase):
    """A seekable, read-only file over a list of segments (in-memory chunks and spill
    file regions): a request body for the store clients (botocore, gcloud-aio, the
    Azure SDK), which seek to measure, sign and retry it. Spilled bytes are read with
    ``pread`` (aiohttp reads bodies in a thread)."""

    def __init__(self, chunks: list[Segment]) -> None:
        super().__init__()
        self._chunks = chunks
        self._size = sum(len(c) for c in chunks)
        self._pos = 0
        self._index = 0  # chunk holding _pos
        self._offset = 0  # _pos within that chunk

    def __len__(self) -> int:
        return self._size

    def close(self) -> None:
        """Nothing: aiohttp closes a request body once sent, and a retry (of the client
        library) seeks back and sends it again. ``release`` ends the reader."""

    def release(self) -> None:
        """Let go of the segments once the upload is over (with all its retries): the
        HTTP client may keep the request, and so this reader, alive in a reference
        cycle until the garbage collector runs."""
        self._chunks = []
        super().close()

    def __enter__(self) -> ChunksReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence == io.SEEK_END:
            pos += self._size
        pos = max(0, min(pos, self._size))
        self._pos = pos
        index, rest = 0, pos
        while index < len(self._chunks) and rest >= len(self._chunks[index]):
            rest -= len(self._chunks[index])
            index += 1
        self._index, self._offset = index, rest
        return pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = 0
        chunks = self._chunks
        while n < len(view) and self._index < len(chunks):
            chunk = chunks[self._index]
            take = min(len(view) - n, len(chunk) - self._offset)
            if isinstance(chunk, bytes):
                view[n:n + take] = memoryview(chunk)[self._offset:self._offset + take]
            else:
                take = os.preadv(chunk.file.fd, [view[n:n + take]], chunk.offset + self._offset)
                if take <= 0:
                    raise OSError("spill file ended early")
            n += take
            self._offset += take
            if self._offset == len(chunk):
                self._index += 1
                self._offset = 0
        self._pos += n
        return n
