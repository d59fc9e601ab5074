"""The aiohttp application: routes, middlewares, storage and sweeper lifecycles."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..config import Config
from ..core.events import EventBus
from ..core.handler import TusHandler
from ..core.sweeper import sweeper_ctx
from ..hooks import setup_hooks
from ..protocol import TUS_VERSION, TusError
from ..storage import Store
from ..storage.registry import build_store
from ..web import add_demo_routes
from .limits import limits_middleware
from .logs import RequestAnnotator
from .metrics import Metrics

log = logging.getLogger(__name__)

HANDLER = web.AppKey("tusd_handler", TusHandler)
CONFIG = web.AppKey("tusd_config", Config)
STORE = web.AppKey("tusd_store", Store)
EVENTS = web.AppKey("tusd_events", EventBus)
#: Per-app Prometheus registry (several apps can live in one process, as in tests).
REGISTRY = web.AppKey("tusd_metrics_registry", CollectorRegistry)
#: The tusd_* metrics (absent when ``server.metrics`` is off).
METRICS = web.AppKey("tusd_metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Headers a browser page may read from responses (everything tus clients need).
EXPOSE_HEADERS = ", ".join((
    "Location", "Upload-Offset", "Upload-Length", "Upload-Defer-Length", "Upload-Metadata",
    "Upload-Concat", "Upload-Expires", "Tus-Version", "Tus-Resumable", "Tus-Max-Size",
    "Tus-Extension", "Tus-Checksum-Algorithm", "Content-Disposition", "Content-Range",
))
ALLOW_HEADERS = ", ".join((
    "Authorization", "Origin", "X-Requested-With", "X-Request-ID", "X-HTTP-Method-Override",
    "Content-Type", "Upload-Length", "Upload-Offset", "Tus-Resumable", "Upload-Metadata",
    "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "Range",
))
ALLOW_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"


def _text_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, text=message + "\n", headers=headers)
    response.headers.setdefault("Tus-Resumable", TUS_VERSION)
    return response


def error_response(exc: TusError) -> web.Response:
    """A typed error as a short plain-text response."""
    body = getattr(exc, "body", None)
    if isinstance(body, str):  # a hook's HTTPResponse (tusd_py.hooks): sent verbatim
        response = web.Response(status=exc.status, body=body.encode(), headers=exc.headers)
        response.headers.setdefault("Tus-Resumable", TUS_VERSION)
    else:
        response = _text_response(exc.status, exc.message, exc.headers)
    if exc.close_connection:
        response.force_close()
    return response


class RequestGate:
    """Counts the requests being handled (the shutdown grace period covers downloads too)
    and, once the daemon is stopping, refuses new ones on open keep-alive connections and
    closes each connection after its response (``tusd_py.http.server``)."""

    def __init__(self) -> None:
        self.count = 0
        self.stopping = False

    def __call__(self) -> int:
        return self.count

    @staticmethod
    def refusal() -> web.Response:
        refused = web.Response(status=503, text="server is shutting down\n", headers={
            "Tus-Resumable": TUS_VERSION, "Retry-After": "1"})
        refused.force_close()
        return refused


GATE = web.AppKey("tusd_request_gate", RequestGate)


def front_middleware(gate: RequestGate, metrics: Metrics | None,
                     base_path: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware every request passes first: the shutdown gate, the request metrics
    (tus requests, under ``base_path``) and the error mapping (typed errors become short
    plain-text responses; nothing unexpected leaks a traceback), in one layer, since every
    aiohttp middleware layer costs about 1 % of a small upload's CPU (callgrind)."""
    base = base_path.rstrip("/")
    clock = time.perf_counter

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        if gate.stopping:
            return gate.refusal()
        gate.count += 1
        counted = metrics if metrics is not None and request.path.startswith(base) else None
        start = 0.0
        if counted is not None:
            counted.open_requests += 1
            start = clock()
        status = 500
        try:
            try:
                response = await handler(request)
            except TusError as exc:
                response = error_response(exc)
            except web.HTTPException as exc:
                if exc.status < 400:
                    status = exc.status
                    raise
                response = _text_response(exc.status, exc.reason.lower(), dict(exc.headers))
            except asyncio.CancelledError:
                status = 499  # the client went away (nginx's code for it)
                raise
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.path)
                response = _text_response(500, "internal server error")
            status = response.status
        finally:
            gate.count -= 1
            if counted is not None:
                counted.open_requests -= 1
                counted.answered(request.method, status, clock() - start)
        if gate.stopping:
            response.force_close()
        return response

    return front


def cors_headers(config: Config) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: CORS headers on every response (errors and
    streamed downloads too), for ``server.cors``.

    ``Vary: Origin`` goes on every response whose headers would differ for another
    ``Origin`` value, so a shared cache never hands one origin's answer to another: with
    an explicit allow-list that is every response (allowed, refused, or no Origin at
    all); with ``*`` it is the responses to requests without Origin (they lack the CORS
    headers; the answer to any Origin is the same ``*``).
    """
    cors = config.server.cors
    any_origin = "*" in cors.allowed_origins
    allowed = frozenset(cors.allowed_origins)
    max_age = str(int(cors.max_age))

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        headers = response.headers
        if (not any_origin or origin is None) and (
                "Vary" not in headers or "Origin" not in headers.getall("Vary")):
            headers.add("Vary", "Origin")
        if origin is None or not (any_origin or origin in allowed):
            return
        if any_origin:
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            headers["Access-Control-Allow-Origin"] = origin
            if cors.allow_credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = max_age
        else:
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    return on_prepare


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: storage answers within 5 s."""
    store = request.app[STORE]
    try:
        await asyncio.wait_for(store.ping(), 5)
    except Exception as exc:  # any failure means "not ready"
        reason = str(exc) or type(exc).__name__
        return web.Response(status=503, text=f"storage not ready: {reason}\n")
    return web.Response(text="ready\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this app's registry."""
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(config: Config, store: Store | None = None,
               events: EventBus | None = None) -> web.Application:
    """Build the application. ``store`` defaults to the configured driver."""
    store = store if store is not None else build_store(config.storage)
    events = events if events is not None else EventBus()
    handler = TusHandler(config, store, events)
    registry = CollectorRegistry()
    # Order (outermost first): the front middleware (gate, metrics of every final
    # status, errors to responses, limit/auth refusals included), then the limits. CORS
    # headers are added when a response is prepared (errors and downloads streamed from
    # the handler too).
    if config.server.access_log:
        events.add(RequestAnnotator())  # upload id / bytes committed, for the access log
    tus_metrics = None
    if config.server.metrics:
        tus_metrics = Metrics(registry, lambda: len(handler.leases))
        events.add(tus_metrics)
    gate = RequestGate()
    middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = [
        front_middleware(gate, tus_metrics, config.server.base_path)]
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
    if tus_metrics is not None:
        app[METRICS] = tus_metrics
    if config.server.cors.enabled:
        app.on_response_prepare.append(cors_headers(config))

    base = config.server.base_path
    # The upload route first: aiohttp tries the three (all indexed under the base path)
    # in this order, so PATCH and HEAD resolve at the first try.
    app.router.add_route("*", base + "{upload_id}", handler.dispatch)
    app.router.add_route("*", base, handler.dispatch)
    app.router.add_route("*", base.rstrip("/"), handler.dispatch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.server.metrics:
        app.router.add_get("/metrics", metrics)
    if config.server.demo:
        if base == "/":
            log.warning("server.demo ignored: base_path / leaves no room for the demo page")
        else:
            add_demo_routes(app, base)

    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(sweeper_ctx)
    setup_hooks(app, config)  # tusd_py.hooks: HTTP / Python hooks, when configured
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.start()
    yield
    await store.stop()


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
    leases = app[HANDLER].leases
    grace = app[CONFIG].server.shutdown_grace
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace

    def busy() -> bool:
        return bool(len(leases) or (requests_in_flight is not None and requests_in_flight()))

    while busy() and (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(0.05, left))
    if not len(leases):
        return
    log.warning("stopping %d in-flight upload(s) at the end of the shutdown grace period",
                len(leases))
    leases.stop_all()
    commit_deadline = loop.time() + commit_wait
    while len(leases) and (left := commit_deadline - loop.time()) > 0:
        await asyncio.sleep(min(0.02, left))
    if len(leases):
        log.error("%d stopped upload(s) did not commit within %gs; they are cancelled",
                  len(leases), commit_wait)
