"""Exceptions raised by the tus client."""

from __future__ import annotations

import asyncio
import os

import aiohttp

__all__ = ["TusClientError", "TusResponseError", "UploadNotFound", "describe"]


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


def describe(exc: BaseException) -> str:
    """What went wrong, in one line: a network error as an operator says it
    (``cannot connect to 127.0.0.1:8080: connection refused``), not aiohttp's repr."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        why = (os.strerror(os_error.errno).lower() if os_error.errno and os_error.errno > 0
               else str(os_error) or type(os_error).__name__)
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the transfer was cut short ({exc})"
    if isinstance(exc, OSError) and exc.errno:
        why = os.strerror(exc.errno).lower()
        return f"{exc.filename}: {why}" if exc.filename else why
    return " ".join(str(exc).split()) or type(exc).__name__
