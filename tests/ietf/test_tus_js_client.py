"""npm tus-js-client in its two IETF draft modes against a real daemon: ``ietf-draft-03``
sends interop 5, ``ietf-draft-05`` interop 6 (with ``application/partial-upload``).
Uploads whole, and aborted mid-append then resumed from the server's offset; the bytes
are compared by download (sha256)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.interop.helpers import download, make_file
from tests.interop.test_tus_js_client import node
from tests.plugins.daemon import Daemon

MiB = 1 << 20
MODES = {"ietf-draft-03": 5, "ietf-draft-05": 6}


def offset_of(url: str, version: int) -> int:
    """The draft's offset retrieval (HEAD with the interop version)."""
    req = urllib.request.Request(url, method="HEAD", headers={
        "Upload-Draft-Interop-Version": str(version)})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert 200 <= r.status < 300, r.status
        return int(r.headers["Upload-Offset"])


@pytest.mark.parametrize("protocol", MODES)
@pytest.mark.parametrize("during_creation", [False, True], ids=["empty-creation", "with-data"])
def test_upload(daemon: Daemon, tmp_path: Path, protocol: str, during_creation: bool) -> None:
    source = tmp_path / "photo.jpg"
    size = 3 * MiB + 5
    want = make_file(source, size)
    result = node(endpoint=daemon.url, file=str(source), chunkSize=MiB, protocol=protocol,
                  dataDuringCreation=during_creation,
                  metadata={"filename": "photo.jpg", "filetype": "image/jpeg"})
    assert result["ok"], result
    assert result["progress"]["max"] == size
    assert offset_of(result["url"], MODES[protocol]) == size
    got, headers = download(result["url"])
    assert got == want
    assert headers["content-type"] == "image/jpeg"  # Upload-Metadata kept, as with tus


@pytest.mark.parametrize("protocol", MODES)
def test_abort_mid_append_and_resume(daemon: Daemon, tmp_path: Path, protocol: str) -> None:
    source = tmp_path / "big.bin"
    size = 4 * MiB + 11
    want = make_file(source, size)
    storage = str(tmp_path / "urls.json")
    first = node(mode="abort", endpoint=daemon.url, file=str(source), chunkSize=2 * MiB,
                 abortAt=MiB + MiB // 2, storage=storage, protocol=protocol)
    assert first["ok"] and first["aborted"], first
    offset = offset_of(first["url"], MODES[protocol])
    assert 0 < offset < size  # what arrived of the cut append was kept

    second = node(mode="resume", endpoint=daemon.url, file=str(source), chunkSize=MiB,
                  storage=storage, retryDelays=[200, 1000], protocol=protocol)
    assert second["ok"], second
    assert second["url"] == first["url"]
    assert second["progress"]["min"] >= offset  # resumed, not restarted
    got, _ = download(second["url"])
    assert got == want
