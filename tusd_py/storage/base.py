"""The storage driver contract: ``Store`` and ``UploadLock`` (required), and the optional
capabilities a driver has by implementing them (``CanTerminate`` ...; ``capabilities_of``
derives what the server advertises from them, so one cannot be declared and missing).

A driver keeps a record (``Upload``) and the bytes of each upload, and never sees an HTTP
request. Writes: ``lock`` -> ``write`` (unpublished) -> ``commit`` (compare-and-set of the
offset) or ``rollback`` -> ``release``; docs/internals.md explains why that order keeps an
acknowledged offset safe. ``storage/memory`` is the smallest complete driver.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..protocol.headers import Metadata
from .ids import new_upload_id


class Capability(enum.Enum):
    """What a store can do beyond the required contract (see ``capabilities_of``)."""

    TERMINATE = "termination"
    CONCATENATE = "concatenation"
    CONCATENATE_UNFINISHED = "concatenation-unfinished"
    DEFER_LENGTH = "creation-defer-length"
    EXPIRE = "expiration"  # the driver can list and delete expired uploads
    DOWNLOAD = "download"  # GET of a finished upload
    TRACK_FINISH = "track-finish"  # post-finish owed in the record, listed for re-delivery


@dataclass(slots=True)
class Upload:
    """An upload's record, the same shape for every driver."""

    id: str
    length: int | None  # None while the length is deferred (or a final's is unknown)
    offset: int = 0
    metadata: Metadata = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float | None = None
    is_partial: bool = False
    final_of: tuple[str, ...] = ()  # partial upload ids, for a final upload
    completed_at: float | None = None
    location: str = ""  # driver specific: a path, or bucket/key
    #: The finishing hooks (pre-finish, post-finish) are owed once the upload completes:
    #: set at creation when post-finish hooks are re-delivered, cleared once delivered
    #: (``CanTrackFinish.clear_finish_owed``), listed by ``CanTrackFinish.owed_finishes``.
    finish_owed: bool = False

    @property
    def is_final(self) -> bool:
        return bool(self.final_of)

    @property
    def is_complete(self) -> bool:
        return self.completed_at is not None

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at < now

    def copy(self, **changes: object) -> Upload:
        """A new record with ``changes`` applied (a shallow copy: the metadata dict is
        shared, as with ``dataclasses.replace``, which costs 4x as much on this hot path)."""
        clone = Upload(self.id, self.length, self.offset, self.metadata, self.created_at,
                       self.expires_at, self.is_partial, self.final_of, self.completed_at,
                       self.location, self.finish_owed)
        for name, value in changes.items():
            setattr(clone, name, value)  # slots: an unknown name raises AttributeError
        return clone


@dataclass
class Download:
    """How to read a finished upload: ``read`` of any range, and for a local file its
    ``path`` too (the server then sends it with sendfile). Drivers without a path
    override ``read``."""

    size: int
    etag: str
    last_modified: float
    path: str | None = None

    async def read(self, start: int, length: int) -> AsyncIterator[bytes]:
        if self.path is None:
            raise NotImplementedError("a Download without a path must override read()")
        loop = asyncio.get_running_loop()
        with open(self.path, "rb") as file:
            file.seek(start)
            while length > 0:
                chunk = await loop.run_in_executor(None, file.read, min(length, _FILE_CHUNK))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk


_FILE_CHUNK = 256 * 1024


class UploadLock(ABC):
    """Exclusive write access to one upload, obtained from ``Store.lock``."""

    #: The record as read under the lock; ``offset`` is the commit's expected offset.
    upload: Upload
    #: Bytes written since the lock was taken, not yet committed.
    written: int = 0
    #: Set by the handler; a driver whose lock spans processes or replicas calls it when
    #: a request elsewhere asks for this upload (the holder then yields if it is idle).
    on_takeover_request: Callable[[], None] | None = None
    #: Set by drivers whose writes never suspend (the local driver's inline pwrite): a
    #: plain function doing what ``write`` does. The body loop calls it without a
    #: coroutine per chunk and need not lift the idle deadline around it.
    write_nowait: Callable[[bytes], None] | None = None

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Store ``data`` at ``upload.offset + written`` (unpublished until commit)."""

    @abstractmethod
    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        """Publish the written bytes: compare-and-set the offset from ``upload.offset``.

        ``length`` declares a deferred length; ``expires_at`` is the new expiry (None:
        never), written in the same update. When the new offset reaches the length the
        driver finalises the upload (``completed_at`` set). Returns the new record and
        makes it ``self.upload``, so a lock can commit several times. Raises
        ``MismatchedOffset`` if the offset moved underneath (it never should while locked).
        """

    @abstractmethod
    async def rollback(self) -> None:
        """Drop bytes written since the last commit."""

    @abstractmethod
    async def release(self) -> None:
        """Give the lock up. Idempotent."""


class Store(ABC):
    """A storage driver: the required part of the contract. Subclasses set ``name``."""

    name: str = "base"

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this store implements (``capabilities_of``)."""
        return capabilities_of(self)

    async def start(self) -> None:
        """Open connections, create tables/buckets, reconcile after a crash."""

    async def stop(self) -> None:
        """Close connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the backend is unreachable (used by ``/readyz``)."""

    def writable_paths(self) -> tuple[str, ...]:
        """Local directories the store writes into (``/readyz`` checks their free space
        against ``server.min_free_disk``); none by default."""
        return ()

    def new_upload_id(self) -> str:
        """A fresh id for a new upload (drivers may pick a form that suits their index)."""
        return new_upload_id()

    @abstractmethod
    async def create(self, upload: Upload) -> Upload:
        """Create a new upload (its id is fresh and unique); returns it with ``location`` set.
        Raises ``UploadExists`` if the id is taken."""

    @abstractmethod
    async def get(self, upload_id: str) -> Upload | None:
        """The record, or None if there is no such upload."""

    @abstractmethod
    async def lock(self, upload_id: str, wait: float) -> UploadLock:
        """Lock one upload for writing, waiting at most ``wait`` seconds.

        Raises ``NotFound`` if it does not exist and ``UploadBusy`` if another request
        (in any process or replica) still holds it after ``wait``.
        """

    async def sweep_extra(self, now: float) -> int:
        """Driver-specific cleanup the sweeper runs after deleting expired uploads (S3:
        abort dangling multipart uploads), when ``extra_due``. Returns how many things
        were removed."""
        return 0

    async def extra_due(self, now: float) -> bool:
        """Whether the sweep at ``now`` runs ``sweep_extra`` (default: every sweep; an
        object store's lists the whole bucket, so it runs once a day)."""
        return True

    async def extra_done(self, now: float) -> None:
        """``sweep_extra`` ran at ``now``."""


# -- optional capabilities: a store has one by having its methods ---------------------


@runtime_checkable
class CanTerminate(Protocol):
    async def terminate(self, upload_id: str) -> None:
        """Delete an upload's record and bytes. The caller holds the upload's lock."""


@runtime_checkable
class CanConcatenate(Protocol):
    async def concatenate(self, final: Upload, partials: list[Upload]) -> Upload:
        """Fill ``final`` with the bytes of ``partials`` (all complete), in order, and
        return it completed. The caller holds the final's lock. (A final may be created
        before its partials finish: concatenation-unfinished comes with this.)"""


@runtime_checkable
class CanExpire(Protocol):
    async def expired(self, now: float, limit: int = 1000) -> list[str]:
        """Ids of uploads whose ``expires_at`` is before ``now`` (the sweeper deletes
        them with ``terminate``, so a store with this has ``CanTerminate`` too)."""

    async def terminate(self, upload_id: str) -> None: ...


@runtime_checkable
class CanDownload(Protocol):
    async def download(self, upload: Upload) -> Download:
        """How to read a completed upload."""


@runtime_checkable
class CanTrackFinish(Protocol):
    """post-finish delivery tracked in the record (``Upload.finish_owed``)."""

    async def owed_finishes(self, before: float, limit: int = 100) -> list[str]:
        """Ids of completed uploads whose ``finish_owed`` is still set and which were
        completed before ``before``, oldest first where the driver can tell."""

    async def clear_finish_owed(self, lock: UploadLock) -> Upload:
        """Clear ``finish_owed`` of the locked upload (its finishing hooks were delivered,
        or pre-finish refused it); returns the new record, also made ``lock.upload``."""


@runtime_checkable
class CanTakeTurns(Protocol):
    """Periodic jobs (the sweep, the post-finish re-delivery listing) shared by every
    process on the same storage, replicas and worker processes alike."""

    async def take_turn(self, job: str, hold: float) -> bool:
        """Whether this process runs ``job`` now: True for at most one process at a
        time, which keeps it ``hold`` seconds (renewed by its next calls) unless it dies."""


_PROTOCOLS: tuple[tuple[type, frozenset[Capability]], ...] = (
    (CanTerminate, frozenset({Capability.TERMINATE})),
    (CanConcatenate, frozenset({Capability.CONCATENATE, Capability.CONCATENATE_UNFINISHED})),
    (CanExpire, frozenset({Capability.EXPIRE})),
    (CanDownload, frozenset({Capability.DOWNLOAD})),
    (CanTrackFinish, frozenset({Capability.TRACK_FINISH})),
)


def capabilities_of(store: Store) -> frozenset[Capability]:
    """What ``store`` implements: deferred lengths always (``commit(length=)`` is part of
    the required contract), each optional capability when its methods are there."""
    have = {Capability.DEFER_LENGTH}
    for protocol, capabilities in _PROTOCOLS:
        if isinstance(store, protocol):
            have |= capabilities
    return frozenset(have)
