"""Tracing (the ``otel`` extra): OpenTelemetry's aiohttp server span per request and a
span per storage operation, recorded by the SDK's in-memory exporter; off unless the
``OTEL_*`` variables ask for it; exported over OTLP/HTTP by a real daemon."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.http.helpers import OCTET, TUS, path_of
from tests.plugins.app import DRIVERS, make_config
from tests.plugins.daemon import Daemon, free_port
from tusd_py.http.app import create_app
from tusd_py.http.keys import STORE
from tusd_py.tracing import TracedStore, tracing_wanted


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [s.name for s in spans
            if s.parent is not None and s.parent.span_id == parent.context.span_id]


@pytest.mark.parametrize("storage_config", DRIVERS, indirect=True)
async def test_a_span_per_request_and_per_storage_operation(aiohttp_client, storage_config,
                                                            exporter) -> None:  # type: ignore[no-untyped-def]
    provider, memory = exporter
    client = await aiohttp_client(create_app(make_config(storage_config), tracer_provider=provider))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    r = await client.post("/files/", headers={
        **TUS, "Upload-Length": "6", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert r.status == 201
    path = path_of(r.headers["Location"])
    for offset, part in ((0, b"abc"), (3, b"def")):
        r = await client.patch(path, data=part, headers={**TUS, "Upload-Offset": str(offset),
                                                         "Content-Type": OCTET})
        assert r.status == 204
    assert (await client.get(path)).status == 200
    assert (await client.delete(path, headers=TUS)).status == 204
    spans = memory.get_finished_spans()

    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.attributes.get("http.method") or s.attributes.get("http.request.method")
            for s in servers] == ["POST", "PATCH", "PATCH", "GET", "DELETE"]
    post, first_patch = servers[0], servers[1]
    assert format(post.context.trace_id, "032x") == trace_id  # the client's trace goes on
    assert "tusd.storage.create" in children(spans, post)
    assert children(spans, first_patch) == ["tusd.storage.lock", "tusd.storage.write",
                                            "tusd.storage.commit"]
    writes = by_name(spans, "tusd.storage.write")
    assert [w.attributes["tusd.bytes"] for w in writes] == [3, 3]
    assert [w.attributes["tusd.upload.offset"] for w in writes] == [0, 3]
    upload_id = path.rsplit("/", 1)[1]
    assert {w.attributes["tusd.upload_id"] for w in writes} == {upload_id}
    assert all(w.attributes["tusd.storage.driver"] == storage_config["driver"] for w in writes)
    assert all(w.start_time < w.end_time for w in writes)
    assert "tusd.storage.terminate" in children(spans, servers[4])
    assert "tusd.storage.download" in children(spans, servers[3])


async def test_concatenation_is_one_span(aiohttp_client, local_storage_config, exporter) -> None:  # type: ignore[no-untyped-def]
    provider, memory = exporter
    client = await aiohttp_client(create_app(make_config(local_storage_config),
                                             tracer_provider=provider))
    partials = []
    for part in (b"ab", b"cd"):
        r = await client.post("/files/", data=part, headers={
            **TUS, "Upload-Length": "2", "Upload-Concat": "partial", "Content-Type": OCTET})
        partials.append(path_of(r.headers["Location"]))
    memory.clear()
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(partials)})
    assert r.status == 201
    (concat,) = by_name(memory.get_finished_spans(), "tusd.storage.concatenate")
    assert concat.attributes["tusd.partials"] == 2


def test_off_unless_the_otel_variables_ask() -> None:
    assert not tracing_wanted({})
    assert not tracing_wanted({"OTEL_SERVICE_NAME": "x"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "none",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing_wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


async def test_off_means_nothing_is_added(aiohttp_client, local_storage_config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(make_config(local_storage_config))
    assert not isinstance(app[STORE], TracedStore)
    assert len(app.middlewares) == 1  # the front middleware alone (no limits configured)


class Collector:
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf bodies, as a collector."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, dict[str, Any]]] = []  # (service, span, attributes)
        self.port = free_port()
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((service.get("service.name", ""), span.name,
                                       {a.key: a.value for a in span.attributes}))
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")


async def test_a_daemon_exports_over_otlp_when_the_variables_say_so(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", collector.port).start()
    try:
        daemon: Daemon = await asyncio.to_thread(daemon_factory, env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "uploads-eu"})
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.post(daemon.url, data=b"hi", headers={
                    **TUS, "Upload-Length": "2", "Content-Type": OCTET}) as r:
                assert r.status == 201
        async with asyncio.timeout(10):
            while not any(name == "tusd.storage.commit" for _, name, _ in collector.spans):
                collector.arrived.clear()
                await collector.arrived.wait()
        names = {name for _, name, _ in collector.spans}
        assert {"tusd.storage.create", "tusd.storage.write", "tusd.storage.commit"} <= names
        assert {service for service, _, _ in collector.spans} == {"uploads-eu"}
    finally:
        await runner.cleanup()
