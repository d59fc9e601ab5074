"""Hooks set-up: build the configured ``HookListener`` and wire it into the app (its upload
events, its start and stop with the app, the response headers its hooks ask for)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config
from ..http.keys import BACKGROUND, EVENTS, HANDLER, HOOK_RESPONSE_HEADERS, HOOKS, REGISTRY, STORE
from ..protocol.constants import POST_RECEIVE
from .calls import HookBackend
from .http import HttpHook
from .listener import HookListener
from .python import PythonHook

log = logging.getLogger("tusd_py.hooks")


def build_listener(app: web.Application, config: Config) -> HookListener | None:
    """The configured listener, or None when no hook endpoint or callable is set."""
    hooks = config.hooks
    backends: list[HookBackend] = []
    if hooks.http.url:
        backends.append(HttpHook(hooks.http))
    for spec in hooks.python:
        backends.append(PythonHook(spec, hooks.http.timeout, config.provenance.base_dir))
    if not backends:
        return None
    return HookListener(hooks, backends, store=app[STORE], driver=config.storage.driver,
                        registry=app[REGISTRY], writers=app[HANDLER].writers)


def setup_hooks(app: web.Application, config: Config) -> HookListener | None:
    """Wire hooks into ``app`` (before it starts). Raises HookLoadError for a bad callable."""
    listener = build_listener(app, config)
    if listener is None:
        return None
    app[HOOKS] = listener
    events = app[EVENTS]
    events.add(listener)
    if POST_RECEIVE in listener.enabled and listener.interval > 0:
        # post-receive also during a long PATCH body, as tusd sends it
        current = events.receiving_interval
        events.receiving_interval = min(current, listener.interval) if current else listener.interval
    app.cleanup_ctx.append(_hooks_ctx)
    app.on_response_prepare.append(_add_hook_headers)
    names = ", ".join(backend.describe() for backend in listener.backends)
    log.info("hooks %s -> %s", ",".join(sorted(listener.enabled)), names)
    return listener


#: Longest wait at shutdown for queued post-* deliveries (after in-flight uploads ended);
#: what is still undelivered then is counted and logged as dropped (reason ``shutdown``).
SHUTDOWN_DRAIN = 5.0


async def _hooks_ctx(app: web.Application) -> AsyncIterator[None]:
    listener = app[HOOKS]
    listener.redeliver = app[BACKGROUND]  # one re-delivery loop (server.workers)
    await listener.start()
    yield
    await listener.stop(drain=min(SHUTDOWN_DRAIN, max(listener.config.http.timeout, 1.0)))


async def _add_hook_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers a pre-create / pre-finish hook asked for (HTTPResponse.Header)."""
    extra = request.get(HOOK_RESPONSE_HEADERS)
    if extra:
        response.headers.update(extra)
