"""Where the local driver keeps an upload's file under ``data_dir/uploads``.

Sharded (data directories made by versions after 0.1.0): ``uploads/<shard>/<id>``, the
shard two hex digits of the CRC-32 of the id's first segment (256 directories, made at
start). Creating a file holds its directory's inode lock while the file system
allocates the inode; with every file in one directory, worker processes creating
uploads at once wait on each other there (docs/benchmarks.md, Workers). Flat (data
directories made by 0.1.0): ``uploads/<id>``, kept as it is. The database records which
(``PRAGMA user_version``, see ``LocalStore``). Ids with ``/`` are files in
subdirectories either way.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

from ..ids import check_upload_id, is_upload_id

__all__ = ["FLAT", "SHARDED", "SHARDS", "Layout", "shard_of"]

#: ``PRAGMA user_version`` of a data directory's database: its layout.
FLAT, SHARDED = 0, 1
SHARDS = 256


def shard_of(upload_id: str) -> str:
    """The shard directory's name of ``upload_id``: ``00`` to ``ff``, from its first
    segment, so ``a`` and ``a/b`` meet in one directory and clash as in the flat layout."""
    first = upload_id.partition("/")[0]
    return f"{zlib.crc32(first.encode()) & 0xFF:02x}"


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
