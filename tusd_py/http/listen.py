"""Where the daemon listens, and start-up failures said in one line.

``listen`` binds the configured address; a failure is a ``StartupError`` naming the
address and the reason (``cannot listen on 127.0.0.1:8080: address already in use``).
"""

from __future__ import annotations

import os
import socket
import ssl

from aiohttp import web

from ..config import ServerConfig, StartupError


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


def tcp_address(server: ServerConfig) -> str:
    """``host:port`` as an operator writes it (IPv6 literals in brackets)."""
    host = server.host
    return f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"


def listen_url(server: ServerConfig) -> str:
    """The tus endpoint as a URL on the listening address (``http://0.0.0.0:8080/files/``)."""
    return f"http://{tcp_address(server)}{server.base_path}"


async def listen(runner: web.AppRunner, server: ServerConfig) -> web.BaseSite:
    """Bind and start the listening socket; ``StartupError`` when that fails."""
    site = web.TCPSite(runner, server.host, server.port)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {tcp_address(server)}: {reason(exc)}") from None
    return site
