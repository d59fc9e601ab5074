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


async def run_client(url: str, metadata: dict[str, str], headers: dict[str, str],
                     options: dict | None = None) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), url, json.dumps(metadata), json.dumps(headers),
        json.dumps(options or {}), cwd=ROOT,
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


async def test_tus_js_client_with_an_id_of_segments(hooked: HookedFactory, receiver: Receiver):
    """The Location carries the segments as they are; tus-js-client PATCHes that URL."""
    receiver.responder = lambda body, request: (
        {"ChangeFileInfo": {"ID": "user-7/2026/js-1"}} if body["Type"] == "pre-create" else {})
    client = await hooked(enabled=["pre-create", "post-finish"])
    result = await run_client(str(client.make_url("/files/")), {}, {}, {"chunkSize": 8})
    assert result["ok"] is True, result
    assert result["url"] == str(client.make_url("/files/user-7/2026/js-1"))
    patches = [r for r in result["requests"] if r["method"] == "PATCH"]
    assert len(patches) == 3 and {r["url"] for r in patches} == {result["url"]}
    (call,) = await receiver.wait_for("post-finish")
    assert call.upload["ID"] == "user-7/2026/js-1"


async def test_tus_js_client_reads_what_pre_finish_returns(hooked: HookedFactory,
                                                           receiver: Receiver):
    """pre-finish's status, headers and body reach ``onSuccess``'s last response, and
    the headers are exposed through CORS (what a browser needs to read them)."""
    def respond(body, request):
        if body["Type"] != "pre-finish":
            return {}
        return {"HTTPResponse": {"StatusCode": 200,
                                 "Header": {"X-File-Id": "f-123", "Content-Type": "application/json"},
                                 "Body": '{"url":"https://cdn.example.com/f-123"}'}}

    receiver.responder = respond
    client = await hooked(enabled=["pre-finish"])
    result = await run_client(str(client.make_url("/files/")), {}, {"Origin": "https://app.example"},
                              {"chunkSize": 10, "read": ["X-File-Id", "Access-Control-Expose-Headers"]})
    assert result["ok"] is True, result
    assert result["finalStatus"] == 200
    assert json.loads(result["finalBody"]) == {"url": "https://cdn.example.com/f-123"}
    assert result["finalHeaders"]["X-File-Id"] == "f-123"
    exposed = [h.strip() for h in result["finalHeaders"]["Access-Control-Expose-Headers"].split(",")]
    assert "X-File-Id" in exposed and "Upload-Offset" in exposed
    # Only the finishing PATCH carries it: the two before were plain 204s.
    assert [r["status"] for r in result["requests"] if r["method"] == "PATCH"] == [204, 204, 200]
