"""OpenTelemetry tracing (the ``otel`` extra): a server span per request, from
OpenTelemetry's own aiohttp server instrumentation, and a span per storage operation.

Off unless the standard ``OTEL_*`` variables ask for traces (``tracing_wanted``); then
``create_app`` puts the instrumentation's middleware first and wraps the store in
``TracedStore``. Off, nothing is added: no middleware, no wrapper, no import of
OpenTelemetry.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .storage.base import Download, Store, Upload, UploadLock

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.trace import Tracer, TracerProvider

log = logging.getLogger(__name__)

#: The tracer's name (instrumentation scope) of the storage spans.
SCOPE = "tusd_py.storage"

#: The provider built from the environment, once per process (OpenTelemetry's global).
_from_env: TracerProvider | None = None
#: The aiohttp server instrumentation's module state is set up (once per process).
_instrumented = False


def tracing_wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an ``OTEL_TRACES_EXPORTER`` other
    than ``none``, or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); never with ``OTEL_SDK_DISABLED=true``."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None and exporter.strip():
        return exporter.strip().lower() != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_env() -> TracerProvider | None:
    """The process's tracer provider as the ``OTEL_*`` variables configure it (exporter
    ``otlp`` over HTTP/protobuf or ``console``, batched; sampler, resource and endpoint
    read by the SDK itself), or None when they do not ask for traces or the ``otel``
    extra is not installed (warned)."""
    global _from_env
    if _from_env is not None or not tracing_wanted():
        return _from_env
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but OpenTelemetry is not installed "
                    "(pip install 'tusd-py[otel]'); tracing is off")
        return None
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME")
                               else {SERVICE_NAME: "tusd-py"})
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                      os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
            if protocol != "http/protobuf":
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not available; traces go "
                            "over http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not available (otlp, console); ignored", name)
            continue
        else:
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _from_env = provider
    log.info("tracing on: exporter(s) %s", ",".join(names))
    return provider


def server_middleware(provider: TracerProvider) -> Callable[..., Any]:
    """OpenTelemetry's aiohttp server middleware (opentelemetry-instrumentation-
    aiohttp-server) for one provider. Its module state (the URL exclusions,
    ``OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS``, and its metric instruments) is set up by
    its instrumentor, run once; the class it patches into aiohttp is put back at once:
    the middleware goes into tusd-py's own list, where it is outermost."""
    from aiohttp import web
    from opentelemetry.instrumentation.aiohttp_server import (
        AioHttpServerInstrumentor,
        create_aiohttp_middleware,
    )

    global _instrumented
    if not _instrumented:
        instrumentor = AioHttpServerInstrumentor()
        application = web.Application
        with warnings.catch_warnings():  # its subclass of web.Application, unused here
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor.instrument(tracer_provider=provider)
        instrumentor.uninstrument()
        web.Application = application  # type: ignore[misc]
        _instrumented = True
    return create_aiohttp_middleware(tracer_provider=provider)


async def flush_on_cleanup(provider: Any, app: web.Application) -> None:
    """Export the spans still buffered when the app stops."""
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush()


class TracedStore(Store):
    """``store`` with a span per operation (``tusd.storage.<operation>``): create, get,
    lock, the bytes one request wrote (``write``), commit, rollback, terminate,
    concatenate, download. Optional capabilities are the inner store's own."""

    def __init__(self, store: Store, tracer: Tracer) -> None:
        self.inner = store
        self.tracer = tracer
        self.name = store.name

    def _span(self, operation: str, upload_id: str | None = None, **attributes: Any) -> Any:
        attributes["tusd.storage.driver"] = self.name
        if upload_id is not None:
            attributes["tusd.upload_id"] = upload_id
        return self.tracer.start_as_current_span(f"tusd.storage.{operation}",
                                                 attributes=attributes)

    def __getattr__(self, name: str) -> Any:  # optional capabilities, driver specifics
        value = getattr(self.inner, name)
        traced = _TRACED_METHODS.get(name)
        return traced(self, value) if traced is not None else value

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def ping(self) -> None:
        await self.inner.ping()

    def writable_paths(self) -> tuple[str, ...]:
        return self.inner.writable_paths()

    def new_upload_id(self) -> str:
        return self.inner.new_upload_id()

    async def sweep_extra(self, now: float) -> int:
        return await self.inner.sweep_extra(now)

    async def create(self, upload: Upload) -> Upload:
        with self._span("create", upload.id, **{"tusd.upload.length": upload.length or -1}):
            return await self.inner.create(upload)

    async def get(self, upload_id: str) -> Upload | None:
        with self._span("get", upload_id):
            return await self.inner.get(upload_id)

    async def lock(self, upload_id: str, wait: float) -> UploadLock:
        with self._span("lock", upload_id):
            return TracedLock(await self.inner.lock(upload_id, wait), self)


def _traced_terminate(store: TracedStore, method: Any) -> Any:
    async def terminate(upload_id: str) -> None:
        with store._span("terminate", upload_id):
            await method(upload_id)
    return terminate


def _traced_concatenate(store: TracedStore, method: Any) -> Any:
    async def concatenate(final: Upload, partials: list[Upload]) -> Upload:
        with store._span("concatenate", final.id, **{"tusd.partials": len(partials)}):
            return await method(final, partials)
    return concatenate


def _traced_download(store: TracedStore, method: Any) -> Any:
    async def download(upload: Upload) -> Download:
        with store._span("download", upload.id):
            return await method(upload)
    return download


_TRACED_METHODS: dict[str, Callable[[TracedStore, Any], Any]] = {
    "terminate": _traced_terminate, "concatenate": _traced_concatenate,
    "download": _traced_download}


class TracedLock(UploadLock):
    """A lock of a ``TracedStore``: the bytes written between two commits become one
    ``tusd.storage.write`` span (from the first write to the commit or rollback, with the
    byte count), then the commit or rollback has its own span."""

    def __init__(self, lock: UploadLock, store: TracedStore) -> None:
        self.inner = lock
        self.store = store
        self.first_write_ns = 0
        inner_nowait = lock.write_nowait
        if inner_nowait is not None:
            def write_nowait(data: bytes) -> None:
                if not self.first_write_ns:
                    self.first_write_ns = time.time_ns()
                inner_nowait(data)
            self.write_nowait = write_nowait

    @property
    def upload(self) -> Upload:
        return self.inner.upload

    @upload.setter
    def upload(self, upload: Upload) -> None:
        self.inner.upload = upload

    @property
    def written(self) -> int:
        return self.inner.written

    @written.setter
    def written(self, count: int) -> None:
        self.inner.written = count

    @property
    def on_takeover_request(self) -> Callable[[], None] | None:
        return self.inner.on_takeover_request

    @on_takeover_request.setter
    def on_takeover_request(self, callback: Callable[[], None] | None) -> None:
        self.inner.on_takeover_request = callback

    async def write(self, data: bytes) -> None:
        if not self.first_write_ns:
            self.first_write_ns = time.time_ns()
        await self.inner.write(data)

    def _end_write(self, kept: bool) -> None:
        if not self.first_write_ns:
            return
        span = self.store.tracer.start_span("tusd.storage.write", start_time=self.first_write_ns,
                                            attributes={
            "tusd.storage.driver": self.store.name, "tusd.upload_id": self.upload.id,
            "tusd.upload.offset": self.upload.offset, "tusd.bytes": self.inner.written,
            "tusd.kept": kept})
        span.end()
        self.first_write_ns = 0

    async def commit(self, *, length: int | None = None,
                     expires_at: float | None = None) -> Upload:
        self._end_write(True)
        with self.store._span("commit", self.upload.id):
            return await self.inner.commit(length=length, expires_at=expires_at)

    async def rollback(self) -> None:
        self._end_write(False)
        with self.store._span("rollback", self.upload.id):
            await self.inner.rollback()

    async def release(self) -> None:
        await self.inner.release()
