"""tus 1.0.0 request handling over any ``Store``: one method per HTTP method.

Methods orchestrate: headers are parsed by ``tusd_py.protocol``, bytes and records are
the store's business, the body loop is ``receive.py`` and concatenation ``concat.py``;
refusals are ``TusError`` values the front middleware (``tusd_py.http.middleware``)
turns into responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ..config import Config
from ..http.download import (
    FileDownload,
    Unsatisfiable,
    download_headers,
    file_etag,
    requested_range,
    stream_download,
    unsatisfiable,
)
from ..http.keys import FINISH_RESPONSE
from ..http.urls import base_url, forwarded_prefix
from ..protocol import (
    TUS_VERSION,
    format_metadata,
    http_date,
    new_hasher,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_uint,
)
from ..protocol.checksum import Hasher
from ..protocol.constants import EXTENSIONS, OFFSET_CONTENT_TYPE
from ..protocol.errors import (
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    Gone,
    InvalidContentType,
    NotFound,
    NotImplementedByServer,
    SizeExceeded,
    TusError,
    UnsupportedVersion,
)
from ..protocol.errors import MismatchedOffset as OffsetMismatch
from ..protocol.headers import effective_method
from ..protocol.ietf import DRAFT_MARK, VERSION_HEADER, inconsistent
from ..storage.base import CanDownload, CanTerminate, Capability, Store, Upload
from ..storage.ids import check_upload_id, is_upload_id
from .concat import Concatenation
from .events import EventBus
from .receive import BodyReceiver, Outcome, interrupted
from .writers import Writer, WriterRegistry

if TYPE_CHECKING:
    from .ietf import DraftHandler

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Written:
    """What one request's body did to an upload."""

    upload: Upload  # the record after the commit
    received: int  # bytes committed by this request
    outcome: Outcome
    writer: Writer
    completed: bool  # this request's commit finished the upload (bytes or a declared length)


class TusHandler:
    """The tus engine over one store: ``dispatch`` routes each request to its method."""

    def __init__(self, config: Config, store: Store, events: EventBus | None = None) -> None:
        self.config = config
        self.server = config.server
        self.store = store
        self.events = events or EventBus()
        # What this server offers: the store's capabilities less what the config turns
        # off (server.termination, server.concatenation), decided once, here.
        caps = set(store.capabilities)
        if self.server.termination is False:
            caps.discard(Capability.TERMINATE)
        if not self.server.concatenation:
            caps -= {Capability.CONCATENATE, Capability.CONCATENATE_UNFINISHED}
        self.caps = frozenset(caps)
        #: Methods an upload URL answers (the Allow header of a 405).
        self.upload_methods = ["HEAD", "PATCH"]
        if self.server.termination is not False:
            self.upload_methods.append("DELETE")
        if self.server.download:
            self.upload_methods.append("GET")
        self.upload_methods.append("OPTIONS")
        self.writers = WriterRegistry(
            store, idle_timeout=self.server.idle_timeout, lock_wait=self.server.lock_wait,
            takeover_idle=self.server.lock_takeover_idle)
        self.receiver = BodyReceiver(
            self.writers, self.events, self.server.idle_timeout,
            (self.server.min_body_rate, self.server.min_body_rate_window))
        self.base_path = self.server.base_path
        #: The path a parent application mounted this one under (``mount``), before
        #: ``base_path`` in every URL the server sends; "" when it runs on its own.
        self.mount_prefix = ""
        self.expire_after = config.expiration.after
        self.expire_completed_after = config.expiration.completed_after
        self.concatenation = Concatenation(config, store, self.events, self.writers,
                                           self._next_expiry)
        self.algorithms = tuple(self.server.checksum_algorithms)
        self.extensions = self._extensions()
        self._options_headers = {
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(self.extensions),
        }
        if self.server.max_size:
            self._options_headers["Tus-Max-Size"] = str(self.server.max_size)
        if self.algorithms:
            self._options_headers["Tus-Checksum-Algorithm"] = ",".join(self.algorithms)
        #: The IETF draft's handler (``core.ietf``), set when ``server.protocols`` has it:
        #: requests without ``Tus-Resumable`` that name an interop version go there.
        self.draft: DraftHandler | None = None

    def _extensions(self) -> list[str]:
        """Exactly what this store and config support."""
        have = {"creation", "creation-with-upload"}
        if Capability.DEFER_LENGTH in self.caps:
            have.add("creation-defer-length")
        if Capability.EXPIRE in self.caps and self.expire_after > 0:
            have.add("expiration")
        if self.server.checksum_algorithms:
            have.add("checksum")
        if Capability.TERMINATE in self.caps:
            have.add("termination")
        if Capability.CONCATENATE in self.caps:
            have.add("concatenation")
            if Capability.CONCATENATE_UNFINISHED in self.caps:
                have.add("concatenation-unfinished")
        return [name for name in EXTENSIONS if name in have]

    # -- routing ------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
        upload_id = request.match_info.get("upload_id")

        if method == "OPTIONS":
            if self.draft is not None and VERSION_HEADER in request.headers:
                return await self.draft.dispatch(request)
            return web.Response(status=204, headers=self._options_headers)
        if method == "GET":
            if self.draft is not None and VERSION_HEADER in request.headers:
                return await self.draft.dispatch(request)
            if upload_id is None:
                raise web.HTTPMethodNotAllowed(method, ["POST", "OPTIONS"])
            return await self.download_request(request, upload_id)
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            if self.draft is not None and VERSION_HEADER in request.headers:
                return await self.draft.dispatch(request)
            raise UnsupportedVersion(headers={"Tus-Version": TUS_VERSION})
        if upload_id is None:
            if method == "POST":
                return await self.post(request)
            raise web.HTTPMethodNotAllowed(method, ["POST", "OPTIONS"])
        check_upload_id(upload_id)
        if self.events.access_checkers:
            await self.events.pre_access(upload_id, request, method)
        if method == "HEAD":
            return await self.head(request, upload_id)
        if method == "PATCH":
            return await self.patch(request, upload_id)
        if method == "DELETE":
            return await self.delete(request, upload_id)
        raise web.HTTPMethodNotAllowed(method, self.upload_methods)

    async def download_request(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        """A GET of an upload URL: the download of a finished upload (either protocol's)."""
        if not self.server.download:
            raise web.HTTPMethodNotAllowed("GET", self.upload_methods)
        check_upload_id(upload_id)
        if self.events.access_checkers:
            await self.events.pre_access(upload_id, request, "GET")
        return await self.get(request, upload_id)

    # -- helpers ------------------------------------------------------------------

    def location_base(self, request: web.Request) -> str:
        """What goes before ``<base_path><id>`` in a ``Location``: ``server.public_url``;
        with ``server.relative_location`` only the (forwarded, mount) path prefix; else
        the request's own scheme and host (``base_url``, which refuses a bad Host)."""
        server = self.server
        if server.public_url:
            return server.public_url + self.mount_prefix
        if server.relative_location:
            prefix = forwarded_prefix(request) if server.behind_proxy else ""
            return prefix + self.mount_prefix
        return base_url(request, server.behind_proxy) + self.mount_prefix

    def upload_url(self, base: str, upload_id: str) -> str:
        """The ``Location`` of an upload, under ``base`` (``location_base`` of the request)."""
        return base + self.base_path + upload_id

    def _tus_headers(self, upload: Upload) -> dict[str, str]:
        headers = {"Tus-Resumable": TUS_VERSION}
        if upload.expires_at is not None and not upload.is_complete and "expiration" in self.extensions:
            headers["Upload-Expires"] = http_date(upload.expires_at)
        return headers

    def _next_expiry(self, now: float, complete: bool) -> float | None:
        if complete:
            return now + self.expire_completed_after if self.expire_completed_after else None
        return now + self.expire_after if self.expire_after else None

    async def _load(self, upload_id: str) -> Upload:
        upload = await self.store.get(upload_id)
        if upload is None:
            raise NotFound()
        if upload.is_final and not upload.is_complete and upload.is_expired(time.time()):
            return await self.concatenation.prolong_final(upload)
        self._check_alive(upload)
        return upload

    @staticmethod
    def _check_alive(upload: Upload) -> None:
        if upload.is_expired(time.time()):
            raise Gone()

    # -- POST: creation, creation-with-upload, concatenation ------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        base = self.location_base(request)  # a bad Host: 400 before creating
        concat = parse_concat(headers.get("Upload-Concat"))
        if concat is not None and Capability.CONCATENATE not in self.caps:
            raise BadRequest("concatenation is not supported by this server")
        metadata = parse_metadata(headers.get("Upload-Metadata"))
        if DRAFT_MARK in metadata:
            raise BadRequest(f"the Upload-Metadata key {DRAFT_MARK!r} is reserved")
        now = time.time()
        if concat is not None and concat.final:
            upload = await self.concatenation.create_final(request, concat.final_urls, metadata, now)
            response_headers = self._tus_headers(upload)
            response_headers["Location"] = self.upload_url(base, upload.id)
            return web.Response(status=201, headers=response_headers)

        length = parse_uint(headers.get("Upload-Length"), "Upload-Length", required=False)
        deferred = parse_defer_length(headers.get("Upload-Defer-Length"))
        if deferred and length is not None:
            raise BadRequest("Upload-Length and Upload-Defer-Length are mutually exclusive")
        if deferred and Capability.DEFER_LENGTH not in self.caps:
            raise BadRequest("creation-defer-length is not supported by this server")
        if not deferred and length is None:
            raise BadRequest("missing Upload-Length header")
        if length is not None and self.server.max_size and length > self.server.max_size:
            raise SizeExceeded("maximum upload size exceeded")

        has_body = _has_body(request)
        checksum = None
        if has_body:
            # Refuse a bad creation-with-upload request before anything exists.
            _check_offset_content_type(request)
            checksum = parse_checksum(headers.get("Upload-Checksum"), self.algorithms)
            body_length = parse_uint(headers.get("Content-Length"), "Content-Length",
                                     required=False)
            limit = length if length is not None else self.server.max_size or None
            if body_length is not None and limit is not None and body_length > limit:
                raise SizeExceeded()
        upload = Upload(
            id=self.store.new_upload_id(), length=length, offset=0, metadata=metadata, created_at=now,
            expires_at=self._next_expiry(now, length == 0),
            is_partial=bool(concat and concat.partial),
            completed_at=now if length == 0 else None,
        )
        if self.events.create_checkers:
            upload = await self.events.pre_create(upload, request)
        if not is_upload_id(upload.id):
            raise TusError("pre-create hook returned an invalid upload id", status=500)
        upload = await self.store.create(upload)
        self.events.created(upload, request)
        if upload.is_complete and not upload.is_partial:
            if self.events.finish_checkers:
                await self.events.pre_finish(upload, request)
            self.events.finished(upload, request)

        if has_body and not upload.is_complete:
            # creation-with-upload: the body is the first PATCH. Whatever happens to it
            # (checksum mismatch, a dropped connection), the upload exists and the
            # client learns its URL and committed offset, and can go on with PATCH.
            try:
                written = await self._write_body(
                    request, upload.id, 0, None,
                    new_hasher(checksum.algorithm) if checksum else None,
                    checksum.digest if checksum else None)
            except TusError as exc:
                log.info("upload %s: body of creation request not kept: %s", upload.id, exc)
                upload = await self.store.get(upload.id) or upload
            else:
                upload = written.upload
                await self._after_write(request, written)  # pre-finish may refuse
        response_headers = self._tus_headers(upload)
        response_headers["Location"] = self.upload_url(base, upload.id)
        if has_body:
            response_headers["Upload-Offset"] = str(upload.offset)
        # Finished by this request: a pre-finish hook's body comes too (the status stays
        # 201, which tells the client where the upload is).
        finish = request.get(FINISH_RESPONSE) if upload.is_complete else None
        body = finish[1] if finish is not None and finish[1] else None
        return web.Response(status=201, headers=response_headers, body=body)

    # -- HEAD -----------------------------------------------------------------------

    async def head(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        upload = await self._load(upload_id)
        if DRAFT_MARK in upload.metadata:  # created through the IETF draft
            raise NotFound()
        if upload.is_final and not upload.is_complete:
            upload = await self.concatenation.assemble_final(request, upload)
        headers = self._tus_headers(upload)
        headers["Cache-Control"] = "no-store"
        if not (upload.is_final and not upload.is_complete):
            headers["Upload-Offset"] = str(upload.offset)
        if upload.length is not None:
            headers["Upload-Length"] = str(upload.length)
        elif not upload.is_final:
            headers["Upload-Defer-Length"] = "1"
        if upload.metadata:
            headers["Upload-Metadata"] = format_metadata(upload.metadata)
        if upload.is_partial:
            headers["Upload-Concat"] = "partial"
        elif upload.is_final:
            headers["Upload-Concat"] = "final;" + " ".join(
                self.mount_prefix + self.base_path + pid for pid in upload.final_of)
        return web.Response(status=200, headers=headers)

    # -- PATCH ----------------------------------------------------------------------

    async def patch(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        _check_offset_content_type(request)
        headers = request.headers
        offset = parse_uint(headers.get("Upload-Offset"), "Upload-Offset")
        assert offset is not None
        declared = parse_uint(headers.get("Upload-Length"), "Upload-Length", required=False)
        checksum = parse_checksum(headers.get("Upload-Checksum"), self.algorithms)
        written = await self._write_body(request, upload_id, offset, declared,
                                         new_hasher(checksum.algorithm) if checksum else None,
                                         checksum.digest if checksum else None)
        await self._after_write(request, written)
        if written.outcome is not Outcome.COMPLETE:
            # The bytes that arrived were committed: say where the client resumes.
            error = interrupted(written.writer)
            error.headers.setdefault("Upload-Offset", str(written.upload.offset))
            error.close_connection = True  # the rest of the body was never read
            raise error
        upload = written.upload
        response_headers = self._tus_headers(upload)
        response_headers["Upload-Offset"] = str(upload.offset)
        if written.completed and (finish := request.get(FINISH_RESPONSE)) is not None:
            # A pre-finish hook's status and body (what the application computed).
            return web.Response(status=finish[0], body=finish[1] or None,
                                headers=response_headers)
        return web.Response(status=204, headers=response_headers)

    async def _write_body(self, request: web.Request, upload_id: str, offset: int,
                          declared: int | None, hasher: Hasher | None,
                          expected_digest: bytes | None = None, *, draft: bool = False,
                          completes: bool = False) -> Written:
        """Lock, check, stream the body into the store, commit what may be kept.

        Refusals (409, 413, 460...) raise; a body that ended early (disconnect, idle,
        takeover, shutdown) is committed and reported in ``Written.outcome``. ``draft``:
        the request speaks the IETF draft (only its uploads are found); ``completes``: the
        draft request ends the upload, whose length is then where its body ended."""
        content_length = parse_uint(request.headers.get("Content-Length"), "Content-Length",
                                    required=False)
        # Ours until released: a newer request (here, or on another replica through the
        # lock) can only ask the writer to stop, which ends the body read below.
        writer, lock = await self.writers.claim(upload_id)
        try:
            upload = lock.upload
            if (DRAFT_MARK in upload.metadata) is not draft:  # the other protocol's upload
                raise NotFound()
            was_complete = upload.is_complete
            self._check_alive(upload)
            if upload.is_final:
                raise Forbidden("modifying a final upload is not allowed")
            if offset != upload.offset:
                mismatch = OffsetMismatch(f"mismatched offset: upload is at {upload.offset}")
                mismatch.offset = upload.offset
                raise mismatch
            length = upload.length
            if declared is not None:
                if length is not None and declared != length:
                    raise BadRequest("Upload-Length cannot be changed once set")
                if declared < upload.offset:
                    raise BadRequest("Upload-Length is smaller than the current offset")
                if self.server.max_size and declared > self.server.max_size:
                    raise SizeExceeded("maximum upload size exceeded")
                length = declared
            limit = (length if length is not None else self.server.max_size or None)
            room = None if limit is None else limit - upload.offset
            if room is not None and content_length is not None and content_length > room:
                raise SizeExceeded()

            # Takeover, shutdown or a hook's StopUpload end the body early through
            # writer.scope: the outcome says so, and the bytes received are still kept.
            outcome = await self.receiver.receive(request, writer, lock, room, hasher)
            received = lock.written
            if outcome is Outcome.TOO_LARGE:
                await lock.rollback()
                raise SizeExceeded()
            if hasher is not None:
                if outcome is not Outcome.COMPLETE or hasher.digest() != expected_digest:
                    await lock.rollback()
                    if outcome is Outcome.COMPLETE:
                        raise ChecksumMismatch()
                    raise interrupted(writer)
            if completes and outcome is Outcome.COMPLETE:  # the draft: the length is here
                end = upload.offset + received
                if length is not None and end != length:
                    raise inconsistent("the completing request ended before the upload's length")
                length = end
            new_length = length if upload.length is None else None
            if received or new_length is not None:
                now = time.time()
                complete = length is not None and upload.offset + received == length
                upload = await lock.commit(length=new_length,
                                           expires_at=self._next_expiry(now, complete))
            elif upload.expires_at is not None and not upload.is_complete and self.expire_after:
                # An empty PATCH still proves the client is alive: refresh the expiry.
                upload = await lock.commit(expires_at=self._next_expiry(time.time(), False))
        except BaseException:  # a refusal, a failed commit: nothing of this body is kept
            await lock.rollback()
            await self.writers.release(writer, lock)
            raise
        await self.writers.release(writer, lock)
        return Written(upload, received, outcome, writer, upload.is_complete and not was_complete)

    async def _after_write(self, request: web.Request, written: Written) -> None:
        """Events after a write was committed and its lock released."""
        if written.outcome is Outcome.CANCELLED:
            # The body loop swallowed this task's cancellation to commit what arrived;
            # now that it is committed, the cancellation goes on.
            raise asyncio.CancelledError()
        upload = written.upload
        if written.received:
            self.events.progress(upload, request, written.received)
        # Also a zero-byte PATCH declaring Upload-Length == offset completes an upload.
        if written.completed and not upload.is_partial:
            if self.events.finish_checkers:
                await self.events.pre_finish(upload, request)
            self.events.finished(upload, request)

    # -- DELETE ----------------------------------------------------------------------

    async def delete(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        if self.server.termination is False:  # tusd -disable-termination: no DELETE route
            raise web.HTTPMethodNotAllowed("DELETE", self.upload_methods)
        await self.terminate(request, upload_id)
        return web.Response(status=204, headers={"Tus-Resumable": TUS_VERSION})

    async def terminate(self, request: web.Request, upload_id: str, *, draft: bool = False) -> None:
        """Delete an upload (hooks and events included), as DELETE does; ``draft``: the
        request speaks the IETF draft (only its uploads are found)."""
        if Capability.TERMINATE not in self.caps:
            raise NotImplementedByServer("termination is not supported by this server")
        writer, lock = await self.writers.claim(upload_id)
        try:
            upload = lock.upload
            if (DRAFT_MARK in upload.metadata) is not draft:
                raise NotFound()
            if upload.is_complete and self.server.termination == "unfinished-only":
                raise BadRequest("cannot terminate a finished upload")
            await self.events.pre_terminate(upload, request)
            store = self.store
            assert isinstance(store, CanTerminate)  # checked above
            await store.terminate(upload_id)
        finally:
            await self.writers.release(writer, lock)
        self.events.terminated(upload, request)

    # -- GET: download -----------------------------------------------------------------

    async def get(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        if Capability.DOWNLOAD not in self.caps:
            raise NotImplementedByServer("download is not supported by this storage driver")
        upload = await self._load(upload_id)
        if upload.is_final and not upload.is_complete:
            upload = await self.concatenation.assemble_final(request, upload)
        if not upload.is_complete:
            raise NotFound("upload is not finished")
        store = self.store
        assert isinstance(store, CanDownload)  # checked above
        source = await store.download(upload)
        headers = download_headers(upload.metadata)
        headers["Tus-Resumable"] = TUS_VERSION
        if source.path is None:
            return await stream_download(request, source, headers)
        etag, mtime = file_etag(source.path)
        try:
            byte_range = requested_range(request.headers, source.size, etag, mtime)
        except Unsatisfiable:
            raise unsatisfiable(source.size) from None
        return FileDownload(source.path, byte_range, headers)


def _has_body(request: web.Request) -> bool:
    if request.headers.get("Transfer-Encoding", "").lower().endswith("chunked"):
        return True
    length = parse_uint(request.headers.get("Content-Length"), "Content-Length", required=False)
    return bool(length)


def _check_offset_content_type(request: web.Request) -> None:
    content_type = request.headers.get("Content-Type", "")
    if content_type == OFFSET_CONTENT_TYPE:  # as every client sends it
        return
    if content_type.split(";", 1)[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise InvalidContentType()
