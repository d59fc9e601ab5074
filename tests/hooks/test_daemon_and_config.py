"""Hooks configured from the environment on a real daemon; config forms and masking."""

from __future__ import annotations

import aiohttp
import pytest

from tests.plugins.app import make_config
from tusd_py.config import ConfigError, dump_config, load_config

from .conftest import Receiver


async def test_daemon_with_env_configured_hooks(daemon_factory, receiver: Receiver):
    def respond(body, request):
        header = body["Event"]["HTTPRequest"]["Header"]
        if body["Type"] == "pre-create" and header.get("Authorization") != ["Bearer ok"]:
            return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 401, "Body": "who?"}}
        return {}

    receiver.responder = respond
    daemon = daemon_factory(env={
        "TUSD_HOOKS__HTTP__URL": receiver.url,
        "TUSD_HOOKS__HTTP__TIMEOUT": "2s",
        "TUSD_HOOKS__HTTP__FORWARD_HEADERS": "Authorization",
        "TUSD_HOOKS__ENABLED": "pre-create,post-finish",
    })
    tus = {"Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as session:
        async with session.post(daemon.url, headers={**tus, "Upload-Length": "3"}) as r:
            assert r.status == 401
            assert await r.text() == "who?"
        auth = {**tus, "Authorization": "Bearer ok"}
        async with session.post(daemon.url, headers={**auth, "Upload-Length": "3"}) as r:
            assert r.status == 201
            location = r.headers["Location"]
        async with session.patch(location, data=b"abc", headers={
                **auth, "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream"}) as r:
            assert r.status == 204
        (call,) = await receiver.wait_for("post-finish")
        assert call.upload["ID"] == location.rsplit("/", 1)[1]
        assert call.headers["Authorization"] == "Bearer ok"  # forwarded
        assert [c.type for c in receiver.calls] == ["pre-create", "pre-create", "post-finish"]
        async with session.get(daemon.root + "/metrics") as r:
            text = await r.text()
        assert 'tusd_hook_invocations_total{hooktype="post-finish"} 1.0' in text
        assert 'tusd_hook_errors_total{hooktype="pre-create"} 0.0' in text
    assert daemon.terminate() == 0


def test_env_forms_and_defaults():
    config = load_config(path="/dev/null", env={
        "TUSD_HOOKS__HTTP__URL": "https://hooks.example.com/tus",
        "TUSD_HOOKS__HTTP__RETRIES": "5",
        "TUSD_HOOKS__HTTP__BACKOFF": "250ms",
        "TUSD_HOOKS__PYTHON": "a.b:c, d.e:f",
        "TUSD_HOOKS__ENABLED": "pre-create, pre-access",
        "TUSD_HOOKS__POST_RECEIVE_INTERVAL": "5s",
    })
    hooks = config.hooks
    assert hooks.http.url == "https://hooks.example.com/tus"
    assert (hooks.http.retries, hooks.http.backoff) == (5, 0.25)
    assert hooks.python == ["a.b:c", "d.e:f"]
    assert hooks.enabled == ["pre-create", "pre-access"]
    assert hooks.post_receive_interval == 5.0
    default = load_config(path="/dev/null", env={}).hooks
    assert default.http.url is None and default.python == []
    assert default.enabled == ["pre-create", "post-create", "post-receive", "post-finish",
                               "post-terminate"]  # tusd's defaults


def test_secrets_are_masked_in_dumps(tmp_path):
    config = make_config({"driver": "local", "data_dir": str(tmp_path)}, hooks={"http": {
        "url": "https://tusd:hunter2@hooks.example.com/tus?token=abc123&x=1",
        "headers": {"Authorization": "Bearer s3cr3t"}}})
    dumped = dump_config(config)
    for secret in ("hunter2", "abc123", "s3cr3t"):
        assert secret not in dumped
    assert "https://tusd:**********@hooks.example.com/tus?token=**********&x=**********" in dumped
    assert config.hooks.http.headers["Authorization"].get_secret_value() == "Bearer s3cr3t"


def test_bad_values_are_reported_by_key():
    for env, key in (({"TUSD_HOOKS__ENABLED": "post-nothing"}, "hooks.enabled"),
                     ({"TUSD_HOOKS__HTTP__URL": "ftp://x"}, "hooks.http.url"),
                     ({"TUSD_HOOKS__HTTP__RETRIES": "-1"}, "hooks.http.retries")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(path="/dev/null", env=env)
