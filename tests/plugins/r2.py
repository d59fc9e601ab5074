"""Cloudflare R2's multipart rule, enforced in front of moto (which does not check it).

``EqualPartsCheck(proxy)`` takes over a ``StoreProxy``'s requests: it records the size of
every UploadPart and UploadPartCopy that succeeds, per UploadId and part number (a part
uploaded again replaces the earlier one, as on S3), and answers a
CompleteMultipartUpload whose listed parts are not all of one size but the last (which
may be smaller, never larger) as R2 does: 400 InvalidPart, "All non-trailing parts must
have the same length." Everything else passes through unchanged. The ``r2_proxy`` fixture
(``tests.plugins.s3``) is one in front of the session's moto.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import unquote

from aiohttp import web

from tests.plugins.proxy import StoreProxy

#: R2's answer to parts of different sizes (the code and message R2 sends).
UNEQUAL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidPart</Code>'
           b"<Message>All non-trailing parts must have the same length.</Message></Error>")


def equal_parts(sizes: list[int]) -> bool:
    """R2's rule: every part but the last of one size, the last no larger."""
    return not sizes or (len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0])


def listed_parts(body: bytes) -> list[int]:
    """The part numbers a CompleteMultipartUpload request lists, in order."""
    root = ET.fromstring(body)
    return [int(node.text or "0") for node in root.iter() if node.tag.endswith("PartNumber")]


class EqualPartsCheck:
    """A ``StoreProxy`` that behaves like R2 about part sizes (see the module)."""

    def __init__(self, proxy: StoreProxy) -> None:
        self.proxy = proxy
        #: UploadId -> part number -> size of the part stored under it.
        self.sizes: dict[str, dict[int, int]] = {}
        #: The part sizes of every completion passed on, and of every one refused.
        self.completed: list[list[int]] = []
        self.refused: list[list[int]] = []
        #: Parts made by UploadPartCopy and by UploadPart (body sent).
        self.copies = 0
        self.uploads = 0
        self._inner = proxy.handle
        proxy.handle = self.handle  # type: ignore[method-assign]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        upload_id = query.get("uploadId")
        if upload_id is None:
            return await self._inner(request)
        if request.method == "POST":  # CompleteMultipartUpload
            stored = self.sizes.get(upload_id, {})
            numbers = listed_parts(await request.read())
            if all(n in stored for n in numbers):  # else moto refuses it (a part unknown)
                sizes = [stored[n] for n in numbers]
                if not equal_parts(sizes):
                    self.refused.append(sizes)
                    return web.Response(status=400, body=UNEQUAL, content_type="application/xml")
                response = await self._inner(request)
                if response.status == 200:
                    self.completed.append(sizes)
                return response
        if request.method == "PUT" and "partNumber" in query:
            copy = "x-amz-copy-source" in request.headers
            size = await self._copy_size(request) if copy else len(await request.read())
            response = await self._inner(request)
            if response.status == 200:
                self.sizes.setdefault(upload_id, {})[int(query["partNumber"])] = size
                self.copies += copy
                self.uploads += not copy
            return response
        return await self._inner(request)

    async def _copy_size(self, request: web.Request) -> int:
        """The bytes an UploadPartCopy copies: its range, else the whole source object."""
        copy_range = request.headers.get("x-amz-copy-source-range")
        if copy_range:
            first, _, last = copy_range.removeprefix("bytes=").partition("-")
            return int(last) - int(first) + 1
        source = unquote(request.headers["x-amz-copy-source"]).lstrip("/").split("?")[0]
        assert self.proxy.session is not None
        async with self.proxy.session.head(f"{self.proxy.upstream}/{source}") as r:
            return int(r.headers["Content-Length"])
