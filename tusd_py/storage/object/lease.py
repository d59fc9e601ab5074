"""The write lease shared by the object-store drivers (S3, GCS, Azure), kept in each
upload's record (``lease``, ``wanted``, ``rev``) and changed only by compare-and-set.

``LeasedStore.lock`` takes it when free or expired and waits (asking a live holder to
yield) otherwise; ``LeasedLock`` renews it while a request streams, writes the record
under it, and keeps every write of body bytes inside it (``bounded``). Lease expiry
compares the wall clocks of replicas: keep them NTP-synchronised. Every record write
keeps the upload index (``object.index``) in step; ``expired`` and ``owed_finishes``
list it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Generic, TypeVar

from ...protocol.errors import (
    MismatchedOffset,
    NotFound,
    ServiceUnavailable,
    StorageError,
    UploadBusy,
)
from ..base import Store, Upload, UploadLock
from ..ids import check_upload_id, object_key
from .buffer import BufferGauge, ChunkBuffer
from .errors import Conflict, TaggedRecord
from .index import (
    DUE,
    OWED,
    PAGE,
    READ_CONCURRENCY,
    Turns,
    UploadIndex,
    due_of,
    gone_markers,
    marker,
    ms,
    plan_change,
)
from .parts import PartUploads
from .record import dump, load

__all__ = ["POLL_MAX", "POLL_MIN", "WRITE_MARGIN", "LeasedLock", "LeasedStore", "holder_of"]

POLL_MIN, POLL_MAX = 0.05, 0.5  # lock polling backoff while another replica holds it
#: Writes under a lease end this fraction of ``lease_duration`` before the lease expires
#: (renewals, every third of it, move the end on): 2.5 s at the default 10 s.
WRITE_MARGIN = 0.25

S = TypeVar("S", bound="LeasedStore[Any]")
L = TypeVar("L", bound="LeasedLock[Any]")


def holder_of(record: dict[str, Any]) -> Any:
    return (record.get("lease") or {}).get("holder")


class LeasedLock(UploadLock, Generic[S]):
    """A held lease on one upload; a driver's lock adds the write buffer around it."""

    #: Logger of the driver's lock module (lease warnings are logged under its name).
    _log: ClassVar[logging.Logger] = logging.getLogger(__name__)
    #: The part uploads of the request holding the lock (set by the driver's lock).
    parts: PartUploads[Any]

    def __init__(self, store: S, record: dict[str, Any], etag: str, token: str) -> None:
        self.store = store
        self.record = record
        #: The record's tag as last read or written (ETag; generation for GCS).
        self.etag = etag
        self.token = token
        self.upload = store.decode_record(record)
        self.written = 0
        self.terminated = False
        self.released = False
        #: Set when the lease was taken over (it expired while we could not renew it).
        self.lost = False
        self._io = asyncio.Lock()  # orders record writes (renewal vs commit)
        #: Called (once) when another process or replica asks for this upload; a handler
        #: sets it to end a stalled request's read early (like an in-process takeover).
        self.on_takeover_request: Callable[[], None] | None = None
        self._stop_asked = False
        #: Deadlines of the writes running under this lease (``bounded``).
        self._bounds: set[asyncio.Timeout] = set()
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew(), name=f"{store.name}-lease-{self.upload.id}")

    # -- what a driver implements -------------------------------------------------------

    @abstractmethod
    async def finish_completion(self) -> None:
        """Finish an upload whose record says ``completing`` (its writer died half-way)."""

    def _released(self) -> None:
        """Called by ``release`` once the lock is no longer held, before the lease is
        given back (S3 keeps its tail in memory here)."""

    def _merges(self, current: dict[str, Any]) -> bool:
        """Whether a conflicting ``current`` record was changed only by a waiter adding
        ``wanted`` (so it is written over). Default: it still names our lease."""
        return bool(holder_of(current) == self.token)

    # -- lease ------------------------------------------------------------------------

    @property
    def lease_until(self) -> float:
        return float((self.record.get("lease") or {}).get("until", 0.0))

    def _check_lease(self) -> None:
        if self.lost or self.released or time.time() > self.lease_until - 0.5:
            self._lose()
            raise UploadBusy("the upload was taken over by another request")

    def _lose(self) -> None:
        """The lease is (or may be) another request's now: cancel our writes at once."""
        self.lost = True
        self._move_bounds()

    def _write_deadline(self) -> float:
        """The event-loop time by which writes under the lease must be over."""
        loop = asyncio.get_running_loop()
        if self.lost:
            return loop.time()
        margin = self.store.lease_duration * WRITE_MARGIN
        return loop.time() + (self.lease_until - margin - time.time())

    def _move_bounds(self) -> None:
        when = self._write_deadline()
        for scope in self._bounds:
            if not scope.expired():
                scope.reschedule(when)

    @contextlib.asynccontextmanager
    async def bounded(self, what: str) -> AsyncIterator[None]:
        """Run a write of upload bytes (with all its retries) under the lease: cancelled
        when the lease is lost, or when it is ``WRITE_MARGIN x lease_duration`` from
        expiring (each renewal moves that on), so no attempt of it can reach the store
        once another request could take the upload over."""
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        scope = asyncio.timeout_at(self._write_deadline())
        try:
            async with scope:
                self._bounds.add(scope)
                try:
                    yield
                finally:
                    self._bounds.discard(scope)
        except TimeoutError:
            if not scope.expired():
                raise
            if self.lost:
                raise UploadBusy("the upload was taken over by another request") from None
            raise ServiceUnavailable(f"storage too slow: the upload's write lease ran out "
                                     f"during {what}; retry later") from None

    def _stop_wanted(self) -> None:
        """Another process or replica waits for this upload: tell our request."""
        if self._stop_asked:
            return
        self._stop_asked = True
        if self.on_takeover_request is not None:
            try:
                self.on_takeover_request()
            except Exception:
                self._log.exception("upload %s: takeover callback failed", self.upload.id)

    async def _renew(self) -> None:
        """Renew the lease every ``lease_duration / 3``; in between, once a second, look
        for a takeover request if somebody listens for one."""
        renew_every = self.store.lease_duration / 3
        tick = min(1.0, renew_every)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            try:
                if time.monotonic() - last < renew_every:
                    if self.on_takeover_request is not None and not self._stop_asked:
                        found = await self.store.read_record(self.upload.id)
                        if (found is not None and found[1] != self.etag and found[0].get("wanted")
                                and holder_of(found[0]) == self.token):
                            self._stop_wanted()
                    continue
                async with self._io:
                    if self.released or self.terminated:
                        return
                    await self._write_record({})
                last = time.monotonic()
            except Conflict:
                self._log.warning("upload %s: lease taken over by another request",
                                  self.upload.id)
                self._lose()
                return
            except Exception as exc:
                self._log.warning("upload %s: lease renewal failed: %s", self.upload.id, exc)
                if time.time() > self.lease_until:
                    self._lose()
                    return

    async def _write_record(self, changes: dict[str, Any], *, release: bool = False) -> None:
        """CAS the record with ``changes`` and a renewed (or, with ``release``, no) lease.
        The caller holds ``_io``.

        While our lease is live the only other writer of the record is a waiter adding
        a takeover request (``wanted``); such a conflict is merged (the request noted,
        our record written over it). Any other conflict means the lease was lost."""
        for _ in range(5):
            lease = None if release else {
                "holder": self.token, "until": time.time() + self.store.lease_duration}
            new = dict(self.record, **changes, lease=lease, wanted=None, rev=self.record["rev"] + 1)
            try:
                self.etag = await self.store.cas_record(self.upload.id, new, self.etag)
            except Conflict as exc:
                current = exc.current
                if current is None or not self._merges(current[0]):
                    raise
                if current[0].get("wanted"):
                    self._stop_wanted()
                # The sweep may have moved the due marker of an idle-looking record.
                self.record = dict(self.record, due=current[0].get("due"))
                self.etag = current[1]
                continue
            self.record = new
            self._move_bounds()  # the lease was renewed (or given back)
            return
        raise Conflict("the record keeps changing")

    async def publish(self, **changes: Any) -> None:
        """Write ``changes`` into the record under this lease and refresh ``upload``; the
        index follows (``plan_change``: markers put before, deleted after)."""
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        index = self.store.index
        change = plan_change(self.record, changes)
        tidy = (self.record.get("dirty") and changes.get("completed_at") is not None
                and self.record.get("completed_at") is None)
        if tidy:
            change.fields["dirty"] = None
        await index.put(change.before)
        async with self._io:
            try:
                await self._write_record({**changes, **change.fields})
            except Conflict:
                self._lose()
                raise MismatchedOffset("the upload changed underneath this request") from None
        self.upload = self.store.decode_record(self.record)
        await index.delete(change.after)
        if tidy:
            try:
                removed = await self.store.clean_leftovers(self.upload.id, keep_upload=True)
            except Exception as exc:  # the daily stray audit gets them
                self._log.info("upload %s: leftovers of a former writer not removed: %s",
                               self.upload.id, exc)
            else:
                self._log.info("upload %s: removed %d object(s) a former writer left",
                               self.upload.id, removed)

    def _commit_changes(self, length: int | None,
                        expires_at: float | None) -> tuple[dict[str, Any], bool]:
        """The record fields a commit of what this request wrote publishes (length,
        offset, expiry), and whether they complete the upload."""
        if self.lost:
            raise UploadBusy("the upload was taken over by another request")
        upload = self.upload
        new_length = length if length is not None else upload.length
        new_offset = upload.offset + self.written
        if new_length is not None and new_offset > new_length:
            raise StorageError("more bytes than the upload's length")
        complete = new_length is not None and new_offset == new_length
        return {"length": new_length, "offset": new_offset, "expires_at": expires_at}, complete

    async def drain(self) -> None:
        """Let in-flight uploads of body bytes finish (or fail) without collecting them."""
        await self.parts.drain()

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        await self.drain()
        if self.store._held.get(self.upload.id) is self:
            del self.store._held[self.upload.id]
        self._released()
        if self.terminated or self.lost:
            return
        try:
            async with self._io:
                await self._write_record({}, release=True)
        except Exception as exc:  # the lease runs out on its own, or we take it back
            self.store.given_up[self.token] = time.time() + self.store.lease_duration
            self._log.info("upload %s: lease not released (%s); it expires in %.0fs",
                           self.upload.id, str(exc) or type(exc).__name__,
                           self.store.lease_duration)


class LeasedStore(Store, Generic[L]):
    """A store whose uploads are written under a lease in their record."""

    #: The driver's lock class, made by ``lock`` as ``lock_class(store, record, etag, token)``.
    lock_class: ClassVar[type[LeasedLock[Any]]]
    #: Logger of the driver's store module.
    _log: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(self, lease_duration: float, prefix: str = "") -> None:
        self.lease_duration = lease_duration
        #: Object (blob) names of this store start with it.
        self.prefix = prefix
        #: Locks this process holds, so terminate/concatenate can write under them.
        self._held: dict[str, L] = {}
        #: Leases this process gave up without managing to write so (token: until):
        #: nobody writes under them, so a lock here takes them over at once rather than
        #: wait for them to run out (a DELETE right after the PATCH would get 423).
        self.given_up: dict[str, float] = {}
        #: Periodic jobs shared with every other process on the bucket (``take_turn``).
        self.turns = Turns(self)
        #: The due and owed markers (``object.index``).
        self.index = UploadIndex(self, self.turns)
        #: Upload bytes held in memory by this store's part buffers (and its peak).
        self.buffer_gauge = BufferGauge()
        #: Where parts waiting to upload (and S3's grown parts) spill, as anonymous
        #: temporary files (None: $TMPDIR); drivers set it.
        self.spill_dir: str | None = None

    # -- what a driver implements -------------------------------------------------------

    @abstractmethod
    async def read_object(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(content, tag) of a small object, or None if it does not exist."""

    @abstractmethod
    async def write_object(self, key: str, data: bytes, *, etag: str | None, what: str) -> str:
        """Conditional write of a small object: only over ``etag`` (the tag read), or
        (None) only if absent. Returns the new tag; raises ``Conflict`` if the condition
        failed (the object changed, or vanished, since)."""

    @abstractmethod
    async def put_marker(self, key: str) -> None:
        """Make sure an empty object ``key`` exists (an index marker)."""

    @abstractmethod
    async def delete_object(self, key: str, what: str) -> None:
        """Delete an object; one that is not there is no error."""

    @abstractmethod
    def list_keys(self, prefix: str, *, page: int = PAGE,
                  end: str | None = None) -> AsyncIterator[tuple[str, float]]:
        """(key, last modified) of the objects under ``prefix``, in key order, fetched a
        page at a time as the caller goes on (stopping early costs no further request):
        ``page`` keys first, then ``index.next_page`` of the previous page's size. ``end``
        is a hint: keys from it on may be left out (GCS ``endOffset``)."""

    @abstractmethod
    def decode_record(self, record: dict[str, Any]) -> Upload:
        """The upload a record describes (with the driver's location)."""

    async def terminate(self, upload_id: str) -> None:
        """Delete the record, then the upload's other objects, then its index markers."""
        lock = self._held.get(upload_id)
        if lock is not None:
            await lock.drain()
            lock.terminated = True
            record: dict[str, Any] | None = lock.record
        else:
            found = await self.read_record(upload_id)
            record = found[0] if found else None
        # The record goes first: once it is gone the upload no longer exists; its index
        # markers go last (a due one left behind makes the sweep finish the job).
        await self.delete_object(self.record_key(upload_id), "terminating an upload")
        await self.clean_leftovers(upload_id)
        await self.index_gone(record)

    async def clean_leftovers(self, upload_id: str, *, keep_upload: bool = False) -> int:
        """Delete the objects of an upload beyond its record and (with ``keep_upload``)
        its finished object: what a terminate that died half-way left, or (after the
        completion of an upload taken over from a writer that died) what that writer
        never published. Returns how many objects (or multipart uploads) went."""
        return 0

    def record_key(self, upload_id: str) -> str:
        return object_key(self.prefix, upload_id) + ".info"

    def new_buffer(self, chunks: list[bytes] | tuple[()] = (), *,
                   limit: int | None = None) -> ChunkBuffer:
        """A part buffer of a lock of this store (all in memory unless ``limit``; S3
        spills grown parts beyond ``part_size``)."""
        return ChunkBuffer(chunks, limit=limit, spill_dir=self.spill_dir,
                           gauge=self.buffer_gauge)

    async def park(self, body: ChunkBuffer, parts: PartUploads[Any]) -> None:
        """A part about to start uploading while another one of its PATCH still is: it
        waits its turn in a spill file, so a PATCH holds at most two parts in memory (the
        one filling, one uploading) whatever ``part_concurrency``."""
        if parts.in_flight:
            await asyncio.get_running_loop().run_in_executor(None, body.spill, self.spill_dir)

    # -- the record ---------------------------------------------------------------------

    async def read_record(self, upload_id: str) -> TaggedRecord | None:
        """(record, tag), or None if there is no such upload."""
        found = await self.read_object(self.record_key(upload_id), "reading an upload record")
        return None if found is None else (load(found[0]), found[1])

    async def write_record(self, upload_id: str, record: dict[str, Any], *,
                           etag: str | None) -> str:
        """Conditional write of the record: only over ``etag``, or (None) only if absent.
        Returns the new tag; raises ``Conflict`` if the condition failed."""
        return await self.write_object(self.record_key(upload_id), dump(record), etag=etag,
                                       what="writing an upload record")

    def stamp(self, record: dict[str, Any]) -> None:
        """Mark a record about to be written so ``own_write`` can recognise it: a fresh
        nonce ``w`` (S3, Azure). Every write of a record is stamped (``cas_record``, and
        the takeover and ``wanted`` writes of ``lock``), so no record copied from ours
        by another writer carries our nonce."""
        record["w"] = uuid.uuid4().hex[:16]

    def own_write(self, written: dict[str, Any], current: dict[str, Any]) -> bool:
        """Whether ``current`` (read after a failed condition) is ``written`` itself: an
        earlier attempt landed, its answer was lost and the retry failed the condition.
        The nonce decides; the lease holder must match too."""
        return bool(current.get("w") == written["w"]
                    and holder_of(current) == holder_of(written))

    # -- the record ---------------------------------------------------------------------

    async def cas_record(self, upload_id: str, record: dict[str, Any], etag: str) -> str:
        """``write_record`` over ``etag`` that survives an ambiguous retry (see
        ``own_write``). A real conflict raises ``Conflict`` carrying the current
        (record, tag)."""
        self.stamp(record)
        try:
            return await self.write_record(upload_id, record, etag=etag)
        except Conflict as exc:
            current = await self.read_record(upload_id)
            if current is not None and self.own_write(record, current[0]):
                return current[1]
            exc.current = current
            raise

    # -- the index -----------------------------------------------------------------------

    async def index_new(self, record: dict[str, Any]) -> None:
        """Index a record about to be created: its markers are put (and ``due`` set in
        it) before the record exists, so a crash in between leaves a stale marker, never
        an unindexed upload."""
        change = plan_change({}, record)
        await self.index.put(change.before)
        record.update(change.fields)

    async def index_gone(self, record: dict[str, Any] | None) -> None:
        """Delete the markers of an upload whose record was deleted (after its bytes)."""
        if record is not None:
            await self.index.delete(gone_markers(record))

    async def take_turn(self, job: str, hold: float) -> bool:
        return await self.turns.take(job, hold)

    async def expired(self, now: float, limit: int = 1000) -> list[str]:
        """Uploads whose ``expires_at`` has passed: the due markers up to ``now``, each
        checked against its record. A marker whose upload expires later (PATCHes moved
        it) moves to the new time; one whose upload is gone, finished or indexed
        elsewhere is deleted. Costs a LIST and a GET per due marker, whatever the bucket
        holds."""
        await self.index.ready(self.read_record, "sweep", self._turn_hold)
        out: list[str] = []
        semaphore = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(due: int, upload_id: str, name: str, modified: float) -> None:
            async with semaphore:
                if await self._check_due(now, due, upload_id, name, modified):
                    out.append(upload_id)

        batch: list[Any] = []
        async for item in self.index.listed(DUE, ms(now)):
            batch.append(one(*item))
            if len(batch) >= limit:
                break
        await asyncio.gather(*batch)
        return out[:limit]

    #: How long a turn taken by the store itself (the backfill) lasts unless renewed.
    _turn_hold = 120.0

    async def _check_due(self, now: float, due: int, upload_id: str, name: str,
                         modified: float) -> bool:
        """Whether the upload of a due marker has expired; otherwise fix the marker."""
        try:
            found = await self.read_record(upload_id)
        except StorageError as exc:
            self._log.warning("sweep: upload %s skipped: %s", upload_id, exc)
            return False
        if found is None:
            if modified > now - self.lease_duration:
                return False  # its create may still be writing the record
            if await self.clean_leftovers(upload_id):
                self._log.info("sweep: removed the leftovers of upload %s", upload_id)
            await self.index.delete([name])
            return False
        record, tag = found
        indexed, expires = record.get("due"), record.get("expires_at")
        if indexed is not None and indexed != due:
            await self.index.delete([name])  # stale: the record names another marker
            return False
        if expires is not None and expires < now:
            return True
        lease = record.get("lease")
        if lease is not None and lease["until"] > now:
            return False  # being written: looked at again next time
        want = None if expires is None else due_of(expires)
        if want is None and indexed is None:
            await self.index.delete([name])  # finished before the index knew it
            return False
        if want is not None:
            await self.index.put([moved := marker(DUE, want, upload_id)])
        new = dict(record, due=want, rev=record["rev"] + 1)
        try:
            await self.cas_record(upload_id, new, tag)
        except Conflict:
            if want is not None:
                await self.index.delete([moved])
            return False
        await self.index.delete([name])
        return False

    async def owed_finishes(self, before: float, limit: int = 100) -> list[str]:
        """Completed uploads still owing post-finish, completed before ``before``, oldest
        first: the owed markers up to then, each checked against its record (a stale
        one is deleted)."""
        await self.index.ready(self.read_record, "sweep", self._turn_hold)
        now = time.time()
        out: list[str] = []
        async for at, upload_id, name, modified in self.index.listed(OWED, ms(before)):
            found = await self.read_record(upload_id)
            record = found[0] if found else {}
            completed = record.get("completed_at")
            if not record.get("finish_owed") or completed is None or ms(completed) != at:
                if modified < now - self.lease_duration:
                    await self.index.delete([name])
                continue
            if completed < before:
                out.append(upload_id)
                if len(out) >= limit:
                    break
        return out

    async def clear_finish_owed(self, lock: UploadLock) -> Upload:
        assert isinstance(lock, LeasedLock)
        await lock.publish(finish_owed=False)
        return lock.upload

    async def extra_due(self, now: float) -> bool:
        """The stray-object audit (``sweep_extra``) runs once a day across replicas."""
        return await self.index.audit_due(now)

    async def extra_done(self, now: float) -> None:
        await self.index.audited(now)

    # -- Store ----------------------------------------------------------------------------

    async def get(self, upload_id: str) -> Upload | None:
        found = await self.read_record(check_upload_id(upload_id))
        if found is None:
            return None
        if found[0].get("completing") and upload_id not in self._held:
            try:  # a writer died while completing it: finish the job now
                await (await self.lock(upload_id, 0)).release()
                found = await self.read_record(upload_id) or found
            except UploadBusy:
                pass
        return self.decode_record(found[0])

    def _gave_up(self, lease: dict[str, Any], now: float) -> bool:
        """Whether ``lease`` is one this process gave up (``given_up``); forgets those
        that have run out anyway."""
        given_up = self.given_up
        if not given_up:
            return False
        for token in [t for t, until in given_up.items() if until <= now]:
            del given_up[token]
        return lease.get("holder") in given_up

    async def lock(self, upload_id: str, wait: float) -> L:
        """Take the upload's lease: CAS of ``.info`` when free or expired, polling until
        ``wait`` while another request (any replica) holds a live one."""
        check_upload_id(upload_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        token = uuid.uuid4().hex
        delay = POLL_MIN
        asked = False
        while True:
            found = await self.read_record(upload_id)
            if found is None:
                raise NotFound()
            record, etag = found
            lease = record.get("lease")
            now = time.time()
            if lease is not None and lease.get("holder") == token:  # our retried write landed
                return await self._locked(upload_id, record, etag, token)
            if lease is None or lease["until"] <= now or self._gave_up(lease, now):
                if lease is not None:
                    self._log.info("upload %s: taking over an expired lease (or one this "
                                   "process gave up)", upload_id)
                new = dict(record, lease={"holder": token, "until": now + self.lease_duration},
                           wanted=None, rev=record["rev"] + 1)
                if lease is not None:
                    # Its holder died or stalled mid-write: objects it left unpublished
                    # are removed once the upload completes (``tidy``).
                    new["dirty"] = True
                self.stamp(new)  # not the nonce of the holder we take over from
                try:
                    etag = await self.write_record(upload_id, new, etag=etag)
                except Conflict:
                    continue  # somebody else changed it: look again
                return await self._locked(upload_id, new, etag, token)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UploadBusy()
            if not asked and remaining > POLL_MIN:
                # Ask the live holder (another process or replica) to stop: a writer
                # whose client went silent then commits what it has and lets us in.
                # Only this flag is added to the latest record (CAS on its tag).
                asked = True
                flagged = dict(record, wanted={"by": token, "at": now})
                self.stamp(flagged)  # the holder's nonce stays the holder's
                with contextlib.suppress(Conflict):
                    await self.write_record(upload_id, flagged, etag=etag)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, POLL_MAX)

    async def _locked(self, upload_id: str, record: dict[str, Any], etag: str, token: str) -> L:
        lock: L = self.lock_class(self, record, etag, token)  # type: ignore[assignment]
        self._held[upload_id] = lock
        if record.get("completing"):
            try:
                await lock.finish_completion()
            except BaseException:
                await lock.release()
                raise
        return lock
