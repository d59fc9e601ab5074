"""tusd v2's hook wire format: building ``HookRequest`` JSON, reading ``HookResponse`` JSON.

Field names are tusd's (``github.com/tus/tusd/v2/pkg/hooks.HookRequest`` / ``HookResponse``
and ``handler.FileInfo`` / ``handler.HTTPRequest``), so a receiver written for tusd works
unchanged::

    {"Type": "post-finish",
     "Event": {"Upload": {"ID", "Size", "SizeIsDeferred", "Offset", "MetaData", "IsPartial",
                          "IsFinal", "PartialUploads", "Storage"},
               "HTTPRequest": {"Method", "URI", "RemoteAddr", "Header"}}}

    {"HTTPResponse": {"StatusCode", "Body", "Header"}, "RejectUpload", "RejectTermination",
     "ChangeFileInfo": {"ID", "MetaData", "Storage"}, "StopUpload"}
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..protocol.constants import PRE_CREATE
from ..storage.base import Upload

if TYPE_CHECKING:
    from aiohttp import web

#: Default bodies of refusals, as tusd words them (its ``ErrUploadRejectedByServer`` and
#: ``ErrUploadStoppedByServer``, without the ``ERR_...:`` code prefix no other refusal of
#: this daemon carries either). tusd has no pre-finish default: it sends the hook's
#: ``HTTPResponse`` as given (an empty body if it has none), and so do we.
REJECTED_BODY = "upload creation has been rejected by server\n"
STOPPED_BODY = "upload has been stopped by server\n"
TERMINATION_REJECTED_BODY = "upload termination has been rejected by server\n"
#: Not in tusd (pre-access is ours).
ACCESS_DENIED_BODY = "access denied\n"

#: tusd's names for the storage types, by our driver name.
_STORAGE_TYPES = {"local": "filestore", "s3": "s3store", "gcs": "gcsstore", "azure": "azurestore",
                  "memory": "memorystore"}

_METADATA_KEY = re.compile(r"[^\s,]+")


class HookResponseError(ValueError):
    """A hook answered something that is not a valid tusd hook response."""


def canonical_header(name: str) -> str:
    """Go's ``http.CanonicalHeaderKey``: ``x-forwarded-for`` -> ``X-Forwarded-For``."""
    if not name or any(c in name for c in " \t:"):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def effective_method(request: web.Request) -> str:
    """The method tusd would report (``X-HTTP-Method-Override`` applies to POST)."""
    override = request.headers.get("X-HTTP-Method-Override")
    if override and request.method == "POST":
        return override.strip().upper()
    return request.method


def remote_addr(request: web.Request) -> str:
    """``host:port`` of the peer, like Go's ``Request.RemoteAddr`` (``[::1]:port`` for IPv6)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return request.remote or ""


def http_request_info(request: web.Request | None, method: str | None = None) -> dict[str, Any]:
    """``HTTPRequest``: method, raw URI (path + query), remote address, every header."""
    if request is None:  # e.g. post-terminate for an upload the sweeper expired
        return {"Method": "", "URI": "", "RemoteAddr": "", "Header": {}}
    header: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        header.setdefault(canonical_header(name), []).append(value)
    return {
        "Method": method or effective_method(request),
        "URI": request.raw_path,
        "RemoteAddr": remote_addr(request),
        "Header": header,
    }


def storage_info(upload: Upload, driver: str) -> dict[str, str] | None:
    """``Storage``: where the bytes live, with the keys tusd's store of that kind sends.

    filestore ``{Type, Path}``; s3store and gcsstore ``{Type, Bucket, Key}``; azurestore
    ``{Type, Container, Key}``. tusd's filestore also sends ``InfoPath`` (its ``.info``
    file); the local driver keeps its records in SQLite and has no such file, so the key
    is left out rather than pointing at something a receiver cannot read as an info file.
    """
    if not upload.location:
        return None
    kind = _STORAGE_TYPES.get(driver, driver)
    if driver == "local":
        return {"Type": kind, "Path": upload.location}
    if driver == "memory":  # not a tusd store: the upload id is all there is to say
        return {"Type": kind, "Key": upload.id}
    location = upload.location
    if "://" in location:  # s3://bucket/key, gs://bucket/key, azure://container/key
        location = location.split("://", 1)[1]
    bucket, _, key = location.partition("/")
    if driver == "azure":
        return {"Type": kind, "Container": bucket, "Key": key}
    return {"Type": kind, "Bucket": bucket, "Key": key}


def file_info(upload: Upload, driver: str, *, with_id: bool = True) -> dict[str, Any]:
    """``Upload`` (tusd's ``FileInfo``). ``with_id=False`` for pre-create, as tusd sends it."""
    return {
        "ID": upload.id if with_id else "",
        # tusd sends 0 (never null) while the length is deferred; SizeIsDeferred tells.
        "Size": upload.length if upload.length is not None else 0,
        "SizeIsDeferred": upload.length is None,
        "Offset": upload.offset,
        "MetaData": {key: (value or b"").decode("utf-8", "replace")
                     for key, value in upload.metadata.items()},
        "IsPartial": upload.is_partial,
        "IsFinal": upload.is_final,
        "PartialUploads": list(upload.final_of) if upload.is_final else None,
        "Storage": storage_info(upload, driver) if with_id else None,
    }


def hook_request(hook_type: str, upload: Upload, request: web.Request | None, driver: str,
                 method: str | None = None) -> dict[str, Any]:
    """The JSON body tusd POSTs to an HTTP hook endpoint."""
    return {
        "Type": hook_type,
        "Event": {
            "Upload": file_info(upload, driver, with_id=hook_type != PRE_CREATE),
            "HTTPRequest": http_request_info(request, method),
        },
    }


def idempotency_key(hook_type: str, upload: Upload, extra: str = "") -> str:
    """The ``Idempotency-Key`` of one event: the same on every retry and on every replica.

    Derived from the hook type, the upload id and its creation time (stored in the upload's
    record, so every replica reads the same value; it tells apart two uploads that had the
    same hook-chosen id one after the other), plus ``extra`` for events that happen more
    than once per upload (post-receive: the offset; pre-access: one value per request).
    """
    created_us = round(upload.created_at * 1_000_000)
    seed = f"{hook_type}\n{upload.id}\n{created_us}\n{extra}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


@dataclass
class HTTPResponse:
    status_code: int = 0
    body: str | None = None
    header: dict[str, str] = field(default_factory=dict)


@dataclass
class FileInfoChanges:
    id: str | None = None
    metadata: dict[str, str] | None = None
    storage: dict[str, str] | None = None


@dataclass
class HookResponse:
    http_response: HTTPResponse = field(default_factory=HTTPResponse)
    reject_upload: bool = False
    reject_termination: bool = False
    change_file_info: FileInfoChanges = field(default_factory=FileInfoChanges)
    stop_upload: bool = False


def _str_map(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise HookResponseError(f"{where} must be an object of strings")
    out = {}
    for key, item in value.items():
        if isinstance(item, list):  # tolerate Go-style multi-value headers
            item = ", ".join(str(v) for v in item)
        if not isinstance(item, str | int | float):
            raise HookResponseError(f"{where}.{key} must be a string")
        out[key] = str(item)
    return out


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
#: Headers that frame the response: the server's alone.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def _checked_headers(header: dict[str, str] | None) -> dict[str, str]:
    """``HTTPResponse.Header`` as it may reach the wire: token names, values without
    control characters (no CR/LF: the response cannot be split), no framing headers."""
    for name, value in (header or {}).items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _FRAMING_HEADERS:
            raise HookResponseError(f"HTTPResponse.Header: {name[:40]!r} cannot be set")
        if not _HEADER_VALUE.fullmatch(value):
            raise HookResponseError(f"HTTPResponse.Header.{name}: control characters")
    return header or {}


def parse_hook_response(data: Any) -> HookResponse:
    """Validate a decoded hook response (``None`` or ``{}``: carry on unchanged)."""
    if data is None:
        return HookResponse()
    if not isinstance(data, dict):
        raise HookResponseError("a hook response must be a JSON object")
    response = HookResponse()
    http = data.get("HTTPResponse")
    if http is not None:
        if not isinstance(http, dict):
            raise HookResponseError("HTTPResponse must be an object")
        status = http.get("StatusCode") or 0
        if not isinstance(status, int) or isinstance(status, bool) or not (
                status == 0 or 100 <= status <= 599):
            raise HookResponseError("HTTPResponse.StatusCode must be an HTTP status code")
        body = http.get("Body")
        if body is not None and not isinstance(body, str):
            raise HookResponseError("HTTPResponse.Body must be a string")
        response.http_response = HTTPResponse(
            status, body, _checked_headers(_str_map(http.get("Header"), "HTTPResponse.Header")))
    for name, attr in (("RejectUpload", "reject_upload"),
                       ("RejectTermination", "reject_termination"),
                       ("StopUpload", "stop_upload")):
        value = data.get(name)
        if value is not None and not isinstance(value, bool):
            raise HookResponseError(f"{name} must be true or false")
        setattr(response, attr, bool(value))
    changes = data.get("ChangeFileInfo")
    if changes is not None:
        if not isinstance(changes, dict):
            raise HookResponseError("ChangeFileInfo must be an object")
        new_id = changes.get("ID")
        if new_id is not None and not isinstance(new_id, str):
            raise HookResponseError("ChangeFileInfo.ID must be a string")
        metadata = _str_map(changes.get("MetaData"), "ChangeFileInfo.MetaData")
        if metadata is not None:
            bad = [key for key in metadata if not _METADATA_KEY.fullmatch(key)]
            if bad:
                raise HookResponseError(f"ChangeFileInfo.MetaData has invalid keys {bad[:3]}")
        response.change_file_info = FileInfoChanges(
            new_id or None, metadata, _str_map(changes.get("Storage"), "ChangeFileInfo.Storage"))
    return response
