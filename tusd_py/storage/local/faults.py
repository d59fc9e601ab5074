"""Faults of the local driver's disk, named: a full disk as ``InsufficientStorage`` (507),
other I/O errors as ``StorageError`` (500), and the checks that keep SQLite's shared
memory file from killing the process with SIGBUS."""

from __future__ import annotations

import errno
import os
import sqlite3

from ...protocol.errors import InsufficientStorage, StorageError, TusError

#: errno values that mean "no room": no free blocks or inodes, or over a quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: SQLite's result code for "database or disk is full".
SQLITE_FULL = 13


def is_full(exc: BaseException) -> bool:
    """True for the errors a full disk (or quota) raises, from the OS or from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL
    return False


def storage_error(exc: BaseException, what: str) -> BaseException:
    """The typed error for a failed disk or database operation (``what`` says which; no
    path is named, the answer goes to the client): a full disk is 507, another OS or
    SQLite error 500; anything else is returned as it is."""
    if isinstance(exc, TusError):
        return exc
    if is_full(exc):
        return InsufficientStorage(f"{what}: no space left on the server's storage")
    if isinstance(exc, OSError):
        return StorageError(f"{what}: {exc.strerror or type(exc).__name__}")
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"{what}: database error")
    return exc


def read_only_reason(path: str) -> str | None:
    """Why nothing can be written under ``path`` (a read-only mount, no write
    permission), or None. For the log: it names the path."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return f"{path} is on a read-only file system"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def shm_fault(db_path: str) -> str | None:
    """Why SQLite's shared-memory file (``<db>-shm``) cannot be written, or None.

    SQLite maps the ``-shm`` file of a WAL database into memory and writes to the
    mapping; when the file cannot take the writes (immutable, read-only file or mount)
    the process dies of SIGBUS instead of getting an error. Checked before the database
    is opened and by readiness, so that does not happen silently."""
    shm = db_path + "-shm"
    directory = os.path.dirname(db_path) or "."
    reason = read_only_reason(directory)
    if reason is not None:
        return reason
    try:
        fd = os.open(shm, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        return f"{shm} cannot be opened for writing: {exc.strerror}"
    try:
        # An immutable (chattr +i) or append-only file refuses O_RDWR above for anyone
        # but may already be mapped; a zero-length write proves nothing, so probe the
        # first byte in place (SQLite rewrites the whole header anyway).
        first = os.pread(fd, 1, 0)
        if first:
            os.pwrite(fd, first, 0)
    except OSError as exc:
        return f"{shm} cannot be written: {exc.strerror}"
    finally:
        os.close(fd)
    return None
