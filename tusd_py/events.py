"""Upload lifecycle events: handlers emit them; metrics, logs and hooks listen.

Listeners subclass ``UploadListener`` and override what they need. ``pre_*`` methods are
awaited in order and may refuse by raising ``TusError`` (``pre_create`` may also return
a changed upload); the notifications (``created``, ``progress``, ``finished``,
``terminated``) must not block or fail the request: exceptions are logged and dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .storage.base import Upload

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)


class UploadListener:
    async def pre_create(self, upload: Upload, request: web.Request) -> Upload:
        return upload

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        """Before HEAD/PATCH/DELETE/GET of an existing upload (per-upload authorisation)."""
        return None

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        return None

    async def pre_terminate(self, upload: Upload, request: web.Request) -> None:
        """Before DELETE removes an upload (under its lock); raise to refuse."""
        return None

    def created(self, upload: Upload, request: web.Request) -> None: ...

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        """After each PATCH commit (``received`` bytes committed by this request)."""

    def receiving(self, upload: Upload, request: web.Request, offset: int) -> None:
        """While a PATCH body streams, about every ``EventBus.receiving_interval``:
        ``offset`` counts bytes written but not yet committed."""

    def finished(self, upload: Upload, request: web.Request) -> None: ...

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        """After DELETE (``request`` set) or expiry (``request`` None)."""


class EventBus(UploadListener):
    """Fans every call out to the registered listeners."""

    def __init__(self) -> None:
        self.listeners: list[UploadListener] = []
        #: Listeners that override ``pre_access`` (awaited before every HEAD/PATCH/DELETE/
        #: GET; empty in most deployments, so the handler skips the call).
        self.access_checkers: list[UploadListener] = []
        #: Seconds between ``receiving`` calls during a PATCH body (0: none).
        self.receiving_interval = 0.0

    def add(self, listener: UploadListener) -> None:
        self.listeners.append(listener)
        if type(listener).pre_access is not UploadListener.pre_access:
            self.access_checkers.append(listener)

    async def pre_create(self, upload: Upload, request: web.Request) -> Upload:
        for listener in self.listeners:
            upload = await listener.pre_create(upload, request)
        return upload

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        for listener in self.access_checkers:
            await listener.pre_access(upload_id, request, method)

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        for listener in self.listeners:
            await listener.pre_finish(upload, request)

    async def pre_terminate(self, upload: Upload, request: web.Request) -> None:
        for listener in self.listeners:
            await listener.pre_terminate(upload, request)

    def created(self, upload: Upload, request: web.Request) -> None:
        for listener in self.listeners:
            _safely(listener.created, upload, request)

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        for listener in self.listeners:
            _safely(listener.progress, upload, request, received)

    def receiving(self, upload: Upload, request: web.Request, offset: int) -> None:
        for listener in self.listeners:
            _safely(listener.receiving, upload, request, offset)

    def finished(self, upload: Upload, request: web.Request) -> None:
        for listener in self.listeners:
            _safely(listener.finished, upload, request)

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        for listener in self.listeners:
            _safely(listener.terminated, upload, request)


def _safely(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception:
        log.exception("upload event listener %r failed", fn)
