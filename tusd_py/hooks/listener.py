"""The hook listener: turns upload events into tusd-format hook calls.

Blocking hooks (pre-create, pre-finish, pre-access) are awaited in the request: their
answer may refuse it (status, body and headers passed to the client) or, for pre-create,
change the upload's id or metadata. A hook that fails (down, slow, 5xx, bad JSON) refuses
the request with 500, as tusd does: authorisation must not fail open.

Notification hooks (post-create, post-receive, post-finish, post-terminate) are queued
and delivered by a few background workers: the request never waits for them and their
failures never reach the client. post-receive is throttled to one event per
``post_receive_interval`` per upload (the newest offset wins; the event that completes an
upload is sent at once).

Delivery of post-create, post-receive and post-terminate is at most once per event: an
event that cannot be delivered is dropped, never re-sent later. Each drop is counted in
``tusd_hook_dropped_total{hooktype, reason}`` and logged with the upload id (post-receive
drops: at most one line per second):

- ``queue_full``: the bounded queue was full (a receiver slower than the upload rate);
- ``failed``: the backend failed (after its retries) or answered something invalid;
- ``circuit_open``: the HTTP endpoint is being skipped after failing repeatedly;
- ``shutdown``: still queued or in flight when the shutdown drain ended;
- ``not_running``: the event came after the hooks stopped (or before they started).

A crash of the daemon loses those without a trace (nothing is persisted).

post-finish is tracked in storage instead (unless ``redeliver_after`` is 0): an upload
created while post-finish is enabled has ``finish_owed`` set in its record, and it stays
set until post-finish was delivered to every backend (or pre-finish refused the upload).
Each delivery of it runs under the upload's lock (``_deliver_owed``), which excludes every
other process and replica, and first re-reads the flag, so it is delivered once: a second
attempt finds it cleared. One that fails, is queued when the daemon dies, or finds the
queue full, stays owed; ``_redeliver_loop`` (at start and every ``redeliver_after``)
delivers the uploads still owed ``redeliver_after`` after they finished, pre-finish first
when it is enabled (it may not have run), with an empty ``HTTPRequest`` (the finishing
request is gone). Counted in ``tusd_hook_redeliveries_total``. The one way a receiver
sees post-finish twice: it answered, but the daemon died before the flag was cleared.

Every delivery carries an ``Idempotency-Key`` derived from the event (``idempotency_key``),
the same on each retry, on each replica and on a re-delivery, so a receiver can drop repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter

from ..config import ConfigError, HooksConfig
from ..core.events import UploadListener
from ..core.writers import LeaseRegistry, StopReason
from ..protocol.errors import NotFound, TusError, UploadBusy
from ..storage.base import CanTrackFinish, Store, Upload, UploadLock
from ..storage.ids import is_upload_id
from .http import CircuitOpen, HookError
from .payload import (
    ACCESS_DENIED_BODY,
    POST_CREATE,
    POST_FINISH,
    POST_RECEIVE,
    POST_TERMINATE,
    PRE_ACCESS,
    PRE_CREATE,
    PRE_FINISH,
    PRE_TERMINATE,
    REJECTED_BODY,
    STOPPED_BODY,
    TERMINATION_REJECTED_BODY,
    HookResponse,
    HookResponseError,
    HTTPResponse,
    hook_request,
    idempotency_key,
    parse_hook_response,
)

log = logging.getLogger("tusd_py.hooks")

#: Request key holding headers a blocking hook asked to add to the response.
RESPONSE_HEADERS_KEY = web.RequestKey("tusd_hook_response_headers", CIMultiDict[str])
#: How long a StopUpload answer keeps refusing PATCH requests for that upload.
STOPPED_TTL = 3600.0
#: Failures of one hook type are logged at most once per this many seconds (all counted);
#: for notifications this applies to post-receive only (other drops are each logged).
LOG_INTERVAL = 1.0
NOTIFICATIONS = (POST_CREATE, POST_RECEIVE, POST_FINISH, POST_TERMINATE)
#: Longest wait for an upload's lock before delivering its owed post-finish (busy:
#: it stays owed, re-delivered later).
CLAIM_WAIT = 5.0
#: Owed post-finish deliveries queued per re-delivery round.
REDELIVER_BATCH = 100
#: Why a notification was dropped (the ``reason`` label of ``tusd_hook_dropped_total``).
DROP_REASONS = ("queue_full", "failed", "circuit_open", "shutdown", "not_running")


class HookBackend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...

    async def invoke(self, payload: Mapping[str, Any], *, forward: Mapping[str, str],
                     key: str) -> Any: ...


class HookRejection(TusError):
    """A hook refused the request: its status, body and headers go to the client verbatim.

    As tusd merges them: the hook's ``StatusCode`` (else ``status``), its ``Body`` if not
    empty (else ``default_body``), and ``Content-Type: text/plain`` unless it set one.
    """

    def __init__(self, response: HTTPResponse, status: int, default_body: str) -> None:
        body = response.body or default_body
        headers = dict(response.header)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "text/plain; charset=utf-8"
        super().__init__(body.strip() or f"refused by hook ({response.status_code or status})",
                         status=response.status_code or status, headers=headers)
        #: Sent as is by the error middleware (no trailing newline added).
        self.body = body


@dataclass(eq=False)
class Delivery:
    hook_type: str
    upload_id: str
    payload: dict[str, Any]
    forward: dict[str, str]
    key: str
    #: A post-finish tracked in storage (``finish_owed``): delivered under the upload's
    #: lock, and the flag cleared once every backend took it.
    owed: bool = False
    #: Sent by ``_redeliver_loop``: queued with the id alone; runs pre-finish first and
    #: takes its payload from the record read under the lock.
    redelivery: bool = False


@dataclass
class _Throttle:
    pending: Delivery | None = None
    timer: asyncio.TimerHandle | None = None


class HookListener(UploadListener):
    def __init__(self, config: HooksConfig, backends: list[HookBackend], *, store: Store,
                 driver: str, registry: CollectorRegistry,
                 leases: LeaseRegistry | None = None) -> None:
        self.config = config
        self.backends = backends
        self.store = store
        self.driver = driver
        self.leases = leases
        self.enabled = frozenset(config.enabled)
        self.forward_names = tuple(config.http.forward_headers) if config.http.url else ()
        self.interval = config.post_receive_interval
        self.errors = Counter("tusd_hook_errors_total", "Hook calls that failed, per hook type.",
                              ["hooktype"], registry=registry)
        self.invocations = Counter("tusd_hook_invocations_total", "Hook calls, per hook type.",
                                   ["hooktype"], registry=registry)
        self.dropped = Counter("tusd_hook_dropped_total",
                               "Notification hooks (post-*) not delivered, per hook type and "
                               "reason.", ["hooktype", "reason"], registry=registry)
        self.redeliveries = Counter("tusd_hook_redeliveries_total",
                                    "post-finish deliveries of uploads found still owed "
                                    "(not delivered before), per hook type.", ["hooktype"],
                                    registry=registry)
        #: post-finish is tracked in storage (``finish_owed``) and re-delivered.
        self.tracks_finish = POST_FINISH in self.enabled and config.redeliver_after > 0
        if self.tracks_finish and not isinstance(store, CanTrackFinish):
            raise ConfigError(f"hooks.redeliver_after: the {driver} driver cannot track "
                              "post-finish deliveries; set it to 0")
        if self.tracks_finish:
            self.redeliveries.labels(POST_FINISH)
        for hook_type in self.enabled:
            self.errors.labels(hook_type)
            self.invocations.labels(hook_type)
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
        #: hook type -> (time of the last failure logged, failures not logged since)
        self._log_state: dict[str, tuple[float, int]] = {}
        #: Uploads with an owed post-finish queued or in flight here (not queued twice).
        self._owed: set[str] = set()
        self._redeliverer: asyncio.Task[None] | None = None
        #: Background clears of ``finish_owed`` after a pre-finish refusal.
        self._settling: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()
        self.queue = asyncio.Queue(self.config.queue_size)
        self.workers = [asyncio.create_task(self._worker(), name=f"tusd-hooks-{i}")
                        for i in range(self.config.concurrency)]
        if self.tracks_finish:
            self._redeliverer = asyncio.create_task(self._redeliver_loop(),
                                                    name="tusd-hooks-redeliver")

    async def stop(self, drain: float = 5.0) -> None:
        """Deliver what is queued (and the pending throttled post-receive events) for up
        to ``drain`` seconds, then stop; what is left is counted and logged as dropped,
        also when the shutdown's own deadline cancels the wait (owed post-finish
        deliveries are not lost: the next start re-delivers them)."""
        if self._redeliverer is not None:
            self._redeliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redeliverer
            self._redeliverer = None
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
        for task in [*workers, *self._settling]:
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

    # -- calling backends --------------------------------------------------------------

    def _forward(self, request: web.Request | None) -> dict[str, str]:
        if request is None or not self.forward_names:
            return {}
        return {name: request.headers[name] for name in self.forward_names
                if name in request.headers}

    def _delivery(self, hook_type: str, upload: Upload, request: web.Request | None,
                  method: str | None = None, key_extra: str = "", *, owed: bool = False,
                  redelivery: bool = False) -> Delivery:
        return Delivery(hook_type, upload.id,
                        hook_request(hook_type, upload, request, self.driver, method),
                        self._forward(request), idempotency_key(hook_type, upload, key_extra),
                        owed, redelivery)

    async def _call(self, backend: HookBackend, delivery: Delivery) -> HookResponse:
        """One backend, one hook: counted. Raises HookError (every failure, with a
        ``public`` reason) or TusError (a Python hook refusing)."""
        self.invocations.labels(delivery.hook_type).inc()
        try:
            answer = await backend.invoke(delivery.payload, forward=delivery.forward,
                                          key=delivery.key)
            return parse_hook_response(answer)
        except TusError:
            raise
        except HookError:
            self.errors.labels(delivery.hook_type).inc()
            raise
        except HookResponseError as exc:
            self.errors.labels(delivery.hook_type).inc()
            raise HookError(str(exc), "invalid hook response") from None
        except Exception as exc:
            self.errors.labels(delivery.hook_type).inc()
            raise HookError(f"{type(exc).__name__}: {exc}", "hook raised an error") from exc

    def _log_limited(self, hook_type: str, message: str, *args: object) -> None:
        """Log at most one line per hook type per LOG_INTERVAL (noting how many were not)."""
        now = time.monotonic()
        last, suppressed = self._log_state.get(hook_type, (0.0, 0))
        if now - last < LOG_INTERVAL and last:
            self._log_state[hook_type] = (last, suppressed + 1)
            return
        self._log_state[hook_type] = (now, 0)
        more = f" ({suppressed} more not logged)" if suppressed else ""
        log.warning(message + "%s", *args, more)

    def _failed(self, backend: HookBackend, delivery: Delivery, reason: str) -> None:
        """A blocking hook failed (its request is refused with 500): logged, rate-limited."""
        self._log_limited(delivery.hook_type, "%s hook for upload %s failed: %s: %s",
                          delivery.hook_type, delivery.upload_id or "(new)",
                          backend.describe(), reason)

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

    async def _call_blocking(self, backend: HookBackend, delivery: Delivery) -> HookResponse:
        try:
            return await self._call(backend, delivery)
        except HookError as exc:
            self._failed(backend, delivery, str(exc))
            raise TusError(f"{delivery.hook_type} hook failed: {exc.public}", status=500) from None

    # -- blocking hooks -------------------------------------------------------------------

    async def pre_create(self, upload: Upload, request: web.Request) -> Upload:
        if self.tracks_finish and not upload.is_partial:
            upload = upload.copy(finish_owed=True)  # written with the new record
        if PRE_CREATE not in self.enabled:
            return upload
        for backend in self.backends:
            delivery = self._delivery(PRE_CREATE, upload, request)
            response = await self._call_blocking(backend, delivery)
            if response.reject_upload:
                raise HookRejection(response.http_response, 400, REJECTED_BODY)
            changes = response.change_file_info
            if changes.id is not None and changes.id != upload.id:
                if not is_upload_id(changes.id):
                    self._failed(backend, delivery, f"invalid upload id {changes.id[:140]!r}")
                    raise TusError("pre-create hook returned an invalid upload id", status=500)
                if await self.store.get(changes.id) is not None:
                    log.warning("pre-create hook chose upload id %s, which already exists",
                                changes.id)
                    raise TusError("an upload with this id already exists", status=409)
                upload = upload.copy(id=changes.id)
            if changes.metadata is not None:
                upload = upload.copy(metadata={k: v.encode() for k, v in changes.metadata.items()})
            if changes.storage:
                log.warning("pre-create hook: ChangeFileInfo.Storage is not supported; ignored")
            self._add_response_headers(request, response.http_response)
        return upload

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        if PRE_FINISH not in self.enabled:
            return
        try:
            for backend in self.backends:
                response = await self._call_blocking(
                    backend, self._delivery(PRE_FINISH, upload, request))
                self._check_pre_finish(response)
                self._add_response_headers(request, response.http_response)
        except HookRejection:
            if upload.finish_owed:  # refused: post-finish is not owed any more
                task = asyncio.create_task(self._forget_finish(upload.id))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
            raise

    @staticmethod
    def _check_pre_finish(response: HookResponse) -> None:
        http = response.http_response
        if response.reject_upload or http.status_code >= 400:
            # tusd has no default body here: the hook's HTTPResponse as it is.
            raise HookRejection(http, 400, "")

    async def pre_terminate(self, upload: Upload, request: web.Request) -> None:
        if PRE_TERMINATE not in self.enabled:
            return
        for backend in self.backends:
            response = await self._call_blocking(
                backend, self._delivery(PRE_TERMINATE, upload, request))
            if response.reject_termination:
                raise HookRejection(response.http_response, 400, TERMINATION_REJECTED_BODY)
            self._add_response_headers(request, response.http_response)

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        if self.stopped and method == "PATCH":
            stopped = self.stopped.get(upload_id)
            if stopped is not None:
                if stopped[1] > time.monotonic():
                    raise HookRejection(stopped[0], 400, STOPPED_BODY)
                del self.stopped[upload_id]
        if PRE_ACCESS not in self.enabled:
            return
        upload = await self.store.get(upload_id)
        if upload is None:
            return  # the handler answers 404
        for backend in self.backends:
            delivery = self._delivery(PRE_ACCESS, upload, request, method,
                                      key_extra=uuid.uuid4().hex)  # one per request
            response = await self._call_blocking(backend, delivery)
            http = response.http_response
            if (response.reject_upload or http.status_code >= 400
                    or (method == "DELETE" and response.reject_termination)):
                raise HookRejection(http, 403, ACCESS_DENIED_BODY)

    @staticmethod
    def _add_response_headers(request: web.Request, response: HTTPResponse) -> None:
        if response.header:
            request.setdefault(RESPONSE_HEADERS_KEY, CIMultiDict()).update(response.header)

    # -- notifications (background) ---------------------------------------------------------

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
                if delivery.owed:
                    await self._deliver_owed(delivery)
                else:
                    await self._deliver(delivery)
            except Exception:  # never let a worker die
                log.exception("hook delivery failed unexpectedly")
            finally:
                self.in_flight.discard(delivery)
                if delivery.owed:
                    self._owed.discard(delivery.upload_id)
                queue.task_done()

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

    # -- owed post-finish: exactly once, re-delivered ----------------------------------------

    @contextlib.asynccontextmanager
    async def _claim(self, upload_id: str, wait: float) -> AsyncIterator[UploadLock | None]:
        """The upload's storage lock, or None if it is gone or stays busy for ``wait``.

        The storage lock alone excludes every other request, process and replica (and the
        other hook workers here). The handler's in-process leases are left alone: they
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
        while True:
            try:
                queued = await self.redeliver_owed()
                if queued:
                    log.info("hooks: re-delivering post-finish of %d upload(s)", queued)
            except Exception as exc:
                log.warning("hooks: listing owed post-finish deliveries failed: %s", exc)
            await asyncio.sleep(self.config.redeliver_after)

    def _stop_upload(self, upload_id: str, response: HTTPResponse) -> None:
        """StopUpload: end an in-flight PATCH (it commits what it got and answers the
        hook's HTTPResponse) and refuse the next ones (in this process)."""
        log.info("post-receive hook stopped upload %s", upload_id)
        now = time.monotonic()
        self.stopped = {k: v for k, v in self.stopped.items() if v[1] > now}
        self.stopped[upload_id] = (response, now + STOPPED_TTL)
        lease = self.leases.get(upload_id) if self.leases is not None else None
        if lease is not None:
            lease.stop_error = HookRejection(response, 400, STOPPED_BODY)
            lease.stop(StopReason.HOOK, asyncio.get_running_loop().time())
