"""CORS and shared caches: ``Vary: Origin`` on every response whose headers depend on
the request's Origin (real daemon over HTTP; browser behaviour is in test_browser.py)."""

from __future__ import annotations

import aiohttp

from tests.plugins.daemon import Daemon

from .test_proxy import TUS, create, patch

ALLOWED, OTHER = "https://app.example", "https://evil.example"


def varies_on_origin(response: aiohttp.ClientResponse) -> bool:
    values = ",".join(response.headers.getall("Vary", ()))
    return "origin" in {v.strip().lower() for v in values.split(",")}


async def test_explicit_allow_list_varies_every_response_on_origin(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__CORS__ALLOWED_ORIGINS": ALLOWED})
    async with aiohttp.ClientSession() as s:
        url = await create(s, daemon.url, 3)
        assert await patch(s, url, 0, b"abc") == 3
        requests = [("GET", url, {}), ("HEAD", url, TUS), ("OPTIONS", daemon.url, {}),
                    ("HEAD", daemon.url + "0" * 32, TUS)]  # a 404 too
        for method, target, headers in requests:
            for origin in (None, ALLOWED, OTHER):
                sent = {**headers, **({"Origin": origin} if origin else {})}
                async with s.request(method, target, headers=sent) as r:
                    case = (method, target, origin, r.status, dict(r.headers))
                    assert varies_on_origin(r), case
                    assert len(r.headers.getall("Vary")) == 1, case
                    if origin == ALLOWED:
                        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED, case
                    else:
                        assert "Access-Control-Allow-Origin" not in r.headers, case
        # The preflight of an allowed origin, and of a refused one.
        for origin in (ALLOWED, OTHER):
            async with s.options(url, headers={"Origin": origin,
                                               "Access-Control-Request-Method": "PATCH"}) as r:
                assert varies_on_origin(r)
                assert ("Access-Control-Allow-Methods" in r.headers) is (origin == ALLOWED)


async def test_any_origin_varies_only_responses_without_origin(daemon: Daemon) -> None:
    """With ``*`` every Origin gets the same answer; only a request without Origin gets a
    different one (no CORS headers), so only that one is marked."""
    async with aiohttp.ClientSession() as s:
        url = await create(s, daemon.url, 3)
        assert await patch(s, url, 0, b"abc") == 3
        async with s.get(url) as r:
            assert varies_on_origin(r)
            assert "Access-Control-Allow-Origin" not in r.headers
        for origin in (ALLOWED, OTHER):
            async with s.get(url, headers={"Origin": origin}) as r:
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert not varies_on_origin(r)
                assert await r.read() == b"abc"


async def test_cors_disabled_adds_nothing(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__CORS__ENABLED": "false"})
    async with aiohttp.ClientSession() as s:
        async with s.options(daemon.url, headers={"Origin": ALLOWED}) as r:
            assert r.status == 204
            assert "Vary" not in r.headers and "Access-Control-Allow-Origin" not in r.headers
