"""File fingerprints: the key under which an upload's URL is remembered for resuming.

The default, :class:`MD5Fingerprint`, is byte-for-byte the fingerprint tuspy computes
(``size:{size}--md5:{hex md5 of the first 64 KiB}``), so keys are interchangeable with
tuspy's. :class:`SHA256Fingerprint` is the same shape with SHA-256. Both only look at the
size and the first 64 KiB, so two files that agree there (same-sized files with a long
common header) share a key; :class:`FullSHA256Fingerprint` hashes the whole file
(one extra read of it) when that matters.
"""

from __future__ import annotations

import hashlib
import io
import os
from abc import ABC, abstractmethod
from typing import IO

__all__ = ["BLOCK_SIZE", "Fingerprinter", "FullSHA256Fingerprint", "MD5Fingerprint", "SHA256Fingerprint"]

#: How much of the start of a file the fingerprints hash (tuspy's BLOCK_SIZE).
BLOCK_SIZE = 65536


class Fingerprinter(ABC):
    """The fingerprint interface (tuspy's ``Fingerprint``): one method, stream in, key out.

    ``fs`` is a seekable binary stream; implementations read from its start and leave
    its position undefined (callers seek again before reading).
    """

    @abstractmethod
    def get_fingerprint(self, fs: IO[bytes]) -> str:
        """A string that identifies the file's content well enough to resume it."""


class _HashFingerprint(Fingerprinter):
    algorithm = "md5"

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size

    def get_fingerprint(self, fs: IO[bytes]) -> str:
        fs.seek(0)
        block = fs.read(self.block_size)
        if isinstance(block, str):  # a text stream: hash it as tuspy does (UTF-8)
            block = block.encode("utf-8")
        digest = hashlib.new(self.algorithm, block).hexdigest()
        size = fs.seek(0, io.SEEK_END)
        return f"size:{size}--{self.algorithm}:{digest}"

    def for_path(self, path: str | os.PathLike[str]) -> str:
        with open(path, "rb") as fs:
            return self.get_fingerprint(fs)


class MD5Fingerprint(_HashFingerprint):
    """``size:{size}--md5:{hex of the first 64 KiB}``, exactly as tuspy computes it."""

    algorithm = "md5"


class SHA256Fingerprint(_HashFingerprint):
    """``size:{size}--sha256:{hex of the first 64 KiB}``."""

    algorithm = "sha256"


class FullSHA256Fingerprint(Fingerprinter):
    """``size:{size}--sha256-full:{hex sha256 of the whole file}``."""

    def get_fingerprint(self, fs: IO[bytes]) -> str:
        fs.seek(0)
        hasher = hashlib.sha256()
        size = 0
        while block := fs.read(1 << 20):
            if isinstance(block, str):
                block = block.encode("utf-8")
            hasher.update(block)
            size += len(block)
        return f"size:{size}--sha256-full:{hasher.hexdigest()}"

    def for_path(self, path: str | os.PathLike[str]) -> str:
        with open(path, "rb") as fs:
            return self.get_fingerprint(fs)
