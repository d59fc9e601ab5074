"""post-finish, exactly once: an upload created while post-finish is enabled owes it
(``finish_owed`` in its record) until every backend took it; each delivery runs under the
upload's storage lock, and the ones still owed are re-delivered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Counter

from ..config import ConfigError, HooksConfig
from ..core.writers import WriterRegistry
from ..protocol.constants import POST_FINISH, PRE_FINISH
from ..protocol.errors import NotFound, TusError, UploadBusy
from ..storage.base import CanTakeTurns, CanTrackFinish, Store, Upload, UploadLock
from .calls import Delivery, HookBackend
from .http import HookError
from .notify import Notifications

log = logging.getLogger("tusd_py.hooks")

#: Longest wait for an upload's lock before delivering its owed post-finish (busy:
#: it stays owed, re-delivered later).
CLAIM_WAIT = 5.0
#: Owed post-finish deliveries queued per re-delivery round.
REDELIVER_BATCH = 100
#: The re-delivery turn (one process lists the owed uploads) lasts this many rounds.
TURN_ROUNDS = 3


class FinishRedelivery(Notifications):
    """The notifications, with post-finish tracked in storage and re-delivered every
    ``config.redeliver_after`` (when ``tracks_finish``)."""

    def __init__(self, config: HooksConfig, backends: list[HookBackend], *, store: Store,
                 driver: str, registry: CollectorRegistry, writers: WriterRegistry) -> None:
        super().__init__(config, backends, store=store, driver=driver, registry=registry,
                         writers=writers)
        self.redeliveries = Counter("tusd_hook_redeliveries_total",
                                    "post-finish deliveries of uploads found still owed "
                                    "(not delivered before), per hook type.", ["hooktype"],
                                    registry=registry)
        if self.tracks_finish and not isinstance(store, CanTrackFinish):
            raise ConfigError(f"hooks.redeliver_after: the {driver} driver cannot track "
                              "post-finish deliveries; set it to 0")
        if self.tracks_finish:
            self.redeliveries.labels(POST_FINISH)
        self._redeliverer: asyncio.Task[None] | None = None
        #: Whether this process runs the re-delivery loop (with server.workers, one does).
        self.redeliver = True

    async def start(self) -> None:
        await super().start()
        if self.tracks_finish and self.redeliver:
            self._redeliverer = asyncio.create_task(self._redeliver_loop(),
                                                    name="tusd-hooks-redeliver")

    async def stop(self, drain: float = 5.0) -> None:
        """Stop re-delivering, then drain and stop the notifications (``Notifications.stop``)."""
        if self._redeliverer is not None:
            self._redeliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redeliverer
            self._redeliverer = None
        await super().stop(drain)

    async def _send(self, delivery: Delivery) -> None:
        if delivery.owed:
            await self._deliver_owed(delivery)
        else:
            await super()._send(delivery)

    @contextlib.asynccontextmanager
    async def _claim(self, upload_id: str, wait: float) -> AsyncIterator[UploadLock | None]:
        """The upload's storage lock, or None if it is gone or stays busy for ``wait``.

        The storage lock alone excludes every other request, process and replica (and the
        other hook workers here). The handler's in-process writers are left alone: they
        stand for uploads being written, which the shutdown waits for."""
        try:
            lock = await self.store.lock(upload_id, wait)
        except (NotFound, UploadBusy):
            yield None
            return
        try:
            yield lock
        finally:
            await lock.release()

    async def _deliver_owed(self, delivery: Delivery) -> None:
        """An owed post-finish, under the upload's lock: skipped if another delivery
        cleared the flag first; the flag cleared once every backend took it. A storage
        failure leaves it owed (and, after a delivery, means it is sent once more)."""
        try:
            await self._deliver_owed_locked(delivery)
        except Exception as exc:
            self._defer(delivery, f"storage error: {type(exc).__name__}: {exc}")

    async def _deliver_owed_locked(self, delivery: Delivery) -> None:
        async with self._claim(delivery.upload_id, CLAIM_WAIT) as lock:
            if lock is None:
                self._defer(delivery, "the upload is busy")
                return
            upload = lock.upload
            if not (upload.finish_owed and upload.is_complete):
                return  # delivered by another process or replica, or refused
            if delivery.redelivery:
                self.redeliveries.labels(POST_FINISH).inc()
                allowed = await self._redeliver_pre_finish(upload)
                if allowed is None:
                    self._defer(delivery, "pre-finish failed")
                    return
                if not allowed:
                    await self._clear_owed(lock)
                    return
                # Queued with the id alone: the payload comes from the record read now.
                delivery = self._delivery(POST_FINISH, upload, None, owed=True,
                                          redelivery=True)
            if await self._deliver(delivery):
                await self._clear_owed(lock)
            else:
                self._defer(delivery, "a backend failed")

    async def _redeliver_pre_finish(self, upload: Upload) -> bool | None:
        """pre-finish before a re-delivered post-finish (it may never have run): False if
        it refused the upload, None if it failed (the upload stays owed)."""
        if PRE_FINISH not in self.enabled:
            return True
        delivery = self._delivery(PRE_FINISH, upload, None)
        for backend in self.backends:
            try:
                self._check_pre_finish(await self._call(backend, delivery))
            except HookError as exc:
                self._failed(backend, delivery, str(exc))
                return None
            except TusError as exc:  # refused (HookRejection, or a Python hook raising)
                log.warning("pre-finish hook refused upload %s on re-delivery (%s): no "
                            "post-finish", upload.id, exc)
                return False
        return True

    def _tracker(self) -> CanTrackFinish:
        store = self.store
        assert isinstance(store, CanTrackFinish)  # checked in __init__ when tracks_finish
        return store

    async def _clear_owed(self, lock: UploadLock) -> None:
        await self._tracker().clear_finish_owed(lock)

    def _forget_finish_later(self, upload: Upload) -> None:
        """pre-finish refused ``upload``: clear its owed post-finish in the background."""
        if upload.finish_owed:
            self._in_background(self._forget_finish(upload.id))

    async def _forget_finish(self, upload_id: str) -> None:
        """pre-finish refused the upload: post-finish is not owed (never re-delivered)."""
        try:
            async with self._claim(upload_id, CLAIM_WAIT) as lock:
                if lock is not None and lock.upload.finish_owed:
                    await self._clear_owed(lock)
        except Exception as exc:
            log.warning("upload %s: could not clear its owed post-finish after pre-finish "
                        "refused it: %s", upload_id, exc)

    async def redeliver_owed(self) -> int:
        """Queue the uploads whose post-finish is ``redeliver_after`` overdue; how many."""
        before = time.time() - self.config.redeliver_after
        queued = 0
        for upload_id in await self._tracker().owed_finishes(before, REDELIVER_BATCH):
            if upload_id in self._owed:
                continue
            # The id alone: the worker reads the record under the upload's lock (it may
            # have been delivered or deleted since the listing) and builds the payload.
            delivery = Delivery(POST_FINISH, upload_id, {}, {}, "", owed=True, redelivery=True)
            if not self._enqueue(delivery):
                break
            queued += 1
        return queued

    async def _redeliver_loop(self) -> None:
        """``redeliver_owed`` every ``redeliver_after``, in the one process (of every
        replica and worker) that has the turn (``CanTakeTurns``)."""
        store = self.store
        hold = TURN_ROUNDS * self.config.redeliver_after
        while True:
            try:
                if not isinstance(store, CanTakeTurns) or await store.take_turn("redeliver", hold):
                    queued = await self.redeliver_owed()
                    if queued:
                        log.info("hooks: re-delivering post-finish of %d upload(s)", queued)
            except Exception as exc:
                log.warning("hooks: listing owed post-finish deliveries failed: %s", exc)
            await asyncio.sleep(self.config.redeliver_after)
