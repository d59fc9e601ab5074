"""The tus routes resolved by a prefix test, not by aiohttp's router.

Every request to the creation URL or to ``<base_path><id>`` (nearly all a tus server
serves) is matched by comparing its path with ``base_path`` and runs the app's own
middlewares, composed once, straight into ``TusHandler.dispatch``. It gets the same
``match_info`` (route, ``upload_id``, app) the router would give it. Everything else
(health, readiness, metrics, the demo, unknown paths, and any request that sends
``Expect``, which aiohttp answers first) goes through ``Application._handle`` as usual.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo

from .middleware import Handler, Middleware


def route_tus_directly(app: web.Application, base_path: str, creation: AbstractRoute,
                       upload: AbstractRoute, middlewares: Sequence[Middleware],
                       handler: Handler) -> None:
    """Resolve ``creation`` (``base_path`` itself, and without its trailing slash) and
    ``upload`` (``base_path{upload_id}``) before aiohttp's router does.

    ``Application._handle`` is the method aiohttp's server calls for each request (the
    same since aiohttp 1.x); tests/http/test_routing.py fails loudly if that changes. A
    base path of ``/`` shares its prefix with every other route, so it keeps the router.
    """
    if base_path == "/":
        return
    chain: Handler = handler
    for middleware in reversed(middlewares):
        # as aiohttp binds them (a C partial, no extra coroutine per layer)
        chain = functools.partial(cast(Any, middleware), handler=chain)
    prefix, bare = base_path, base_path.rstrip("/")
    routed = app._handle

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith(prefix) and hdrs.EXPECT not in request.headers:
            upload_id = path[len(prefix):]
            if not upload_id:
                match_info = UrlMappingMatchInfo({}, creation)
            elif "/" not in upload_id:
                match_info = UrlMappingMatchInfo({"upload_id": upload_id}, upload)
            else:
                return await routed(request)
        elif path == bare and hdrs.EXPECT not in request.headers:
            match_info = UrlMappingMatchInfo({}, creation)
        else:
            return await routed(request)
        match_info.add_app(app)
        match_info.freeze()
        request._match_info = match_info
        return await chain(request)

    object.__setattr__(app, "_handle", handle)
