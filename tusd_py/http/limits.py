"""Request limits and the optional static bearer token, as one middleware.

It runs inside the front middleware (``middleware.py``: its refusals are ``TusError``
values, answered there) and only for requests under ``server.base_path``; health,
readiness, metrics and the demo page are never refused here. Checks happen before any
body byte is read:

- ``server.auth_token``: ``Authorization: Bearer <token>`` on every request except OPTIONS
  (CORS preflights carry no credentials; tus discovery reveals only capabilities); 401
  otherwise.
- ``server.max_request_size``: a body with a larger ``Content-Length`` gets 413; a chunked
  body (no length to check up front) gets 411 while a limit is set.
- ``server.max_concurrent_uploads``: upload bodies received at once by this daemon;
  one more gets 503 with ``Retry-After`` (tus clients retry 5xx answers).
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..config import Config
from ..protocol.errors import TusError
from ..protocol.ietf import VERSION_HEADER, Limits, rules_for, upload_limit
from .metrics import Metrics
from .middleware import Handler, Middleware

RETRY_AFTER_SECONDS = 1


def limits_middleware(config: Config, metrics: Metrics | None = None) -> Middleware | None:
    """The middleware, or None when no limit and no token is configured."""
    server = config.server
    token = server.auth_token.get_secret_value() if server.auth_token else ""
    max_body = server.max_request_size
    max_uploads = server.max_concurrent_uploads
    if not (token or max_body or max_uploads):
        return None
    base = server.base_path.rstrip("/")
    expected = ("Bearer " + token).encode()
    state = {"active": 0}

    def refuse(reason: str, status: int, message: str,
               headers: dict[str, str] | None = None) -> TusError:
        if metrics is not None:
            metrics.rejected(reason)
        return TusError(message, status=status, headers=headers)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(base):
            return await handler(request)
        method = request.method
        if token and method != "OPTIONS":
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                raise refuse("auth", 401, "missing or invalid bearer token",
                             {"WWW-Authenticate": 'Bearer realm="tusd-py"'})
        if method not in ("PATCH", "POST"):
            return await handler(request)
        length = request.content_length
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if not length and not chunked:
            return await handler(request)
        if max_body:
            if length is None:
                raise refuse("length-required", 411,
                             "Content-Length required (server.max_request_size is set)")
            if length > max_body:
                raise refuse("request-size", 413,
                             f"request body larger than {max_body} bytes; send smaller chunks",
                             draft_limit(request, server.max_size, max_body))
        if max_uploads:
            if state["active"] >= max_uploads:
                raise refuse("concurrency", 503, "too many uploads in progress; retry later",
                              {"Retry-After": str(RETRY_AFTER_SECONDS)})
            state["active"] += 1
            try:
                return await handler(request)
            finally:
                state["active"] -= 1
        return await handler(request)

    return middleware


def draft_limit(request: web.Request, max_size: int, max_append: int) -> dict[str, str] | None:
    """``Upload-Limit`` for a 413 to a request of the IETF draft (whose rules want it)."""
    rules = rules_for(request.headers.get(VERSION_HEADER))
    if rules is None or not rules.upload_limit:
        return None
    return {"Upload-Limit": upload_limit(rules, Limits(max_size, max_append), None)}
