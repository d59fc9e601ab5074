"""Checksum algorithms of the checksum extension."""

from __future__ import annotations

import hashlib
from typing import Protocol

#: Algorithms advertised in Tus-Checksum-Algorithm, in tusd's order.
ALGORITHMS: tuple[str, ...] = ("sha1", "md5", "sha256", "sha512")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def new_hasher(algorithm: str) -> Hasher:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported checksum algorithm {algorithm!r}")
    return hashlib.new(algorithm)
