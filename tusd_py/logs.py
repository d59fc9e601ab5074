"""Logging set-up: plain text or JSON lines, and a one-line-per-request access log."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .events import UploadListener
from .storage.base import Upload

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class BufferedStderrHandler(logging.StreamHandler):
    """Writes records into a 64 KiB buffer instead of one write(2) per line.

    Warnings and errors are flushed at once; everything else within ``flush_interval``
    (the daemon calls ``flush()`` on a timer) or when the buffer fills. On a busy server
    this turns thousands of access-log syscalls per second into a few.
    """

    def __init__(self) -> None:
        stream = open(sys.stderr.fileno(), "w", buffering=65536, closefd=False,
                      encoding="utf-8", errors="replace")
        super().__init__(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.stream.flush()


_handler: BufferedStderrHandler | None = None


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    global _handler
    # The daemon logs no caller location, thread or process names: skipping their
    # lookup makes a log record several times cheaper (one per request in the access log).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BufferedStderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _handler = handler


def flush_logs() -> None:
    """Write out buffered log lines (called periodically and at exit)."""
    if _handler is not None:
        _handler.flush()


#: Request keys ``RequestAnnotator`` sets for the access log (typed keys where aiohttp
#: has them, 3.12+; plain strings before).
UPLOAD_ID_KEY: Any
RECEIVED_KEY: Any
try:
    from aiohttp.web import RequestKey

    UPLOAD_ID_KEY = RequestKey("tusd_upload_id", str)
    RECEIVED_KEY = RequestKey("tusd_received", int)
except ImportError:  # pragma: no cover - older aiohttp
    UPLOAD_ID_KEY, RECEIVED_KEY = "tusd_upload_id", "tusd_received"


class RequestAnnotator(UploadListener):
    """Tags each request with what it did to an upload, for its access-log line: the id
    of an upload a POST created, and the bytes a PATCH (or POST with a body) committed."""

    def created(self, upload: Upload, request: web.Request) -> None:
        request[UPLOAD_ID_KEY] = upload.id

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        request[RECEIVED_KEY] = request.get(RECEIVED_KEY, 0) + received


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, bytes in/out, duration, upload id and
    the bytes committed to the upload (``received``, when it wrote any).

    Only the path is logged (no query string, no headers), so tokens in URLs or
    Authorization headers never reach the logs.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        upload_id = request.get(UPLOAD_ID_KEY)
        if upload_id is None and hasattr(request, "match_info"):
            upload_id = request.match_info.get("upload_id")
        received = request.get(RECEIVED_KEY)
        bytes_in = request.content_length or 0
        extra = "" if upload_id is None else f" upload={upload_id}"
        if received is not None:
            extra += f" received={received}"
        self.logger.info(
            "%s %s %s in=%d out=%d %.1fms%s", request.method, request.path, response.status,
            bytes_in, response.body_length, duration * 1000, extra,
            extra={"method": request.method, "path": request.path, "status": response.status,
                   "bytes_in": bytes_in, "bytes_out": response.body_length,
                   "received": received, "duration_ms": round(duration * 1000, 2),
                   "upload_id": upload_id, "remote": request.remote},
        )
