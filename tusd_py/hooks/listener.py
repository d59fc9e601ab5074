"""The hook listener: tusd-format hooks for the upload events, subscribed to the app's
``EventBus``. Its own methods are the blocking pre-* hooks, awaited in the request; the
post-* notifications and the post-finish re-delivery come from its bases."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web
from multidict import CIMultiDict

from ..http.keys import FINISH_RESPONSE, HOOK_RESPONSE_HEADERS
from ..protocol.constants import PRE_ACCESS, PRE_CREATE, PRE_FINISH, PRE_TERMINATE
from ..protocol.errors import TusError
from ..storage.base import Upload
from ..storage.ids import is_key_prefix, is_upload_id
from .calls import Delivery, HookBackend, HookRejection
from .payload import (
    ACCESS_DENIED_BODY,
    REJECTED_BODY,
    STOPPED_BODY,
    TERMINATION_REJECTED_BODY,
    HTTPResponse,
)
from .redeliver import FinishRedelivery

log = logging.getLogger("tusd_py.hooks")

#: Largest ``HTTPResponse.Body`` a pre-finish hook may send to the client on success
#: (what the application computed: an id, a URL, a small JSON document).
FINISH_BODY_LIMIT = 16 * 1024


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
            new_id = self._chosen_id(backend, delivery, upload.id, changes.id, changes.storage)
            if new_id != upload.id:
                if await self.store.get(new_id) is not None:
                    log.warning("pre-create hook chose upload id %s, which already exists",
                                new_id)
                    raise TusError("an upload with this id already exists", status=409)
                upload = upload.copy(id=new_id)
            if changes.metadata is not None:
                upload = upload.copy(metadata={k: v.encode() for k, v in changes.metadata.items()})
            self._add_response_headers(request, response.http_response)
        return upload

    def _chosen_id(self, backend: HookBackend, delivery: Delivery, current: str,
                   new_id: str | None, storage: dict[str, str] | None) -> str:
        """The id a pre-create answer gives the upload: ``ChangeFileInfo.ID`` (else the
        current one) under ``ChangeFileInfo.Storage.Prefix`` if set. Each is checked
        (``storage.ids``) before anything is built from it: a bad one, or a ``Storage``
        key other than ``Prefix``, refuses the creation with 500 (the hook is broken)."""
        reason = None
        if new_id is not None and not is_upload_id(new_id):
            reason = f"invalid upload id {new_id[:140]!r}"
        prefix = ""
        if storage:
            prefix = storage.get("Prefix", "")
            unknown = sorted(set(storage) - {"Prefix"})
            if unknown:
                reason = f"unsupported ChangeFileInfo.Storage keys {unknown[:3]}"
            elif not is_key_prefix(prefix):
                reason = f"invalid ChangeFileInfo.Storage.Prefix {prefix[:140]!r}"
        chosen = prefix + (new_id if new_id is not None else current)
        if reason is None and not is_upload_id(chosen):
            reason = f"invalid upload id {chosen[:140]!r} (prefix and id together)"
        if reason is not None:
            self._failed(backend, delivery, reason)
            raise TusError("pre-create hook returned an invalid upload id", status=500)
        return chosen

    async def pre_finish(self, upload: Upload, request: web.Request) -> None:
        if PRE_FINISH not in self.enabled:
            return
        try:
            for backend in self.backends:
                response = await self._call_blocking(
                    backend, self._delivery(PRE_FINISH, upload, request))
                self._check_pre_finish(response)
                self._add_response_headers(request, response.http_response)
                self._set_finish_response(request, response.http_response)
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
    def _set_finish_response(request: web.Request, response: HTTPResponse) -> None:
        """A successful pre-finish's ``StatusCode`` and ``Body`` for the finishing request
        (a later hook's override an earlier one's, as tusd merges them). A body without a
        status is sent with 200 (a 204 carries none)."""
        status, body = response.status_code, response.body
        if not status and not body:
            return
        if (status and not 200 <= status < 300) or (status == 204 and body):
            raise TusError("pre-finish hook failed: invalid hook response (a StatusCode "
                           "that is not an error must be 2xx; 204 has no Body)", status=500)
        data = (body or "").encode()
        if len(data) > FINISH_BODY_LIMIT:
            raise TusError("pre-finish hook failed: invalid hook response (Body larger "
                           f"than {FINISH_BODY_LIMIT} bytes)", status=500)
        previous = request.get(FINISH_RESPONSE)
        if previous is not None:
            status = status or previous[0]
            data = data or previous[1]
        request[FINISH_RESPONSE] = (status or (200 if data else 204), data)

    @staticmethod
    def _add_response_headers(request: web.Request, response: HTTPResponse) -> None:
        if response.header:
            request.setdefault(HOOK_RESPONSE_HEADERS, CIMultiDict()).update(response.header)
