"""The HTTP hook client over TLS: an internal CA (``hooks.http.ca_file``), a client
certificate (mutual TLS), ``insecure_skip_verify`` (warned) and the response size limit,
against a real HTTPS receiver on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.http.helpers import TUS
from tests.plugins.app import TusClientFactory
from tests.plugins.daemon import free_port
from tusd_py.config import ConfigError


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class Pki:
    """A CA of its own, a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, directory: Path, ca_name: str = "internal-ca") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
                   .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        self.ca_file, _ = _write(directory, ca_name, self.ca, self.ca_key)
        self.server_cert, self.server_key = self._leaf(directory, "receiver", server=True)
        self.client_cert, self.client_key = self._leaf(directory, "tusd-py", server=False)

    def _leaf(self, directory: Path, name: str, *, server: bool) -> tuple[Path, Path]:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(name))
                   .issuer_name(self.ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server
                        else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return _write(directory, name, builder.sign(self.ca_key, hashes.SHA256()), key)


class TlsReceiver:
    """An HTTPS hook receiver; with ``require_client_cert`` it refuses a TLS handshake
    without a certificate signed by the CA (mutual TLS). Records the client's subject."""

    def __init__(self, pki: Pki, *, require_client_cert: bool, answer: bytes = b"{}") -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        if require_client_cert:
            self.context.load_verify_locations(pki.ca_file)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.answer = answer
        self.peers: list[str] = []
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        self.peers.append(subject.get("commonName", ""))
        return web.Response(body=self.answer, content_type="application/json")


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[callable]:  # type: ignore[valid-type]
    runners: list[web.AppRunner] = []

    async def start(pki: Pki, **kwargs: object) -> TlsReceiver:
        receiver = TlsReceiver(pki, **kwargs)  # type: ignore[arg-type]
        app = web.Application()
        app.router.add_post("/hooks", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", receiver.port, ssl_context=receiver.context).start()
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


async def _create(client) -> int:  # type: ignore[no-untyped-def]
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    return r.status


async def test_internal_ca_and_client_certificate(tus_client_factory: TusClientFactory,
                                                  tls_receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path)
    receiver = await tls_receiver(pki, require_client_cert=True)
    base = {"url": receiver.url, "retries": 0, "timeout": 5}

    # The receiver's certificate is from a CA the system does not trust: refused (500),
    # and not retried in vain (a certificate error is final).
    client = await tus_client_factory(hooks={"http": base, "enabled": ["pre-create"]})
    assert await _create(client) == 500
    assert receiver.peers == []

    # The CA bundle, but no client certificate: the receiver refuses the handshake.
    client = await tus_client_factory(hooks={"http": {**base, "ca_file": str(pki.ca_file)},
                                             "enabled": ["pre-create"]})
    assert await _create(client) == 500
    assert receiver.peers == []

    # Both: the hook is delivered, and the receiver saw who called.
    client = await tus_client_factory(hooks={"http": {
        **base, "ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key)}, "enabled": ["pre-create"]})
    assert await _create(client) == 201
    assert receiver.peers == ["tusd-py"]


async def test_insecure_skip_verify_is_warned_about(tus_client_factory: TusClientFactory,
                                                    tls_receiver, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    receiver = await tls_receiver(Pki(tmp_path), require_client_cert=False)
    with caplog.at_level(logging.WARNING, logger="tusd_py.hooks.http"):
        client = await tus_client_factory(hooks={"http": {
            "url": receiver.url, "retries": 0, "insecure_skip_verify": True},
            "enabled": ["pre-create"]})
    assert "insecure_skip_verify" in caplog.text and "not verified" in caplog.text
    assert await _create(client) == 201
    assert receiver.peers == [""]


@pytest.mark.parametrize("limit, status", [(2048, 500), (8192, 201)])
async def test_response_size_limit(tus_client_factory: TusClientFactory, tls_receiver,
                                   tmp_path: Path, limit: int, status: int) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path)
    big = b'{"HTTPResponse": {"Header": {"X-Note": "' + b"x" * 4000 + b'"}}}'
    receiver = await tls_receiver(pki, require_client_cert=False, answer=big)
    client = await tus_client_factory(hooks={"http": {
        "url": receiver.url, "retries": 0, "ca_file": str(pki.ca_file),
        "response_size_limit": limit}, "enabled": ["pre-create"]})
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == status
    if status == 500:
        assert await r.text() == "pre-create hook failed: invalid hook response\n"
    else:
        assert r.headers["X-Note"] == "x" * 4000


async def test_unreadable_tls_files_fail_at_start(tus_client_factory: TusClientFactory,
                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hooks\.http TLS files"):
        await tus_client_factory(hooks={"http": {"url": "https://127.0.0.1:1/h",
                                                 "ca_file": str(tmp_path / "missing.pem")}})
    with pytest.raises(ConfigError, match="key_file needs cert_file"):
        await tus_client_factory(hooks={"http": {"url": "https://127.0.0.1:1/h",
                                                 "key_file": str(tmp_path / "k.pem")}})
