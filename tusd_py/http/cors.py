"""CORS headers on every response, for ``server.cors``."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

from aiohttp import web
from multidict import CIMultiDict

from ..config import Config
from ..protocol.constants import ALLOW_HEADERS, EXPOSE_HEADERS
from .keys import HOOK_RESPONSE_HEADERS

#: Adds the CORS headers for a request to its response's headers (``cors_headers``).
AddCors = Callable[[web.Request, CIMultiDict[str]], None]


def cors_headers(config: Config) -> AddCors:
    """The CORS headers for ``server.cors``, added to a response's headers before it is
    prepared: the front middleware does it for every response it returns (errors too),
    a handler that prepares its own (a streamed download) calls it first. A function
    call, not an ``on_response_prepare`` signal, which cost 5-9 k instructions more a
    small upload (docs/benchmarks.md).

    ``server.cors.allowed_origins`` holds exact origins and ``^`` patterns matched against
    the whole Origin; the tus request and response headers are always allowed and
    exposed, the configured ones come on top. ``Vary: Origin`` goes on every response
    whose headers would differ for another ``Origin`` value, so a shared cache never
    hands one origin's answer to another: with an explicit allow-list that is every
    response (allowed, refused, or no Origin at all); with ``*`` it is the responses to
    requests without Origin (they lack the CORS headers; the answer to any Origin is the
    same ``*``).
    """
    cors = config.server.cors
    any_origin = "*" in cors.allowed_origins
    exact = frozenset(o for o in cors.allowed_origins if not o.startswith("^"))
    patterns = [re.compile(o) for o in cors.allowed_origins if o.startswith("^")]
    allow_methods = ", ".join(cors.allowed_methods)
    allow_headers = ", ".join(_union(ALLOW_HEADERS, cors.allowed_headers))
    expose_list = _union(EXPOSE_HEADERS, cors.exposed_headers)
    expose_headers = ", ".join(expose_list)
    max_age = str(int(cors.max_age))

    @functools.lru_cache(maxsize=1024)
    def allowed(origin: str) -> bool:
        """An exact origin, or one a pattern matches as a whole (anchored)."""
        return origin in exact or any(p.fullmatch(origin) for p in patterns)

    def add_cors(request: web.Request, headers: CIMultiDict[str]) -> None:
        origin = request.headers.get("Origin")
        if (not any_origin or origin is None) and (
                "Vary" not in headers or "Origin" not in headers.getall("Vary")):
            headers.add("Vary", "Origin")
        if origin is None or not (any_origin or allowed(origin)):
            return
        if any_origin:
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            headers["Access-Control-Allow-Origin"] = origin
            if cors.allow_credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = allow_methods
            headers["Access-Control-Allow-Headers"] = allow_headers
            headers["Access-Control-Max-Age"] = max_age
        else:
            extra = request.get(HOOK_RESPONSE_HEADERS)
            # Headers a hook set for this response are the client's to read too.
            headers["Access-Control-Expose-Headers"] = (
                expose_headers if not extra else ", ".join(_union(expose_list, extra.keys())))

    return add_cors


def _union(names: Iterable[str], extra: Iterable[str]) -> list[str]:
    """``names`` then the ``extra`` ones not among them (HTTP names: any case)."""
    out = list(names)
    seen = {name.lower() for name in out}
    for name in extra:
        if name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out
