"""Every typed key of the application and of its requests, in one place.

Only aiohttp is imported at run time (the value types are for the type checker), so any
module can import a key without importing the module that fills it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from multidict import CIMultiDict
    from prometheus_client import CollectorRegistry

    from ..config import Config
    from ..core.events import EventBus
    from ..core.handler import TusHandler
    from ..hooks.listener import HookListener
    from ..storage.base import Store
    from .app import Readiness
    from .cors import AddCors
    from .metrics import Metrics
    from .middleware import RequestGate
    from .workers import WorkerSlot

HANDLER: web.AppKey[TusHandler] = web.AppKey("tusd_handler")
CONFIG: web.AppKey[Config] = web.AppKey("tusd_config")
STORE: web.AppKey[Store] = web.AppKey("tusd_store")
EVENTS: web.AppKey[EventBus] = web.AppKey("tusd_events")
#: Per-app Prometheus registry (several apps can live in one process, as in tests).
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("tusd_metrics_registry")
#: The tusd_* metrics (absent when ``server.metrics`` is off).
METRICS: web.AppKey[Metrics] = web.AppKey("tusd_metrics")
GATE: web.AppKey[RequestGate] = web.AppKey("tusd_request_gate")
#: ``server.cors``: adds a response's CORS headers (None when CORS is off).
CORS: web.AppKey[AddCors | None] = web.AppKey("tusd_cors")
#: Whether this process runs the background loops (the expiry sweeper, the post-finish
#: re-delivery): with ``server.workers`` only the first worker does.
BACKGROUND: web.AppKey[bool] = web.AppKey("tusd_background")
#: This worker's place among ``server.workers`` (absent with one process).
WORKER: web.AppKey[WorkerSlot] = web.AppKey("tusd_worker")
#: The last /readyz verdict (``app.Readiness``), logged when it changes.
READINESS: web.AppKey[Readiness] = web.AppKey("tusd_readiness")
#: The hook listener (absent when no hook is configured).
HOOKS: web.AppKey[HookListener] = web.AppKey("tusd_hooks")

#: What a request did to an upload, for its access-log line: ``(upload id or None, bytes
#: committed or None)``, set by ``logs.RequestAnnotator``. One key, so the line needs one
#: lookup (a missing key costs an exception).
ACCESS_ANNOTATION: web.RequestKey[tuple[str | None, int | None]] = web.RequestKey("tusd_annotation")
#: Headers a blocking hook asked to add to the response (``HTTPResponse.Header``).
HOOK_RESPONSE_HEADERS: web.RequestKey[CIMultiDict[str]] = web.RequestKey(
    "tusd_hook_response_headers")
#: A pre-finish hook's answer to the request that finished the upload, when it set a
#: ``StatusCode`` (2xx) or a ``Body``: ``(status, body)``; the handler sends it.
FINISH_RESPONSE: web.RequestKey[tuple[int, bytes]] = web.RequestKey("tusd_finish_response")
