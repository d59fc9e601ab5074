"""In-process Python hooks (``hooks.python: ["pkg.module:function"]``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from tests.http.helpers import TUS, b64, create, head, patch, path_of, upload
from tests.plugins.app import TusClientFactory, make_config
from tusd_py.config import ConfigError
from tusd_py.hooks.python import PythonHook
from tusd_py.http.app import create_app
from tusd_py.http.keys import HOOKS

from . import sample_hooks
from .conftest import metric
from .test_http_hooks import metrics_text

MOD = "tests.hooks.sample_hooks"


def recorded(upload_id: str, hook_type: str) -> list[tuple[dict, str]]:
    return [(h, t) for h, t in sample_hooks.RECORDED
            if h["Type"] == hook_type and h["Event"]["Upload"]["ID"] == upload_id]


async def wait_recorded(upload_id: str, hook_type: str, count: int = 1) -> list[tuple[dict, str]]:
    async with asyncio.timeout(5):
        while len(recorded(upload_id, hook_type)) < count:
            await asyncio.sleep(0.01)
    return recorded(upload_id, hook_type)


async def test_bearer_token_recipe(tus_client_factory: TusClientFactory):
    client = await tus_client_factory(hooks={"python": [f"{MOD}:check_bearer"],
                                             "enabled": ["pre-create", "pre-access"]})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "4"})
    assert r.status == 401
    assert await r.text() == '{"error":"invalid token"}'
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "4",
                                              "Authorization": "Bearer forged"})
    assert r.status == 401

    alice = {"Authorization": "Bearer t-alice"}
    path = await create(client, 4, Upload_Metadata=f"filename {b64('a.bin')}", **alice)
    h = await client.head(path, headers={**TUS, **alice})
    assert h.status == 200
    assert f"owner {b64('alice')}" in h.headers["Upload-Metadata"]
    # Bob holds a valid token, but this is not his upload.
    r = await patch(client, path, 0, b"data", Authorization="Bearer t-bob")
    assert r.status == 403
    assert await r.text() == "not your upload"
    assert (await head(client, path)).status == 403  # no token at all
    assert (await patch(client, path, 0, b"data", **alice)).status == 204


async def test_sync_and_async_callables_get_tusd_payloads(tus_client_factory: TusClientFactory):
    client = await tus_client_factory(hooks={
        "python": [f"{MOD}:record", f"{MOD}:record_sync"], "post_receive_interval": 0,
        "enabled": ["pre-create", "post-create", "post-receive", "post-finish"]})
    path = await upload(client, b"abcd", chunk=2)
    upload_id = path.rsplit("/", 1)[1]
    finished = await wait_recorded(upload_id, "post-finish", 2)
    threads = {t for _, t in finished}
    assert threading.current_thread().name in threads  # the async one runs on the loop
    assert len(threads) == 2  # the sync one in a thread of its own
    assert f"tusd-hook {MOD}:record_sync" in threads
    hook = finished[0][0]
    assert hook["Event"]["Upload"]["Offset"] == 4
    assert hook["Event"]["HTTPRequest"]["Method"] == "PATCH"
    assert len(await wait_recorded(upload_id, "post-receive", 4)) == 4
    assert len(recorded(upload_id, "post-create")) == 2


async def test_python_hook_may_raise_tus_error(tus_client_factory: TusClientFactory):
    client = await tus_client_factory(hooks={"python": [f"{MOD}:legal_hold"]})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Upload-Metadata": "hold"})
    assert r.status == 451
    assert (await r.text()).strip() == "unavailable for legal reasons"
    await create(client, 1)


async def test_failing_python_hook(tus_client_factory: TusClientFactory, caplog):
    client = await tus_client_factory(hooks={"python": [f"{MOD}:broken"],
                                             "enabled": ["post-create", "post-finish"]})
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        await upload(client, b"zz")
        async with asyncio.timeout(5):
            while metric(await metrics_text(client), "tusd_hook_errors_total", "post-finish") < 1:
                await asyncio.sleep(0.01)
    assert "RuntimeError: boom" in caplog.text
    client2 = await tus_client_factory(hooks={"python": [f"{MOD}:broken"]})
    r = await client2.post("/files/", headers={**TUS, "Upload-Length": "1"})
    # A blocking hook that fails refuses the request: one line, no traceback, no details.
    assert (r.status, await r.text()) == (500, "pre-create hook failed: hook raised an error\n")


async def test_timed_out_sync_hook_runs_on_but_its_answer_is_ignored(
        tus_client_factory: TusClientFactory, caplog):
    """A plain function cannot be interrupted: after its timeout the request gets 500 at
    once, the function finishes in its (daemon) thread, and what it returns is dropped."""
    sample_hooks.SLOW_DONE.clear()
    sample_hooks.SLOW_THREADS.clear()
    client = await tus_client_factory(hooks={"python": [f"{MOD}:slow_pre_create"],
                                             "http": {"timeout": 0.2}})
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks"):
        started = time.monotonic()
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                                  "Upload-Metadata": "slow"})
        assert (r.status, await r.text()) == (500, "pre-create hook failed: hook timed out\n")
        assert time.monotonic() - started < 0.5
        assert not sample_hooks.SLOW_DONE.is_set()  # still running in its thread
        # Meanwhile the next request gets its own answer, not the late one.
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert r.status == 201 and "X-Late" not in r.headers
        assert path_of(r.headers["Location"]) != "/files/late-choice"
        assert await asyncio.to_thread(sample_hooks.SLOW_DONE.wait, 5)
        backend = client.app[HOOKS].backends[0]
        assert isinstance(backend, PythonHook)
        async with asyncio.timeout(2):
            while backend.late < 1:
                await asyncio.sleep(0.01)
    assert sample_hooks.SLOW_THREADS == [True]
    assert (await head(client, "/files/late-choice")).status == 404
    assert f"Python hook {MOD}:slow_pre_create for pre-create of upload (new) returned after" \
        in caplog.text and "its answer is ignored" in caplog.text
    assert metric(await metrics_text(client), "tusd_hook_errors_total", "pre-create") == 1


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "not of the form"),
    ("tests.hooks.does_not_exist:f", "cannot import"),
    (f"{MOD}:missing", "has no"),
    (f"{MOD}:NOT_CALLABLE", "not callable"),
])
def test_bad_python_hook_is_a_config_error(tmp_path, spec: str, message: str):
    config = make_config({"driver": "local", "data_dir": str(tmp_path)}, hooks={"python": [spec]})
    with pytest.raises(ConfigError, match=message):
        create_app(config)


async def test_sync_hook_threads_are_reused_and_bounded(monkeypatch):
    """Threads start on demand and are reused; at most THREADS run (or hang) at once."""
    from tusd_py.hooks import python as python_hooks

    monkeypatch.setattr(python_hooks, "THREADS", 3)
    hook = PythonHook(f"{MOD}:record_sync", 5)
    payload = {"Type": "post-create", "Event": {"Upload": {"ID": "t1"}, "HTTPRequest": {}}}
    for _ in range(20):
        await hook.invoke(payload, forward={}, key="k")
    assert hook.threads.started == 1
    slow = PythonHook(f"{MOD}:slow_pre_create", 5)
    pre = {"Type": "pre-create", "Event": {"Upload": {"ID": "", "MetaData": {"slow": ""}},
                                           "HTTPRequest": {}}}
    started = time.monotonic()
    await asyncio.gather(*(slow.invoke(pre, forward={}, key="k") for _ in range(6)))
    assert slow.threads.started == 3  # six calls of 0.6 s, three at a time
    assert time.monotonic() - started >= 1.2
