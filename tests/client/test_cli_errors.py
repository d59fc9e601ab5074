"""What the client CLI says when something is wrong, through the real ``tusd-py``
command in a subprocess: one clear line (no traceback), the retries it makes, the URL
from ``TUSD_URL``, sizes in the binary units its flags take."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.plugins.daemon import Daemon
from tests.plugins.local_files import upload_files


def tusd(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tusd_py", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    return env


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello, tus\n" * 1000)
    return path


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("url", ["localhost:8080/files/", "127.0.0.1:8080/files/",
                                 "ftp://host/files/", "http:///files/"])
def test_a_url_without_a_scheme_is_one_line(url: str, file: Path, cli_env: dict[str, str]) -> None:
    """Was: aiohttp's NonHttpUrlClientError traceback."""
    result = tusd("upload", str(file), "--url", url, env=cli_env)
    assert result.returncode == 2
    assert one_line(result) == (f"tusd-py: creation URL {url!r} is not an http:// or https:// "
                                "URL (e.g. http://host:8080/files/)")
    for command in ("info", "download", "delete"):
        extra = ["-o", "out"] if command == "download" else []
        result = tusd(command, url, *extra, env=cli_env)
        assert result.returncode == 2 and one_line(result).startswith(
            f"tusd-py: upload URL {url!r} is not an http:// or https:// URL"), command


def test_a_wrong_endpoint_path_is_not_no_such_upload(daemon: Daemon, file: Path,
                                                     cli_env: dict[str, str]) -> None:
    """A creation URL that answers 404 (no tus endpoint there): said so. Was: "create
    upload: no such upload"."""
    wrong = daemon.root + "/uploads/"
    result = tusd("upload", str(file), "--url", wrong, env=cli_env)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"tusd-py: {wrong} is not a tus creation URL (POST): HTTP 404"), line
    assert "no such upload" not in line
    # An upload URL that is gone still says so.
    result = tusd("info", daemon.url + "0" * 32, env=cli_env)
    assert result.returncode == 1 and "no such upload" in one_line(result)


def test_a_refused_connection_shows_each_retry_then_one_line(file: Path,
                                                             cli_env: dict[str, str]) -> None:
    """Was: ~26 s behind an empty bar, no word of retrying, then aiohttp's
    'Cannot connect to host ... ssl:default [...]'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    started = time.monotonic()
    result = tusd("upload", str(file), "--url", f"http://127.0.0.1:{port}/files/",
                  "--retries", "3", "--no-resume", "-q", env=cli_env)
    took = time.monotonic() - started
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    reason = f"cannot connect to 127.0.0.1:{port}: connection refused"
    assert [re.sub(r"in \d+\.\ds", "in Xs", line) for line in lines] == [
        f"retrying (1/3) in Xs: {reason}", f"retrying (2/3) in Xs: {reason}",
        f"retrying (3/3) in Xs: {reason}", f"tusd-py: {reason} (gave up after 3 retries)"]
    assert "ssl:default" not in result.stderr and "Traceback" not in result.stderr
    waits = [float(w) for w in re.findall(r"in (\d+\.\d)s", result.stderr)]
    assert took < sum(waits) + 5  # each attempt once: OPTIONS's failure is not retried again


def test_url_from_the_environment(daemon: Daemon, file: Path, cli_env: dict[str, str]) -> None:
    result = tusd("upload", str(file), "-q", env={**cli_env, "TUSD_URL": daemon.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(daemon.url)
    result = tusd("upload", str(file), "-q", env=cli_env)
    assert result.returncode == 2
    assert one_line(result) == "tusd-py: no creation URL: give --url or set TUSD_URL"
    help_text = tusd("upload", "--help", env=cli_env).stdout
    assert "$TUSD_URL" in help_text


def test_a_missing_file_is_refused_before_any_bar(daemon: Daemon, tmp_path: Path,
                                                  cli_env: dict[str, str]) -> None:
    """Was: an empty progress bar, then the error. Now nothing is drawn and nothing is
    created on the server."""
    env = {**cli_env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    result = tusd("upload", str(tmp_path / "nope.bin"), "--url", daemon.url, env=env)
    assert result.returncode == 2
    assert result.stderr == (f"tusd-py: {tmp_path / 'nope.bin'}: no such file or directory\n"
                             "tusd-py: nothing uploaded\n")
    result = tusd("upload", str(tmp_path), "--url", daemon.url, env=env)
    assert result.returncode == 2 and f"tusd-py: {tmp_path}: is a directory" in result.stderr
    assert upload_files(daemon.data_dir) == []


def test_sizes_in_binary_units(daemon: Daemon, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The flags take MiB; what the CLI prints about sizes says MiB too."""
    data = os.urandom(3 << 20)
    path = tmp_path / "three.bin"
    path.write_bytes(data)
    up = tusd("upload", str(path), "--url", daemon.url, "-q", "--no-resume", env=cli_env)
    assert up.returncode == 0, up.stderr
    url = up.stdout.strip()
    info = tusd("info", url, env=cli_env)
    assert f"Length:    {3 << 20} (3.0 MiB)" in info.stdout
    out = tmp_path / "copy.bin"
    down = tusd("download", url, "-o", str(out), "-q", env=cli_env)
    assert down.stderr.strip() == f"Saved {3 << 20} bytes (3.0 MiB) to {out}"
    assert out.read_bytes() == data
