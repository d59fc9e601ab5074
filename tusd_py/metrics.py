"""Prometheus metrics for one app, in its own ``CollectorRegistry`` (``app[REGISTRY]``).

Names follow tusd's where the meaning is the same (prometheus-client adds the ``_total``
suffix to counters, as Prometheus naming asks):

=====================================  ===========================================================
``tusd_requests_total{method,status}``  tus requests answered (under ``server.base_path``)
``tusd_errors_total{status}``           of those, answered with a 4xx/5xx status
``tusd_connections_open``               tus requests in progress
``tusd_bytes_received_total``           upload bytes committed to storage
``tusd_uploads_created_total``          uploads created (POST)
``tusd_uploads_finished_total``         uploads that reached their length
``tusd_uploads_terminated_total``       uploads deleted by DELETE
``tusd_uploads_expired_total``          uploads deleted by the expiration sweeper
``tusd_uploads_active``                 uploads being written right now (held leases)
``tusd_patch_duration_seconds``         histogram of PATCH request durations
``tusd_sweeper_runs_total{result}``     sweeper passes (``ok`` / ``error``)
``tusd_limit_rejections_total{reason}`` requests refused by a limit (size, concurrency, auth)
=====================================  ===========================================================

Nothing here runs per chunk: bytes are counted once per request (the ``progress`` event
after a commit), requests once in a middleware.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .events import UploadListener
from .storage.base import Upload

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: PATCH durations: small chunks in milliseconds up to big chunks over slow links.
PATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics(UploadListener):
    """Upload-event listener plus the request middleware; register both on one app."""

    def __init__(self, registry: CollectorRegistry, active_uploads: Callable[[], int] | None = None,
                 base_path: str = "/files/") -> None:
        self.registry = registry
        self.base_path = base_path.rstrip("/")
        self.requests = Counter("tusd_requests", "tus requests answered, by method and status",
                                ["method", "status"], registry=registry)
        self.errors = Counter("tusd_errors", "tus requests answered with a 4xx or 5xx status",
                              ["status"], registry=registry)
        self.bytes_received = Counter("tusd_bytes_received", "upload bytes committed to storage",
                                      registry=registry)
        self.uploads_created = Counter("tusd_uploads_created", "uploads created", registry=registry)
        self.uploads_finished = Counter("tusd_uploads_finished", "uploads completed",
                                        registry=registry)
        self.uploads_terminated = Counter("tusd_uploads_terminated", "uploads deleted by DELETE",
                                          registry=registry)
        self.uploads_expired = Counter("tusd_uploads_expired",
                                       "uploads deleted by the expiration sweeper", registry=registry)
        self.patch_duration = Histogram("tusd_patch_duration_seconds", "PATCH request duration",
                                        buckets=PATCH_BUCKETS, registry=registry)
        self.sweeper_runs = Counter("tusd_sweeper_runs", "expiration sweeper passes, by result",
                                    ["result"], registry=registry)
        self.limit_rejections = Counter("tusd_limit_rejections",
                                        "requests refused by a limit, by reason", ["reason"],
                                        registry=registry)
        self.open_requests = 0
        Gauge("tusd_connections_open", "tus requests in progress",
              registry=registry).set_function(lambda: self.open_requests)
        if active_uploads is not None:
            Gauge("tusd_uploads_active", "uploads being written right now",
                  registry=registry).set_function(active_uploads)
        # Label children looked up once (Counter.labels takes a lock and hashes each time).
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._error_children: dict[int, Counter] = {}

    # -- upload events -------------------------------------------------------------

    def created(self, upload: Upload, request: web.Request) -> None:
        self.uploads_created.inc()

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        self.bytes_received.inc(received)

    def finished(self, upload: Upload, request: web.Request) -> None:
        self.uploads_finished.inc()

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        if request is None:
            self.uploads_expired.inc()
        else:
            self.uploads_terminated.inc()

    # -- sweeper and limits --------------------------------------------------------------

    def sweeper_run(self, ok: bool) -> None:
        self.sweeper_runs.labels("ok" if ok else "error").inc()

    def rejected(self, reason: str) -> None:
        self.limit_rejections.labels(reason).inc()

    # -- requests ----------------------------------------------------------------------

    def _count(self, method: str, status: int) -> None:
        key = (method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(method, str(status))
        child.inc()
        if status >= 400:
            error = self._error_children.get(status)
            if error is None:
                error = self._error_children[status] = self.errors.labels(str(status))
            error.inc()

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        base = self.base_path
        patch_observe = self.patch_duration.observe
        count = self._count
        clock = time.perf_counter

        @web.middleware
        async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(base):
                return await handler(request)
            method = request.method
            if method not in _METHODS:
                method = "other"
            self.open_requests += 1
            start = clock()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = 499  # the client went away (nginx's code for it)
                raise
            finally:
                self.open_requests -= 1
                count(method, status)
                if method == "PATCH":
                    patch_observe(clock() - start)

        return metrics_middleware


_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"})
