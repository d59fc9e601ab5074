"""The front middleware every request passes first: the shutdown gate, the request
metrics and typed errors turned into short plain-text responses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..protocol import TUS_VERSION, TusError
from .cors import AddCors
from .metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


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


def front_middleware(gate: RequestGate, metrics: Metrics | None,
                     base_path: str, cors: AddCors | None = None) -> Middleware:
    """The middleware every request passes first: the shutdown gate, the request metrics
    (tus requests, under ``base_path``), the error mapping (typed errors become short
    plain-text responses; nothing unexpected leaks a traceback) and the CORS headers of
    every response it returns or lets through (``cors``), in one layer."""
    base = base_path.rstrip("/")
    clock = time.perf_counter

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        if gate.stopping:
            refused = gate.refusal()
            if cors is not None:
                cors(request, refused.headers)
            return refused
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
                    if cors is not None:
                        cors(request, exc.headers)
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
        if cors is not None and not response.prepared:  # a streamed one added its own
            cors(request, response.headers)
        if gate.stopping:
            response.force_close()
        return response

    return front
