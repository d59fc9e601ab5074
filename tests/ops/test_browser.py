"""Headless Chromium (Debian chromium + playwright-core): the Uppy demo page served by the
daemon, and uploads from a page on another origin (CORS preflight, exposed tus headers)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.plugins.daemon import ROOT, Daemon, free_port
from tusd_py.web import BUNDLE_PATH, WEB_DIR, add_demo_routes, page_relative

from .conftest import Nginx, run_browser
from .test_metrics import scrape

#: tus over fetch() from the page: create, PATCH half, HEAD, PATCH the rest, OPTIONS.
#: Every header read here must be exposed by CORS, or the browser hides it.
FETCH_TUS = """
const tus = {'Tus-Resumable': '1.0.0'}
const data = new Uint8Array(args.size)
for (let i = 0; i < data.length; i++) data[i] = (i * 7) % 251
const out = {}
try {
  let r = await fetch(args.endpoint, {method: 'POST', headers: {...tus,
      'Upload-Length': String(data.length), 'Upload-Metadata': 'filename ' + btoa('cors.bin')}})
  out.createStatus = r.status
  out.location = r.headers.get('Location')
  out.expires = r.headers.get('Upload-Expires')
  const patchHeaders = (offset) => ({...tus, 'Upload-Offset': String(offset),
      'Content-Type': 'application/offset+octet-stream'})
  r = await fetch(out.location, {method: 'PATCH', headers: patchHeaders(0),
      body: data.slice(0, args.size / 2)})
  out.patchStatus = r.status
  r = await fetch(out.location, {method: 'HEAD', headers: tus})
  out.headOffset = r.headers.get('Upload-Offset')
  out.headLength = r.headers.get('Upload-Length')
  out.headMetadata = r.headers.get('Upload-Metadata')
  r = await fetch(out.location, {method: 'PATCH', headers: patchHeaders(out.headOffset),
      body: data.slice(Number(out.headOffset))})
  out.finalOffset = r.headers.get('Upload-Offset')
  r = await fetch(args.endpoint, {method: 'OPTIONS'})
  out.tusVersion = r.headers.get('Tus-Version')
  out.tusExtension = r.headers.get('Tus-Extension')
  out.tusMaxSize = r.headers.get('Tus-Max-Size')
} catch (e) {
  out.error = String(e)
}
return out
"""


def expected_bytes(size: int) -> bytes:
    return bytes((i * 7) % 251 for i in range(size))


@pytest.fixture
async def page_server() -> AsyncIterator[Callable[..., str]]:
    """``await``-free factory: ``serve(endpoint, port=None) -> page URL``; the demo page
    (same vendored files) on its own origin, pointed at ``endpoint``."""
    runners: list[web.AppRunner] = []
    pending: list[tuple[web.AppRunner, int]] = []

    def serve(endpoint: str, port: int | None = None) -> str:
        app = web.Application()
        add_demo_routes(app, endpoint)
        runner = web.AppRunner(app, access_log=None)
        port = port or free_port()
        pending.append((runner, port))
        return f"http://127.0.0.1:{port}/"

    async def start() -> None:
        while pending:
            runner, port = pending.pop()
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)

    serve.start = start  # type: ignore[attr-defined]
    yield serve
    for runner in runners:
        await runner.cleanup()


async def test_uppy_demo_upload(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """GET / (server.demo) -> Uppy Dashboard; a dropped file is uploaded in 5 MiB chunks,
    shows complete, and its bytes match on the server."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__DEMO": "true"})
    data = os.urandom(6 * 1024 * 1024 + 123)
    path = tmp_path / "holiday photo.bin"
    path.write_bytes(data)
    [result] = await run_browser([{"action": "uppy", "url": daemon.root + "/", "file": str(path)}])
    assert result["failed"] == []
    [upload] = result["successful"]
    assert upload["name"] == path.name and upload["size"] == len(data)
    assert upload["uploadURL"].startswith(daemon.url)
    assert result["statusComplete"] is True
    assert result["links"] == [upload["uploadURL"]]
    async with aiohttp.ClientSession() as s:
        async with s.get(upload["uploadURL"]) as r:
            assert r.status == 200
            assert await r.read() == data
            assert path.name in r.headers["Content-Disposition"]
        m = await scrape(s, daemon)
        assert m["tusd_requests_total{method=PATCH,status=204}"] == 2  # two chunks
        assert m["tusd_uploads_finished_total"] == 1
        async with s.get(daemon.root + BUNDLE_PATH) as r:
            assert r.headers["Content-Type"].startswith("text/javascript")


async def test_uppy_demo_under_a_proxy_prefix(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The demo page through nginx's /uploads/ location (prefix stripped, named in
    X-Forwarded-Prefix): its script and tus endpoint stay under the prefix."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__DEMO": "true",
                                         "TUSD_SERVER__BEHIND_PROXY": "true"})
    nginx = Nginx(daemon.port).start()
    try:
        data = os.urandom(300_000)
        path = tmp_path / "prefixed.bin"
        path.write_bytes(data)
        page = nginx.root + "/uploads/"
        shown, result = await run_browser([
            {"action": "eval", "url": page, "src": "return {endpoint: "
             "document.getElementById('endpoint').textContent, script: document.scripts[0].src}"},
            {"action": "uppy", "url": page, "file": str(path)},
        ])
        access_log = (nginx.run_dir / "access.log").read_text()
    finally:
        nginx.stop()
    assert shown == {"endpoint": page + "files/", "script": page + "demo/uppy.single.js"}
    assert result["failed"] == [] and result["statusComplete"] is True
    [upload] = result["successful"]
    assert upload["uploadURL"].startswith(page + "files/"), upload
    # Everything the page loaded or sent went through the prefixed location.
    requests = re.findall(r'"([A-Z]+) (\S+) HTTP/1\.1"', access_log)
    assert ("GET", "/uploads/demo/uppy.single.js") in requests
    assert ("POST", "/uploads/files/") in requests
    assert not [r for r in requests if not r[1].startswith("/uploads/")], requests
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.url + upload["uploadURL"].rsplit("/", 1)[1]) as r:
            assert await r.read() == data


async def test_demo_page_links_relative_to_itself(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """The rendered page has no absolute path in it (they would escape a proxy prefix)."""
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__DEMO": "true",
                                         "TUSD_SERVER__BASE_PATH": "/api/tus/"})
    async with aiohttp.ClientSession() as s, s.get(daemon.root + "/") as r:
        page = await r.text()
    assert 'data-endpoint="./api/tus/"' in page
    assert '<script src="./demo/uppy.single.js">' in page
    assert not re.findall(r'(?:src|href|data-endpoint)="/', page)
    assert page_relative("/files/") == "./files/"
    assert page_relative("http://127.0.0.1:1/files/") == "http://127.0.0.1:1/files/"
    assert page_relative("//cdn.example/files/") == "//cdn.example/files/"


async def test_demo_is_off_by_default(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s:
        for path in ("/", BUNDLE_PATH):
            async with s.get(daemon.root + path) as r:
                assert r.status == 404


async def test_cross_origin_uploads_from_a_browser(daemon: Daemon, page_server) -> None:  # type: ignore[no-untyped-def]
    """A page on another origin: tus over fetch() (preflights, exposed headers), then the
    Uppy Dashboard pointed at the daemon's absolute URL."""
    page = page_server(daemon.url)
    await page_server.start()
    size = 200_000
    file, content = daemon.data_dir.parent / "cross.bin", os.urandom(300_000)
    await asyncio.to_thread(file.write_bytes, content)
    fetched, uppy = await run_browser([
        {"action": "eval", "url": page, "src": FETCH_TUS, "args": {"endpoint": daemon.url, "size": size}},
        {"action": "uppy", "url": page, "file": str(file)},
    ])
    assert "error" not in fetched, fetched
    assert fetched["createStatus"] == 201
    assert fetched["location"].startswith(daemon.url)
    assert fetched["expires"]  # Upload-Expires readable
    assert fetched["patchStatus"] == 204
    assert fetched["headOffset"] == str(size // 2)
    assert fetched["headLength"] == str(size)
    assert fetched["headMetadata"].startswith("filename ")
    assert fetched["finalOffset"] == str(size)
    assert fetched["tusVersion"] == "1.0.0"
    assert "creation" in fetched["tusExtension"].split(",")
    assert uppy["failed"] == [] and uppy["statusComplete"] is True
    async with aiohttp.ClientSession() as s:
        async with s.get(fetched["location"]) as r:
            assert await r.read() == expected_bytes(size)
        async with s.get(uppy["successful"][0]["uploadURL"]) as r:
            assert await r.read() == content
        m = await scrape(s, daemon)
        # The browser preflighted the tus requests (custom headers, PATCH/HEAD/OPTIONS).
        assert m["tusd_requests_total{method=OPTIONS,status=204}"] >= 3


#: Every request header of tus 1.0.0 a page sends (X-HTTP-Method-Override and the PATCH
#: Content-Type included), Authorization (server.auth_token) and Range (downloads).
TUS_REQUEST_HEADERS = {
    "tus-resumable", "upload-length", "upload-offset", "upload-metadata", "upload-defer-length",
    "upload-concat", "upload-checksum", "x-http-method-override", "content-type",
    "authorization", "range"}
#: Every response header of tus 1.0.0 a page reads, and those of a (ranged) download.
TUS_RESPONSE_HEADERS = {
    "location", "upload-offset", "upload-length", "upload-defer-length", "upload-metadata",
    "upload-concat", "upload-expires", "tus-version", "tus-resumable", "tus-max-size",
    "tus-extension", "tus-checksum-algorithm", "content-disposition", "content-range"}


def header_set(value: str) -> set[str]:
    return {h.strip().lower() for h in value.split(",") if h.strip()}


async def test_preflight_answer(daemon: Daemon) -> None:
    headers = {"Origin": "http://app.example", "Access-Control-Request-Method": "PATCH",
               "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type"}
    async with aiohttp.ClientSession() as s:
        async with s.options(daemon.url + "0" * 32, headers=headers) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
            allowed = header_set(r.headers["Access-Control-Allow-Headers"])
            assert TUS_REQUEST_HEADERS <= allowed, TUS_REQUEST_HEADERS - allowed
            assert int(r.headers["Access-Control-Max-Age"]) == 86400
            assert "Access-Control-Allow-Credentials" not in r.headers
        async with s.post(daemon.url, headers={"Origin": "http://app.example",
                                               "Tus-Resumable": "1.0.0", "Upload-Length": "1"}) as r:
            exposed = header_set(r.headers["Access-Control-Expose-Headers"])
            assert TUS_RESPONSE_HEADERS <= exposed, TUS_RESPONSE_HEADERS - exposed


async def test_origin_not_allowed_is_blocked_by_the_browser(daemon_factory, page_server) -> None:  # type: ignore[no-untyped-def]
    allowed_port, other_port = free_port(), free_port()
    daemon: Daemon = daemon_factory(env={
        "TUSD_SERVER__CORS__ALLOWED_ORIGINS": f"http://127.0.0.1:{allowed_port}",
        "TUSD_SERVER__CORS__MAX_AGE": "10m"})
    allowed = page_server(daemon.url, allowed_port)
    other = page_server(daemon.url, other_port)
    await page_server.start()
    args = {"endpoint": daemon.url, "size": 1000}
    ok, blocked = await run_browser([
        {"action": "eval", "url": allowed, "src": FETCH_TUS, "args": args},
        {"action": "eval", "url": other, "src": FETCH_TUS, "args": args},
    ])
    assert "error" not in ok and ok["finalOffset"] == "1000", ok
    assert "Failed to fetch" in blocked["error"] and "createStatus" not in blocked
    async with aiohttp.ClientSession() as s:
        assert (await scrape(s, daemon))["tusd_uploads_created_total"] == 1
        async with s.options(daemon.url, headers={
                "Origin": f"http://127.0.0.1:{allowed_port}",
                "Access-Control-Request-Method": "POST"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == f"http://127.0.0.1:{allowed_port}"
            assert r.headers["Access-Control-Max-Age"] == "600"
            assert "Origin" in r.headers.getall("Vary")


#: A creation with the page's own headers (``args.extra``), reading the hook's response
#: header, then a PATCH: each needs the CORS settings for extra headers.
FETCH_CUSTOM = """
const tus = {'Tus-Resumable': '1.0.0', ...args.extra}
const out = {}
try {
  let r = await fetch(args.endpoint, {method: 'POST', headers: {...tus, 'Upload-Length': '3'}})
  out.status = r.status
  out.token = r.headers.get('X-Upload-Token')
  out.location = r.headers.get('Location')
  r = await fetch(out.location, {method: 'PATCH', body: new Uint8Array([1, 2, 3]), headers: {
      ...tus, 'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream'}})
  out.offset = r.headers.get('Upload-Offset')
  out.finalStatus = r.status
  out.fileId = r.headers.get('X-File-Id')
  out.finalBody = await r.text()
} catch (e) {
  out.error = String(e)
}
return out
"""


async def test_custom_headers_through_a_real_preflight(daemon_factory, page_server) -> None:  # type: ignore[no-untyped-def]
    """A page on another origin sends a header of its own (X-Tenant, read by a pre-create
    hook) and reads one the hook added (X-Upload-Token): Chromium's preflight lets it
    only with server.cors.allowed_headers / exposed_headers; the origin is allowed by an
    anchored pattern that localhost does not match."""
    hook = {"PYTHONPATH": str(ROOT),
            "TUSD_HOOKS__PYTHON": "tests.ops.cors_hook:pre_create,tests.ops.cors_hook:pre_finish",
            "TUSD_HOOKS__ENABLED": "pre-create,pre-finish",
            "TUSD_SERVER__CORS__ALLOWED_ORIGINS": r"^http://127\.0\.0\.1:[0-9]+$"}
    configured: Daemon = daemon_factory(env={
        **hook, "TUSD_SERVER__CORS__ALLOWED_HEADERS": "X-Tenant",
        "TUSD_SERVER__CORS__EXPOSED_HEADERS": "X-Upload-Token"})
    no_expose: Daemon = daemon_factory(env={**hook, "TUSD_SERVER__CORS__ALLOWED_HEADERS": "X-Tenant"})
    default: Daemon = daemon_factory(env=hook)
    page = page_server(configured.url)
    await page_server.start()
    tenant = {"X-Tenant": "acme"}

    def step(daemon: Daemon, url: str = page) -> dict[str, object]:
        return {"action": "eval", "url": url, "src": FETCH_CUSTOM,
                "args": {"endpoint": daemon.url, "extra": tenant}}

    ok, unreadable, refused, other_origin = await run_browser([
        step(configured), step(no_expose), step(default),
        step(configured, page.replace("127.0.0.1", "localhost"))])
    assert ok == {"status": 201, "token": "token-for-acme", "offset": "3",
                  "location": ok["location"], "finalStatus": 200, "fileId": "file-acme-3",
                  "finalBody": '{"url": "https://cdn.example/file-acme-3"}'}, ok
    assert str(ok["location"]).startswith(configured.url)
    # Without exposed_headers too: headers a hook set for a response are exposed with it
    # (pre-create's on the POST, pre-finish's on the PATCH that finished the upload).
    assert unreadable["status"] == 201 and unreadable["token"] == "token-for-acme", unreadable
    assert (unreadable["fileId"], unreadable["finalStatus"]) == ("file-acme-3", 200), unreadable
    # Without allowed_headers the preflight refuses X-Tenant: nothing is sent.
    assert "Failed to fetch" in refused["error"] and "status" not in refused, refused
    assert "Failed to fetch" in other_origin["error"], other_origin
    async with aiohttp.ClientSession() as s:
        assert (await scrape(s, default))["tusd_uploads_created_total"] == 0
        async with s.get(str(ok["location"])) as r:
            assert await r.read() == bytes([1, 2, 3])


def test_vendored_bundle_matches_a_fresh_build(tmp_path: Path) -> None:
    """tusd_py/web/uppy.single.js is what web-src/build.sh makes from the pinned packages."""
    out = tmp_path / "uppy.single.js"
    proc = subprocess.run([str(ROOT / "web-src/build.sh"), str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (WEB_DIR / "uppy.single.js").read_bytes()
    assert 200_000 < out.stat().st_size < 600_000


async def test_credentials_mode(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """allow_credentials echoes the allowed origin; '*' with credentials is refused at start-up."""
    origin = "https://app.example"
    daemon: Daemon = daemon_factory(env={"TUSD_SERVER__CORS__ALLOWED_ORIGINS": origin,
                                         "TUSD_SERVER__CORS__ALLOW_CREDENTIALS": "true"})
    async with aiohttp.ClientSession() as s:
        async with s.options(daemon.url, headers={"Origin": origin,
                                                  "Access-Control-Request-Method": "POST"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == origin
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
        async with s.post(daemon.url, headers={"Origin": "https://evil.example",
                                               "Tus-Resumable": "1.0.0", "Upload-Length": "1"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tusd_py", "check-config",
        env={**os.environ, "TUSD_SERVER__CORS__ALLOW_CREDENTIALS": "true"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"server.cors.allow_credentials" in err and b"explicit allowed_origins" in err
