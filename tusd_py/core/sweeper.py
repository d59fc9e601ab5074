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

from ..storage.base import CanExpire

if TYPE_CHECKING:
    from .handler import TusHandler

log = logging.getLogger(__name__)


async def sweep_once(handler: TusHandler, now: float | None = None) -> int:
    """Delete every upload expired at ``now``; returns how many were deleted."""
    store = handler.store
    if not isinstance(store, CanExpire):
        return 0
    now = time.time() if now is None else now
    deleted = 0
    for upload_id in await store.expired(now):
        claim = await handler.writers.try_claim(upload_id)
        if claim is None:
            continue
        writer, lock = claim
        try:
            upload = lock.upload
            if not upload.is_expired(now):
                continue  # refreshed by a PATCH since the query
            if upload.is_final and not upload.is_complete:
                until = await handler.concatenation.final_lives_until(upload, now)
                if until is not None and until > now:
                    await lock.commit(expires_at=until)  # its partials are still alive
                    continue
            await store.terminate(upload_id)
            deleted += 1
        finally:
            await handler.writers.release(writer, lock)
        handler.events.terminated(upload, None)
    extra = await store.sweep_extra(now)  # e.g. S3: abort dangling multipart uploads
    if extra:
        log.info("sweeper removed %d stray storage object(s)", extra)
    return deleted


async def sweep_every(handler: TusHandler, interval: float,
                      on_run: Callable[[bool], None] | None = None) -> None:
    """Run ``sweep_once`` every ``interval`` seconds until cancelled; ``on_run(ok)`` after
    each pass."""
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await sweep_once(handler)
            if deleted:
                log.info("sweeper deleted %d expired upload(s)", deleted)
        except Exception:
            log.exception("sweeper run failed")
            if on_run is not None:
                on_run(False)
        else:
            if on_run is not None:
                on_run(True)
