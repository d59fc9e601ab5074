"""The expiration sweeper: deletes expired uploads in the background.

Unfinished uploads expire ``expiration.after`` after their last PATCH; finished ones
only if ``expiration.completed_after`` is set. Until the sweep removes them, expired
uploads answer 410 Gone. An upload that a request is writing is skipped this round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..storage.base import CanExpire, CanTakeTurns

if TYPE_CHECKING:
    from .handler import TusHandler

log = logging.getLogger(__name__)


#: Expired uploads asked for at once; a sweep goes on while whole batches are deleted.
BATCH = 1000
#: A sweep turn (shared by every process on the storage) lasts this many intervals.
TURN_INTERVALS = 3


async def sweep_once(handler: TusHandler, now: float | None = None, *,
                     hold: float | None = None) -> int:
    """Delete every upload expired at ``now``; returns how many were deleted. With
    ``hold``, only if this process has the sweep turn (``CanTakeTurns``: one sweep at a
    time across processes and replicas), which it then keeps ``hold`` seconds."""
    store = handler.store
    if not isinstance(store, CanExpire):
        return 0
    if hold is not None and isinstance(store, CanTakeTurns) and not await store.take_turn(
            "sweep", hold):
        return 0
    now = time.time() if now is None else now
    deleted = 0
    while True:
        batch = await store.expired(now, BATCH)
        before = deleted
        for upload_id in batch:
            deleted += await _sweep_one(handler, store, upload_id, now)
        if len(batch) < BATCH or deleted == before:
            break  # the rest is busy (written right now) or not expired any more
    if await store.extra_due(now):
        extra = await store.sweep_extra(now)  # e.g. S3: abort dangling multipart uploads
        await store.extra_done(now)
        if extra:
            log.info("sweeper removed %d stray storage object(s)", extra)
    return deleted


async def _sweep_one(handler: TusHandler, store: CanExpire, upload_id: str, now: float) -> int:
    """Delete one listed upload if it is still expired (1), under its claim."""
    claim = await handler.writers.try_claim(upload_id)
    if claim is None:
        return 0
    writer, lock = claim
    try:
        upload = lock.upload
        if not upload.is_expired(now):
            return 0  # refreshed by a PATCH since the query
        if upload.is_final and not upload.is_complete:
            until = await handler.concatenation.final_lives_until(upload, now)
            if until is not None and until > now:
                await lock.commit(expires_at=until)  # its partials are still alive
                return 0
        await store.terminate(upload_id)
    finally:
        await handler.writers.release(writer, lock)
    handler.events.terminated(upload, None)
    return 1


async def sweep_every(handler: TusHandler, interval: float,
                      on_run: Callable[[bool], None] | None = None) -> None:
    """Run ``sweep_once`` every ``interval`` seconds until cancelled (when this process
    has the sweep turn); ``on_run(ok)`` after each pass."""
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await sweep_once(handler, hold=TURN_INTERVALS * interval)
            if deleted:
                log.info("sweeper deleted %d expired upload(s)", deleted)
        except Exception:
            log.exception("sweeper run failed")
            if on_run is not None:
                on_run(False)
        else:
            if on_run is not None:
                on_run(True)
