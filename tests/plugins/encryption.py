"""Bucket policies over real HTTP: a proxy in front of an emulator that refuses, as a
platform team's bucket policy would, every request making an object that lacks the
expected encryption and storage-class fields; and a set of uploads run through the
daemon's HTTP API that makes the driver write every kind of object it writes.

``enforce(proxy, refuses)``: ``refuses(request, body)`` returns why a request breaks
the policy (None: it passes); refused requests get a 403 (S3's AccessDenied XML) and
are kept in the returned list. ``run_upload_set(client, sweep=...)`` runs the uploads
and compares every finished upload's bytes by GET.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.http.helpers import TUS, checksum, create, download, head, patch, path_of, upload
from tests.plugins.proxy import StoreProxy
from tusd_py.core.sweeper import sweep_once
from tusd_py.http.keys import HANDLER

MIB = 1 << 20
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")

Refuses = Callable[[web.Request, bytes], "str | None"]


@dataclass
class Refusal:
    method: str
    path_qs: str
    why: str


def enforce(proxy: StoreProxy, refuses: Refuses) -> list[Refusal]:
    """Make ``proxy`` refuse what ``refuses`` objects to (403 AccessDenied); the list of
    refusals, filled as requests come."""
    refused: list[Refusal] = []
    inner = proxy.handle

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()  # cached: the proxy reads it again
        why = refuses(request, body)
        if why is not None:
            refused.append(Refusal(request.method, request.path_qs, why))
            return web.Response(status=403, body=ACCESS_DENIED, content_type="application/xml")
        return await inner(request)

    proxy.handle = handle  # type: ignore[method-assign]
    return refused


def missing_headers(request: web.Request, required: dict[str, str]) -> str | None:
    """Which of ``required`` (header: value) the request lacks or has otherwise."""
    wrong = [f"{name}: {request.headers.get(name)!r} (want {value!r})"
             for name, value in required.items() if request.headers.get(name) != value]
    return "; ".join(wrong) or None


async def run_upload_set(client: TestClient, *, sweep: bool = True) -> dict[str, bytes]:
    """Uploads that make a driver write every kind of object it writes (records, index
    markers and turns, multipart and single-object uploads, tail parts, concatenation
    targets, an empty upload), a checksum mismatch (460), a termination and, with
    ``sweep``, a sweep that deletes an expired upload. Returns path -> bytes of the
    finished uploads, each compared by GET."""
    done: dict[str, bytes] = {}
    # Big pieces and small ones: parts, and the tail in between.
    big = os.urandom(11 * MIB + 123)
    path = await create(client, len(big))
    offset = 0
    for size in (6 * MIB, 100 << 10, 333, len(big)):
        piece = big[offset:offset + size]
        r = await patch(client, path, offset, piece)
        assert r.status == 204, (r.status, await r.text())
        offset = int(r.headers["Upload-Offset"])
        if offset == len(big):
            break
    done[path] = big
    # Small pieces only: the final object in one write.
    small = os.urandom(1000)
    done[await upload(client, small, chunk=334)] = small
    # Deferred length, declared on the last PATCH.
    deferred = os.urandom(2 * MIB + 1024)
    path = await create(client, Upload_Defer_Length="1")
    assert (await patch(client, path, 0, deferred[:2 * MIB])).status == 204
    r = await patch(client, path, 2 * MIB, deferred[2 * MIB:], Upload_Length=str(len(deferred)))
    assert r.status == 204, (r.status, await r.text())
    done[path] = deferred
    # An empty upload: complete at creation.
    done[await create(client, 0)] = b""
    # A checksum mismatch keeps nothing; the right checksum is then accepted.
    body = os.urandom(4096)
    path = await create(client, len(body))
    r = await patch(client, path, 0, body, Upload_Checksum=checksum("sha1", b"other"))
    assert r.status == 460, (r.status, await r.text())
    assert (await head(client, path)).headers["Upload-Offset"] == "0"
    r = await patch(client, path, 0, body, Upload_Checksum=checksum("sha1", body))
    assert r.status == 204, (r.status, await r.text())
    done[path] = body
    # Concatenation: a big partial and a small one, in both orders.
    parts = [os.urandom(6 * MIB), os.urandom(100)]
    partials = [await upload(client, data, chunk=4 * MIB, Upload_Concat="partial")
                for data in parts]
    for order in ((0, 1), (1, 0)):
        r = await client.post("/files/", headers={
            **TUS, "Upload-Concat": "final;" + " ".join(partials[i] for i in order)})
        assert r.status == 201, (r.status, await r.text())
        done[path_of(r.headers["Location"])] = b"".join(parts[i] for i in order)
    # Termination.
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"12345")).status == 204
    r = await client.delete(path, headers=TUS)
    assert r.status == 204, (r.status, await r.text())
    assert (await head(client, path)).status == 404
    for path, data in done.items():
        assert await download(client, path) == data, path
    if sweep:
        path = await create(client, 10 * MIB)
        assert (await patch(client, path, 0, os.urandom(MIB))).status == 204
        handler = client.app[HANDLER]
        assert await sweep_once(handler, now=time.time() + 3 * 86400) == 1
        assert (await head(client, path)).status == 404
    return done
