"""Run the daemon: event loop (uvloop when installed), signals, graceful shutdown.

Shutdown on SIGTERM/SIGINT, in this order:

1. stop listening (new connections are refused; the orchestrator routes elsewhere);
2. let in-flight uploads run for ``server.shutdown_grace``; then stop those still running:
   each commits the bytes it received and answers 503 (``app.drain_uploads``);
3. close the remaining connections and run the cleanup contexts (sweeper, store);
4. exit 0.

``web.run_app`` is not used because its cleanup first makes aiohttp drop the bytes of
in-flight request bodies, which would stall every upload during the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import create_app, drain_uploads
from .config import Config
from .logs import AccessLogger, flush_logs, setup_logging

log = logging.getLogger("tusd_py")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run(config: Config) -> None:
    app = create_app(config)
    server = config.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("tusd_py.access") if server.access_log else None,
        handler_cancellation=False,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.port)
    await site.start()
    loop = asyncio.get_running_loop()
    log.info("tusd-py listening on %s:%d%s (storage: %s, loop: %s)", server.host, server.port,
             server.base_path, config.storage.driver, type(loop).__module__.split(".")[0])

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flusher = asyncio.create_task(_flush_logs_every(0.25))
    try:
        await stop.wait()
        log.info("shutting down: no new connections; in-flight uploads get %.0fs",
                 server.shutdown_grace)
        await site.stop()
        await drain_uploads(app)
    finally:
        await runner.cleanup()
        flusher.cancel()
        log.info("stopped")
        flush_logs()


async def _flush_logs_every(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        flush_logs()


def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT; returns after in-flight uploads are committed."""
    setup_logging(config.server.log_level, config.server.log_format)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(config))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        flush_logs()
