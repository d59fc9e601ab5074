"""Per-user auth with a pre-create + pre-access Python hook (the recipe in docs/hooks/python.md)."""

from __future__ import annotations

import aiohttp

from tests.plugins.daemon import ROOT

from .test_proxy import PATCH_HEADERS, TUS


async def test_pre_create_hook_auth_recipe(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(env={"PYTHONPATH": str(ROOT),
                                 "TUSD_HOOKS__PYTHON": "tests.ops.auth_hook:check",
                                 "TUSD_HOOKS__ENABLED": "pre-create,pre-access"})
    alice = {"Authorization": "Bearer alice-token"}
    bob = {"Authorization": "Bearer bob-token"}
    async with aiohttp.ClientSession() as s:
        async with s.post(daemon.url, headers={**TUS, "Upload-Length": "3"}) as r:
            assert r.status == 401
            assert await r.text() == "login required"
        async with s.post(daemon.url, headers={**TUS, **alice, "Upload-Length": "3",
                                               "Upload-Metadata": "filename YS50eHQ="}) as r:
            assert r.status == 201
            url = r.headers["Location"]
        async with s.patch(url, data=b"abc", headers={**PATCH_HEADERS, **bob, "Upload-Offset": "0"}) as r:
            assert r.status == 403
        async with s.head(url, headers={**TUS, **bob}) as r:
            assert r.status == 403
        async with s.patch(url, data=b"abc", headers={**PATCH_HEADERS, **alice, "Upload-Offset": "0"}) as r:
            assert r.status == 204
        async with s.head(url, headers={**TUS, **alice}) as r:
            assert r.status == 200
            # the owner was added, the client's metadata kept
            assert set(r.headers["Upload-Metadata"].split(",")) == {"filename YS50eHQ=", "owner YWxpY2U="}
