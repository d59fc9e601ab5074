"""Upload lifecycle events: handlers emit them; metrics, logs and hooks listen.

Listeners subclass ``UploadListener`` and override what they need. ``pre_*`` methods are
awaited in order and may refuse by raising ``TusError`` (``pre_create`` may also return
a changed upload); the notifications (``created``, ``progress``, ``finished``,
``terminated``) must not block or fail the request: exceptions are logged and dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..storage.base import Upload

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
    """Fans every call out to the registered listeners that handle it.

    Each event keeps the bound methods of the listeners that override it, so an event
    nobody listens to (pre-create without hooks, say) costs a loop over nothing.
    """

    def __init__(self) -> None:
        self.listeners: list[UploadListener] = []
        #: Listeners' ``pre_create`` and ``pre_finish`` (empty without hooks: the handler
        #: then skips the call).
        self.create_checkers: list[Any] = []
        #: Listeners' ``pre_access`` (awaited before every HEAD/PATCH/DELETE/GET; empty in
        #: most deployments, so the handler skips the call).
        self.access_checkers: list[Any] = []
        self.finish_checkers: list[Any] = []
        self._pre_terminate: list[Any] = []
        self._created: list[Any] = []
        self._progress: list[Any] = []
        self._receiving: list[Any] = []
        self._finished: list[Any] = []
        self._terminated: list[Any] = []
        #: Seconds between ``receiving`` calls during a PATCH body (0: none).
        self.receiving_interval = 0.0

    def add(self, listener: UploadListener) -> None:
        self.listeners.append(listener)
        for name, subscribers in (
                ("pre_create", self.create_checkers), ("pre_access", self.access_checkers),
                ("pre_finish", self.finish_checkers), ("pre_terminate", self._pre_terminate),
                ("created", self._created), ("progress", self._progress),
                ("receiving", self._receiving), ("finished", self._finished),
                ("terminated", self._terminated)):
            if getattr(type(listener), name) is not getattr(UploadListener, name):
                subscribers.append(getattr(listener, name))

    async def pre_create(self, upload: Upload, request: web.Request) -> Upload:
        for pre_create in self.create_checkers:
            upload = await pre_create(upload, request)
        return upload

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        for pre_access in self.access_checkers:
            await pre_access(upload_id, request, method)

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        for pre_finish in self.finish_checkers:
            await pre_finish(upload, request)

    async def pre_terminate(self, upload: Upload, request: web.Request) -> None:
        for pre_terminate in self._pre_terminate:
            await pre_terminate(upload, request)

    def created(self, upload: Upload, request: web.Request) -> None:
        for created in self._created:
            try:
                created(upload, request)
            except Exception:
                _failed(created)

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        for progress in self._progress:
            try:
                progress(upload, request, received)
            except Exception:
                _failed(progress)

    def receiving(self, upload: Upload, request: web.Request, offset: int) -> None:
        for receiving in self._receiving:
            try:
                receiving(upload, request, offset)
            except Exception:
                _failed(receiving)

    def finished(self, upload: Upload, request: web.Request) -> None:
        for finished in self._finished:
            try:
                finished(upload, request)
            except Exception:
                _failed(finished)

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        for terminated in self._terminated:
            try:
                terminated(upload, request)
            except Exception:
                _failed(terminated)


def _failed(listener: object) -> None:
    """Log the failure of a notification (inside its ``except``) and go on."""
    log.exception("upload event listener %r failed", listener)
