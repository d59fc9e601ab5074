"""tus-js-client (npm, Node) against an app whose pre-create hook rejects or accepts."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from .conftest import HookedFactory, Receiver

SCRIPT = Path(__file__).with_name("js_upload.mjs")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "node_modules" / "tus-js-client").is_dir(),
    reason="node and node_modules/tus-js-client are installed by scripts/test.sh")


async def run_client(url: str, metadata: dict[str, str], headers: dict[str, str]) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), url, json.dumps(metadata), json.dumps(headers), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert out, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_tus_js_client_sees_the_hooks_rejection(hooked: HookedFactory, receiver: Receiver):
    def respond(body, request):
        if body["Type"] != "pre-create":
            return {}
        if body["Event"]["Upload"]["MetaData"].get("project") != "42":
            return {"RejectUpload": True,
                    "HTTPResponse": {"StatusCode": 403,
                                     "Body": '{"message":"no access to this project"}',
                                     "Header": {"Content-Type": "application/json"}}}
        return {}

    receiver.responder = respond
    client = await hooked()
    url = str(client.make_url("/files/"))

    result = await run_client(url, {"filename": "a.txt", "project": "7"}, {})
    assert result["ok"] is False
    assert result["status"] == 403
    assert result["body"] == '{"message":"no access to this project"}'
    assert "no access to this project" in result["message"]
    assert "response code: 403" in result["message"]

    result = await run_client(url, {"filename": "a.txt", "project": "42"}, {})
    assert result["ok"] is True, result
    (call,) = await receiver.wait_for("post-finish")
    assert call.upload["MetaData"] == {"filename": "a.txt", "project": "42"}
    assert call.upload["Size"] == len("hello from tus-js-client")
