"""A latency- and bandwidth-shaping TCP proxy in front of a storage emulator, counting the
HTTP requests and bytes that pass (so a benchmark sees a real bucket's costs: each
request waits, each connection has a ceiling).

Every HTTP request (found by parsing the client's stream: request line, headers,
Content-Length or chunked body) is held ``--latency`` before its first byte goes on, and
each connection carries at most ``--bandwidth`` bytes per second in each direction.
``GET /stats`` on the control port answers the counts as JSON (requests by kind, request
and response body bytes); ``POST /reset`` zeroes them.

Usage: python -m bench.shaper --upstream http://127.0.0.1:9000 --port 9100 \\
           --control-port 9101 --latency 20ms --bandwidth 50MB
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

_SIZE = re.compile(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*")
_BYTES = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1 << 20}
_SECONDS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
READ = 256 * 1024


def parse_amount(text: str, units: dict[str, float]) -> float:
    m = _SIZE.fullmatch(text)
    if not m or m.group(2).lower() not in units:
        raise argparse.ArgumentTypeError(f"not understood: {text!r}")
    return float(m.group(1)) * units[m.group(2).lower()]


def kind_of(method: str, target: str) -> str:
    """A request's kind across S3, GCS and Azure: LIST, or its method (for GETs of an
    object: GET; HEAD counts as GET)."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    if method in ("GET", "HEAD"):
        if ("list-type" in query or "uploads" in query or query.get("comp") == ["list"]
                or parts.path.rstrip("/").endswith("/o") or "uploadId" in query):
            return "LIST"  # ListObjects, ListMultipartUploads, ListParts, List Blobs, objects.list
        return "GET"
    return method


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    sent: int = 0  # request body bytes (to the store)
    received: int = 0  # response bytes (from the store, headers included)
    connections: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "total": sum(self.requests.values()),
                "sent": self.sent, "received": self.received,
                "connections": self.connections, "seconds": time.monotonic() - self.started}


class RequestSplitter:
    """Finds where HTTP/1.1 requests start in a client's byte stream (and counts their
    body bytes), across keep-alive connections."""

    def __init__(self, on_request: Callable[[str, str], None], on_body: Callable[[int], None]) -> None:
        self._on_request = on_request
        self._on_body = on_body
        self._state = "head"
        self._head = bytearray()
        self._left = 0  # body bytes (or chunk bytes) still to come
        self._line = bytearray()  # a chunk-size or trailer line

    def feed(self, data: bytes) -> list[int]:
        """Offsets in ``data`` at which a new request starts."""
        starts = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == "head":
                if not self._head:
                    starts.append(i)
                seen = len(self._head)
                self._head += data[i:]
                end = self._head.find(b"\r\n\r\n", max(0, seen - 3))
                if end < 0:
                    return starts
                del self._head[end + 4:]
                i += end + 4 - seen
                self._headers_done()
            elif state == "body":
                take = min(self._left, n - i)
                self._on_body(take)
                self._left -= take
                i += take
                if not self._left:
                    self._state = "head"
            elif state in ("size", "trailer"):
                end = data.find(b"\n", i)
                if end < 0:
                    self._line += data[i:]
                    return starts
                self._line += data[i:end + 1]
                i = end + 1
                line = bytes(self._line).strip()
                self._line.clear()
                if state == "size":
                    size = int(line.split(b";")[0] or b"0", 16)
                    if size:
                        self._left, self._state = size + 2, "chunk"
                    else:
                        self._state = "trailer"
                elif not line:
                    self._state = "head"
            elif state == "chunk":
                take = min(self._left, n - i)
                self._on_body(max(0, min(take, self._left - 2)))
                self._left -= take
                i += take
                if not self._left:
                    self._state = "size"
        return starts

    def _headers_done(self) -> None:
        head = bytes(self._head).decode("latin-1")
        self._head.clear()
        line, _, rest = head.partition("\r\n")
        method, _, target = line.partition(" ")
        target = target.rsplit(" ", 1)[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (h.partition(":") for h in rest.split("\r\n") if h)}
        self._on_request(method, target)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "size"
        elif int(headers.get("content-length", "0") or 0) > 0:
            self._left, self._state = int(headers["content-length"]), "body"
        else:
            self._state = "head"


class Pace:
    """One direction of one connection: at most ``rate`` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free = 0.0

    async def send(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._free = max(self._free, now) + n / self.rate
        if self._free > now:
            await asyncio.sleep(self._free - now)


class Shaper:
    def __init__(self, upstream: tuple[str, int], latency: float, bandwidth: float) -> None:
        self.upstream = upstream
        self.latency = latency
        self.bandwidth = bandwidth
        self.stats = Stats()

    def _request(self, method: str, target: str) -> None:
        self.stats.requests[kind_of(method, target)] += 1

    def _body(self, n: int) -> None:
        self.stats.sent += n

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        splitter = RequestSplitter(self._request, self._body)
        tasks = [asyncio.create_task(self._pump(reader, up_writer, splitter)),
                 asyncio.create_task(self._pump(up_reader, writer, None))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    splitter: RequestSplitter | None) -> None:
        pace = Pace(self.bandwidth)
        while True:
            data = await reader.read(READ)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if splitter is None:
                self.stats.received += len(data)
                pieces = [(data, False)]
            else:
                starts = splitter.feed(data)
                cuts = [0, *[s for s in starts if s], len(data)]
                pieces = [(data[a:b], a in starts) for a, b in itertools.pairwise(cuts) if b > a]
            for piece, new_request in pieces:
                if new_request and self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(piece)
                await writer.drain()
                await pace.send(len(piece))


async def serve(args: argparse.Namespace) -> None:
    up = urlsplit(args.upstream)
    shaper = Shaper((up.hostname or "127.0.0.1", up.port or 80), args.latency, args.bandwidth)
    server = await asyncio.start_server(shaper.handle, "127.0.0.1", args.port)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(shaper.stats.as_dict())

    async def reset(_: web.Request) -> web.Response:
        shaper.stats = Stats()
        return web.json_response({"ok": True})

    control = web.Application()
    control.router.add_get("/stats", stats)
    control.router.add_post("/reset", reset)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.control_port).start()
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"listening": port, "latency": args.latency,
                      "bandwidth": args.bandwidth}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shaper",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://host:port of the emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--latency", type=lambda t: parse_amount(t, _SECONDS), default=0.02,
                        help="added before each request (e.g. 20ms)")
    parser.add_argument("--bandwidth", type=lambda t: parse_amount(t, _BYTES), default=50e6,
                        help="bytes per second per connection and direction (e.g. 50MB; 0: none)")
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
