"""A lean many-small load generator: POST + one PATCH per upload over raw keep-alive
connections (asyncio streams, requests prebuilt as bytes, responses parsed for the status,
``Location`` and ``Content-Length`` only), so on a small machine the load costs the
cores far less than ``bench.loadgen``'s aiohttp client and the server's own scaling
(``server.workers``) shows.

It reports uploads/s, p50/p99 of POST + PATCH, the server's CPU per upload (the process
tree, as ``bench.loadgen``) and its own CPU per upload, and checks every upload's offset
with a HEAD after the timed phase (and the bytes of a few by GET).

Usage:
    .venv/bin/python -m bench.leanload --servers tusd-py,tusd-py-w2 --pairs 3
    .venv/bin/python -m bench.leanload --url http://127.0.0.1:8080/files/ --pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .loadgen import ProcessProbe, format_table, parse_size, percentile, uvloop_run
from .run import VARIANTS, Server

TUS = b"Tus-Resumable: 1.0.0\r\n"


class Connection:
    """One keep-alive connection sending requests one after the other."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one request; its status, headers (lower-case names) and body."""
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def _path_of(location: bytes) -> str:
    text = location.decode()
    return urlsplit(text).path if "://" in text else text


async def run_once(url: str, *, count: int, size: int, concurrency: int,
                   pid: int | None) -> dict[str, Any]:
    """``count`` uploads of ``size`` bytes, ``concurrency`` at a time; the figures."""
    parts = urlsplit(url)
    host, port, base = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    authority = f"{host}:{port}".encode()
    body = os.urandom(size)
    post = (b"POST " + base.encode() + b" HTTP/1.1\r\nHost: " + authority + b"\r\n" + TUS
            + b"Upload-Length: " + str(size).encode() + b"\r\nContent-Length: 0\r\n\r\n")
    patch_tail = (b" HTTP/1.1\r\nHost: " + authority + b"\r\n" + TUS + b"Upload-Offset: 0\r\n"
                  b"Content-Type: application/offset+octet-stream\r\nContent-Length: "
                  + str(size).encode() + b"\r\n\r\n" + body)
    connections = [await Connection.open(host, port) for _ in range(concurrency)]
    paths: list[str] = []
    latencies: list[float] = []
    failures: list[str] = []
    left = iter(range(count))

    async def worker(conn: Connection) -> None:
        for _ in left:
            t0 = time.perf_counter()
            status, headers, _ = await conn.request(post)
            if status != 201:
                failures.append(f"POST {status}")
                continue
            path = _path_of(headers[b"location"])
            status, _, _ = await conn.request(b"PATCH " + path.encode() + patch_tail)
            if status != 204:
                failures.append(f"PATCH {status}")
                continue
            latencies.append(time.perf_counter() - t0)
            paths.append(path)

    probe = ProcessProbe(pid)
    server0 = probe.cpu() if pid else (0.0, 0.0, 0)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    wall = time.perf_counter() - t0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    server1 = probe.cpu() if pid else (0.0, 0.0, 0)
    bad = await _verify(connections[0], paths, size, body, authority)
    for conn in connections:
        conn.close()
    done = len(latencies)
    return {
        "uploads": done, "failures": len(failures) + bad, "wall_s": round(wall, 3),
        "uploads_s": round(done / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * (percentile(latencies, 99) or 0), 2),
        "server_cpu_ms_per_upload": round(1000 * ((server1[0] + server1[1])
                                                  - (server0[0] + server0[1])) / max(done, 1), 4),
        "loadgen_cpu_ms_per_upload": round(1000 * ((self1.ru_utime + self1.ru_stime)
                                                   - (self0.ru_utime + self0.ru_stime))
                                           / max(done, 1), 4),
    }


async def _verify(conn: Connection, paths: list[str], size: int, body: bytes,
                  authority: bytes) -> int:
    """HEAD every upload (its offset is its size) and GET the bytes of the first few;
    the number that are wrong."""
    bad = 0
    for i, path in enumerate(paths):
        status, headers, _ = await conn.request(
            b"HEAD " + path.encode() + b" HTTP/1.1\r\nHost: " + authority + b"\r\n" + TUS + b"\r\n")
        if status != 200 or headers.get(b"upload-offset") != str(size).encode():
            bad += 1
        elif i < 5:
            status, _, got = await conn.request(
                b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
            bad += status != 200 or got != body
    return bad


def sitting(servers: Sequence[str], pairs: int, count: int, size: int,
            concurrency: int) -> dict[str, list[dict[str, Any]]]:
    """Alternate the servers (A B A B ...), a fresh process and data directory each run."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory(prefix="tusd-lean-") as work:
        for round_ in range(pairs):
            for name in servers:
                server = Server(name, Path(work) / f"r{round_}", {}).start()
                try:
                    # One unmeasured warm-up run (imports, the first SQLite pages).
                    uvloop_run(run_once(server.url, count=200, size=size,
                                        concurrency=concurrency, pid=None))
                    result = uvloop_run(run_once(server.url, count=count, size=size,
                                                 concurrency=concurrency, pid=server.pid))
                finally:
                    server.stop()
                results[name].append(result)
                print(f"{name} round {round_ + 1}: {result}", file=sys.stderr, flush=True)
    return results


def summary_rows(results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows = []
    first = next(iter(results))
    base = statistics.median(r["uploads_s"] for r in results[first])
    for name, runs in results.items():
        rate = statistics.median(r["uploads_s"] for r in runs)
        rows.append([
            name, " ".join(f"{r['uploads_s']:.0f}" for r in runs), f"{rate:.1f}",
            f"{rate / base:.2f}x",
            f"{statistics.median(r['p99_ms'] for r in runs):.1f}",
            f"{statistics.median(r['server_cpu_ms_per_upload'] for r in runs):.3f}",
            f"{statistics.median(r['loadgen_cpu_ms_per_upload'] for r in runs):.3f}",
            str(sum(r["failures"] for r in runs)),
        ])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leanload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure a running server at this creation URL")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid (CPU figures)")
    parser.add_argument("--servers", default="tusd-py,tusd-py-w2",
                        help=f"with no --url: servers to alternate, of {', '.join(VARIANTS)}")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the servers (default 3)")
    parser.add_argument("--count", type=int, default=4000, help="uploads per run (default 4000)")
    parser.add_argument("--size", type=parse_size, default=16 << 10, help="bytes per upload (16KiB)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (default 32)")
    args = parser.parse_args(argv)
    if args.url:
        print(uvloop_run(run_once(args.url, count=args.count, size=args.size,
                                  concurrency=args.concurrency, pid=args.pid)))
        return 0
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in VARIANTS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}: one of {', '.join(VARIANTS)}")
    results = sitting(servers, args.pairs, args.count, args.size, args.concurrency)
    print(format_table([["server", "uploads/s per run", "median", "vs first", "p99 ms",
                         "server CPU ms/upload", "loadgen CPU ms/upload", "failures"],
                        *summary_rows(results)]))
    return 1 if any(r["failures"] for runs in results.values() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
