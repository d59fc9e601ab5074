"""Calling hook backends, shared by every part of the hook listener: the backend
interface, one delivery, one counted call, the refusal a hook answer becomes, and the
rate-limited log of failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from ..config import HooksConfig
from ..core.events import UploadListener
from ..core.writers import WriterRegistry
from ..protocol.constants import POST_FINISH
from ..protocol.errors import TusError
from ..storage.base import Store, Upload
from .http import HookError
from .payload import (
    HookResponse,
    HookResponseError,
    HTTPResponse,
    hook_request,
    idempotency_key,
    parse_hook_response,
)

log = logging.getLogger("tusd_py.hooks")

#: Failures of one hook type are logged at most once per this many seconds (all counted);
#: for notifications this applies to post-receive only (other drops are each logged).
LOG_INTERVAL = 1.0


class HookBackend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...

    async def invoke(self, payload: Mapping[str, Any], *, forward: Mapping[str, str],
                     key: str) -> Any: ...


class HookRejection(TusError):
    """A hook refused the request: its status, body and headers go to the client verbatim.

    As tusd merges them: the hook's ``StatusCode`` (else ``status``), its ``Body`` if not
    empty (else ``default_body``), and ``Content-Type: text/plain`` unless it set one.
    """

    def __init__(self, response: HTTPResponse, status: int, default_body: str) -> None:
        body = response.body or default_body
        headers = dict(response.header)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "text/plain; charset=utf-8"
        super().__init__(body.strip() or f"refused by hook ({response.status_code or status})",
                         status=response.status_code or status, headers=headers)
        #: Sent as is by the front middleware (no trailing newline added).
        self.body = body


@dataclass(eq=False)
class Delivery:
    """One hook event for the backends: its payload, forwarded headers and idempotency key."""

    hook_type: str
    upload_id: str
    payload: dict[str, Any]
    forward: dict[str, str]
    key: str
    #: A post-finish tracked in storage (``finish_owed``): delivered under the upload's
    #: lock, and the flag cleared once every backend took it.
    owed: bool = False
    #: Sent by ``_redeliver_loop``: queued with the id alone; runs pre-finish first and
    #: takes its payload from the record read under the lock.
    redelivery: bool = False


class HookCalls(UploadListener):
    """The base of ``HookListener``: its configuration and backends, and calling them."""

    def __init__(self, config: HooksConfig, backends: list[HookBackend], *, store: Store,
                 driver: str, registry: CollectorRegistry, writers: WriterRegistry) -> None:
        self.config = config
        self.backends = backends
        self.store = store
        self.driver = driver
        self.writers = writers
        self.enabled = frozenset(config.enabled)
        self.forward_names = tuple(config.http.forward_headers) if config.http.url else ()
        #: post-finish is tracked in storage (``finish_owed``) and re-delivered.
        self.tracks_finish = POST_FINISH in self.enabled and config.redeliver_after > 0
        self.errors = Counter("tusd_hook_errors_total", "Hook calls that failed, per hook type.",
                              ["hooktype"], registry=registry)
        self.invocations = Counter("tusd_hook_invocations_total", "Hook calls, per hook type.",
                                   ["hooktype"], registry=registry)
        for hook_type in self.enabled:
            self.errors.labels(hook_type)
            self.invocations.labels(hook_type)
        #: hook type -> (time of the last failure logged, failures not logged since)
        self._log_state: dict[str, tuple[float, int]] = {}

    def _forward(self, request: web.Request | None) -> dict[str, str]:
        if request is None or not self.forward_names:
            return {}
        return {name: request.headers[name] for name in self.forward_names
                if name in request.headers}

    def _delivery(self, hook_type: str, upload: Upload, request: web.Request | None,
                  method: str | None = None, key_extra: str = "", *, owed: bool = False,
                  redelivery: bool = False) -> Delivery:
        return Delivery(hook_type, upload.id,
                        hook_request(hook_type, upload, request, self.driver, method),
                        self._forward(request), idempotency_key(hook_type, upload, key_extra),
                        owed, redelivery)

    async def _call(self, backend: HookBackend, delivery: Delivery) -> HookResponse:
        """One backend, one hook: counted. Raises HookError (every failure, with a
        ``public`` reason) or TusError (a Python hook refusing)."""
        self.invocations.labels(delivery.hook_type).inc()
        try:
            answer = await backend.invoke(delivery.payload, forward=delivery.forward,
                                          key=delivery.key)
            return parse_hook_response(answer)
        except TusError:
            raise
        except HookError:
            self.errors.labels(delivery.hook_type).inc()
            raise
        except HookResponseError as exc:
            self.errors.labels(delivery.hook_type).inc()
            raise HookError(str(exc), "invalid hook response") from None
        except Exception as exc:
            self.errors.labels(delivery.hook_type).inc()
            raise HookError(f"{type(exc).__name__}: {exc}", "hook raised an error") from exc

    async def _call_blocking(self, backend: HookBackend, delivery: Delivery) -> HookResponse:
        try:
            return await self._call(backend, delivery)
        except HookError as exc:
            self._failed(backend, delivery, str(exc))
            raise TusError(f"{delivery.hook_type} hook failed: {exc.public}", status=500) from None

    @staticmethod
    def _check_pre_finish(response: HookResponse) -> None:
        http = response.http_response
        if response.reject_upload or http.status_code >= 400:
            # tusd has no default body here: the hook's HTTPResponse as it is.
            raise HookRejection(http, 400, "")

    def _log_limited(self, hook_type: str, message: str, *args: object) -> None:
        """Log at most one line per hook type per LOG_INTERVAL (noting how many were not)."""
        now = time.monotonic()
        last, suppressed = self._log_state.get(hook_type, (0.0, 0))
        if now - last < LOG_INTERVAL and last:
            self._log_state[hook_type] = (last, suppressed + 1)
            return
        self._log_state[hook_type] = (now, 0)
        more = f" ({suppressed} more not logged)" if suppressed else ""
        log.warning(message + "%s", *args, more)

    def _failed(self, backend: HookBackend, delivery: Delivery, reason: str) -> None:
        """A blocking hook failed (its request is refused with 500): logged, rate-limited."""
        self._log_limited(delivery.hook_type, "%s hook for upload %s failed: %s: %s",
                          delivery.hook_type, delivery.upload_id or "(new)",
                          backend.describe(), reason)
