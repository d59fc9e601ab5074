"""Interop: our client against an independent tus server, @tus/server 2.4.5 with
@tus/file-store 2.1.1 (Node), started by a fixture on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.run import stop_process
from tests.client.test_cli import resume_and_check, start_and_stop
from tusd_py.client import InMemoryURLStorage, TusClient, UploadNotFound

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "node" / "tus_node_server.mjs"
CHUNK = 256 * 1024


@dataclass
class NodeTus:
    url: str
    directory: Path

    def stored(self, upload_url: str) -> bytes:
        """The bytes @tus/file-store wrote for an upload (its file is named by the id)."""
        return (self.directory / upload_url.rstrip("/").rsplit("/", 1)[1]).read_bytes()


@pytest.fixture
def node_tus(tmp_path: Path) -> Iterator[NodeTus]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "@tus" / "server").is_dir():
        pytest.fail("node and the pinned @tus/server (npm ci) are required for the interop tests")
    directory = tmp_path / "node-store"
    directory.mkdir()
    proc = subprocess.Popen([node, str(SCRIPT), "0", str(directory)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening "), line + proc.stdout.read().decode()
        port = int(line.split()[1])
        yield NodeTus(f"http://127.0.0.1:{port}/files/", directory)
    finally:
        stop_process(proc)


async def test_upload_and_download(node_tus: NodeTus, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    async with TusClient(node_tus.url, chunk_size=CHUNK) as client:
        info = await client.server_info()
        assert "creation" in info.extensions
        url = await client.upload(data, metadata={"filename": "a.bin"})
        assert url.startswith(node_tus.url)
        head = await client.info(url)
        assert (head.offset, head.length) == (len(data), len(data))
        assert head.metadata["filename"] == b"a.bin"
        assert node_tus.stored(url) == data
        out = tmp_path / "out.bin"
        await client.download(url, out)
        assert out.read_bytes() == data
        await client.delete(url)
        with pytest.raises(UploadNotFound):
            await client.info(url)


async def test_resume_with_url_storage(node_tus: NodeTus, tmp_path: Path) -> None:
    data = os.urandom(1_200_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    storage = InMemoryURLStorage()
    async with TusClient(node_tus.url, chunk_size=CHUNK, url_storage=storage) as first:
        uploader = first.uploader(path)
        await uploader.upload_chunk()
        await uploader.upload_chunk()
        uploader.close()
    resumed: list[int] = []
    async with TusClient(node_tus.url, chunk_size=CHUNK, url_storage=storage) as second:
        url = await second.upload(path, on_resume=lambda offset, total: resumed.append(offset))
    assert url == uploader.url and resumed == [2 * CHUNK]
    assert hashlib.sha256(node_tus.stored(url)).digest() == hashlib.sha256(data).digest()


async def test_deferred_length_and_no_concatenation(node_tus: NodeTus) -> None:
    """@tus/file-store has creation-defer-length but neither checksum nor concatenation:
    the client sends no Upload-Checksum and uploads a --parallel file in one piece."""
    data = os.urandom(600_000)
    read_fd, write_fd = os.pipe()
    import threading

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)

    threading.Thread(target=feed, daemon=True).start()
    async with TusClient(node_tus.url, chunk_size=CHUNK) as client:
        assert await client.checksum_algorithm() is None
        with os.fdopen(read_fd, "rb") as pipe:
            url = await client.upload(pipe)
        assert node_tus.stored(url) == data
        url2 = await client.upload(data, parallel=3)
        assert (await client.info(url2)).concat is None
        assert node_tus.stored(url2) == data


def test_cli_killed_and_resumed(node_tus: NodeTus, tmp_path: Path) -> None:
    from tests.client.test_cli import SIZE

    data = os.urandom(SIZE)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    url, seen, _proc = start_and_stop(node_tus.url, path, env, signal.SIGKILL)
    resume_and_check(node_tus.url, path, data, env, url, seen, download=False)
    assert hashlib.sha256(node_tus.stored(url)).digest() == hashlib.sha256(data).digest()
