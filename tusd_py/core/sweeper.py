"""The expiration sweeper: deletes expired uploads in the background.

Unfinished uploads expire ``expiration.after`` after their last PATCH; finished ones
only if ``expiration.completed_after`` is set. Until the sweep removes them, expired
uploads answer 410 Gone. An upload that a request is writing is skipped this round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from ..http.metrics import Metrics
from ..protocol.errors import NotFound, UploadBusy
from ..storage.base import CanExpire, Capability
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
        lease = handler.leases.try_acquire(upload_id)
        if lease is None:
            continue
        try:
            lock = await store.lock(upload_id, 0)
        except (NotFound, UploadBusy):
            handler.leases.release(lease)
            continue
        try:
            upload = lock.upload
            if not upload.is_expired(now):
                continue  # refreshed by a PATCH since the query
            if upload.is_final and not upload.is_complete:
                until = await handler.final_lives_until(upload, now)
                if until is not None and until > now:
                    await lock.commit(expires_at=until)  # its partials are still alive
                    continue
            await store.terminate(upload_id)
            deleted += 1
        finally:
            await handler._release(lease, lock)
        handler.events.terminated(upload, None)
    extra = await store.sweep_extra(now)  # e.g. S3: abort dangling multipart uploads
    if extra:
        log.info("sweeper removed %d stray storage object(s)", extra)
    return deleted


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run ``sweep_once`` every ``expiration.sweep_interval`` seconds."""
    from ..http.app import HANDLER, METRICS

    handler = app[HANDLER]
    interval = handler.config.expiration.sweep_interval
    task = None
    if interval > 0 and Capability.EXPIRE in handler.store.capabilities:
        task = asyncio.create_task(_loop(handler, interval, app.get(METRICS)), name="tusd-sweeper")
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def _loop(handler: TusHandler, interval: float, metrics: Metrics | None = None) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await sweep_once(handler)
            if deleted:
                log.info("sweeper deleted %d expired upload(s)", deleted)
        except Exception:
            log.exception("sweeper run failed")
            if metrics is not None:
                metrics.sweeper_run(ok=False)
        else:
            if metrics is not None:
                metrics.sweeper_run(ok=True)
