"""Where the local driver keeps an upload's file under ``data_dir/uploads``.

Sharded (data directories made by versions after 0.1.0): ``uploads/<shard>/<id>`` in
256 shard directories ``00`` to ``ff``, made at start. Creating a file holds its
directory's inode lock while the file system allocates the inode; with every file in one
directory, worker processes creating uploads at once spin on that lock (docs/benchmarks.md,
Workers). The ids this server makes end in their shard's two hex digits, and each process
picks a shard at random every second (``ShardClock``): one process's creations of a
second share a directory (one thread makes them, so they never contend; durable mode
syncs that directory once for all of them), two processes rarely share one. Other ids
(chosen by a hook) go by the CRC-32 of their first segment, so ``a`` and ``a/b`` meet in
one directory and clash as in the flat layout.

Flat (data directories made by 0.1.0): ``uploads/<id>``, kept as it is. The database
records which (``PRAGMA user_version``, see ``LocalStore``). Ids with ``/`` are files in
subdirectories either way.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import zlib
from collections.abc import Iterator

from ..ids import check_upload_id, is_upload_id, new_time_ordered_upload_id

__all__ = ["FLAT", "SHARDED", "SHARDS", "Layout", "ShardClock", "shard_of"]

#: ``PRAGMA user_version`` of a data directory's database: its layout.
FLAT, SHARDED = 0, 1
SHARDS = 256
_HEX = re.compile("[0-9a-f]+")


def shard_of(upload_id: str) -> str:
    """The shard directory's name of ``upload_id``: ``00`` to ``ff``, from its first
    segment. One of 32 lowercase hex digits (``ShardClock.new_id``) names it in its last
    two."""
    first = upload_id.partition("/")[0]
    if len(first) == 32 and _HEX.fullmatch(first):
        return first[-2:]
    return f"{zlib.crc32(first.encode()) & 0xFF:02x}"


class ShardClock:
    """New time-ordered ids in a shard this process picks at random each second."""

    __slots__ = ("_second", "_shard")

    def __init__(self) -> None:
        self._second = -1
        self._shard = "00"

    def new_id(self) -> str:
        """``new_time_ordered_upload_id`` with its last two (random) hex digits set to
        this second's shard: 72 random bits instead of 80."""
        second = int(time.monotonic())
        if second != self._second:
            self._second = second
            self._shard = f"{secrets.randbelow(SHARDS):02x}"
        return new_time_ordered_upload_id()[:-2] + self._shard


class Layout:
    """The paths of upload files under ``top`` (``data_dir/uploads``)."""

    __slots__ = ("sharded", "top")

    def __init__(self, top: str, *, sharded: bool) -> None:
        self.top = top
        self.sharded = sharded

    def path(self, upload_id: str) -> str:
        """The file of ``upload_id`` (checked: ``NotFound`` for an ill-formed id)."""
        check_upload_id(upload_id)
        if self.sharded:
            return f"{self.top}/{shard_of(upload_id)}/{upload_id}"
        return f"{self.top}/{upload_id}"

    def entry_directory(self, upload_id: str) -> str:
        """The directory below ``top`` that holds the first segment of ``upload_id``: the
        one whose sync makes a one-segment id's file entry durable."""
        return f"{self.top}/{shard_of(upload_id)}" if self.sharded else self.top

    def make_shards(self) -> list[str]:
        """Make the shard directories that are missing; return those it made."""
        made = []
        if self.sharded:
            for n in range(SHARDS):
                path = f"{self.top}/{n:02x}"
                try:
                    os.mkdir(path, 0o750)
                except FileExistsError:
                    continue
                made.append(path)
        return made

    def files(self, young: float) -> Iterator[str]:
        """The ids of the upload files made before ``young``, as the tree is read."""
        if not self.sharded:
            yield from _upload_files(self.top, "", young)
            return
        for n in range(SHARDS):
            yield from _upload_files(f"{self.top}/{n:02x}", "", young)


def _upload_files(top: str, parent: str, young: float) -> Iterator[str]:
    """The ids of the files under ``top`` made before ``young`` (subdirectories are the
    segments of ids with ``/``). A file or directory that another process removes
    meanwhile (a terminate, or its own orphan scan) is passed by."""
    pending = [parent]
    while pending:
        parent = pending.pop()
        try:
            entries = os.scandir(os.path.join(top, parent) if parent else top)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                name = parent + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if is_upload_id(name):
                            pending.append(name + "/")
                    elif is_upload_id(name) and entry.stat().st_ctime < young:
                        yield name
                except FileNotFoundError:
                    continue
