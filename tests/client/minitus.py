"""A small but real tus server (aiohttp on 127.0.0.1) for client tests that need to see
every request or make the server misbehave on purpose: it records each request's
method and headers, checks ``Upload-Checksum``, answers the next PATCHes with the
statuses queued in ``fail_next`` (after reading the body, and keeping nothing),
answers 410 for the upload ids in ``gone``, and can fail or cut GETs (``fail_get``,
``drop_get_after``) or answer a Range with the wrong Content-Range (``range_shift``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

EXTENSIONS = "creation,creation-defer-length,checksum,termination"


@dataclass
class MiniUpload:
    length: int | None
    data: bytearray = field(default_factory=bytearray)


@dataclass
class MiniTus:
    uploads: dict[str, MiniUpload] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    fail_create: list[int] = field(default_factory=list)
    stall_next: float = 0.0  # seconds the next PATCH waits before answering
    drop_get_after: int | None = None  # the next GET sends this many bytes, then hangs up
    gone: set[str] = field(default_factory=set)  # upload ids answering 410 (expired)
    fail_get: list[int] = field(default_factory=list)  # statuses for the next GETs
    range_shift: int = 0  # the next ranged GET starts this many bytes after what was asked
    url: str = ""
    extensions: str = EXTENSIONS
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def patches(self) -> list[dict[str, str]]:
        return [h for m, h in self.requests if m == "PATCH"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, dict(request.headers)))
        tus = {"Tus-Resumable": "1.0.0"}
        upload_id = request.match_info.get("id")
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={
                **tus, "Tus-Version": "1.0.0", "Tus-Extension": self.extensions,
                "Tus-Checksum-Algorithm": "sha1,md5,sha256"})
        if request.method == "POST":
            if self.fail_create:
                return web.Response(status=self.fail_create.pop(0), headers=tus)
            length = request.headers.get("Upload-Length")
            new_id = str(next(self._ids))
            self.uploads[new_id] = MiniUpload(int(length) if length is not None else None)
            return web.Response(status=201, headers={**tus, "Location": f"/files/{new_id}"})
        if upload_id in self.gone:
            return web.Response(status=410, headers=tus)
        upload = self.uploads.get(upload_id or "")
        if upload is None:
            return web.Response(status=404, headers=tus)
        if request.method == "HEAD":
            headers = {**tus, "Upload-Offset": str(len(upload.data)), "Cache-Control": "no-store"}
            if upload.length is None:
                headers["Upload-Defer-Length"] = "1"
            else:
                headers["Upload-Length"] = str(upload.length)
            return web.Response(status=200, headers=headers)
        if request.method == "GET":
            return await self._get(request, bytes(upload.data))
        if request.method == "DELETE":
            del self.uploads[upload_id or ""]
            return web.Response(status=204, headers=tus)
        # PATCH
        body = await request.read()
        if self.stall_next:
            stall, self.stall_next = self.stall_next, 0.0
            await asyncio.sleep(stall)
        if self.fail_next:
            status = self.fail_next.pop(0)
            if status == 0:  # drop the connection without an answer
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            return web.Response(status=status, headers=tus, text="injected failure")
        if int(request.headers["Upload-Offset"]) != len(upload.data):
            return web.Response(status=409, headers=tus)
        checksum = request.headers.get("Upload-Checksum")
        if checksum:
            algorithm, digest = checksum.split(" ")
            if base64.b64decode(digest) != hashlib.new(algorithm, body).digest():
                return web.Response(status=460, headers=tus, text="checksum mismatch")
        if "Upload-Length" in request.headers:
            upload.length = int(request.headers["Upload-Length"])
        upload.data += body
        return web.Response(status=204, headers={**tus, "Upload-Offset": str(len(upload.data))})

    async def _get(self, request: web.Request, data: bytes) -> web.StreamResponse:
        if self.fail_get:
            return web.Response(status=self.fail_get.pop(0), text="injected failure")
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if match:
            start = int(match.group(1)) + self.range_shift
            self.range_shift = 0
        response = web.StreamResponse(status=206 if match else 200)
        response.content_length = len(data) - start
        if match:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if self.drop_get_after is not None:
            cut, self.drop_get_after = self.drop_get_after, None
            await response.write(data[start:start + cut])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(data[start:])
        await response.write_eof()
        return response


@asynccontextmanager
async def mini_tus() -> AsyncIterator[MiniTus]:
    """Start a MiniTus on 127.0.0.1 (a free port); ``server.url`` is the creation URL."""
    server = MiniTus()
    app = web.Application()
    app.router.add_route("*", "/files/", server.handle)
    app.router.add_route("*", "/files/{id}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/files/"
    try:
        yield server
    finally:
        await runner.cleanup()
