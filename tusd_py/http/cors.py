"""CORS headers on every response, for ``server.cors``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..config import Config
from ..protocol.constants import ALLOW_HEADERS, ALLOW_METHODS, EXPOSE_HEADERS


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
