"""npm tus-js-client 4.3.1 (the real client, Node build) against a real tusd-py daemon.

Each test runs ``node tests/interop/node/tus_client.mjs '<json>'``, which prints one
JSON line; the bytes are checked here by GET + sha256. The interruption tests run on
every driver.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from tests.interop.helpers import download, head, make_file, wait_offset_above
from tests.plugins.daemon import ROOT, Daemon
from tests.plugins.tcp import CuttingProxy

MiB = 1 << 20
SCRIPT = Path(__file__).parent / "node" / "tus_client.mjs"


def node(**options: Any) -> dict[str, Any]:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed (scripts/test.sh needs Node for tus-js-client)")
    if not (ROOT / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tus-js-client is not installed: run `npm ci` (scripts/test.sh does)")
    proc = subprocess.run([exe, str(SCRIPT), json.dumps(options)], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output from node (status {proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def metadata_of(url: str) -> dict[str, str]:
    value = head(url).get("upload-metadata", "")
    pairs = (item.split(" ", 1) for item in value.split(",") if item)
    return {k: base64.b64decode(v).decode() for k, v in pairs}


def test_plain_upload(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    size = 3 * MiB + 3
    want = make_file(source, size)
    result = node(endpoint=daemon.url, file=str(source), chunkSize=MiB,
                  metadata={"filename": "photo.png", "filetype": "image/png"})
    assert result["ok"], result
    assert result["url"].startswith(daemon.url)
    assert result["progress"]["max"] == size
    assert metadata_of(result["url"]) == {"filename": "photo.png", "filetype": "image/png"}
    got, headers = download(result["url"])
    assert got == want
    assert headers["content-type"] == "image/png"  # on the safe list
    assert headers["content-length"] == str(size)


def test_resume_after_abort_mid_patch(driver_daemon: Daemon, tmp_path: Path) -> None:
    """abort() while a PATCH body is being sent; a new Upload finds the URL through the
    FileUrlStorage (findPreviousUploads + resumeFromPreviousUpload) and continues from
    the server's offset, not from 0."""
    daemon = driver_daemon
    source = tmp_path / "big.bin"
    size = 4 * MiB + 11
    want = make_file(source, size)
    storage = str(tmp_path / "tus-urls.json")

    first = node(mode="abort", endpoint=daemon.url, file=str(source), chunkSize=2 * MiB,
                 abortAt=MiB + MiB // 2, storage=storage, metadata={"filename": "big.bin"})
    assert first["ok"] and first["aborted"], first
    offset = wait_offset_above(first["url"], 0)  # the server kept what had arrived
    assert offset < size

    second = node(mode="resume", endpoint=daemon.url, file=str(source), chunkSize=MiB,
                  storage=storage, retryDelays=[200, 1000])
    assert second["ok"], second
    assert second["url"] == first["url"]
    assert second["progress"]["previousUploads"] >= 1
    assert second["progress"]["min"] >= offset  # resumed, not restarted
    assert second["retries"] == []
    got, _ = download(second["url"])
    assert got == want
    assert metadata_of(second["url"]) == {"filename": "big.bin"}


def test_retries_and_resumes_after_the_connection_is_cut(driver_daemon: Daemon,
                                                         tmp_path: Path) -> None:
    """A proxy resets the connection in the middle of a PATCH body; tus-js-client's own
    retry asks for the offset and resumes from inside the cut PATCH; the bytes are the
    file's."""
    source = tmp_path / "cut.bin"
    size, chunk, cut = 5 * MiB + 3, 2 * MiB, 3 * MiB // 2
    want = make_file(source, size)
    proxy = CuttingProxy(driver_daemon.port)
    try:
        proxy.cut_after(cut)
        result = node(endpoint=proxy.root + "/files/", file=str(source), chunkSize=chunk,
                      retryDelays=[200, 500, 1000, 1000, 1000])
    finally:
        proxy.close()
    assert result["ok"], result
    assert proxy.cuts == 1
    assert len(result["retries"]) >= 1, result
    assert proxy.offsets[0] == 0
    assert [o for o in proxy.offsets if 0 < o <= cut], proxy.offsets  # from where it got to
    got, _ = download(driver_daemon.root + result["url"].removeprefix(proxy.root))
    assert got == want


def test_resume_with_upload_url(daemon: Daemon, tmp_path: Path) -> None:
    """Resume by handing the upload URL to a new Upload (the `uploadUrl` option)."""
    source = tmp_path / "u.bin"
    size = 3 * MiB
    want = make_file(source, size)
    first = node(mode="abort", endpoint=daemon.url, file=str(source), chunkSize=MiB, abortAt=MiB)
    assert first["ok"] and first["aborted"], first
    offset = wait_offset_above(first["url"], 0)
    assert offset < size

    second = node(mode="resume", uploadUrl=first["url"], file=str(source), chunkSize=MiB,
                  retryDelays=[200, 1000])
    assert second["ok"], second
    assert second["url"] == first["url"]
    assert second["progress"]["min"] >= offset
    got, _ = download(first["url"])
    assert got == want


def test_parallel_uploads_use_concatenation(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "parallel.bin"
    size = 5 * MiB + 17
    want = make_file(source, size)
    result = node(endpoint=daemon.url, file=str(source), chunkSize=MiB, parallel=3,
                  metadata={"filename": "parallel.bin"})
    assert result["ok"], result
    final = head(result["url"])
    assert final["upload-concat"].startswith("final;")
    partials = [urljoin(result["url"], u) for u in final["upload-concat"][len("final;"):].split()]
    assert len(partials) == 3
    for url in partials:
        assert head(url)["upload-concat"] == "partial"
    assert sum(int(head(url)["upload-length"]) for url in partials) == size
    assert final["upload-offset"] == final["upload-length"] == str(size)
    assert metadata_of(result["url"]) == {"filename": "parallel.bin"}
    got, _ = download(result["url"])
    assert got == want


def test_parallel_upload_resumed_after_abort(daemon: Daemon, tmp_path: Path) -> None:
    """Abort a `parallelUploads: 3` upload mid-way; a new Upload finds the three partial
    URLs in the FileUrlStorage, resumes each from its server offset and creates the final."""
    source = tmp_path / "pabort.bin"
    size = 6 * MiB + 1
    want = make_file(source, size)
    storage = str(tmp_path / "tus-urls.json")
    first = node(mode="abort", endpoint=daemon.url, file=str(source), chunkSize=MiB // 2, parallel=3,
                 abortAt=2 * MiB, storage=storage)
    assert first["ok"] and first["aborted"], first
    partials = first["parallelUploadUrls"]
    assert len(partials) == 3 and all(partials), first
    lengths = [int(head(url)["upload-length"]) for url in partials]
    assert sum(lengths) == size
    deadline = time.monotonic() + 30  # the cut PATCHes are committed once noticed
    while sum(offsets := [int(head(url)["upload-offset"]) for url in partials]) == 0:
        assert time.monotonic() < deadline, offsets
        time.sleep(0.05)
    assert sum(offsets) < size, (offsets, lengths)

    second = node(mode="resume", endpoint=daemon.url, file=str(source), chunkSize=MiB // 2, parallel=3,
                  storage=storage, retryDelays=[200, 1000])
    assert second["ok"], second
    assert second["parallelUploadUrls"] == partials  # the same partials, resumed
    assert second["progress"]["previousUploads"] >= 1
    final = head(second["url"])
    assert [urljoin(second["url"], u) for u in final["upload-concat"][len("final;"):].split()] == partials
    got, _ = download(second["url"])
    assert got == want


@pytest.mark.parametrize("options", [
    # creation-defer-length: a plain Readable of unknown length; the length arrives with
    # the last PATCH (tus-js-client 4.3.1 stalled before that last PATCH with an fs.ReadStream
    # source with uploadLengthDeferred, a client-side limitation, hence a piped stream)
    {"deferLength": True, "input": "stream"},
    # creation-with-upload: the first chunk rides on the POST
    {"dataDuringCreation": True},
], ids=["defer-length", "creation-with-upload"])
def test_deferred_length_and_creation_with_upload(daemon: Daemon, tmp_path: Path,
                                                  options: dict[str, Any]) -> None:
    source = tmp_path / "x.bin"
    size = 2 * MiB + 9
    want = make_file(source, size)
    result = node(endpoint=daemon.url, file=str(source), chunkSize=MiB, **options)
    assert result["ok"], result
    headers = head(result["url"])
    assert headers["upload-offset"] == headers["upload-length"] == str(size)
    got, _ = download(result["url"])
    assert got == want
