"""Small synchronous HTTP helpers for the interop tests (the clients under test do the
uploading; these only inspect the result)."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from pathlib import Path

TUS = {"Tus-Resumable": "1.0.0"}


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def head(url: str) -> dict[str, str]:
    req = urllib.request.Request(url, method="HEAD", headers=TUS)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200, r.status
        return {k.lower(): v for k, v in r.headers.items()}


def download(url: str) -> tuple[str, dict[str, str]]:
    """GET the finished upload: (sha256 of the body, response headers)."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200, r.status
        while chunk := r.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest(), {k.lower(): v for k, v in r.headers.items()}


def wait_offset_above(url: str, offset: int, limit: float = 30.0) -> int:
    """Poll HEAD until the upload's offset passes ``offset`` (a request cut mid-body is
    committed when the server notices the connection is gone); returns the new offset."""
    deadline = time.monotonic() + limit
    while (now := int(head(url)["upload-offset"])) <= offset:
        assert time.monotonic() < deadline, f"offset still {now} after {limit} s"
        time.sleep(0.05)
    return now
