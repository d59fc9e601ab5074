"""The practical ceiling: the thinnest aiohttp + uvloop "tus-ish" server.

It does only what the benchmark's timed phase needs and nothing a real server must do:
no metadata store, no locking, no persistence of state, no checks beyond the offset.
``POST`` answers 201 with a ``Location``; ``PATCH`` streams the body into the upload's
file with plain blocking ``os.write`` calls; ``HEAD`` reports the in-memory offset.
``GET`` (download) and ``DELETE`` exist only so the benchmark can verify bytes and clean
up *outside* the timed phase. ``/healthz`` is for start-up polling.

Usage: python -m bench.baseline_server --port 8090 --data-dir /tmp/baseline-data
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

from aiohttp import web

TUS = {"Tus-Resumable": "1.0.0"}


class Baseline:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.uploads: dict[str, list[int]] = {}  # id -> [offset, length]

    def path(self, uid: str) -> Path:
        return self.data_dir / uid

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**TUS, "Tus-Version": "1.0.0",
                                                 "Tus-Extension": "creation,termination"})

    async def create(self, request: web.Request) -> web.Response:
        try:
            length = int(request.headers["Upload-Length"])
        except (KeyError, ValueError):
            return web.Response(status=400, headers=TUS)
        uid = uuid.uuid4().hex
        self.uploads[uid] = [0, length]
        self.path(uid).touch()
        return web.Response(status=201, headers={**TUS, "Location": f"{request.path.rstrip('/')}/{uid}"})

    async def head(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return web.Response(status=404, headers=TUS)
        return web.Response(status=200, headers={
            **TUS, "Upload-Offset": str(upload[0]), "Upload-Length": str(upload[1]),
            "Cache-Control": "no-store"})

    async def patch(self, request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        upload = self.uploads.get(uid)
        if upload is None:
            return web.Response(status=404, headers=TUS)
        if request.headers.get("Upload-Offset") != str(upload[0]):
            return web.Response(status=409, headers=TUS)
        fd = os.open(self.path(uid), os.O_WRONLY)
        written = 0
        try:
            os.lseek(fd, upload[0], os.SEEK_SET)
            async for chunk in request.content.iter_any():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                written += len(chunk)
        finally:
            os.close(fd)
        upload[0] += written
        return web.Response(status=204, headers={**TUS, "Upload-Offset": str(upload[0])})

    async def get(self, request: web.Request) -> web.StreamResponse:
        uid = request.match_info["id"]
        if uid not in self.uploads:
            return web.Response(status=404, headers=TUS)
        return web.FileResponse(self.path(uid))

    async def delete(self, request: web.Request) -> web.Response:
        uid = request.match_info["id"]
        if self.uploads.pop(uid, None) is None:
            return web.Response(status=404, headers=TUS)
        self.path(uid).unlink(missing_ok=True)
        return web.Response(status=204, headers=TUS)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def make_app(data_dir: Path) -> web.Application:
    server = Baseline(data_dir)
    app = web.Application()
    app.router.add_get("/healthz", server.healthz)
    for path in ("/files/", "/files"):
        app.router.add_route("OPTIONS", path, server.options)
        app.router.add_post(path, server.create)
    app.router.add_route("HEAD", "/files/{id}", server.head)
    app.router.add_patch("/files/{id}", server.patch)
    app.router.add_get("/files/{id}", server.get, allow_head=False)
    app.router.add_delete("/files/{id}", server.delete)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data-dir", type=Path, default=Path("data-baseline"))
    args = parser.parse_args(argv)
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        import asyncio
        loop = asyncio.new_event_loop()
    print(f"baseline on {args.host}:{args.port} pid={os.getpid()}", flush=True)
    web.run_app(make_app(args.data_dir), host=args.host, port=args.port, print=None,
                access_log=None, loop=loop)


if __name__ == "__main__":
    main()
