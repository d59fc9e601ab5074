"""Resumable Uploads for HTTP (the IETF draft) over the tus engine: the same store,
writers, body loop, offset compare-and-set, hooks, events and expiry as tus.

``DraftHandler.dispatch`` answers a request that names an interop version
(``Upload-Draft-Interop-Version``) by that version's ``DraftRules``
(``tusd_py.protocol.ietf``); a version not spoken here gets a plain 400 and no draft
field at all. Uploads created here carry ``DRAFT_MARK`` in their metadata: tus
requests do not find them and draft requests do not find tus uploads (a plain GET
downloads either).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from aiohttp import web

from ..http.interim import send_interim
from ..http.urls import base_url
from ..protocol import parse_metadata, parse_uint
from ..protocol.constants import OFFSET_CONTENT_TYPE
from ..protocol.errors import (
    BadRequest,
    InvalidContentType,
    MismatchedOffset,
    NotFound,
    SizeExceeded,
    TusError,
)
from ..protocol.headers import effective_method
from ..protocol.ietf import (
    COMPLETED_UPLOAD,
    DRAFT_MARK,
    MISMATCHING_OFFSET,
    PARTIAL_UPLOAD,
    PROBLEM_JSON,
    SUPPORTED,
    VERSION_HEADER,
    DraftError,
    DraftRules,
    Limits,
    inconsistent,
    is_complete,
    known_length,
    parse_int,
    problem_body,
    rules_for,
    upload_limit,
)
from ..storage.base import Upload
from ..storage.ids import check_upload_id, is_upload_id
from .receive import Outcome, interrupted

if TYPE_CHECKING:
    from ..storage.base import Store
    from .handler import TusHandler, Written

#: The reason phrase of the 104 (the draft's name for the status).
RESUMPTION_SUPPORTED = "Upload Resumption Supported"
_FILENAME = re.compile(r';\s*filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


class DraftHandler:
    """The draft's methods over one ``TusHandler`` (its engine). ``tus``: whether tus
    is also spoken (``server.protocols``); without it, requests that name no interop
    version are refused here, except a download (GET) and OPTIONS."""

    def __init__(self, engine: TusHandler, *, tus: bool = True) -> None:
        self.engine = engine
        self.tus = tus
        server = engine.server
        self.limits = Limits(max_size=server.max_size, max_append_size=server.max_request_size)
        #: Send the 104 (``server.ietf_interim``; auto: not behind a proxy).
        self.interim = (not server.behind_proxy if server.ietf_interim == "auto"
                        else bool(server.ietf_interim))
        self.upload_methods = ["HEAD", "PATCH"]
        if server.termination is not False:
            self.upload_methods.append("DELETE")
        self.upload_methods += ["GET", "OPTIONS"]

    @property
    def store(self) -> Store:
        return self.engine.store

    async def dispatch_alone(self, request: web.Request) -> web.StreamResponse:
        """The route handler when tus is off: draft requests, downloads and OPTIONS."""
        if VERSION_HEADER in request.headers:
            return await self.dispatch(request)
        upload_id = request.match_info.get("upload_id")
        if request.method == "GET" and upload_id is not None:
            return await self.engine.download_request(request, upload_id)
        if request.method == "OPTIONS":
            return web.Response(status=204)
        return web.Response(status=400, text=(
            "this server speaks only Resumable Uploads for HTTP (server.protocols): send "
            f"{VERSION_HEADER} (one of {', '.join(map(str, SUPPORTED))})\n"))

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Answer one draft request by the rules of the interop version it names."""
        rules = rules_for(request.headers.get(VERSION_HEADER))
        if rules is None:
            # Not a version spoken here: no 104, no draft field (the client learns that
            # this server does not resume uploads in its version).
            return web.Response(status=400, text=(
                f"unsupported {VERSION_HEADER}; this server speaks "
                f"{', '.join(map(str, SUPPORTED))}\n"))
        try:
            return await self._route(request, rules)
        except TusError as exc:
            return self.error_response(exc, rules)

    async def _route(self, request: web.Request, rules: DraftRules) -> web.StreamResponse:
        method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
        upload_id = request.match_info.get("upload_id")
        if method == "OPTIONS":
            return self.options(rules)
        if upload_id is None:
            if method in ("POST", "PUT"):  # "any method that carries content"; these two
                return await self.create(request, rules)
            raise TusError("method not allowed", status=405,
                           headers={"Allow": "POST, PUT, OPTIONS"})
        check_upload_id(upload_id)
        if method == "GET" and not rules.get_retrieves_offset:
            return await self.engine.download_request(request, upload_id)
        if method not in self.upload_methods:
            raise TusError("method not allowed", status=405,
                           headers={"Allow": ", ".join(self.upload_methods)})
        events = self.engine.events
        if events.access_checkers:
            await events.pre_access(upload_id, request, method)
        if method in ("HEAD", "GET"):
            return await self.retrieve(request, rules, upload_id)
        if method == "PATCH":
            return await self.append(request, rules, upload_id)
        return await self.cancel(request, rules, upload_id)

    # -- responses ----------------------------------------------------------------

    def limit_header(self, rules: DraftRules, upload: Upload | None) -> str:
        """``Upload-Limit`` for ``upload`` (None: for the server, as OPTIONS says it)."""
        if upload is None:
            lifetime = self.engine.expire_after or None
        elif upload.expires_at is not None and not upload.is_complete:
            lifetime = upload.expires_at - time.time()
        else:
            lifetime = None
        return upload_limit(rules, self.limits, lifetime)

    def state_headers(self, rules: DraftRules, upload: Upload) -> dict[str, str]:
        """Offset and completeness of ``upload``, as every success response carries them."""
        name, value = rules.completeness(upload.is_complete)
        return {"Upload-Offset": str(upload.offset), name: value}

    def error_response(self, exc: TusError, rules: DraftRules) -> web.Response:
        """A refusal by the rules of ``rules``: problem details where the version defines
        the problem type, else a short plain text; ``Upload-Limit`` on 413s."""
        headers = dict(exc.headers)
        hook_body = getattr(exc, "body", None)
        if isinstance(hook_body, str):  # a hook's HTTPResponse: sent verbatim
            response = web.Response(status=exc.status, body=hook_body.encode(), headers=headers)
        else:
            if exc.status == 413 and rules.upload_limit:
                headers.setdefault("Upload-Limit", self.limit_header(rules, None))
            if isinstance(exc, DraftError) and rules.problem(exc.kind):
                headers["Content-Type"] = PROBLEM_JSON
                response = web.Response(status=exc.status, headers=headers,
                                        body=problem_body(exc.kind, exc.message, exc.members))
            else:
                response = web.Response(status=exc.status, text=exc.message + "\n",
                                        headers=headers)
        if exc.close_connection:
            response.force_close()
        return response

    def mismatch(self, rules: DraftRules, expected: int, provided: int) -> DraftError:
        """409: the request's offset is not the upload's (which the response says)."""
        error = DraftError(MISMATCHING_OFFSET,
                           f"mismatched offset: the upload is at {expected}", status=409,
                           members={"expected-offset": expected, "provided-offset": provided})
        name, value = rules.completeness(False)
        error.headers.update({"Upload-Offset": str(expected), name: value})
        return error

    def options(self, rules: DraftRules) -> web.Response:
        headers = {VERSION_HEADER: str(rules.version)}
        if rules.upload_limit:
            headers["Upload-Limit"] = self.limit_header(rules, None)
        if rules.accept_patch:
            headers["Accept-Patch"] = PARTIAL_UPLOAD
        return web.Response(status=204, headers=headers)

    # -- creation -------------------------------------------------------------------

    async def create(self, request: web.Request, rules: DraftRules) -> web.StreamResponse:
        engine = self.engine
        headers = request.headers
        base = base_url(request, engine.server.behind_proxy)  # a bad Host: 400 first
        complete = is_complete(rules, headers.get(rules.complete_header))
        if "Upload-Offset" in headers:
            raise BadRequest("a creation request carries no Upload-Offset")
        declared = parse_int(headers.get("Upload-Length"), "Upload-Length", rules)
        chunked, body_length = _body_length(request)
        length = known_length(0, body_length, complete, declared, None)
        max_size = engine.server.max_size
        if max_size and max((length or 0), (body_length or 0)) > max_size:
            raise SizeExceeded("maximum upload size exceeded")

        now = time.time()
        upload = Upload(id=self.store.new_upload_id(), length=length, offset=0,
                        metadata=self.metadata(request, rules), created_at=now,
                        expires_at=engine._next_expiry(now, length == 0),
                        completed_at=now if length == 0 else None)
        upload = await engine.events.pre_create(upload, request)
        if not is_upload_id(upload.id):
            raise TusError("pre-create hook returned an invalid upload id", status=500)
        if DRAFT_MARK not in upload.metadata:  # a hook replaced the metadata
            upload.metadata = {**upload.metadata, DRAFT_MARK: str(rules.version).encode()}
        upload = await self.store.create(upload)
        engine.events.created(upload, request)
        if upload.is_complete:
            await engine.events.pre_finish(upload, request)
            engine.events.finished(upload, request)
        location = engine.upload_url(base, upload.id)

        if self.interim:
            interim = [(VERSION_HEADER, str(rules.version)), ("Location", location)]
            if rules.upload_limit:
                interim.append(("Upload-Limit", self.limit_header(rules, upload)))
            send_interim(request, 104, RESUMPTION_SUPPORTED, interim)

        if chunked or body_length:
            try:
                written = await engine._write_body(request, upload.id, 0, None, None,
                                                   draft=True, completes=complete)
                await engine._after_write(request, written)
                if written.outcome is not Outcome.COMPLETE:
                    raise self.interrupted(rules, written)
            except TusError as exc:
                if isinstance(exc, SizeExceeded) and length is not None:
                    exc = inconsistent("the request goes past the upload's length")
                exc.headers.setdefault("Location", location)
                raise exc from None
            upload = written.upload
        response_headers = {"Location": location, **self.state_headers(rules, upload)}
        if rules.upload_limit:
            response_headers["Upload-Limit"] = self.limit_header(rules, upload)
        return web.Response(status=201, headers=response_headers)

    def metadata(self, request: web.Request, rules: DraftRules) -> dict[str, bytes | None]:
        """The new upload's metadata: ``Upload-Metadata`` (tus-js-client sends it in its
        draft modes), ``filetype`` / ``filename`` from ``Content-Type`` /
        ``Content-Disposition`` (as tusd), and the draft's mark."""
        headers = request.headers
        metadata = parse_metadata(headers.get("Upload-Metadata"))
        media_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type and media_type not in (PARTIAL_UPLOAD, OFFSET_CONTENT_TYPE):
            metadata.setdefault("filetype", media_type.encode())
        match = _FILENAME.search(headers.get("Content-Disposition", ""))
        if match:
            name = match.group(1) if match.group(1) is not None else match.group(2)
            metadata.setdefault("filename", re.sub(r"\\(.)", r"\1", name).encode())
        metadata[DRAFT_MARK] = str(rules.version).encode()
        return metadata

    # -- append ---------------------------------------------------------------------

    async def append(self, request: web.Request, rules: DraftRules,
                     upload_id: str) -> web.StreamResponse:
        engine = self.engine
        headers = request.headers
        if rules.partial_media_type:
            media_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type != PARTIAL_UPLOAD:
                raise InvalidContentType(f"an append is Content-Type: {PARTIAL_UPLOAD}")
        offset = parse_int(headers.get("Upload-Offset"), "Upload-Offset", rules)
        if offset is None:
            raise BadRequest("missing or invalid Upload-Offset header")
        complete = is_complete(rules, headers.get(rules.complete_header))
        declared = parse_int(headers.get("Upload-Length"), "Upload-Length", rules)
        _, body_length = _body_length(request)
        upload = await self.load(upload_id)
        if offset != upload.offset:
            raise self.mismatch(rules, upload.offset, offset)
        if upload.is_complete:
            if body_length == 0 and complete:  # nothing to add: the final response again
                return self.appended(rules, upload)
            if rules.problem(COMPLETED_UPLOAD):
                raise DraftError(COMPLETED_UPLOAD, "the upload is already complete")
            raise inconsistent("the upload is already complete")
        length = known_length(offset, body_length, complete, declared, upload.length)
        if engine.server.max_size and (length or 0) > engine.server.max_size:
            raise SizeExceeded("maximum upload size exceeded")
        try:
            written = await engine._write_body(
                request, upload_id, offset, length if upload.length is None else None, None,
                draft=True, completes=complete)
        except MismatchedOffset as exc:  # moved between the check above and the lock
            raise self.mismatch(rules, exc.offset if exc.offset is not None else 0,
                                offset) from None
        except SizeExceeded:
            if length is None:
                raise
            raise inconsistent("the request goes past the upload's length") from None
        await engine._after_write(request, written)
        if written.outcome is not Outcome.COMPLETE:
            raise self.interrupted(rules, written)
        return self.appended(rules, written.upload)

    def appended(self, rules: DraftRules, upload: Upload) -> web.Response:
        status = 204 if upload.is_complete else rules.append_status
        return web.Response(status=status, headers=self.state_headers(rules, upload))

    def interrupted(self, rules: DraftRules, written: Written) -> TusError:
        """The answer to a body cut short: its bytes are kept, the upload is not complete."""
        error = interrupted(written.writer)
        error.headers.update(self.state_headers(rules, written.upload))
        error.close_connection = True  # the rest of the body was never read
        return error

    # -- offset retrieval, cancellation ----------------------------------------------

    async def load(self, upload_id: str) -> Upload:
        """A live upload created through the draft (404 for a tus upload)."""
        upload = await self.engine._load(upload_id)
        if DRAFT_MARK not in upload.metadata:
            raise NotFound()
        return upload

    @staticmethod
    def check_retrieval(request: web.Request, rules: DraftRules) -> None:
        """3 to 6: offset retrieval and cancellation carry no upload fields (400)."""
        if not rules.strict_retrieval:
            return
        names = ["Upload-Offset", rules.complete_header]
        if rules.upload_length:
            names.append("Upload-Length")
        for name in names:
            if name in request.headers:
                raise BadRequest(f"{request.method} carries no {name}")

    async def retrieve(self, request: web.Request, rules: DraftRules,
                       upload_id: str) -> web.StreamResponse:
        self.check_retrieval(request, rules)
        upload = await self.load(upload_id)
        headers = self.state_headers(rules, upload)
        if upload.length is not None and rules.upload_length:
            headers["Upload-Length"] = str(upload.length)
        if rules.upload_limit:
            headers["Upload-Limit"] = self.limit_header(rules, upload)
        headers["Cache-Control"] = "no-store"
        return web.Response(status=204, headers=headers)

    async def cancel(self, request: web.Request, rules: DraftRules,
                     upload_id: str) -> web.StreamResponse:
        self.check_retrieval(request, rules)
        await self.engine.terminate(request, upload_id, draft=True)
        return web.Response(status=204)


def _body_length(request: web.Request) -> tuple[bool, int | None]:
    """(chunked, the body's length): a chunked body's length is unknown (None), a
    request with neither Content-Length nor chunking has none (0)."""
    headers = request.headers
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return True, None
    length = parse_uint(headers.get("Content-Length"), "Content-Length", required=False)
    return False, length or 0
