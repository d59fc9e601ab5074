"""Prometheus metrics for one app, in its own ``CollectorRegistry`` (``app[REGISTRY]``).

Names follow tusd's where the meaning is the same. Nothing here runs per chunk: bytes are
counted once per request, requests once in the front middleware, and the per-request
counters are plain integers, turned into Prometheus families only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..core.events import UploadListener
from ..storage.base import Upload

#: PATCH durations: small chunks in milliseconds up to big chunks over slow links.
PATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics(UploadListener, Collector):
    """Upload-event listener and request counter (fed by the front middleware); a
    collector of its own registry. Register it with ``EventBus.add`` too."""

    def __init__(self, registry: CollectorRegistry,
                 active_uploads: Callable[[], int] | None = None) -> None:
        # Hot counters: plain integers, exposed by collect().
        self.requests: dict[tuple[str, int], int] = {}  # (method, status) -> count
        self.errors: dict[int, int] = {}  # status -> count
        self.bytes_received = 0
        self.uploads_created = 0
        self.uploads_finished = 0
        self.patch_buckets = [0] * (len(PATCH_BUCKETS) + 1)  # per bucket, the last is +Inf
        self.patch_seconds = 0.0
        self.open_requests = 0
        registry.register(self)
        # Rare events: plain prometheus-client counters.
        self.uploads_terminated = Counter("tusd_uploads_terminated", "uploads deleted by DELETE",
                                          registry=registry)
        self.uploads_expired = Counter("tusd_uploads_expired",
                                       "uploads deleted by the expiration sweeper", registry=registry)
        self.sweeper_runs = Counter("tusd_sweeper_runs", "expiration sweeper passes, by result",
                                    ["result"], registry=registry)
        self.limit_rejections = Counter("tusd_limit_rejections",
                                        "requests refused by a limit, by reason", ["reason"],
                                        registry=registry)
        Gauge("tusd_connections_open", "tus requests in progress",
              registry=registry).set_function(lambda: self.open_requests)
        if active_uploads is not None:
            Gauge("tusd_uploads_active", "uploads being written right now",
                  registry=registry).set_function(active_uploads)

    # -- upload events -------------------------------------------------------------

    def created(self, upload: Upload, request: web.Request) -> None:
        self.uploads_created += 1

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        self.bytes_received += received

    def finished(self, upload: Upload, request: web.Request) -> None:
        self.uploads_finished += 1

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

    def answered(self, method: str, status: int, seconds: float) -> None:
        """One tus request answered with ``status`` after ``seconds``."""
        if method not in _METHODS:
            method = "other"
        key = (method, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if status >= 400:
            self.errors[status] = self.errors.get(status, 0) + 1
        if method == "PATCH":
            self.patch_buckets[bisect_left(PATCH_BUCKETS, seconds)] += 1
            self.patch_seconds += seconds

    # -- exposition (prometheus_client.registry.Collector) -------------------------------

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("tusd_requests", "tus requests answered, by method and status",
                                       labels=["method", "status"])
        for (method, status), count in sorted(self.requests.items()):
            requests.add_metric([method, str(status)], count)
        yield requests
        errors = CounterMetricFamily("tusd_errors", "tus requests answered with a 4xx or 5xx status",
                                     labels=["status"])
        for status, count in sorted(self.errors.items()):
            errors.add_metric([str(status)], count)
        yield errors
        yield CounterMetricFamily("tusd_bytes_received", "upload bytes committed to storage",
                                  value=self.bytes_received)
        yield CounterMetricFamily("tusd_uploads_created", "uploads created",
                                  value=self.uploads_created)
        yield CounterMetricFamily("tusd_uploads_finished", "uploads completed",
                                  value=self.uploads_finished)
        cumulative, buckets = 0, []
        for bound, count in zip((*PATCH_BUCKETS, float("inf")), self.patch_buckets, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily("tusd_patch_duration_seconds", "PATCH request duration",
                                    buckets=buckets, sum_value=self.patch_seconds)


_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"})
