"""Data syncs of the local driver's durable mode (``storage.fsync: true``).

Before an offset commit is acknowledged its bytes must be on the disk, and for a file's
first bytes also its directory entry (``LocalStore.create`` leaves that to them).
``DataSync`` runs the syncs in its own pool of ``THREADS`` threads (a disk takes
concurrent flushes far better than one after the other): those queued in one event-loop
iteration are spread over the threads, and each directory holding the entries of first
bytes among them is fsynced once for all of them. Each waiter learns its own file's outcome (a failed sync
fails that commit only: its bytes are not acknowledged). The commits then share the group
commit's rounds (``batch.py``) with ``synchronous=FULL``: data first, then the offset.

``WriteBehind`` starts the write-out of a body's bytes while it still streams (Linux
``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so the sync at its
commit finds most of them already on the disk instead of writing them all then.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

log = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
#: Threads syncing at once.
THREADS = 8


class DataSync:
    """fdatasync of committed files (and fsync of their directories), in a pool."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        #: (fd, directory of the file's entry if these are its first bytes, waiter),
        #: dispatched once per loop iteration.
        self._queue: list[tuple[int, str | None, asyncio.Future[None]]] = []

    def open(self) -> None:
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="tusd-sync")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def file(self, fd: int, *, directory: str | None = None) -> None:
        """Return once the data of ``fd`` is on the disk, and its entry in ``directory``
        if given (the file's first bytes); ``OSError`` if that failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._dispatch, loop)
        self._queue.append((fd, directory, future))
        await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        queue, self._queue = self._queue, []
        if self._pool is None:
            for _, _, future in queue:
                _settle(future, OSError("the store is stopped"))
            return
        jobs = [queue[i::THREADS] for i in range(min(THREADS, len(queue)))]
        directories = {directory: loop.run_in_executor(self._pool, sync_directory, directory)
                       for directory in {d for _, d, _ in queue if d is not None}}
        for job in jobs:
            done = loop.run_in_executor(self._pool, _sync_files, [fd for fd, _, _ in job])
            done.add_done_callback(functools.partial(_finish, job, directories))


def _finish(job: list[tuple[int, str | None, asyncio.Future[None]]],
            directories: dict[str, asyncio.Future[None]],
            done: asyncio.Future[list[OSError | None]]) -> None:
    """One job's files synced: settle each waiter (first bytes: once the directory is)."""
    errors: list[OSError | None]
    try:
        errors = done.result()
    except BaseException as exc:  # the job could not run (the pool is shutting down)
        errors = [OSError(str(exc))] * len(job)
    for (_, directory, future), error in zip(job, errors, strict=True):
        if error is None and directory is not None:
            directories[directory].add_done_callback(functools.partial(_after_directory, future))
        else:
            _settle(future, error)


def _after_directory(future: asyncio.Future[None], directory: asyncio.Future[None]) -> None:
    _settle(future, OSError("cancelled") if directory.cancelled() else directory.exception())


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def sync_directory(path: str) -> None:
    """fsync the directory ``path`` (the entries in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_files(fds: list[int]) -> list[OSError | None]:
    """fdatasync each file: each one's error, in order."""
    errors: list[OSError | None] = []
    for fd in fds:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the commit's sync does it all
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


class WriteBehind:
    """Starts the write-out of every ``step`` bytes a body adds to a file."""

    def __init__(self, step: int = 1 << 20) -> None:
        self.step = step
        self._function = _load_sync_file_range()

    def start(self, fd: int, offset: int, length: int) -> None:
        """Begin writing ``length`` bytes at ``offset`` of ``fd`` to the disk; no wait."""
        if self._function is not None and self._function(fd, offset, length,
                                                         _SYNC_FILE_RANGE_WRITE) != 0:
            # Only a hint: the commit's fdatasync writes what this did not.
            log.debug("sync_file_range failed: %s", os.strerror(ctypes.get_errno()))
