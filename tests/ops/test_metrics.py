"""/metrics of a real daemon, scraped over HTTP and parsed with prometheus_client's text
parser after real uploads, a termination, errors and an expiry."""

from __future__ import annotations

import asyncio
import os

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.daemon import Daemon

from .test_proxy import TUS, create, patch


async def scrape(session: aiohttp.ClientSession, daemon: Daemon) -> dict[str, float]:
    """``{sample name + sorted labels: value}`` from the daemon's /metrics."""
    async with session.get(daemon.root + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_metrics_after_uploads(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(env={"TUSD_EXPIRATION__AFTER": "1s"})
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, daemon)
        assert before["tusd_uploads_created_total"] == 0
        assert before["tusd_connections_open"] == 0
        assert before["tusd_uploads_active"] == 0

        data = os.urandom(70_000)
        done = await create(s, daemon.url, len(data))
        await patch(s, done, 0, data[:30_000])
        await patch(s, done, 30_000, data[30_000:])
        deleted = await create(s, daemon.url, 10)
        async with s.delete(deleted, headers=TUS) as r:
            assert r.status == 204
        async with s.head(deleted, headers=TUS) as r:
            assert r.status == 404
        async with s.patch(done, data=b"x", headers={**TUS, "Upload-Offset": "0"}) as r:
            assert r.status == 415  # no Content-Type
        await create(s, daemon.url, 5)  # left to expire (expiration.after 1s, sweep every 1s)

        m = await scrape(s, daemon)
        assert m["tusd_uploads_created_total"] == 3
        assert m["tusd_uploads_finished_total"] == 1
        assert m["tusd_uploads_terminated_total"] == 1
        assert m["tusd_bytes_received_total"] == len(data)
        assert m["tusd_requests_total{method=POST,status=201}"] == 3
        assert m["tusd_requests_total{method=PATCH,status=204}"] == 2
        assert m["tusd_requests_total{method=PATCH,status=415}"] == 1
        assert m["tusd_requests_total{method=DELETE,status=204}"] == 1
        assert m["tusd_requests_total{method=HEAD,status=404}"] == 1
        assert m["tusd_errors_total{status=404}"] == 1
        assert m["tusd_errors_total{status=415}"] == 1
        assert m["tusd_patch_duration_seconds_count"] == 3
        assert m["tusd_patch_duration_seconds_bucket{le=+Inf}"] == 3
        assert 0 < m["tusd_patch_duration_seconds_sum"] < 10
        assert m["tusd_connections_open"] == 0  # /metrics itself is not a tus request
        assert "tusd_requests_total{method=GET,status=200}" not in m

        for _ in range(60):  # the sweeper deletes the idle upload within ~2 s
            m = await scrape(s, daemon)
            if m.get("tusd_uploads_expired_total"):
                break
            await asyncio.sleep(0.1)
        assert m["tusd_uploads_expired_total"] == 1
        assert m["tusd_sweeper_runs_total{result=ok}"] >= 1
        assert m["tusd_uploads_terminated_total"] == 1  # expiry is counted apart


async def test_active_uploads_and_open_requests_during_a_patch(daemon) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        url = await create(s, daemon.url, 1000)
        body: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def stream():  # type: ignore[no-untyped-def]
            while (chunk := await body.get()) is not None:
                yield chunk

        await body.put(b"a" * 100)
        task = asyncio.create_task(s.patch(url, data=stream(), headers={
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
            "Content-Length": "1000"}))
        m: dict[str, float] = {}
        for _ in range(100):
            m = await scrape(s, daemon)
            if m["tusd_uploads_active"]:
                break
            await asyncio.sleep(0.02)
        assert m["tusd_uploads_active"] == 1
        assert m["tusd_connections_open"] == 1
        await body.put(b"b" * 900)
        await body.put(None)
        response = await task
        assert response.status == 204
        response.release()
        m = await scrape(s, daemon)
        assert m["tusd_uploads_active"] == 0
        assert m["tusd_connections_open"] == 0
        assert m["tusd_uploads_finished_total"] == 1


async def test_metrics_can_be_switched_off(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(env={"TUSD_SERVER__METRICS": "false"})
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.root + "/metrics") as r:
            assert r.status == 404


def test_request_counters_and_patch_histogram_exposition() -> None:
    from prometheus_client import CollectorRegistry

    from tusd_py.http.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.answered("PATCH", 204, 0.005)  # on a bound: counted in that bucket (le)
    metrics.answered("PATCH", 204, 0.0051)
    metrics.answered("PATCH", 409, 400.0)  # past the last bound: only +Inf
    metrics.answered("BREW", 405, 0.0)  # unknown methods share one label value
    value = registry.get_sample_value
    assert value("tusd_patch_duration_seconds_bucket", {"le": "0.005"}) == 1
    assert value("tusd_patch_duration_seconds_bucket", {"le": "0.01"}) == 2
    assert value("tusd_patch_duration_seconds_bucket", {"le": "300.0"}) == 2
    assert value("tusd_patch_duration_seconds_bucket", {"le": "+Inf"}) == 3
    assert value("tusd_patch_duration_seconds_count") == 3
    assert value("tusd_patch_duration_seconds_sum") == 0.005 + 0.0051 + 400.0
    assert value("tusd_requests_total", {"method": "PATCH", "status": "204"}) == 2
    assert value("tusd_requests_total", {"method": "other", "status": "405"}) == 1
    assert value("tusd_errors_total", {"status": "409"}) == 1
    assert value("tusd_errors_total", {"status": "204"}) is None
