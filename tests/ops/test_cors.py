"""CORS and shared caches: ``Vary: Origin`` on every response whose headers depend on
the request's Origin (real daemon over HTTP; browser behaviour is in test_browser.py)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.plugins.app import make_config
from tests.plugins.daemon import Daemon
from tusd_py.config import ConfigError, load_config
from tusd_py.http.app import create_app
from tusd_py.http.keys import GATE
from tusd_py.protocol.constants import ALLOW_HEADERS, EXPOSE_HEADERS

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


async def test_origin_patterns_match_the_whole_origin(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """Exact origins and ``^`` patterns (tusd's -cors-allow-origin is a regex): a pattern
    must match all of the Origin, never a part of it."""
    patterns = json.dumps([ALLOWED, r"^https://[a-z]+\.example\.org$"])
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__CORS__ALLOWED_ORIGINS": patterns})
    cases = {ALLOWED: True, "https://uploads.example.org": True, OTHER: False,
             "https://uploads.example.org.evil.example": False,
             "https://evil.example/?https://uploads.example.org": False,
             "http://uploads.example.org": False, "https://UPLOADS.example.org": False,
             "https://app.example:8443": False}
    async with aiohttp.ClientSession() as s:
        for origin, allowed in cases.items():
            async with s.options(daemon.url, headers={"Origin": origin,
                                                      "Access-Control-Request-Method": "POST"}) as r:
                assert r.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None), origin
                assert varies_on_origin(r)


async def test_extra_headers_and_methods(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """allowed_headers / exposed_headers come on top of the tus ones; allowed_methods is
    the list answered to a preflight."""
    daemon: Daemon = daemon_factory(env={
        "TUSD_SERVER__CORS__ALLOWED_HEADERS": "X-Tenant, upload-offset",
        "TUSD_SERVER__CORS__EXPOSED_HEADERS": "X-Upload-Token",
        "TUSD_SERVER__CORS__ALLOWED_METHODS": "POST, HEAD, PATCH, OPTIONS"})
    async with aiohttp.ClientSession() as s:
        async with s.options(daemon.url, headers={"Origin": ALLOWED,
                                                  "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "x-tenant"}) as r:
            assert r.headers["Access-Control-Allow-Methods"] == "POST, HEAD, PATCH, OPTIONS"
            allowed = r.headers["Access-Control-Allow-Headers"].split(", ")
            assert allowed == [*ALLOW_HEADERS, "X-Tenant"]  # Upload-Offset not twice
            assert "Access-Control-Expose-Headers" not in r.headers
        async with s.post(daemon.url, headers={**TUS, "Origin": ALLOWED, "Upload-Length": "1"}) as r:
            assert r.status == 201
            assert r.headers["Access-Control-Expose-Headers"].split(", ") == [
                *EXPOSE_HEADERS, "X-Upload-Token"]


def test_bad_cors_values_are_refused_by_name() -> None:
    for env, needle in [
        ({"TUSD_SERVER__CORS__ALLOWED_ORIGINS": "https://app.example/"},
         "server.cors.allowed_origins: 'https://app.example/' is not an origin"),
        ({"TUSD_SERVER__CORS__ALLOWED_ORIGINS": "^https://(app"},
         "server.cors.allowed_origins: '^https://(app' is not a regular expression"),
        ({"TUSD_SERVER__CORS__ALLOWED_HEADERS": "X-Ok, Not A Header"},
         "server.cors.allowed_headers: not HTTP names: ['Not A Header']"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config("/dev/null", env=env)
        assert needle in str(err.value)


async def test_the_refusals_of_a_stopping_server_carry_cors_headers(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A browser must be able to read the 503 that tells it to retry."""
    client = await aiohttp_client(create_app(make_config(
        {"driver": "local", "data_dir": str(tmp_path)}, server={"cors.allowed_origins": [ALLOWED]})))
    client.app[GATE].stopping = True
    r = await client.head("/files/" + "0" * 32, headers={**TUS, "Origin": ALLOWED})
    assert r.status == 503
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED and varies_on_origin(r)
