"""The aiohttp application: routes, middlewares, storage and sweeper lifecycles."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import tracing
from ..config import Config, ConfigError, StartupError
from ..core.events import EventBus
from ..core.handler import TusHandler
from ..core.ietf import DraftHandler
from ..core.sweeper import sweep_every
from ..hooks.setup import setup_hooks
from ..storage import Store
from ..storage.base import Capability
from ..storage.registry import build_store
from ..web import add_demo_routes
from .cors import cors_headers
from .keys import BACKGROUND, CONFIG, CORS, EVENTS, GATE, HANDLER, METRICS, READINESS, REGISTRY, STORE, WORKER
from .limits import limits_middleware
from .listen import reason
from .logs import RequestAnnotator
from .metrics import Metrics
from .middleware import RequestGate, front_middleware
from .routing import route_tus_directly

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: storage answers within 5 s and its local disk has room
    (``server.min_free_disk``). A failure is answered without details (they may name
    a directory or a bucket); the log has them (``readiness``)."""
    store = request.app[STORE]
    try:
        await asyncio.wait_for(store.ping(), 5)
        reason = low_disk(store.writable_paths(), request.app[CONFIG].server.min_free_disk)
    except Exception as exc:  # any failure means "not ready"
        reason = str(exc) or type(exc).__name__
    request.app[READINESS].report(reason)
    if reason is not None:
        return web.Response(status=503, text="storage not ready\n")
    worker = request.app.get(WORKER)
    if worker is not None and (idle := worker.not_serving()):  # server.workers: all of them
        return web.Response(status=503, text=f"worker(s) not serving: {idle}\n")
    return web.Response(text="ready\n")


def low_disk(paths: tuple[str, ...], min_free: int) -> str | None:
    """Why a directory cannot take writes (read-only, less than ``min_free`` bytes
    free), or None."""
    for path in paths:
        st = os.statvfs(path)
        if st.f_flag & os.ST_RDONLY:
            return f"{path} is on a read-only file system"
        if min_free and st.f_bavail * st.f_frsize < min_free:
            return f"{path} has less free space than server.min_free_disk ({min_free} bytes)"
    return None


class Readiness:
    """The last readiness verdict, logged when it changes (probes come every few
    seconds: one line per change, not per probe)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def report(self, reason: str | None) -> None:
        if reason == self.reason:
            return
        if reason is None:
            log.warning("ready again: storage answers and can take writes")
        else:
            log.warning("not ready: %s", reason)
        self.reason = reason


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this app's registry (with ``server.workers``, the
    sum over every worker's)."""
    worker = request.app.get(WORKER)
    registry = request.app[REGISTRY]
    body = generate_latest(registry if worker is None else worker.all_metrics(registry))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(config: Config, store: Store | None = None,
               events: EventBus | None = None, background: bool = True, *,
               tracer_provider: TracerProvider | None = None) -> web.Application:
    """Build the application. ``store`` defaults to the configured driver; ``background``
    says whether it runs the sweeper and the post-finish re-delivery (one worker does).
    Traced (the ``otel`` extra, ``tusd_py.tracing``) with ``tracer_provider``, else when
    the ``OTEL_*`` variables ask for it."""
    store = store if store is not None else build_store(config.storage)
    if tracer_provider is None:
        tracer_provider = tracing.provider_from_env()
    if tracer_provider is not None:
        store = tracing.TracedStore(store, tracer_provider.get_tracer(tracing.SCOPE))
    events = events if events is not None else EventBus()
    handler = TusHandler(config, store, events)
    protocols = config.server.protocols
    dispatch = handler.dispatch
    if "ietf-draft" in protocols:  # tusd_py.core.ietf: Upload-Draft-Interop-Version
        handler.draft = DraftHandler(handler, tus="tus" in protocols)
        if "tus" not in protocols:
            dispatch = handler.draft.dispatch_alone
    registry = CollectorRegistry()
    # Order (outermost first): the front middleware (gate, metrics of every final
    # status, errors to responses, limit/auth refusals included, and the CORS headers of
    # what it returns; a download streamed from the handler adds its own), then the limits.
    if config.server.access_log:
        events.add(RequestAnnotator())  # upload id / bytes committed, for the access log
    tus_metrics = None
    if config.server.metrics:
        tus_metrics = Metrics(registry, lambda: len(handler.writers))
        events.add(tus_metrics)
    gate = RequestGate()
    cors = cors_headers(config) if config.server.cors.enabled else None
    middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = [
        front_middleware(gate, tus_metrics, config.server.base_path, cors)]
    if tracer_provider is not None:  # outermost: the server span covers everything
        middlewares.insert(0, tracing.server_middleware(tracer_provider))
    limits = limits_middleware(config, tus_metrics)
    if limits is not None:
        middlewares.append(limits)
    header_limit = config.server.max_header_size
    app = web.Application(middlewares=middlewares, handler_args={
        "max_field_size": header_limit, "max_line_size": header_limit})
    app[CONFIG] = config
    app[STORE] = store
    app[EVENTS] = events
    app[HANDLER] = handler
    app[REGISTRY] = registry
    app[GATE] = gate
    app[BACKGROUND] = background
    app[READINESS] = Readiness()
    if tus_metrics is not None:
        app[METRICS] = tus_metrics
    app[CORS] = cors

    base = config.server.base_path
    # The upload route first: aiohttp tries the three (all indexed under the base path)
    # in this order, so PATCH and HEAD resolve at the first try.
    # An id may have several segments (``storage.ids``): the route takes the id's
    # alphabet and ``/`` (the handler checks the segments); an escaped ``%2F`` is not a
    # separator, so it matches nothing (404).
    upload_route = app.router.add_route("*", base + "{upload_id:[A-Za-z0-9_/-]+}",
                                        dispatch)
    creation_route = app.router.add_route("*", base, dispatch)
    app.router.add_route("*", base.rstrip("/"), dispatch)
    route_tus_directly(app, base, creation_route, upload_route, middlewares, dispatch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.server.metrics:
        app.router.add_get("/metrics", metrics)
    if config.server.demo:
        if base == "/":
            log.warning("server.demo ignored: base_path / leaves no room for the demo page")
        else:
            add_demo_routes(app, base)

    app.on_startup.append(functools.partial(_learn_mount_prefix, creation_route))
    if tracer_provider is not None:
        app.on_cleanup.append(functools.partial(tracing.flush_on_cleanup, tracer_provider))
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_sweeper_ctx)
    setup_hooks(app, config)  # tusd_py.hooks: HTTP / Python hooks, when configured
    return app


async def _learn_mount_prefix(creation_route: web.AbstractRoute, app: web.Application) -> None:
    """Mounted with ``parent.add_subapp(prefix, app)``, the routes start with ``prefix``:
    the URLs the handler sends (Location, Upload-Concat) and reads (partial uploads) get it
    too. Learnt at start-up, once the parent has added it."""
    canonical = creation_route.resource.canonical if creation_route.resource else ""
    base = app[CONFIG].server.base_path
    prefix = canonical[:-len(base)] if canonical.endswith(base) else ""
    handler = app[HANDLER]
    handler.mount_prefix = prefix
    handler.concatenation.base_path = prefix + base
    if prefix:
        log.info("mounted under %s: the tus endpoint is %s%s", prefix, prefix, base)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the store; one that fails to start is stopped again (whatever it opened is
    closed: SQLite's worker thread would keep the process alive) and the failure becomes a
    ``StartupError`` naming the driver."""
    store = app[STORE]
    try:
        await store.start()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await store.stop()
        if isinstance(exc, ConfigError) or not isinstance(exc, Exception):
            raise
        driver = app[CONFIG].storage.driver
        raise StartupError(f"cannot start the {driver} storage: {reason(exc)}") from exc
    yield
    await store.stop()


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run ``sweep_once`` every ``expiration.sweep_interval`` seconds while the app runs."""
    handler = app[HANDLER]
    interval = handler.config.expiration.sweep_interval
    task = None
    if interval > 0 and Capability.EXPIRE in handler.store.capabilities and app[BACKGROUND]:
        tus_metrics = app.get(METRICS)
        on_run = tus_metrics.sweeper_run if tus_metrics is not None else None
        task = asyncio.create_task(sweep_every(handler, interval, on_run), name="tusd-sweeper")
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def drain_uploads(app: web.Application, commit_wait: float = 1.0,
                        requests_in_flight: Callable[[], int] | None = None) -> None:
    """Shutdown step: let in-flight requests run for ``shutdown_grace``, then stop writes.

    Returns within ``shutdown_grace + commit_wait`` seconds. Until the grace period ends
    it waits for the uploads being written and, when ``requests_in_flight`` is given,
    for every request it counts (downloads too). Writers still running then are stopped:
    they commit the bytes they received and answer 503, and get ``commit_wait`` for it.
    One still committing after that is left to ``AppRunner.cleanup()``, which cancels it
    (the upload keeps its last committed offset).

    Call it after the listening sockets are closed and before ``AppRunner.cleanup()``
    (whose first step makes aiohttp drop incoming bytes on open connections).
    """
    writers = app[HANDLER].writers
    grace = app[CONFIG].server.shutdown_grace
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace

    def busy() -> bool:
        return bool(len(writers) or (requests_in_flight is not None and requests_in_flight()))

    while busy() and (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(0.05, left))
    if not len(writers):
        return
    log.warning("stopping %d in-flight upload(s) at the end of the shutdown grace period",
                len(writers))
    writers.stop_all()
    commit_deadline = loop.time() + commit_wait
    while len(writers) and (left := commit_deadline - loop.time()) > 0:
        await asyncio.sleep(min(0.02, left))
    if len(writers):
        log.error("%d stopped upload(s) did not commit within %gs; they are cancelled",
                  len(writers), commit_wait)
