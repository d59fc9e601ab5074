"""tusd-py behind Debian's nginx, configured with deploy/nginx/*.conf (the files
docker-compose uses): Location URLs name the proxy (and its path prefix), uploads resume
through it, and client-forged forwarding headers are not trusted."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import aiohttp

from tests.plugins.daemon import Daemon

from .conftest import Nginx

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}


async def create(session: aiohttp.ClientSession, url: str, length: int,
                 headers: dict[str, str] | None = None) -> str:
    async with session.post(url, headers={**TUS, "Upload-Length": str(length),
                                          **(headers or {})}) as r:
        assert r.status == 201, await r.text()
        return r.headers["Location"]


async def patch(session: aiohttp.ClientSession, url: str, offset: int, body: bytes) -> int:
    async with session.patch(url, data=body,
                             headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}) as r:
        assert r.status == 204, await r.text()
        return int(r.headers["Upload-Offset"])


async def head_offset(session: aiohttp.ClientSession, url: str) -> int:
    async with session.head(url, headers=TUS) as r:
        assert r.status == 200
        return int(r.headers["Upload-Offset"])


async def test_location_names_the_proxy_and_upload_resumes(proxied: tuple[Daemon, Nginx]) -> None:
    daemon, nginx = proxied
    data = os.urandom(300_000)
    async with aiohttp.ClientSession() as s:
        location = await create(s, nginx.root + "/files/", len(data))
        assert location.startswith(nginx.root + "/files/"), location
        assert await patch(s, location, 0, data[:100_000]) == 100_000
        # A new session (a client that restarted) resumes from HEAD's offset.
    async with aiohttp.ClientSession() as s:
        offset = await head_offset(s, location)
        assert offset == 100_000
        assert await patch(s, location, offset, data[offset:]) == len(data)
        upload_id = location.rsplit("/", 1)[1]
        async with s.get(f"{daemon.url}{upload_id}") as r:  # straight from the daemon
            assert r.status == 200
            assert await r.read() == data
        async with s.get(location) as r:  # and through the proxy
            assert await r.read() == data


async def test_prefix_from_x_forwarded_prefix(proxied: tuple[Daemon, Nginx]) -> None:
    _, nginx = proxied
    data = b"prefixed upload"
    async with aiohttp.ClientSession() as s:
        location = await create(s, nginx.root + "/uploads/files/", len(data))
        assert location.startswith(nginx.root + "/uploads/files/"), location
        assert await head_offset(s, location) == 0
        assert await patch(s, location, 0, data) == len(data)
        async with s.get(location) as r:
            assert await r.read() == data


async def test_forged_forwarding_headers_are_not_trusted(proxied: tuple[Daemon, Nginx],
                                                         daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon, nginx = proxied
    forged = {"Forwarded": "proto=https;host=evil.example", "X-Forwarded-Host": "evil.example",
              "X-Forwarded-Prefix": "/evil", "X-Forwarded-Proto": "https"}
    async with aiohttp.ClientSession() as s:
        # nginx overwrites or clears what the client sent.
        location = await create(s, nginx.root + "/files/", 1, forged)
        assert location.startswith(nginx.root + "/files/"), location
        # A daemon not configured as behind a proxy ignores the headers altogether.
        plain = daemon_factory()
        location = await create(s, plain.url, 1, forged)
        assert location.startswith(plain.url), location
        # And the daemon behind the proxy does trust them when they reach it directly:
        # that is why behind_proxy is off by default.
        location = await create(s, daemon.url, 1, {"X-Forwarded-Host": "cdn.example:8443"})
        assert location.startswith("http://cdn.example:8443/files/"), location


async def test_dropped_connection_through_proxy_keeps_bytes_and_resumes(
        proxied: tuple[Daemon, Nginx]) -> None:
    """nginx streams the body (proxy_request_buffering off): what arrived before the
    client vanished is committed, and the upload resumes from there."""
    _, nginx = proxied
    data = os.urandom(1 << 20)
    sent = 256 * 1024
    async with aiohttp.ClientSession() as s:
        location = await create(s, nginx.root + "/files/", len(data))
        path = location[len(nginx.root):]

        def send_part() -> None:
            with socket.create_connection(("127.0.0.1", nginx.port)) as sock:
                sock.sendall((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{nginx.port}\r\n"
                              "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                              "Content-Type: application/offset+octet-stream\r\n"
                              f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:sent])
                # Let the bytes travel through nginx before the connection goes away.
                import time
                time.sleep(0.5)

        await asyncio.to_thread(send_part)
        offset = 0
        for _ in range(100):  # the daemon commits once it sees the upstream close
            async with s.head(location, headers=TUS) as r:
                offset = int(r.headers["Upload-Offset"])
            if offset:
                break
            await asyncio.sleep(0.05)
        assert offset == sent
        while True:  # the dropped writer may still hold the upload for a moment
            async with s.patch(location, data=data[offset:],
                               headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}) as r:
                if r.status == 423:
                    await asyncio.sleep(0.1)
                    continue
                assert r.status == 204, await r.text()
                assert int(r.headers["Upload-Offset"]) == len(data)
                break
        async with s.get(location) as r:
            assert await r.read() == data


async def test_large_patch_through_the_proxy(proxied: tuple[Daemon, Nginx]) -> None:
    """One 8 MiB PATCH, far over nginx's default client_max_body_size (1 MiB): it reaches
    the daemon whole because tus-proxy.conf sets client_max_body_size 0."""
    daemon, nginx = proxied
    data = os.urandom(8 << 20)
    async with aiohttp.ClientSession() as s:
        for root in (nginx.root, nginx.root + "/uploads"):
            location = await create(s, root + "/files/", len(data))
            assert await patch(s, location, 0, data) == len(data)
            async with s.get(daemon.url + location.rsplit("/", 1)[1]) as r:
                assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(data).digest()


async def test_without_client_max_body_size_nginx_refuses_large_patches(
        daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """The directive the previous test relies on: with it removed, the same PATCH gets
    nginx's 413 and never reaches the daemon."""
    daemon = daemon_factory(env={"TUSD_SERVER__BEHIND_PROXY": "true"})
    directive = "client_max_body_size 0;"

    def drop(conf: str) -> str:
        assert conf.count(directive) == 1
        return conf.replace(directive, "")

    nginx = Nginx(daemon.port, edit=drop).start()
    try:
        async with aiohttp.ClientSession() as s:
            location = await create(s, nginx.root + "/files/", 8 << 20)
            async with s.patch(location, data=bytes(8 << 20),
                               headers={**PATCH_HEADERS, "Upload-Offset": "0"}) as r:
                assert r.status == 413
                assert "nginx" in await r.text()
            assert await head_offset(s, location) == 0
    finally:
        nginx.stop()


async def test_metrics_are_not_exposed_through_the_proxy(proxied: tuple[Daemon, Nginx]) -> None:
    daemon, nginx = proxied
    async with aiohttp.ClientSession() as s:
        for path in ("/metrics", "/uploads/metrics"):
            async with s.get(nginx.root + path) as r:
                assert r.status == 404
        async with s.get(daemon.root + "/metrics") as r:
            assert r.status == 200
            assert "tusd_requests_total" in await r.text()


async def test_forwarded_header_forms(proxied: tuple[Daemon, Nginx]) -> None:
    """What a behind_proxy daemon makes of RFC 7239 Forwarded and X-Forwarded-* (sent to
    it directly, as another proxy would)."""
    daemon, _ = proxied
    cases = [
        ({"Forwarded": 'for=10.0.0.1;proto=https;host="up.example:8443", proto=http;host=inner'},
         "https://up.example:8443/files/"),
        ({"Forwarded": "host=up.example", "X-Forwarded-Host": "ignored.example"},
         "http://up.example/files/"),
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "a.example, b.example",
          "X-Forwarded-Prefix": "/tus/v1/"}, "https://a.example/tus/v1/files/"),
        ({"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "bad host/x",
          "X-Forwarded-Prefix": "/../x?y"}, f"{daemon.root}/files/"),
        # host= inside a quoted value is not the host parameter.
        ({"Forwarded": 'for="host=evil.example";proto=https'},
         f"https://127.0.0.1:{daemon.port}/files/"),
        ({"Forwarded": 'host="evil.example/x";proto=ftp'}, f"{daemon.root}/files/"),
        ({"Forwarded": "HOST=[::1]:8443;PROTO=HTTPS"}, "https://[::1]:8443/files/"),
        ({"Forwarded": "host=a.example;host=b.example"}, f"{daemon.root}/files/"),
        ({"X-Forwarded-Host": "user@evil.example", "X-Forwarded-Prefix": "/a/../b"},
         f"{daemon.root}/files/"),
        ({"X-Forwarded-Prefix": "//evil.example"}, f"{daemon.root}/files/"),
    ]
    async with aiohttp.ClientSession() as s:
        for headers, expected in cases:
            location = await create(s, daemon.url, 1, headers)
            assert location.startswith(expected), (headers, location)
            assert len(location) == len(expected) + 32
