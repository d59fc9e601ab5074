"""``tusd-py healthcheck``: probe the daemon that the effective config describes.

Reads the config as ``serve`` does (flags, ``TUSD_*`` env, ``TUSD_CONFIG``, file), GETs
``/healthz`` (``--ready``: ``/readyz``) where the daemon listens (the port, over TLS when
``server.tls`` is set, or ``server.unix_socket``), and exits 0 on a 200,
else 1 with one line on stderr. For container health checks and Kubernetes exec probes.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from .config import Config, ConfigError

PROG = "tusd-py healthcheck"
#: Seconds the whole probe (connect, request, response) may take by default.
DEFAULT_TIMEOUT = 2.0
#: Wildcard listen addresses and the loopback address that reaches a daemon bound to them.
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def probe_target(config: Config) -> tuple[str, int]:
    """The host and port a probe on this machine connects to for ``config``'s daemon."""
    host = config.server.host.strip()
    host = _LOOPBACK.get(host, host.strip("[]"))
    return host, config.server.port


def probe_url(host: str, port: int, path: str, *, tls: bool = False,
              unix_socket: str | None = None) -> str:
    """``http://host:port/path`` (``https`` with TLS), with an IPv6 literal in brackets;
    ``unix:/path/to.sock:/healthz`` for a unix socket."""
    if unix_socket:
        return f"unix:{unix_socket}:{path}"
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}{path}"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP (or, with ``context``, HTTPS) over a unix socket (``server.unix_socket``)."""

    def __init__(self, path: str, timeout: float, context: ssl.SSLContext | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path, self.context = path, context

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = self.context.wrap_socket(sock) if self.context else sock


def _probe_context() -> ssl.SSLContext:
    """TLS without verification: the probe asks its own daemon whether it is alive; the
    certificate is the clients' business (and rarely names the loopback address)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def check(host: str, port: int, path: str, timeout: float = DEFAULT_TIMEOUT, *,
          tls: bool = False, unix_socket: str | None = None) -> str | None:
    """GET ``path`` (over TLS, or on a unix socket, as the daemon listens); None when the
    daemon answers 200, else why not (one line)."""
    context = _probe_context() if tls else None
    connection: http.client.HTTPConnection
    if unix_socket:
        connection = _UnixConnection(unix_socket, timeout, context)
    elif context is not None:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": PROG, "Connection": "close"})
        response = connection.getresponse()
        body = response.read(200).decode("utf-8", "replace").strip().splitlines()
    except (OSError, http.client.HTTPException) as exc:
        return _reason(exc, timeout)
    finally:
        connection.close()
    if response.status == 200:
        return None
    detail = f": {body[0]}" if body else ""
    return f"HTTP {response.status} {response.reason}{detail}"


def run(config_from: Callable[[argparse.Namespace], Config], args: argparse.Namespace) -> int:
    """The subcommand: 0 when healthy (ready with ``--ready``), 1 with a line on stderr."""
    path = "/readyz" if args.ready else "/healthz"
    try:
        config = config_from(args)
    except ConfigError as exc:
        first, *rest = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        message = first.rstrip(":") + (": " + "; ".join(rest) if rest else "")
        print(f"{PROG}: {message}", file=sys.stderr)
        return 1
    host, port = probe_target(config)
    tls, unix_socket = bool(config.server.tls.cert_file), config.server.unix_socket
    try:
        failure = check(host, port, path, args.timeout, tls=tls, unix_socket=unix_socket)
    except Exception as exc:  # a probe reports, it never shows a traceback
        failure = _reason(exc, args.timeout)
    if failure is not None:
        where = probe_url(host, port, path, tls=tls, unix_socket=unix_socket)
        print(f"{PROG}: {where}: {failure}", file=sys.stderr)
        return 1
    return 0


def add_command(commands: Any, add_config_flags: Callable[[argparse.ArgumentParser], None],
                config_from: Callable[[argparse.Namespace], Config]) -> None:
    """Register ``healthcheck`` on the ``tusd-py`` subcommands, with ``serve``'s config flags."""
    parser = commands.add_parser(
        "healthcheck", help="probe the daemon this config describes (exit 0 when healthy)",
        description="GET /healthz (or /readyz) of the daemon the effective config "
                    "describes; exit 0 on 200, else 1 with the reason on stderr.")
    add_config_flags(parser)
    parser.add_argument("--ready", action="store_true",
                        help="probe /readyz (storage reachable) instead of /healthz")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})")
    parser.set_defaults(func=lambda args: run(config_from, args))
