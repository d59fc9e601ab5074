"""Typed tus errors: every refusal the protocol layer can make, with its status.

Handlers and drivers raise these; one middleware (``tusd_py.http.app``) turns them into
responses, so the status code for each condition is decided here and nowhere else.
"""

from __future__ import annotations


class TusError(Exception):
    """A request the server refuses, with the HTTP status and a short plain-text message."""

    status: int = 400
    message: str = "bad request"
    #: Close the connection after the response (the request body was not read to its end).
    close_connection: bool = False

    def __init__(self, message: str | None = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if message is not None:
            self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(TusError):
    status = 400


class UnsupportedVersion(TusError):
    status = 412
    message = "missing, invalid or unsupported Tus-Resumable header"


class NotFound(TusError):
    status = 404
    message = "upload not found"


class Gone(TusError):
    status = 410
    message = "upload expired"


class Forbidden(TusError):
    status = 403


class MismatchedOffset(TusError):
    status = 409
    message = "mismatched offset"


class UploadExists(TusError):
    """A create with an id that is taken (ids chosen by a pre-create hook)."""

    status = 409
    message = "an upload with this id already exists"


class SizeExceeded(TusError):
    status = 413
    message = "upload's size exceeded"


class InvalidContentType(TusError):
    status = 415
    message = "missing or invalid Content-Type header"


class ChecksumMismatch(TusError):
    status = 460
    message = "checksum mismatch"


class UploadBusy(TusError):
    status = 423
    message = "upload is locked by another request"


class NotImplementedByServer(TusError):
    status = 501
    message = "feature not implemented"


class ServiceUnavailable(TusError):
    status = 503
    message = "service unavailable"


class StorageError(TusError):
    """The storage backend failed in a way the client cannot fix."""

    status = 500
    message = "storage error"


class InsufficientStorage(StorageError):
    """The storage is full (ENOSPC, EDQUOT, SQLite's "database or disk is full"): 507.

    The connection is closed after the answer: a body may be left unread."""

    status = 507
    message = "insufficient storage"
    close_connection = True
