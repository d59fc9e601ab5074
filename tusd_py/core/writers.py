"""Writers: which request owns which upload in this process, and how to stop it.

A request owns an upload while it holds both its ``Writer`` here and the store's lock
(``claim``). A newer request asks the current writer to stop instead of waiting blindly;
an idle writer gives the upload up at once, a receiving one keeps it.
"""

from __future__ import annotations

import asyncio
import enum

from ..protocol.errors import NotFound, UploadBusy
from ..storage.base import Store, UploadLock


class StopReason(enum.Enum):
    IDLE = "idle"  # the client sent nothing for idle_timeout
    SLOW = "slow"  # the client sent less than min_body_rate in a window
    TAKEN_OVER = "taken-over"  # a newer request for the upload asked for it
    SHUTDOWN = "shutdown"  # the daemon is stopping
    HOOK = "hook"  # a post-receive hook answered StopUpload (``Writer.stop_error`` is the answer)


class Writer:
    """One request's ownership of one upload in this process."""

    __slots__ = ("last_activity", "released", "scope", "stop_error", "stop_reason", "upload_id")

    def __init__(self, upload_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.upload_id = upload_id
        self.released: asyncio.Future[None] = loop.create_future()
        self.stop_reason: StopReason | None = None
        #: What the stopped request answers, when the stopper decides (StopReason.HOOK).
        self.stop_error: Exception | None = None
        #: The timeout scope of the body read while there is one: rescheduling it ends the
        #: pending read with ``TimeoutError`` (that is how ``stop`` works).
        self.scope: asyncio.Timeout | None = None
        self.last_activity = loop.time()

    def stop(self, reason: StopReason, when: float) -> None:
        """Ask the writer to end its read no later than ``when`` (loop time)."""
        if self.stop_reason is None or reason is StopReason.SHUTDOWN:
            self.stop_reason = reason
        scope = self.scope
        if scope is not None:
            current = scope.when()
            if current is None or when < current:
                scope.reschedule(when)


class WriterRegistry:
    """The writers of this process, one per upload, and the claims on ``store``'s uploads."""

    def __init__(self, store: Store, *, idle_timeout: float, lock_wait: float,
                 takeover_idle: float) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.lock_wait = lock_wait
        self.takeover_idle = takeover_idle
        self._held: dict[str, Writer] = {}

    def __len__(self) -> int:
        return len(self._held)

    def get(self, upload_id: str) -> Writer | None:
        """The writer of ``upload_id`` in this process, if any."""
        return self._held.get(upload_id)

    async def claim(self, upload_id: str) -> tuple[Writer, UploadLock]:
        """Own the upload: its writer (asking a current one to stop) and its storage lock.

        Raises ``UploadBusy`` after ``lock_wait``; ``release`` both when done."""
        writer = await self._acquire(upload_id)
        try:
            lock = await self.store.lock(upload_id, self.lock_wait)
        except BaseException:
            self._release(writer)
            raise
        # A request on another replica wants this upload: yield if our client is idle,
        # exactly as for a newer request in this process (``_acquire``).
        takeover_idle = self.takeover_idle
        lock.on_takeover_request = lambda: writer.stop(
            StopReason.TAKEN_OVER, writer.last_activity + takeover_idle)
        return writer, lock

    async def try_claim(self, upload_id: str) -> tuple[Writer, UploadLock] | None:
        """Own the upload only if nobody does (no waiting, no takeover); None if it is
        busy or gone."""
        if upload_id in self._held:
            return None
        writer = Writer(upload_id, asyncio.get_running_loop())
        self._held[upload_id] = writer
        try:
            lock = await self.store.lock(upload_id, 0)
        except (NotFound, UploadBusy):
            self._release(writer)
            return None
        except BaseException:
            self._release(writer)
            raise
        return writer, lock

    async def release(self, writer: Writer, lock: UploadLock) -> None:
        """Give up a claim: the storage lock, then the writer."""
        try:
            await lock.release()
        finally:
            self._release(writer)

    async def _acquire(self, upload_id: str) -> Writer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_wait
        while (holder := self._held.get(upload_id)) is not None:
            holder.stop(StopReason.TAKEN_OVER, holder.last_activity + self.takeover_idle)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UploadBusy()
            try:
                await asyncio.wait_for(asyncio.shield(holder.released), remaining)
            except TimeoutError:
                raise UploadBusy() from None
        writer = Writer(upload_id, loop)
        self._held[upload_id] = writer
        return writer

    def _release(self, writer: Writer) -> None:
        if self._held.get(writer.upload_id) is writer:
            del self._held[writer.upload_id]
        if not writer.released.done():
            writer.released.set_result(None)

    def idle_deadline(self, writer: Writer, now: float) -> float:
        """The deadline for the writer's next read, given it just received data."""
        writer.last_activity = now
        if writer.stop_reason is None:
            return now + self.idle_timeout
        if writer.stop_reason in (StopReason.SHUTDOWN, StopReason.HOOK):
            return now
        return now + self.takeover_idle

    def stop_all(self) -> None:
        """Shutdown: end every writer's read now; each commits what it has."""
        now = asyncio.get_running_loop().time()
        for writer in list(self._held.values()):
            writer.stop(StopReason.SHUTDOWN, now)
