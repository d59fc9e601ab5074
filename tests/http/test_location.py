"""``Location`` as the client should see it: from the request (and trusted proxy
headers), fixed on ``server.public_url``, or relative (``server.relative_location``); and
what tus-js-client and tuspy make of a relative one."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from tusclient import client as tus_client

from tests.http.helpers import OCTET, TUS
from tests.interop.helpers import download, make_file
from tests.plugins.app import TusClientFactory
from tests.plugins.daemon import Daemon
from tusd_py.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
#: Location does not depend on the driver.
memory_only = pytest.mark.parametrize("storage_config", ["memory"], indirect=True)
FORGED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http",
          "Forwarded": "host=evil.example;proto=http", "X-Forwarded-Prefix": "/evil"}


@pytest.mark.parametrize("behind_proxy", [False, True])
@memory_only
async def test_public_url_is_used_whatever_the_request_says(tus_client_factory: TusClientFactory,
                                                            behind_proxy: bool) -> None:
    client = await tus_client_factory(server={
        "public_url": "https://uploads.example.com/tus/", "behind_proxy": behind_proxy})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "2", **FORGED,
                                              "Host": "internal:8080"})
    assert r.status == 201
    location = r.headers["Location"]
    assert location.startswith("https://uploads.example.com/tus/files/"), location
    # The upload is where the path after the public prefix says (the proxy strips /tus).
    path = location[len("https://uploads.example.com/tus"):]
    r = await client.patch(path, data=b"ok", headers={**TUS, "Upload-Offset": "0",
                                                      "Content-Type": OCTET})
    assert r.status == 204


@memory_only
async def test_relative_location(tus_client_factory: TusClientFactory) -> None:
    client = await tus_client_factory(server={"relative_location": True})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", **FORGED})
    assert r.status == 201 and r.headers["Location"].startswith("/files/"), r.headers["Location"]
    # Behind a proxy the forwarded prefix (checked) goes in front; the host never does.
    client = await tus_client_factory(server={"relative_location": True, "behind_proxy": True})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "X-Forwarded-Prefix": "/up", "X-Forwarded-Host": "a.b"})
    assert r.headers["Location"].startswith("/up/files/"), r.headers["Location"]
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "X-Forwarded-Prefix": "/../x"})
    assert r.headers["Location"].startswith("/files/"), r.headers["Location"]


@pytest.mark.parametrize("server, problem", [
    ({"public_url": "ftp://example.com"}, "public_url"),
    ({"public_url": "https://user:pw@example.com"}, "public_url"),
    ({"public_url": "https://example.com/a/../b"}, "public_url"),
    ({"public_url": "https://example.com/?q=1"}, "public_url"),
    ({"public_url": "https://exa mple.com"}, "public_url"),
    ({"public_url": "https://example.com", "relative_location": True}, "exclude each other"),
])
@memory_only
async def test_bad_location_settings_are_refused(tus_client_factory: TusClientFactory,
                                                 server: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        await tus_client_factory(server=server)


@pytest.mark.skipif(shutil.which("node") is None or not (ROOT / "node_modules" / "tus-js-client").is_dir(),
                    reason="node and node_modules/tus-js-client are installed by scripts/test.sh")
@memory_only
async def test_tus_js_client_resolves_a_relative_location(tus_client_factory: TusClientFactory) -> None:
    client = await tus_client_factory(server={"relative_location": True})
    endpoint = str(client.make_url("/files/"))
    proc = await asyncio.create_subprocess_exec(
        "node", str(ROOT / "tests" / "hooks" / "js_upload.mjs"), endpoint, "{}", "{}",
        json.dumps({"chunkSize": 10}), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["ok"] is True, (result, err.decode())
    assert result["url"].startswith(endpoint)  # resolved against the creation URL
    assert {r["url"] for r in result["requests"] if r["method"] == "PATCH"} == {result["url"]}


def test_tuspy_resolves_a_relative_location(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__RELATIVE_LOCATION": "true"})
    source = tmp_path / "rel.bin"
    want = make_file(source, 300_000)
    uploader = tus_client.TusClient(daemon.url).uploader(file_path=str(source), chunk_size=100_000)
    uploader.upload()
    assert uploader.url is not None and uploader.url.startswith(daemon.url)
    got, _ = download(uploader.url)
    assert got == want
