"""The hook listener: tusd-format hooks for the upload events, subscribed to the app's
``EventBus``. Its own methods are the blocking pre-* hooks, awaited in the request; the
post-* notifications and the post-finish re-delivery come from its bases."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web
from multidict import CIMultiDict

from ..http.keys import HOOK_RESPONSE_HEADERS
from ..protocol.constants import PRE_ACCESS, PRE_CREATE, PRE_FINISH, PRE_TERMINATE
from ..protocol.errors import TusError
from ..storage.base import Upload
from ..storage.ids import is_upload_id
from .calls import HookRejection
from .payload import (
    ACCESS_DENIED_BODY,
    REJECTED_BODY,
    STOPPED_BODY,
    TERMINATION_REJECTED_BODY,
    HTTPResponse,
)
from .redeliver import FinishRedelivery

log = logging.getLogger("tusd_py.hooks")


class HookListener(FinishRedelivery):
    """Blocking hooks (pre-create, pre-finish, pre-terminate, pre-access) answer before the
    request goes on and may refuse it; a hook that fails refuses it with 500, as tusd does
    (authorisation must not fail open)."""

    async def pre_create(self, upload: Upload, request: web.Request) -> Upload:
        if self.tracks_finish and not upload.is_partial:
            upload = upload.copy(finish_owed=True)  # written with the new record
        if PRE_CREATE not in self.enabled:
            return upload
        for backend in self.backends:
            delivery = self._delivery(PRE_CREATE, upload, request)
            response = await self._call_blocking(backend, delivery)
            if response.reject_upload:
                raise HookRejection(response.http_response, 400, REJECTED_BODY)
            changes = response.change_file_info
            if changes.id is not None and changes.id != upload.id:
                if not is_upload_id(changes.id):
                    self._failed(backend, delivery, f"invalid upload id {changes.id[:140]!r}")
                    raise TusError("pre-create hook returned an invalid upload id", status=500)
                if await self.store.get(changes.id) is not None:
                    log.warning("pre-create hook chose upload id %s, which already exists",
                                changes.id)
                    raise TusError("an upload with this id already exists", status=409)
                upload = upload.copy(id=changes.id)
            if changes.metadata is not None:
                upload = upload.copy(metadata={k: v.encode() for k, v in changes.metadata.items()})
            if changes.storage:
                log.warning("pre-create hook: ChangeFileInfo.Storage is not supported; ignored")
            self._add_response_headers(request, response.http_response)
        return upload

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        if PRE_FINISH not in self.enabled:
            return
        try:
            for backend in self.backends:
                response = await self._call_blocking(
                    backend, self._delivery(PRE_FINISH, upload, request))
                self._check_pre_finish(response)
                self._add_response_headers(request, response.http_response)
        except HookRejection:
            self._forget_finish_later(upload)  # refused: post-finish is not owed any more
            raise

    async def pre_terminate(self, upload: Upload, request: web.Request) -> None:
        if PRE_TERMINATE not in self.enabled:
            return
        for backend in self.backends:
            response = await self._call_blocking(
                backend, self._delivery(PRE_TERMINATE, upload, request))
            if response.reject_termination:
                raise HookRejection(response.http_response, 400, TERMINATION_REJECTED_BODY)
            self._add_response_headers(request, response.http_response)

    async def pre_access(self, upload_id: str, request: web.Request, method: str) -> None:
        if self.stopped and method == "PATCH":
            stopped = self.stopped.get(upload_id)
            if stopped is not None:
                if stopped[1] > time.monotonic():
                    raise HookRejection(stopped[0], 400, STOPPED_BODY)
                del self.stopped[upload_id]
        if PRE_ACCESS not in self.enabled:
            return
        upload = await self.store.get(upload_id)
        if upload is None:
            return  # the handler answers 404
        for backend in self.backends:
            delivery = self._delivery(PRE_ACCESS, upload, request, method,
                                      key_extra=uuid.uuid4().hex)  # one per request
            response = await self._call_blocking(backend, delivery)
            http = response.http_response
            if (response.reject_upload or http.status_code >= 400
                    or (method == "DELETE" and response.reject_termination)):
                raise HookRejection(http, 403, ACCESS_DENIED_BODY)

    @staticmethod
    def _add_response_headers(request: web.Request, response: HTTPResponse) -> None:
        if response.header:
            request.setdefault(HOOK_RESPONSE_HEADERS, CIMultiDict()).update(response.header)
