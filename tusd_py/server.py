"""Run the daemon: event loop (uvloop when installed), signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web

from .app import create_app
from .config import Config
from .logs import AccessLogger, setup_logging

log = logging.getLogger("tusd_py")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(config: Config, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM/SIGINT; exits after in-flight uploads are committed."""
    setup_logging(config.server.log_level, config.server.log_format)
    app = create_app(config)
    loop = new_event_loop()
    server = config.server
    log.info("tusd-py listening on %s:%d%s (storage: %s, loop: %s)", server.host, server.port,
             server.base_path, config.storage.driver, type(loop).__module__.split(".")[0])
    web.run_app(
        app,
        host=None if sock else server.host,
        port=None if sock else server.port,
        sock=sock,
        loop=loop,
        print=None,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("tusd_py.access") if server.access_log else None,
        # on_shutdown gives writers shutdown_grace, then stops them; this is the
        # backstop for everything else still running.
        shutdown_timeout=server.shutdown_grace + 10,
        handler_cancellation=False,
    )
