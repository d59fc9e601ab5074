"""Faults of the local driver's disk, against the real daemon (issue 16, items 7, 8, 9):
orphan files removed whatever their age, SQLite's -shm file that cannot be written,
a full disk, readiness that says so without naming paths."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.daemon import Daemon
from tests.plugins.local_files import upload_file, upload_files

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}

needs_chattr = pytest.mark.skipif(shutil.which("chattr") is None or os.geteuid() != 0,
                                  reason="chattr +i needs root and e2fsprogs")


def call(method: str, url: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def create(daemon: Daemon, length: int = 5) -> str:
    status, headers, body = call("POST", daemon.url, headers={**TUS, "Upload-Length": str(length)})
    assert status == 201, body
    return headers["Location"]


def test_orphan_files_are_removed_at_start_whatever_their_age(daemon_factory, tmp_path: Path):
    """A kill -9 between a DELETE's row delete and its unlink leaves fresh files without
    a row (before: kept unless older than an hour)."""
    data = tmp_path / "data"
    daemon = daemon_factory(data_dir=data)
    urls = [create(daemon) for _ in range(6)]
    for url in urls:
        status, _, _ = call("PATCH", url, b"hello", {**OCTET, "Upload-Offset": "0"})
        assert status == 204
    ids = [url.rsplit("/", 1)[1] for url in urls]
    daemon.kill()
    with sqlite3.connect(data / "uploads.db") as db:  # what the killed DELETEs did first
        db.executemany("DELETE FROM uploads WHERE id = ?", [(i,) for i in ids[:4]])
    time.sleep(2.1)  # past the clean-up's 2 s grace for files a create makes at that instant
    held = os.open(upload_file(data, ids[3]), os.O_RDONLY)  # a live writer elsewhere
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        daemon = daemon_factory(data_dir=data)
        left = upload_files(data)
    finally:
        os.close(held)
    assert left == sorted(ids[3:])
    for url in urls[4:]:  # uploads with a record are untouched
        status, _, body = call("GET", daemon.url + url.rsplit("/", 1)[1])
        assert (status, body) == (200, "hello")


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files made immutable (chattr +i) by the test; made mutable again at the end."""
    files: list[Path] = []
    yield files
    for path in files:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@needs_chattr
def test_an_immutable_shm_file_is_refused_at_start(tmp_path: Path, immutable: list[Path]):
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "uploads.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()  # the last connection removes the -shm file: an immutable one stays
    shm = data / "uploads.db-shm"
    shm.write_bytes(b"")
    subprocess.run(["chattr", "+i", str(shm)], check=True)
    immutable.append(shm)
    proc = subprocess.run(
        [sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data)], capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("TUSD_")})
    assert proc.returncode == 2  # not -7 (SIGBUS) or 135, and no traceback
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tusd-py:")]
    assert len(errors) == 1 and "uploads.db-shm" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@needs_chattr
def test_an_shm_file_made_immutable_at_run_time_fails_requests_not_the_daemon(
        daemon: Daemon, immutable: list[Path]):
    url = create(daemon)
    assert call("PATCH", url, b"ab", {**OCTET, "Upload-Offset": "0"})[0] == 204
    shm = Path(daemon.data_dir) / "uploads.db-shm"
    subprocess.run(["chattr", "+i", str(shm)], check=True)
    immutable.append(shm)
    time.sleep(1.6)  # the store checks every second
    status, _, body = call("GET", daemon.root + "/readyz")
    assert status == 503
    assert str(daemon.data_dir) not in body
    for _ in range(3):
        assert call("POST", daemon.url, headers={**TUS, "Upload-Length": "5"})[0] == 500
        assert call("PATCH", url, b"cde", {**OCTET, "Upload-Offset": "2"})[0] == 500
        assert call("HEAD", url, headers=TUS)[0] == 500
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "uploads.db-shm" in daemon.log()
    subprocess.run(["chattr", "-i", str(shm)], check=True)
    time.sleep(1.6)
    assert call("GET", daemon.root + "/readyz")[0] == 200
    assert call("PATCH", url, b"cde", {**OCTET, "Upload-Offset": "2"})[0] == 204
    assert call("GET", url)[2] == "abcde"


def test_a_full_disk_answers_507(daemon: Daemon):
    """The upload's file is /dev/full, where every write fails with ENOSPC."""
    url = create(daemon, 100)
    path = upload_file(daemon.data_dir, url.rsplit("/", 1)[1])
    path.unlink()
    path.symlink_to("/dev/full")
    status, headers, body = call("PATCH", url, b"x" * 100, {**OCTET, "Upload-Offset": "0"})
    assert status == 507, body
    assert "no space" in body
    assert str(daemon.data_dir) not in body
    status, headers, _ = call("HEAD", url, headers=TUS)
    assert headers["Upload-Offset"] == "0"


def test_readiness_reports_low_disk_without_naming_the_directory(daemon_factory):
    daemon = daemon_factory(env={"TUSD_SERVER__MIN_FREE_DISK": "1000000TiB",
                                 "TUSD_SERVER__LOG_LEVEL": "info"})
    for _ in range(3):
        status, _, body = call("GET", daemon.root + "/readyz")
        assert (status, body) == (503, "storage not ready\n")
    time.sleep(0.5)
    log = daemon.log()
    assert log.count("not ready:") == 1  # once per change, not per probe
    assert "server.min_free_disk" in log and str(daemon.data_dir) in log
    healthy = daemon_factory()
    assert call("GET", healthy.root + "/readyz")[:3:2] == (200, "ready\n")


def test_readiness_failure_does_not_reveal_the_data_directory(daemon: Daemon):
    os.chmod(daemon.data_dir / "uploads", 0o500)
    try:
        status, _, body = call("GET", daemon.root + "/readyz")
    finally:
        os.chmod(daemon.data_dir / "uploads", 0o750)
    if os.geteuid() == 0:  # root writes anyway; a read-only mount would be refused
        assert status == 200
    else:
        assert (status, body) == (503, "storage not ready\n")
