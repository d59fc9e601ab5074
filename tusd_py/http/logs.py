"""Logging set-up: plain text or JSON lines, and a one-line-per-request access log."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from ..core.events import UploadListener
from ..storage.base import Upload
from .keys import ACCESS_ANNOTATION

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in record.__dict__.items()
                  if key not in _STANDARD and not key.startswith("_")}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname, record.name, record.getMessage(),
                         fields)


def json_line(created: float, level: str, logger: str, message: str,
              fields: dict[str, Any]) -> str:
    """The JSON log shape: time (UTC, ms), level, logger, message, then the fields."""
    entry: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int((created - int(created)) * 1000):03d}Z",
        "level": level.lower(), "logger": logger, "message": message}
    entry.update(fields)
    return json.dumps(entry, default=str)


_stamp_second = -1
_stamp_local = ""
#: "000" to "999": the milliseconds of a stamp without a format spec per line.
_MILLIS = tuple(f"{ms:03d}" for ms in range(1000))


def text_stamp(created: float) -> str:
    """``logging.Formatter``'s default asctime (local time, ``,mmm``), cached per second."""
    global _stamp_second, _stamp_local
    second = int(created)
    if second != _stamp_second:
        _stamp_second = second
        _stamp_local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
    return f"{_stamp_local},{_MILLIS[int((created - second) * 1000)]}"


class BufferedStderrHandler(logging.StreamHandler):
    """Writes records into a 64 KiB buffer instead of one write(2) per line.

    Warnings and errors are flushed at once; everything else within ``flush_interval``
    (the daemon calls ``flush()`` on a timer) or when the buffer fills. Access lines
    (``write_line``) wait in a list and reach the stream joined, before any later record.
    """

    #: Access lines held before they are written to the stream (about 10 KiB of text).
    MAX_LINES = 64

    def __init__(self) -> None:
        stream = open(sys.stderr.fileno(), "w", buffering=65536, closefd=False,
                      encoding="utf-8", errors="replace")
        super().__init__(stream)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write_lines()  # the access lines logged before this record
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_lines()
            self.stream.flush()

    def write_line(self, line: str) -> None:
        """Append one preformatted INFO line, ending with a newline (the access log's
        fast path: a list append, written out by ``flush``, the next record or when
        ``MAX_LINES`` wait)."""
        lines = self._lines
        lines.append(line)
        if len(lines) >= self.MAX_LINES:
            with self.lock:  # type: ignore[union-attr]
                self._write_lines()

    def _write_lines(self) -> None:
        """Move the waiting access lines into the stream (under ``self.lock``). Lines
        appended meanwhile, by another thread, stay for the next call."""
        lines = self._lines
        if lines:
            count = len(lines)
            self.stream.write("".join(lines[:count]))
            del lines[:count]


_handler: BufferedStderrHandler | None = None
_json_lines = False


class ParseErrorFilter(logging.Filter):
    """Drops aiohttp's "Error handling request" traceback for a request it could not
    parse (``HttpProcessingError``: a malformed request line or header): it is the
    client's fault, answered 400, and has its one access-log line like any request."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    global _handler, _json_lines
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
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParseErrorFilter) for f in server_log.filters):
        server_log.addFilter(ParseErrorFilter())
    root.setLevel(level.upper())
    _handler = handler
    _json_lines = fmt == "json"


def flush_logs() -> None:
    """Write out buffered log lines (called periodically and at exit)."""
    if _handler is not None:
        _handler.flush()


class RequestAnnotator(UploadListener):
    """Tags each request with what it did to an upload, for its access-log line: the id
    of an upload a POST created, and the bytes a PATCH (or POST with a body) committed."""

    def created(self, upload: Upload, request: web.Request) -> None:
        request[ACCESS_ANNOTATION] = (upload.id, None)

    def progress(self, upload: Upload, request: web.Request, received: int) -> None:
        # A PATCH's request is untagged: ``len`` says so without the KeyError that a
        # lookup of a missing key raises inside ``get``.
        before = request.get(ACCESS_ANNOTATION, _NOTHING)[1] if len(request) else None
        request[ACCESS_ANNOTATION] = (upload.id, (before or 0) + received)


#: Methods whose body can be committed to an upload (``received`` in the access line).
_BODY_METHODS = frozenset({"PATCH", "POST"})
_NOTHING = (None, None)


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, bytes in/out, duration, upload id and
    the bytes committed to the upload (``received``, when it wrote any).

    Only the path is logged (no query string, no headers), so tokens in URLs or
    Authorization headers never reach the logs. With the daemon's handler installed
    (``setup_logging``) the line is formatted here and written straight into its buffer,
    in the same text or JSON shape as every other record; elsewhere it goes through
    ``logging`` as usual.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        # One call per request: kept lean (measured 27 k instructions a text line before
        # the list of lines and the stamp table, see docs/benchmarks.md).
        if not self.logger.isEnabledFor(logging.INFO):
            return
        method = request.method
        if method in _BODY_METHODS:  # the id of an upload a POST created, bytes committed
            upload_id, received = request.get(ACCESS_ANNOTATION, _NOTHING)
        else:
            upload_id = received = None
        if upload_id is None:
            try:
                upload_id = request.match_info.get("upload_id")  # type: ignore[attr-defined]
            except (AttributeError, AssertionError):
                # A request aiohttp refused while parsing it (400) was never routed:
                # it has no match_info, and web.Request asserts one.
                upload_id = None
        declared = request.headers.get(hdrs.CONTENT_LENGTH)  # aiohttp parsed it: digits
        bytes_in = int(declared) if declared else 0
        path, status = request.path, response.status
        bytes_out = response.body_length
        message = "%s %s %d in=%d out=%d %.1fms" % (  # noqa: UP031 (cheaper than an f-string)
            method, path, status, bytes_in, bytes_out, duration * 1000)
        if upload_id is not None:
            message += f" upload={upload_id}"
        if received is not None:
            message += f" received={received}"
        handler = _handler
        if handler is not None and not _json_lines and not self.logger.handlers \
                and self.logger.propagate:
            handler.write_line(f"{text_stamp(time.time())} INFO {self.logger.name}: {message}\n")
            return
        fields = {"method": method, "path": path, "status": status, "bytes_in": bytes_in,
                  "bytes_out": bytes_out, "received": received,
                  "duration_ms": round(duration * 1000, 2), "upload_id": upload_id,
                  "remote": request.remote}
        if handler is None or self.logger.handlers or not self.logger.propagate:
            self.logger.info(message, extra=fields)
        else:
            handler.write_line(json_line(time.time(), "info", self.logger.name, message, fields)
                               + "\n")
