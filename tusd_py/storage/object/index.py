"""The index of an object store's uploads by when they fall due (S3, GCS, Azure), so the
sweeper and the post-finish re-delivery list only the uploads that are due, whatever
the bucket holds; and the shared turns (one sweep at a time across replicas).

Marker objects (empty) under the store's prefix, named so a listing returns them in
due order (times in epoch milliseconds): ``.due/{due:015d}-{id}`` for an upload that
may expire at ``due``, ``.owed/{completed:015d}-{id}`` for a finished upload whose
post-finish is owed.
``.index`` says the index is complete (records written before it existed were
indexed once, ``backfill``) and when the stray-object audit last ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...protocol.errors import StorageError
from ..ids import is_upload_id
from .errors import Conflict

__all__ = ["AUDIT_EVERY", "DUE", "OWED", "IndexChange", "ObjectIO", "Turns", "UploadIndex",
           "due_of", "marker", "ms", "next_page", "parse_marker", "plan_change"]

log = logging.getLogger(__name__)

DUE = ".due/"
OWED = ".owed/"
GUARD = ".index"
#: The stray-object audit (``Store.sweep_extra``, a listing of the whole prefix) runs
#: at most this often across all replicas.
AUDIT_EVERY = 86400.0
#: Records read at once by a sweep or the backfill.
READ_CONCURRENCY = 8
#: Keys asked for per listing page: a full listing's, and the first page of a listing
#: of markers (a sweep usually finds a few due, and stops at the first that is not);
#: each further page is ten times larger, up to ``PAGE`` (``next_page``).
PAGE = 1000
MARKER_PAGE = 20


def next_page(size: int) -> int:
    """The size of the page after one of ``size`` keys."""
    return min(size * 10, PAGE)


class ObjectIO(Protocol):
    """What a driver gives the index: small objects by full key, and ordered listings."""

    prefix: str
    lease_duration: float

    async def read_object(self, key: str, what: str) -> tuple[bytes, str] | None: ...

    async def write_object(self, key: str, data: bytes, *, etag: str | None,
                           what: str) -> str: ...

    async def put_marker(self, key: str) -> None: ...

    async def delete_object(self, key: str, what: str) -> None: ...

    def list_keys(self, prefix: str, *, page: int = PAGE,
                  end: str | None = None) -> AsyncIterator[tuple[str, float]]: ...


def ms(when: float) -> int:
    """Epoch milliseconds (rounded down): what markers are named by."""
    return math.floor(when * 1000)


def due_of(expires_at: float) -> int:
    """The millisecond a due marker for ``expires_at`` is named by: strictly after it, so
    an upload whose marker is due (``due <= ms(now)``) has expired."""
    return ms(expires_at) + 1


def marker(kind: str, at: int, upload_id: str) -> str:
    """A marker's name under the prefix (``kind`` is ``DUE`` or ``OWED``; ``at`` in ms)."""
    return f"{kind}{at:015d}-{upload_id}"


def parse_marker(name: str, kind: str) -> tuple[int, str] | None:
    """(ms, upload id) of a marker's name under the prefix, or None."""
    if not name.startswith(kind):
        return None
    at, sep, upload_id = name[len(kind):].partition("-")
    if not sep or len(at) != 15 or not at.isdigit() or not is_upload_id(upload_id):
        return None
    return int(at), upload_id


@dataclass
class IndexChange:
    """What a record write changes in the index: ``fields`` written with the record,
    markers put before it (``before``) and deleted once it landed (``after``)."""

    fields: dict[str, Any] = field(default_factory=dict)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


def plan_change(record: dict[str, Any], changes: dict[str, Any]) -> IndexChange:
    """The index work of writing ``changes`` over ``record`` ({} for a new upload).

    The record's ``due`` names its due marker (absent in records written before the
    index). A later expiry keeps the marker where it is (the sweep moves it when it is
    reached), so a PATCH writes none; an earlier one (completion with
    ``completed_after``) or a first one puts a new marker; none deletes it. A completion
    owing post-finish puts its owed marker; clearing ``finish_owed`` deletes it."""
    out = IndexChange()
    expires = changes.get("expires_at", record.get("expires_at"))
    due = record.get("due")
    want = None if expires is None else due_of(expires)
    if want is not None and due is not None and due <= want:
        want = due
    if want != due:
        out.fields["due"] = want
        if want is not None:
            out.before.append(marker(DUE, want, _id(record, changes)))
        if due is not None:
            out.after.append(marker(DUE, due, _id(record, changes)))
    was_done = record.get("completed_at")
    done = changes.get("completed_at", was_done)
    owed = changes.get("finish_owed", record.get("finish_owed"))
    if done is not None and was_done is None and owed:
        out.before.append(marker(OWED, ms(done), _id(record, changes)))
    elif was_done is not None and record.get("finish_owed") and not owed:
        out.after.append(marker(OWED, ms(was_done), _id(record, changes)))
    return out


def _id(record: dict[str, Any], changes: dict[str, Any]) -> str:
    return str(changes.get("id") or record["id"])


def gone_markers(record: dict[str, Any]) -> list[str]:
    """The markers a deleted upload's record may have left."""
    out = []
    if record.get("due") is not None:
        out.append(marker(DUE, int(record["due"]), record["id"]))
    if record.get("finish_owed") and record.get("completed_at") is not None:
        out.append(marker(OWED, ms(record["completed_at"]), record["id"]))
    return out


@dataclass
class _Turn:
    token: str
    etag: str | None = None  # of the lease object we wrote last
    until: float = 0.0  # our lease's end (0: not ours)
    retry_at: float = 0.0  # another process holds it until then


class Turns:
    """Turns at periodic jobs shared by every process on the bucket: ``take(job, hold)``
    is True for at most one process at a time. A turn is a small lease object
    ``{prefix}.{job}-lease`` (holder, until) written by compare-and-set; it lasts
    ``hold`` seconds and is renewed by its holder's next ``take`` once half of it is
    gone. Others ask again only when it would end, so a turn costs about one request per
    ``hold / 2`` for the holder and one per ``hold`` for each other process."""

    def __init__(self, io: ObjectIO) -> None:
        self._io = io
        self._turns: dict[str, _Turn] = {}

    def key(self, job: str) -> str:
        return f"{self._io.prefix}.{job}-lease"

    def holds(self, job: str) -> bool:
        turn = self._turns.get(job)
        return turn is not None and turn.until > time.time()

    async def take(self, job: str, hold: float) -> bool:
        now = time.time()
        turn = self._turns.setdefault(job, _Turn(uuid.uuid4().hex))
        if turn.until - hold / 2 > now:
            return True  # ours, and not yet due for renewal
        if not turn.until and turn.retry_at > now:
            return False  # another process's, until then
        body = json.dumps({"holder": turn.token, "until": now + hold}).encode()
        key, what = self.key(job), f"taking the {job} turn"
        if turn.until > now and turn.etag is not None:
            try:  # renew ours
                turn.etag = await self._io.write_object(key, body, etag=turn.etag, what=what)
                turn.until = now + hold
                return True
            except Conflict:
                turn.until = 0.0  # taken over meanwhile (we were too slow to renew)
        found = await self._io.read_object(key, what)
        if found is not None:
            try:
                lease = json.loads(found[0])
                holder, until = lease["holder"], float(lease["until"])
            except (ValueError, KeyError, TypeError):
                holder, until = None, 0.0  # unreadable: taken over
            if holder != turn.token and until > now:
                turn.until, turn.retry_at = 0.0, until
                return False
        try:
            turn.etag = await self._io.write_object(
                key, body, etag=found[1] if found else None, what=what)
        except Conflict:
            turn.until, turn.retry_at = 0.0, now + min(hold, 5.0)
            return False
        turn.until = now + hold
        return True

    async def give_back(self) -> None:
        """End the turns this process holds (at shutdown), so another takes them at once."""
        for job, turn in self._turns.items():
            if turn.until > time.time() and turn.etag is not None:
                body = json.dumps({"holder": None, "until": 0}).encode()
                try:
                    await self._io.write_object(self.key(job), body, etag=turn.etag,
                                                what=f"giving the {job} turn back")
                except Exception as exc:  # it runs out on its own
                    log.info("%s turn not given back: %s", job, exc)
            turn.until = 0.0


#: Reads a record: (record, tag) or None.
RecordReader = Callable[[str], Awaitable[tuple[dict[str, Any], str] | None]]


class UploadIndex:
    """The due and owed markers of one store: kept by its writers (``plan_change``),
    listed by ``due`` and ``owed``, filled once for old records by ``ready``."""

    def __init__(self, io: ObjectIO, turns: Turns) -> None:
        self._io = io
        self._turns = turns
        self._ready_lock = asyncio.Lock()
        #: The guard object says every record is indexed.
        self.complete = False
        #: When the stray-object audit ran last (None: not known yet).
        self.audited_at: float | None = None
        self._guard_etag: str | None = None

    def key(self, name: str) -> str:
        return self._io.prefix + name

    # -- markers --------------------------------------------------------------------------

    async def put(self, names: Iterable[str]) -> None:
        for name in names:
            await self._io.put_marker(self.key(name))

    async def delete(self, names: Iterable[str]) -> None:
        """Delete markers (best effort: a leftover is found stale and deleted when due)."""
        for name in names:
            try:
                await self._io.delete_object(self.key(name), "deleting an index marker")
            except Exception as exc:
                log.info("index marker %s not deleted (the sweep will): %s", name, exc)

    async def listed(self, kind: str, until: int) -> AsyncIterator[tuple[int, str, str, float]]:
        """(ms, upload id, marker name, modified) of the markers of ``kind`` named by at
        most ``until`` (ms), in order: the listing stops at the first later one."""
        start = self.key(kind)
        end = self.key(f"{kind}{until + 1:015d}")
        async for key, modified in self._io.list_keys(start, page=MARKER_PAGE, end=end):
            name = key[len(self._io.prefix):]
            parsed = parse_marker(name, kind)
            if parsed is None:
                continue
            if parsed[0] > until:
                return
            yield parsed[0], parsed[1], name, modified

    # -- the guard and the backfill -------------------------------------------------------

    async def _read_guard(self) -> dict[str, Any] | None:
        found = await self._io.read_object(self.key(GUARD), "reading the index guard")
        if found is None:
            self._guard_etag = None
            return None
        self._guard_etag = found[1]
        try:
            guard = json.loads(found[0])
        except ValueError:
            return {}
        return guard if isinstance(guard, dict) else {}

    async def _write_guard(self, **fields: Any) -> None:
        guard = {"v": 1, "complete": self.complete, "audited_at": self.audited_at or 0.0, **fields}
        try:
            self._guard_etag = await self._io.write_object(
                self.key(GUARD), json.dumps(guard).encode(), etag=self._guard_etag,
                what="writing the index guard")
        except Conflict:  # another process wrote it meanwhile: read what it says
            await self._learn()

    async def _learn(self) -> None:
        guard = await self._read_guard() or {}
        self.complete = bool(guard.get("complete"))
        self.audited_at = float(guard.get("audited_at") or 0.0)

    async def ready(self, read_record: RecordReader, turn: str, hold: float) -> None:
        """Make sure records written before the index existed are indexed: the first
        time the guard is missing, the process holding ``turn`` lists the prefix once,
        reads every record that has no ``due`` field yet and puts its markers."""
        if self.complete:
            return
        async with self._ready_lock:
            if self.complete:
                return
            await self._learn()
            if self.complete or not await self._turns.take(turn, hold):
                return
            started = time.monotonic()
            count = await self._backfill(read_record, turn, hold)
            self.complete = True
            await self._write_guard(complete=True)
            log.info("upload index: %d record(s) written before it indexed in %.1fs", count,
                     time.monotonic() - started)

    async def _backfill(self, read_record: RecordReader, turn: str, hold: float) -> int:
        prefix = self._io.prefix
        semaphore = asyncio.Semaphore(READ_CONCURRENCY)
        indexed = 0

        async def one(upload_id: str) -> None:
            nonlocal indexed
            async with semaphore:
                try:
                    found = await read_record(upload_id)
                except StorageError as exc:
                    log.warning("upload index: record of %s skipped: %s", upload_id, exc)
                    return
                if found is None or "due" in found[0]:
                    return  # gone, or written by this version (indexed already)
                await self.put(plan_change({}, found[0]).before)
                indexed += 1

        batch: list[str] = []
        async for key, _ in self._io.list_keys(prefix):
            name = key[len(prefix):]
            if name.endswith(".info") and is_upload_id(name[:-5]):
                batch.append(name[:-5])
            if len(batch) >= PAGE:
                await asyncio.gather(*(one(i) for i in batch))
                batch = []
                await self._turns.take(turn, hold)  # renewed while it lasts
        await asyncio.gather(*(one(i) for i in batch))
        return indexed

    # -- the stray-object audit schedule ------------------------------------------------

    async def audit_due(self, now: float) -> bool:
        if self.audited_at is None:
            await self._learn()
        return now >= (self.audited_at or 0.0) + AUDIT_EVERY

    async def audited(self, now: float) -> None:
        self.audited_at = now
        await self._write_guard()
