"""In-process write leases: which request is writing which upload, and how to stop it.

The storage lock (``Store.lock``) is what excludes writers across processes and
replicas. This registry sits in front of it inside one process so that a newer request
can *ask* the current writer to stop instead of waiting for it blindly:

* A writer that has received nothing for ``takeover_idle`` seconds (a client whose
  connection died without a FIN, typically) gives the upload up at once: its read is
  ended, the bytes it got are committed, and the newcomer proceeds.
* A writer that is still receiving keeps the upload; the newcomer waits up to
  ``lock_wait`` and then gets 423 (or 409 once it sees the offset moved).

Stopping works through the writer's ``asyncio.timeout`` scope: rescheduling its deadline
to "now" ends the pending read with ``TimeoutError``. The same path ends every writer on
shutdown.
"""

from __future__ import annotations

import asyncio
import enum

from ..protocol.errors import UploadBusy


class StopReason(enum.Enum):
    IDLE = "idle"  # the client sent nothing for idle_timeout
    TAKEN_OVER = "taken-over"  # a newer request for the upload asked for it
    SHUTDOWN = "shutdown"  # the daemon is stopping
    HOOK = "hook"  # a post-receive hook answered StopUpload (``Lease.stop_error`` is the answer)


class Lease:
    __slots__ = ("last_activity", "released", "scope", "stop_error", "stop_reason", "upload_id")

    def __init__(self, upload_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.upload_id = upload_id
        self.released: asyncio.Future[None] = loop.create_future()
        self.stop_reason: StopReason | None = None
        #: What the stopped request answers, when the stopper decides (StopReason.HOOK).
        self.stop_error: Exception | None = None
        #: The writer's timeout scope while it reads the body (None otherwise).
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


class LeaseRegistry:
    def __init__(self, *, idle_timeout: float, lock_wait: float, takeover_idle: float) -> None:
        self.idle_timeout = idle_timeout
        self.lock_wait = lock_wait
        self.takeover_idle = takeover_idle
        self._held: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._held)

    def get(self, upload_id: str) -> Lease | None:
        """The lease of the request writing ``upload_id`` in this process, if any."""
        return self._held.get(upload_id)

    async def acquire(self, upload_id: str) -> Lease:
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
        lease = Lease(upload_id, loop)
        self._held[upload_id] = lease
        return lease

    def try_acquire(self, upload_id: str) -> Lease | None:
        """Take the lease only if nobody holds it (no waiting, no takeover)."""
        if upload_id in self._held:
            return None
        lease = Lease(upload_id, asyncio.get_running_loop())
        self._held[upload_id] = lease
        return lease

    def release(self, lease: Lease) -> None:
        if self._held.get(lease.upload_id) is lease:
            del self._held[lease.upload_id]
        if not lease.released.done():
            lease.released.set_result(None)

    def idle_deadline(self, lease: Lease, now: float) -> float:
        """The deadline for the writer's next read, given it just received data."""
        lease.last_activity = now
        if lease.stop_reason is None:
            return now + self.idle_timeout
        if lease.stop_reason in (StopReason.SHUTDOWN, StopReason.HOOK):
            return now
        return now + self.takeover_idle

    def stop_all(self) -> None:
        """Shutdown: end every writer's read now; each commits what it has."""
        now = asyncio.get_running_loop().time()
        for lease in list(self._held.values()):
            lease.stop(StopReason.SHUTDOWN, now)
