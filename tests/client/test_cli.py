"""``tusd-py upload/info/download/delete`` as subprocesses against the real daemon,
including a client killed mid-upload (SIGKILL) and interrupted (SIGINT), then resumed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from tests.plugins.daemon import Daemon
from tusd_py.client import FileURLStorage, SQLiteURLStorage, TusClient, URLStorage

SIZE = 4 * 1024 * 1024 + 777


def run_cli(*args: str, env: dict[str, str], stdin: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tusd_py", *args], env=env, input=stdin,
                          capture_output=True, timeout=timeout)


def head(url: str) -> Message:
    """HEAD an upload; the headers (case-insensitive, as @tus/server sends lowercase)."""
    req = urllib.request.Request(url, method="HEAD", headers={"Tus-Resumable": "1.0.0"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The real environment with a private XDG data dir (the default resume database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def start_and_stop(endpoint: str, path: Path, env: dict[str, str], sig: int,
                   ) -> tuple[str, int, subprocess.Popen[bytes]]:
    """Start a rate-limited upload with the default resume database; once the server
    holds some of it, send ``sig``. Returns (upload URL, server offset seen, process)."""
    db = Path(env["XDG_DATA_HOME"]) / "tusd-py" / "urls.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tusd_py", "upload", str(path), "--url", endpoint,
         "--chunk-size", "128KiB", "--limit-rate", "512KiB"],  # 8 s for the whole file
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # As from a shell: a pytest-xdist worker may ignore SIGINT, and a child inherits
        # that (Python then installs no KeyboardInterrupt handler: Ctrl-C would be lost).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url, offset = "", 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and offset < 300_000:
        assert proc.poll() is None, proc.communicate()
        if not url and db.exists():
            storage = SQLiteURLStorage(db)
            urls = list(storage.items().values())
            storage.close()
            url = urls[0] if urls else ""
        if url:
            offset = int(head(url)["Upload-Offset"])
        time.sleep(0.05)
    assert url and 0 < offset < SIZE, (url, offset)
    proc.send_signal(sig)
    proc.wait(20)
    return url, offset, proc


def resume_and_check(endpoint: str, path: Path, data: bytes, env: dict[str, str],
                     url: str, seen: int, download: bool = True) -> int:
    # The server commits what reached it of the dropped PATCH when it sees the
    # disconnect; wait until the offset has settled.
    server_offset, previous = int(head(url)["Upload-Offset"]), -1
    while server_offset != previous:
        time.sleep(0.2)
        previous, server_offset = server_offset, int(head(url)["Upload-Offset"])
    assert seen <= server_offset < SIZE  # the kill left the upload unfinished on the server
    done = run_cli("upload", str(path), "--url", endpoint, "--chunk-size", "128KiB", env=env)
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    m = re.search(r"Resuming upload from offset (\d+) of (\d+)", err)
    assert m, err
    resumed_at = int(m.group(1))
    assert int(m.group(2)) == SIZE
    assert resumed_at == server_offset > 0  # from the server's offset, not from zero
    assert done.stdout.decode().strip() == url  # the same upload, URL printed at the end
    if download:
        assert hashlib.sha256(get(url)).hexdigest() == hashlib.sha256(data).hexdigest()
    db = Path(env["XDG_DATA_HOME"]) / "tusd-py" / "urls.db"
    storage = SQLiteURLStorage(db)
    assert storage.items() == {}  # forgotten once finished
    storage.close()
    return resumed_at


def test_sigkill_mid_upload_then_resume(daemon: Daemon, big_file: tuple[Path, bytes],
                                        cli_env: dict[str, str]) -> None:
    path, data = big_file
    url, seen, proc = start_and_stop(daemon.url, path, cli_env, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    resume_and_check(daemon.url, path, data, cli_env, url, seen)


def test_ctrl_c_leaves_the_upload_resumable(daemon: Daemon, big_file: tuple[Path, bytes],
                                            cli_env: dict[str, str]) -> None:
    path, data = big_file
    url, seen, proc = start_and_stop(daemon.url, path, cli_env, signal.SIGINT)
    assert proc.returncode == 130
    assert b"run the same command again to resume" in proc.stderr.read()  # type: ignore[union-attr]
    resume_and_check(daemon.url, path, data, cli_env, url, seen)


def test_upload_info_download_delete(daemon: Daemon, tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = os.urandom(1_500_000)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    up = run_cli("upload", str(path), "--url", daemon.url, "--chunk-size", "512KiB",
                 "--parallel", "3", "--metadata", "project=demo", "--header", "X-Trace: 1",
                 "--checksum", "sha256", "--fingerprint", "full", env=cli_env)
    assert up.returncode == 0, up.stderr.decode()
    url = up.stdout.decode().strip()
    assert url.startswith(daemon.url)
    assert get(url) == data

    info = run_cli("info", url, "--json", env=cli_env)
    assert info.returncode == 0, info.stderr.decode()
    doc = json.loads(info.stdout)
    assert doc["offset"] == doc["length"] == len(data) and doc["complete"] is True
    assert doc["metadata"] == {"project": "demo", "filename": "notes.txt", "filetype": "text/plain"}
    assert doc["concat"].startswith("final;")
    text = run_cli("info", url, env=cli_env).stdout.decode()
    assert f"Length:    {len(data)}" in text and "Complete:  yes" in text

    out = tmp_path / "copy.txt"
    down = run_cli("download", url, "-o", str(out), env=cli_env)
    assert down.returncode == 0, down.stderr.decode()
    assert out.read_bytes() == data
    to_stdout = run_cli("download", url, "-o", "-", env=cli_env)
    assert to_stdout.stdout == data

    gone = run_cli("delete", url, env=cli_env)
    assert gone.returncode == 0, gone.stderr.decode()
    missing = run_cli("info", url, "--retries", "0", env=cli_env)
    assert missing.returncode == 1 and b"404" in missing.stderr


def test_upload_from_stdin(daemon: Daemon, cli_env: dict[str, str]) -> None:
    data = os.urandom(700_000)
    up = run_cli("upload", "-", "--url", daemon.url, "--chunk-size", "256KiB",
                 "--metadata", "project=pipe", env=cli_env, stdin=data)
    assert up.returncode == 0, up.stderr.decode()
    url = up.stdout.decode().strip()
    assert get(url) == data
    # no filename from sys.stdin's pseudo-name "<stdin>"; given metadata still goes
    metadata = head(url)["Upload-Metadata"]
    assert metadata == "project " + base64.b64encode(b"pipe").decode()


def test_bad_arguments(daemon: Daemon, cli_env: dict[str, str], tmp_path: Path) -> None:
    assert run_cli("upload", "x", "--url", daemon.url, "--chunk-size", "lots", env=cli_env).returncode == 2
    assert run_cli("upload", "x", "--url", daemon.url, "--checksum", "crc", env=cli_env).returncode == 2
    missing = run_cli("upload", str(tmp_path / "nope"), "--url", daemon.url, env=cli_env)
    assert missing.returncode == 2
    assert missing.stderr.decode().splitlines() == [
        f"tusd-py: {tmp_path / 'nope'}: no such file or directory", "tusd-py: nothing uploaded"]


def test_several_files_one_missing(daemon: Daemon, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A missing file is found before anything is sent: nothing is uploaded (was: the
    others were, after an empty bar for the missing one)."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a" * 1000)
    b.write_bytes(b"b" * 2000)
    up = run_cli("upload", str(a), str(tmp_path / "missing"), str(b), "--url", daemon.url,
                 env=cli_env)
    assert up.returncode == 2 and up.stdout == b""
    assert up.stderr.decode().splitlines() == [
        f"tusd-py: {tmp_path / 'missing'}: no such file or directory", "tusd-py: nothing uploaded"]
    up = run_cli("upload", str(a), str(b), "--url", daemon.url, env=cli_env)
    assert up.returncode == 0
    assert [get(u) for u in up.stdout.decode().split()] == [b"a" * 1000, b"b" * 2000]


def start_with_library(endpoint: str, path: Path, storage: URLStorage, chunks: int = 2,
                       ) -> tuple[str, int]:
    """Upload the first ``chunks`` chunks of ``path`` with the library into ``storage``
    (under the key the CLI uses) and stop; returns (upload URL, offset)."""
    async def run() -> tuple[str, int]:
        async with TusClient(endpoint, chunk_size=128 * 1024, url_storage=storage) as client:
            uploader = client.uploader(path)
            for _ in range(chunks):
                await uploader.upload_chunk()
            uploader.close()
            assert uploader.url is not None
            return uploader.url, uploader.offset
    try:
        return asyncio.run(run())
    finally:
        storage.close()


@pytest.mark.parametrize("name", ["resume.sqlite", "resume.json"])
def test_resume_db(daemon: Daemon, big_file: tuple[Path, bytes], cli_env: dict[str, str],
                   tmp_path: Path, name: str) -> None:
    """--resume-db PATH: SQLite, or FileURLStorage (JSON) when PATH ends in .json."""
    path, data = big_file
    db = tmp_path / name
    def open_db() -> URLStorage:
        return FileURLStorage(db) if name.endswith(".json") else SQLiteURLStorage(db)
    url, offset = start_with_library(daemon.url, path, open_db())
    if name.endswith(".json"):
        assert list(json.loads(db.read_text()).values()) == [url]
    up = run_cli("upload", str(path), "--url", daemon.url, "--resume-db", str(db), "-q", env=cli_env)
    assert up.returncode == 0, up.stderr.decode()
    assert f"Resuming upload from offset {offset} of {SIZE}" in up.stderr.decode()
    assert up.stdout.decode().strip() == url
    assert hashlib.sha256(get(url)).hexdigest() == hashlib.sha256(data).hexdigest()
    storage = open_db()
    assert storage.items() == {}
    storage.close()
    assert not (Path(cli_env["XDG_DATA_HOME"]) / "tusd-py").exists()  # the default was not used


def test_no_resume(daemon: Daemon, big_file: tuple[Path, bytes], cli_env: dict[str, str]) -> None:
    path, data = big_file
    db = Path(cli_env["XDG_DATA_HOME"]) / "tusd-py" / "urls.db"
    url, _ = start_with_library(daemon.url, path, SQLiteURLStorage(db))
    seen: set[str] = set()
    for _ in range(2):  # nothing resumed, nothing remembered
        up = run_cli("upload", str(path), "--url", daemon.url, "--no-resume", "-q", env=cli_env)
        assert up.returncode == 0, up.stderr.decode()
        assert b"Resuming" not in up.stderr
        new = up.stdout.decode().strip()
        assert new != url and new not in seen
        seen.add(new)
        assert get(new) == data
    storage = SQLiteURLStorage(db)
    assert list(storage.items().values()) == [url]  # the stored upload is left as it was
    storage.close()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_progress_bar_on_a_terminal(daemon: Daemon, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """rich's console forced to a terminal (TTY_COMPATIBLE/TTY_INTERACTIVE): the live bar
    shows percentage, bytes, rate and ETA on stderr; stdout (a pipe) has only the URL."""
    data = os.urandom(3_000_000)
    path = tmp_path / "bar.bin"
    path.write_bytes(data)
    env = {**cli_env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "160"}
    up = run_cli("upload", str(path), "--url", daemon.url, "--chunk-size", "256KiB",
                 "--limit-rate", "2MiB", env=env)
    assert up.returncode == 0, up.stderr.decode()
    url = up.stdout.decode().strip()
    assert url.startswith(daemon.url) and get(url) == data
    err = up.stderr.decode()
    assert ANSI.search(err)  # drawn as a terminal
    text = ANSI.sub("", err)
    percents = {int(p) for p in re.findall(r"(\d+)%", text)}
    assert 100 in percents and any(0 < p < 100 for p in percents), text  # live, not only the end
    # Sizes in the binary units the flags take (3,000,000 bytes = 2.9 MiB).
    assert "bar.bin" in text and "2.9/2.9 MiB" in text
    assert re.search(r"\d+\.\d [KM]iB/s", text), text
    assert re.search(r"\d:\d\d:\d\d", text), text  # ETA
    quiet = run_cli("upload", str(path), "--url", daemon.url, "-q", "--no-resume", env=env)
    assert quiet.returncode == 0 and "%" not in quiet.stderr.decode()
