"""Exceptions raised by the tus client."""

from __future__ import annotations

__all__ = ["TusClientError", "TusResponseError", "UploadNotFound"]


class TusClientError(Exception):
    """Anything that makes an upload, download or request fail for good."""


class TusResponseError(TusClientError):
    """The server answered with an unexpected status (after any retries)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        detail = f"{message}: HTTP {status}" if status is not None else message
        if body:
            detail += f" ({body.strip()[:200]})"
        super().__init__(detail)
        self.status = status
        self.body = body


class UploadNotFound(TusResponseError):
    """The upload does not exist (404) or no longer exists (410)."""
