"""Notification hooks (post-create, post-receive, post-finish, post-terminate): a bounded
queue and a few workers deliver them in the background, post-receive throttled per upload;
an event that cannot be delivered is dropped (counted and logged), never re-sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from ..config import HooksConfig
from ..core.writers import StopReason, WriterRegistry
from ..protocol.constants import POST_CREATE, POST_FINISH, POST_RECEIVE, POST_TERMINATE
from ..protocol.errors import TusError
from ..storage.base import Store, Upload
from .calls import Delivery, HookBackend, HookCalls, HookRejection
from .http import CircuitOpen, HookError
from .payload import STOPPED_BODY, HTTPResponse

log = logging.getLogger("tusd_py.hooks")

#: How long a StopUpload answer keeps refusing PATCH requests for that upload.
STOPPED_TTL = 3600.0
NOTIFICATIONS = (POST_CREATE, POST_RECEIVE, POST_FINISH, POST_TERMINATE)
#: Why a notification was dropped (the ``reason`` label of ``tusd_hook_dropped_total``).
DROP_REASONS = ("queue_full", "failed", "circuit_open", "shutdown", "not_running")


@dataclass
class _Throttle:
    pending: Delivery | None = None
    timer: asyncio.TimerHandle | None = None


class Notifications(HookCalls):
    """The post-* hooks: queued by the upload events, delivered by ``config.concurrency``
    workers between ``start`` and ``stop``."""

    def __init__(self, config: HooksConfig, backends: list[HookBackend], *, store: Store,
                 driver: str, registry: CollectorRegistry, writers: WriterRegistry) -> None:
        super().__init__(config, backends, store=store, driver=driver, registry=registry,
                         writers=writers)
        self.interval = config.post_receive_interval
        self.dropped = Counter("tusd_hook_dropped_total",
                               "Notification hooks (post-*) not delivered, per hook type and "
                               "reason.", ["hooktype", "reason"], registry=registry)
        for hook_type in self.enabled:
            if hook_type in NOTIFICATIONS:
                for reason in DROP_REASONS:
                    self.dropped.labels(hook_type, reason)
        self.queue: asyncio.Queue[Delivery] | None = None
        self.workers: list[asyncio.Task[None]] = []
        #: Deliveries a worker is working on (counted as dropped if shutdown cuts them off).
        self.in_flight: set[Delivery] = set()
        self._throttles: dict[str, _Throttle] = {}
        #: upload id -> (response to send, until); filled by StopUpload answers.
        self.stopped: dict[str, tuple[HTTPResponse, float]] = {}
        #: Uploads with an owed post-finish queued or in flight here (not queued twice).
        self._owed: set[str] = set()
        #: Other background tasks ``stop`` waits for.
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        self.queue = asyncio.Queue(self.config.queue_size)
        self.workers = [asyncio.create_task(self._worker(), name=f"tusd-hooks-{i}")
                        for i in range(self.config.concurrency)]

    async def stop(self, drain: float = 5.0) -> None:
        """Deliver what is queued (and the pending throttled post-receive events) for up
        to ``drain`` seconds, then stop; what is left is counted and logged as dropped,
        also when the shutdown's own deadline cancels the wait (owed post-finish
        deliveries are not lost: the next start re-delivers them)."""
        for throttle in self._throttles.values():
            if throttle.timer is not None:
                throttle.timer.cancel()
            if throttle.pending is not None:
                self._enqueue(throttle.pending)
        self._throttles.clear()
        queue, workers = self.queue, self.workers
        started = time.monotonic()
        try:
            if queue is not None and drain > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.join(), drain)
        finally:
            self._abandon(queue, f"{time.monotonic() - started:.1f}s")
        for task in [*workers, *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for backend in self.backends:
            await backend.close()

    def _abandon(self, queue: asyncio.Queue[Delivery] | None, drained: str) -> None:
        """End the workers; count and log every delivery still in flight or queued."""
        left = list(self.in_flight)
        self.in_flight.clear()
        for task in self.workers:
            task.cancel()
        self.workers = []
        self.queue = None
        while queue is not None and not queue.empty():
            left.append(queue.get_nowait())
        if left:
            log.warning("hooks: shutdown drain ended after %s with %d delivery(ies) "
                        "undelivered", drained, len(left))
        for delivery in left:
            self._undelivered(delivery, "shutdown",
                              f"still queued or in flight when the shutdown drain ended "
                              f"({drained})")

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task that ``stop`` waits for."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- events ------------------------------------------------------------------------

    def created(self, upload: Upload, request: web.Request) -> None:
        if POST_CREATE in self.enabled:
            self._enqueue(self._delivery(POST_CREATE, upload, request))

    def finished(self, upload: Upload, request: web.Request) -> None:
        # The handler calls this once per upload: only the request whose commit (a
        # compare-and-set in storage) completed it, never for a partial upload.
        if POST_FINISH in self.enabled and not upload.is_partial:
            self._enqueue(self._delivery(POST_FINISH, upload, request,
                                         owed=upload.finish_owed and self.tracks_finish))

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        self.stopped.pop(upload.id, None)
        if POST_TERMINATE in self.enabled:
            self._enqueue(self._delivery(POST_TERMINATE, upload, request))

    def receiving(self, upload: Upload, request: web.Request, offset: int) -> None:
        """Mid-body progress (uncommitted ``offset``), throttled like ``progress``."""
        if POST_RECEIVE in self.enabled:
            self._progress(self._delivery(POST_RECEIVE, upload.copy(offset=offset), request,
                                          key_extra=str(offset)), complete=False)

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        if POST_RECEIVE in self.enabled:
            self._progress(self._delivery(POST_RECEIVE, upload, request,
                                          key_extra=str(upload.offset)),
                           complete=upload.is_complete)

    def _progress(self, delivery: Delivery, *, complete: bool) -> None:
        upload_id = delivery.upload_id
        throttle = self._throttles.get(upload_id)
        if self.interval <= 0 or (throttle is None and self.queue is None):
            self._enqueue(delivery)
            return
        if complete:  # the last one goes out now, superseding any pending one
            if throttle is not None:
                if throttle.timer is not None:
                    throttle.timer.cancel()
                del self._throttles[upload_id]
            self._enqueue(delivery)
            return
        if throttle is not None:
            throttle.pending = delivery  # the newest offset wins
            return
        self._enqueue(delivery)
        self._arm(upload_id, _Throttle())

    def _arm(self, upload_id: str, throttle: _Throttle) -> None:
        loop = asyncio.get_running_loop()
        throttle.timer = loop.call_later(self.interval, self._tick, upload_id)
        self._throttles[upload_id] = throttle

    def _tick(self, upload_id: str) -> None:
        throttle = self._throttles.pop(upload_id, None)
        if throttle is None or throttle.pending is None:
            return
        self._enqueue(throttle.pending)
        self._arm(upload_id, _Throttle())

    # -- queue and workers -------------------------------------------------------------

    def _enqueue(self, delivery: Delivery) -> bool:
        """Queue ``delivery``; False if it could not be (dropped, or deferred if owed)."""
        if delivery.owed and delivery.upload_id in self._owed:
            return True  # already queued or in flight here
        if self.queue is None:
            self._undelivered(delivery, "not_running", "hooks are not running")
            return False
        try:
            self.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._undelivered(delivery, "queue_full",
                              f"{self.queue.qsize()} deliveries already queued")
            return False
        if delivery.owed:
            self._owed.add(delivery.upload_id)  # until a worker is done with it
        return True

    async def _worker(self) -> None:
        assert self.queue is not None
        queue = self.queue
        while True:
            delivery = await queue.get()
            self.in_flight.add(delivery)
            try:
                await self._send(delivery)
            except Exception:  # never let a worker die
                log.exception("hook delivery failed unexpectedly")
            finally:
                self.in_flight.discard(delivery)
                if delivery.owed:
                    self._owed.discard(delivery.upload_id)
                queue.task_done()

    async def _send(self, delivery: Delivery) -> None:
        """A worker's job: deliver one queued event."""
        await self._deliver(delivery)

    async def _deliver(self, delivery: Delivery) -> bool:
        """Call every backend; True if all of them took it. A failure is a drop (counted,
        logged), except for an owed post-finish, which the caller defers."""
        delivered = True
        for backend in self.backends:
            try:
                response = await self._call(backend, delivery)
            except HookError as exc:
                reason = "circuit_open" if isinstance(exc, CircuitOpen) else "failed"
                failure = f"{backend.describe()}: {exc}"
            except TusError as exc:  # a Python hook refusing a notification: a failure
                self.errors.labels(delivery.hook_type).inc()
                reason, failure = "failed", f"{backend.describe()}: raised {exc.status} {exc.message}"
            else:
                if delivery.hook_type == POST_RECEIVE and response.stop_upload:
                    self._stop_upload(delivery.upload_id, response.http_response)
                continue
            delivered = False
            if delivery.owed:
                log.warning("%s hook for upload %s failed: %s", delivery.hook_type,
                            delivery.upload_id, failure)
            else:
                self._drop(delivery, reason, failure)
        return delivered

    def _stop_upload(self, upload_id: str, response: HTTPResponse) -> None:
        """StopUpload: end an in-flight PATCH (it commits what it got and answers the
        hook's HTTPResponse) and refuse the next ones (in this process)."""
        log.info("post-receive hook stopped upload %s", upload_id)
        now = time.monotonic()
        self.stopped = {k: v for k, v in self.stopped.items() if v[1] > now}
        self.stopped[upload_id] = (response, now + STOPPED_TTL)
        writer = self.writers.get(upload_id)
        if writer is not None:
            writer.stop_error = HookRejection(response, 400, STOPPED_BODY)
            writer.stop(StopReason.HOOK, asyncio.get_running_loop().time())

    def _drop(self, delivery: Delivery, reason: str, detail: str) -> None:
        """A notification will not be delivered: counted by reason and logged with its
        upload id (every post-create/finish/terminate; post-receive rate-limited). Also an
        error of its hook type (a failed call already counted itself as one)."""
        self.dropped.labels(delivery.hook_type, reason).inc()
        if reason not in ("failed", "circuit_open"):
            self.errors.labels(delivery.hook_type).inc()
        message = "%s hook for upload %s dropped (%s): %s"
        args = (delivery.hook_type, delivery.upload_id, reason, detail)
        if delivery.hook_type == POST_RECEIVE:
            self._log_limited(delivery.hook_type, message, *args)
        else:
            log.warning(message, *args)

    def _undelivered(self, delivery: Delivery, reason: str, detail: str) -> None:
        """A delivery that did not go out: dropped (``reason``), or deferred if owed."""
        if delivery.owed:
            self._defer(delivery, detail)
        else:
            self._drop(delivery, reason, detail)

    def _defer(self, delivery: Delivery, why: str) -> None:
        """An owed post-finish not delivered now: it stays owed in storage (logged)."""
        log.warning("%s hook for upload %s not delivered (%s): delivered again once it "
                    "is %.0fs overdue", delivery.hook_type, delivery.upload_id, why,
                    self.config.redeliver_after)
