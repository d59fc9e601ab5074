"""What each interop version of the draft asks, written from the draft texts (not read
from tusd_py.protocol.ietf, so the tests check the table), and request helpers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.hostile.raw import parse_head

#: Interop versions and the drafts that carry them (../shared/notes/ietf-draft.md §0).
VERSIONS = (3, 4, 5, 6, 7, 8, 9, 10)
PROBLEM = "https://iana.org/assignments/http-problem-types#"


@dataclass(frozen=True)
class Version:
    """One interop version, as its text reads."""

    n: int

    @property
    def header(self) -> dict[str, str]:
        return {"Upload-Draft-Interop-Version": str(self.n)}

    def complete(self, done: bool) -> dict[str, str]:
        """-01 (3): ``Upload-Incomplete: ?1`` = more to come; -02 on: ``Upload-Complete``."""
        if self.n == 3:
            return {"Upload-Incomplete": "?0" if done else "?1"}
        return {"Upload-Complete": "?1" if done else "?0"}

    def says_complete(self, r: ClientResponse) -> bool | None:
        """The completeness a response states (None: not stated)."""
        name = "Upload-Incomplete" if self.n == 3 else "Upload-Complete"
        value = r.headers.get(name)
        if value is None:
            return None
        assert value in ("?0", "?1"), value
        return (value == "?0") if self.n == 3 else (value == "?1")

    @property
    def append_type(self) -> dict[str, str]:
        """-04 on (6): an append MUST be ``application/partial-upload``."""
        return {"Content-Type": "application/partial-upload"} if self.n >= 6 else {}

    @property
    def has_limits(self) -> bool:  # Upload-Limit: -04 on (6)
        return self.n >= 6

    @property
    def expiry_key(self) -> str:  # -04/-05: expires; -06 on: max-age
        return "expires" if self.n == 6 else "max-age"

    @property
    def has_length(self) -> bool:  # Upload-Length: -05 (6) on
        return self.n >= 6

    @property
    def get_is_retrieval(self) -> bool:  # -12 (9) on
        return self.n >= 9

    @property
    def head_needs_completeness(self) -> bool:  # not required from -13 (10)
        return self.n < 10

    @property
    def problems(self) -> bool:  # problem details: -04 (6) on
        return self.n >= 6

    def incomplete_append_ok(self, status: int) -> bool:
        """-01..-05: 201; -06 on: any 2xx."""
        return status == 201 if self.n <= 6 else 200 <= status < 300

    def retrieval_ok(self, status: int) -> bool:
        """-01/-02: 204; -03..-05: 200 or 204; -06 on: 2xx."""
        if self.n <= 4:
            return status == 204
        if self.n <= 6:
            return status in (200, 204)
        return 200 <= status < 300


def limits(value: str) -> dict[str, str]:
    """An ``Upload-Limit`` dictionary (integer members only, as the server sends)."""
    out = {}
    for item in value.split(","):
        key, _, number = item.strip().partition("=")
        out[key] = number
    return out


def path_of(location: str) -> str:
    return urlsplit(location).path


async def create(client: TestClient, v: Version, data: bytes | None = None, *,
                 done: bool = False, expect: int = 201, **headers: str) -> ClientResponse:
    """A creation request (POST to the creation URL) with ``data`` as its content."""
    h = {**v.header, **v.complete(done), **{k.replace("_", "-"): v2 for k, v2 in headers.items()}}
    r = await client.post("/files/", data=data if data is not None else b"", headers=h)
    await r.read()
    assert r.status == expect, (r.status, await r.text())
    return r


async def append(client: TestClient, v: Version, path: str, offset: int, data: bytes, *,
                 done: bool = False, **headers: str) -> ClientResponse:
    h = {**v.header, **v.complete(done), **v.append_type, "Upload-Offset": str(offset),
         **{k.replace("_", "-"): v2 for k, v2 in headers.items()}}
    r = await client.patch(path, data=data, headers=h)
    await r.read()
    return r


async def retrieve(client: TestClient, v: Version, path: str, method: str = "HEAD",
                   **headers: str) -> ClientResponse:
    r = await client.request(method, path, headers={**v.header, **headers})
    await r.read()
    return r


async def download(client: TestClient, path: str) -> bytes:
    r = await client.get(path)
    assert r.status == 200, (r.status, await r.text())
    return await r.read()


async def problem(r: ClientResponse) -> dict[str, Any]:
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = json.loads(await r.read())
    return body


async def raw(port: int, data: bytes, *, finals: int = 1, wait: float = 10) -> bytes:
    """Send ``data`` on a new connection; what the server sends until ``finals`` final
    responses are whole (pipelined requests), or it closes, or it is quiet for ``wait``
    seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    got = b""
    try:
        while _finals(got) < finals:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return got


def _finals(wire: bytes) -> int:
    """How many whole final (non-1xx) responses ``wire`` holds, bodies by Content-Length."""
    count, rest = 0, wire
    while True:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return count
        status, headers = parse_head(head)
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return count
        count += status >= 200
        rest = rest[length:]


def messages(wire: bytes) -> list[tuple[int, dict[str, str]]]:
    """The status lines and header blocks on the wire, in order (bodies skipped by
    Content-Length): interim responses first, then the final one."""
    out = []
    rest = wire
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            break
        status, headers = parse_head(head)
        out.append((status, headers))
        rest = rest[int(headers.get("content-length", "0")):]
    return out
