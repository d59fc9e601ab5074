"""The S3 driver's part buffer: body chunks kept as received, sent without joining.

aiohttp hands a PATCH body over in ``bytes`` chunks of up to 64 KiB. Joining them into
one part-sized object costs a second copy of the part at the moment it is cut (and
aiohttp slices a bytearray body once more when it sends it). Instead the chunks stay
as they are and a part is uploaded from a seekable reader over them, so a part's bytes
exist once in memory while it fills and while it uploads.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterable


class ChunkBuffer:
    """Bytes in arrival order: append at the end, take whole parts from the front."""

    __slots__ = ("_chunks", "size")

    def __init__(self, chunks: Iterable[bytes] = ()) -> None:
        self._chunks: deque[bytes] = deque(c for c in chunks if c)
        self.size = sum(len(c) for c in self._chunks)

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(bytes(data))
            self.size += len(data)

    def take(self, n: int) -> list[bytes]:
        """Remove and return the first ``n`` bytes (as chunks; at most one is split)."""
        out: list[bytes] = []
        need = min(n, self.size)
        self.size -= need
        while need:
            chunk = self._chunks.popleft()
            if len(chunk) > need:
                out.append(chunk[:need])
                self._chunks.appendleft(chunk[need:])
                break
            out.append(chunk)
            need -= len(chunk)
        return out

    def chunks(self) -> list[bytes]:
        return list(self._chunks)


class ChunksReader(io.RawIOBase):
    """A seekable, read-only file over a list of chunks (a request body for botocore,
    which seeks to measure, sign and retry it)."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._size = sum(len(c) for c in chunks)
        self._pos = 0
        self._index = 0  # chunk holding _pos
        self._offset = 0  # _pos within that chunk

    def __len__(self) -> int:
        return self._size

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
            view[n:n + take] = memoryview(chunk)[self._offset:self._offset + take]
            n += take
            self._offset += take
            if self._offset == len(chunk):
                self._index += 1
                self._offset = 0
        self._pos += n
        return n
