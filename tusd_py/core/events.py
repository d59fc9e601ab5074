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
        self._pre_create: list[Any] = []
        #: Listeners' ``pre_access`` (awaited before every HEAD/PATCH/DELETE/GET; empty in
        #: most deployments, so the handler skips the call).
        self.access_checkers: list[Any] = []
        self._pre_finish: list[Any] = []
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
                ("pre_create", self._pre_create), ("pre_access", self.access_checkers),
                ("pre_finish", self._pre_finish), ("pre_terminate", self._pre_terminate),
                ("created", self._created), ("progress", self._progress),
                ("receiving", self._receiving), ("finished", self._finished),
                ("terminated", self._terminated)):
            if getattr(type(listener), name) is not getattr(UploadListener, name):
                subscribers.append(getattr(listener, name))

    async def pre_create(self, upload: Upload, request: web.Request) -> Upload:
        for pre_create in self._pre_create:
            upload = await pre_create(upload, request)
        return upload

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        for pre_access in self.access_checkers:
            await pre_access(upload_id, request, method)

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        for pre_finish in self._pre_finish:
            await pre_finish(upload, request)

    async def pre_terminate(self, upload: Upload, request: web.Request) -> None:
        for pre_terminate in self._pre_terminate:
            await pre_terminate(upload, request)

    def created(self, upload: Upload, request: web.Request) -> None:
        for created in self._created:
            _safely(created, upload, request)

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        for progress in self._progress:
            _safely(progress, upload, request, received)

    def receiving(self, upload: Upload, request: web.Request, offset: int) -> None:
        for receiving in self._receiving:
            _safely(receiving, upload, request, offset)

    def finished(self, upload: Upload, request: web.Request) -> None:
        for finished in self._finished:
            _safely(finished, upload, request)

    def terminated(self, upload: Upload, request: web.Request | None) -> None:
        for terminated in self._terminated:
            _safely(terminated, upload, request)


def _safely(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception:
        log.exception("upload event listener %r failed", fn)
