"""Listening: HTTPS from ``server.tls`` (certificate reloaded on SIGHUP without closing the
listener) and a unix socket (``server.unix_socket``) for a proxy on the same host, with
real clients: aiohttp over TLS and over a ``UnixConnector``, raw ``ssl`` sockets, nginx's
``proxy_pass`` to ``unix:``."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.plugins.daemon import free_port

from .conftest import Nginx

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}


def make_cert(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    """A self-signed certificate for 127.0.0.1 named ``name``: (cert file, key file, DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)


class Served:
    """``tusd-py serve`` with ``env``, started and stopped by its PID."""

    def __init__(self, tmp: Path, env: dict[str, str], ready: Callable[[], bool]) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
        full.update({"TUSD_SERVER__LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1", **env})
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tusd_py", "serve", "--config", "/dev/null",
             "--data-dir", str(tmp / "data")],
            cwd=tmp, env=full, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daemon did not start: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str) -> str:
        deadline = time.monotonic() + 5
        while needle not in self.log():
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)
        return self.log()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(env: dict[str, str], ready: Callable[[], bool]) -> Served:
        daemon = Served(tmp_path, env, ready)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def peer_cert(port: int, trust: Path) -> bytes:
    """The certificate (DER) a new TLS connection to the daemon is shown."""
    context = ssl.create_default_context(cafile=str(trust))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # any certificate: which one is the question
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def tls_listening(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, \
                    context.wrap_socket(raw):
                return True
        except OSError:
            return False
    return ready


def http_get_on(tls: ssl.SSLSocket, path: str) -> bytes:
    """One keep-alive request on an open TLS connection; the response head and body."""
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok\n"):
        piece = tls.recv(65536)
        assert piece, data
        data += piece
    return data


async def test_https_and_certificate_reload_on_sighup(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first_crt, first_key, first_der = make_cert(tmp_path, "first")
    second_crt, second_key, second_der = make_cert(tmp_path, "second")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first_crt, cert_file)
    shutil.copy(first_key, key_file)
    port = free_port()
    daemon = served({"TUSD_SERVER__HOST": "127.0.0.1", "TUSD_SERVER__PORT": str(port),
                     "TUSD_SERVER__TLS__CERT_FILE": str(cert_file),
                     "TUSD_SERVER__TLS__KEY_FILE": str(key_file)}, tls_listening(port))
    assert f"listening on https://127.0.0.1:{port}/files/" in daemon.wait_log("listening on")

    # A real TLS client that trusts only the first certificate: a whole upload.
    trust_first = ssl.create_default_context(cafile=str(first_crt))
    endpoint = f"https://127.0.0.1:{port}/files/"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust_first)) as s:
        async with s.post(endpoint, headers={**TUS, "Upload-Length": "5"}) as r:
            assert r.status == 201
            url = r.headers["Location"]
        assert url.startswith(endpoint)
        async with s.patch(url, data=b"hello", headers=PATCH) as r:
            assert r.status == 204
        async with s.get(url) as r:
            assert await r.read() == b"hello"
    with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            await r.read()

    # A connection opened before the reload...
    context = ssl.create_default_context(cafile=str(first_crt))
    context.check_hostname = False
    old = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
    assert old.getpeercert(binary_form=True) == first_der
    assert b"200 OK" in http_get_on(old, "/healthz")

    # ...new certificate files, SIGHUP: new handshakes get the new one, on the same
    # listening socket; the open connection keeps working.
    shutil.copy(second_crt, cert_file)
    shutil.copy(second_key, key_file)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("TLS certificate")
    assert f"SIGHUP: TLS certificate {cert_file} reloaded" in daemon.log()
    assert peer_cert(port, second_crt) == second_der
    assert b"200 OK" in http_get_on(old, "/healthz")
    old.close()

    # A broken file on the next SIGHUP: said, and the second certificate stays.
    cert_file.write_text("not a certificate")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("still serving the previous certificate")
    assert peer_cert(port, second_crt) == second_der
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def short_dir() -> Path:
    """A directory for a unix socket (paths are limited to 107 bytes), that nginx's
    unprivileged worker can enter."""
    path = Path(tempfile.mkdtemp(prefix="tusd-sock-"))
    path.chmod(0o755)
    return path


async def unix_upload(sock: Path, data: bytes) -> str:
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.post("http://proxy.example/files/",
                          headers={**TUS, "Upload-Length": str(len(data))}) as r:
            assert r.status == 201, await r.text()
            url = r.headers["Location"]
        async with s.patch(url, data=data, headers=PATCH) as r:
            assert r.status == 204
        async with s.get(url) as r:
            assert await r.read() == data
    return url


async def test_unix_socket(served) -> None:  # type: ignore[no-untyped-def]
    directory = short_dir()
    try:
        sock = directory / "tusd.sock"
        env = {"TUSD_SERVER__UNIX_SOCKET": str(sock)}
        daemon = served(env, sock.exists)
        assert f"listening on unix:{sock} (http, /files/)" in daemon.wait_log("listening on")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        url = await unix_upload(sock, b"over a unix socket")
        assert url.startswith("http://proxy.example/files/")  # the Host the client sent

        # A second daemon on the same path is refused; the first one keeps its socket.
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tusd_py", "serve", "--config", "/dev/null",
             "--data-dir", str(directory / "data2")], capture_output=True, text=True,
            timeout=10, env={**os.environ, **env})
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"tusd-py: cannot listen on unix:{sock}: another process listens there")
        await unix_upload(sock, b"still ours")

        assert daemon.stop() == 0
        assert not sock.exists()  # removed at shutdown

        # A socket file a killed daemon left behind is replaced.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(sock))
        stale.close()
        assert sock.exists()
        served(env, lambda: _answers(sock))
        await unix_upload(sock, b"after a stale socket")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _answers(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


async def test_nginx_proxies_to_the_unix_socket(served) -> None:  # type: ignore[no-untyped-def]
    """nginx ``server unix:/path`` as the upstream (the worker is an unprivileged user:
    the socket's mode lets it in)."""
    directory = short_dir()
    try:
        sock = directory / "tusd.sock"
        served({"TUSD_SERVER__UNIX_SOCKET": str(sock), "TUSD_SERVER__UNIX_SOCKET_MODE": "0666",
                "TUSD_SERVER__BEHIND_PROXY": "true"}, lambda: _answers(sock))
        nginx = Nginx(0)
        nginx.conf.write_text(nginx.conf.read_text().replace(
            "server 127.0.0.1:0;", f"server unix:{sock};"))
        nginx.start()
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(nginx.root + "/files/",
                                  headers={**TUS, "Upload-Length": "5"}) as r:
                    assert r.status == 201, nginx.error_log()
                    url = r.headers["Location"]
                assert url.startswith(nginx.root + "/files/")
                async with s.patch(url, data=b"nginx", headers=PATCH) as r:
                    assert r.status == 204
                async with s.get(url) as r:
                    assert await r.read() == b"nginx"
        finally:
            nginx.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_tls_on_a_unix_socket_is_https(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Both together: TLS over the unix socket (a proxy that speaks https to it)."""
    crt, key, der = make_cert(tmp_path, "sock")
    directory = short_dir()
    try:
        sock = directory / "tusd.sock"
        served({"TUSD_SERVER__UNIX_SOCKET": str(sock), "TUSD_SERVER__TLS__CERT_FILE": str(crt),
                "TUSD_SERVER__TLS__KEY_FILE": str(key)}, sock.exists)

        context = ssl.create_default_context(cafile=str(crt))
        context.check_hostname = False
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(sock))
        with context.wrap_socket(raw) as tls:
            assert tls.getpeercert(binary_form=True) == der
            assert b"200 OK" in http_get_on(tls, "/healthz")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_healthcheck_speaks_tls_and_unix_sockets(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``tusd-py healthcheck`` probes the daemon as it listens: over TLS on the port, and
    on the unix socket (it would fail against either with plain HTTP to a port)."""
    crt, key, _ = make_cert(tmp_path, "probe")
    port = free_port()
    tls_env = {"TUSD_SERVER__HOST": "127.0.0.1", "TUSD_SERVER__PORT": str(port),
               "TUSD_SERVER__TLS__CERT_FILE": str(crt), "TUSD_SERVER__TLS__KEY_FILE": str(key)}
    directory = short_dir()
    try:
        sock = directory / "tusd.sock"
        unix_env = {"TUSD_SERVER__UNIX_SOCKET": str(sock)}
        tls_daemon = served(tls_env, tls_listening(port))
        served(unix_env, lambda: _answers(sock))
        for env in (tls_env, unix_env):
            probe = subprocess.run([sys.executable, "-m", "tusd_py", "healthcheck", "--ready",
                                    "--config", "/dev/null"], capture_output=True, text=True,
                                   timeout=30, env={**os.environ, **env})
            assert probe.returncode == 0, (env, probe.stderr)
        tls_daemon.stop()
        probe = subprocess.run([sys.executable, "-m", "tusd_py", "healthcheck", "--config",
                                "/dev/null"], capture_output=True, text=True, timeout=30,
                               env={**os.environ, **tls_env})
        assert probe.returncode == 1
        assert probe.stderr == (f"tusd-py healthcheck: https://127.0.0.1:{port}/healthz: "
                                "connection refused\n")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
