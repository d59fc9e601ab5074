"""Where the daemon listens (TCP ``host:port`` or a unix socket, plain or TLS), and
start-up failures said in one line.

``listen`` binds the configured address; a failure is a ``StartupError`` naming the
address and the reason (``cannot listen on 127.0.0.1:8080: address already in use``).
``tls_context`` loads ``server.tls``; ``reload_tls`` loads it again into the same context
(SIGHUP): connections made after it get the new certificate, open ones keep theirs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import stat

from aiohttp import web

from ..config import ServerConfig, StartupError, TlsConfig


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in one short line (no errno numbers, no exception class
    unless there is nothing else to say)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        # os.strerror: uvloop's strerror repeats the whole call ("error while attempting
        # to bind on address (...): address already in use").
        text = os.strerror(exc.errno).lower()
        if exc.filename is not None:
            text += f": {exc.filename}"
        return text
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# -- TLS ------------------------------------------------------------------------------


def tls_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """A server TLS context with ``server.tls``'s certificate, or None (plain HTTP)."""
    if not tls.cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    reload_tls(context, tls)
    return context


def reload_tls(context: ssl.SSLContext, tls: TlsConfig) -> None:
    """Load the certificate and key into ``context`` (new handshakes use them); a
    ``StartupError`` says which file is wrong and why, and leaves ``context`` as it was."""
    assert tls.cert_file and tls.key_file
    files = {"server.tls.cert_file": (tls.cert_file, "CERTIFICATE-----"),
             "server.tls.key_file": (tls.key_file, "PRIVATE KEY-----")}
    for key, (path, marker) in files.items():
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            why = os.strerror(exc.errno).lower() if exc.errno else reason(exc)
            raise StartupError(f"cannot load the TLS certificate: {key} {path}: {why}") from None
        if "-----BEGIN " not in text or marker not in text:
            what = "certificate" if key.endswith("cert_file") else "private key"
            raise StartupError(f"cannot load the TLS certificate: {key} {path} holds no PEM "
                               f"{what}")
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        why = ("the key does not match the certificate" if exc.reason == "KEY_VALUES_MISMATCH"
               else exc.reason or reason(exc))
        raise StartupError(f"cannot load the TLS certificate ({tls.cert_file}, "
                           f"{tls.key_file}): {why}") from None


# -- addresses ------------------------------------------------------------------------


def tcp_address(server: ServerConfig) -> str:
    """``host:port`` as an operator writes it (IPv6 literals in brackets)."""
    host = server.host
    return f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"


def listen_address(server: ServerConfig) -> str:
    """``127.0.0.1:8080`` or ``unix:/run/tusd-py.sock``."""
    return f"unix:{server.unix_socket}" if server.unix_socket else tcp_address(server)


def listen_url(server: ServerConfig) -> str:
    """The tus endpoint on the listening address: ``http://0.0.0.0:8080/files/``,
    ``https://...`` with TLS, ``unix:/run/tusd-py.sock (http, /files/)`` on a socket."""
    scheme = "https" if server.tls.cert_file else "http"
    if server.unix_socket:
        return f"unix:{server.unix_socket} ({scheme}, {server.base_path})"
    return f"{scheme}://{tcp_address(server)}{server.base_path}"


# -- binding --------------------------------------------------------------------------


async def listen(runner: web.AppRunner, server: ServerConfig,
                 context: ssl.SSLContext | None = None) -> web.BaseSite:
    """Bind and start the listening socket; ``StartupError`` when that fails."""
    site: web.BaseSite
    where = listen_address(server)
    try:
        if server.unix_socket:
            _clear_stale_socket(server.unix_socket)
            site = web.UnixSite(runner, server.unix_socket, ssl_context=context)
            await site.start()
            os.chmod(server.unix_socket, server.unix_socket_mode)
        else:
            site = web.TCPSite(runner, server.host, server.port, ssl_context=context)
            await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {where}: {reason(exc)}") from None
    return site


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file a dead daemon left behind; refuse to take over one that a
    process still listens on, or a path that is not a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"cannot listen on unix:{path}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: a stale socket file
            return
    raise StartupError(f"cannot listen on unix:{path}: another process listens there")


def remove_socket(server: ServerConfig) -> None:
    """Remove the unix socket file at shutdown (nothing without one)."""
    if server.unix_socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(server.unix_socket)
