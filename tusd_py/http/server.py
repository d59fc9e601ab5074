"""Run the daemon: event loop (uvloop when installed), signals, graceful shutdown.

Shutdown on SIGTERM/SIGINT, in this order:

1. stop listening and stop taking new requests on open keep-alive connections (the
   orchestrator routes elsewhere);
2. let in-flight requests run for ``server.shutdown_grace``; then stop the uploads still
   running: each gets ``COMMIT_WAIT`` to commit the bytes it received and answer 503
   (``app.drain_uploads``);
3. cancel what is left (``CLOSE_WAIT``), close the connections and run the cleanup
   contexts (hooks, sweeper, store);
4. exit 0.

From SIGTERM to exit takes at most ``server.shutdown_grace + SHUTDOWN_MARGIN`` seconds
(steps 2 to 4 normally end within ``COMMIT_WAIT + 2 * CLOSE_WAIT`` of the grace period).
Should anything overrun that (a store that does not close, a blocking Python hook whose
thread the interpreter would wait for), a watchdog thread ends the process with exit
code 1 at that mark. Give the container's stop timeout more than this sum.

``web.run_app`` is not used because its cleanup first makes aiohttp drop the bytes of
in-flight request bodies, which would stall every upload during the grace period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading

from aiohttp import web

from ..config import Config
from .app import create_app, drain_uploads
from .keys import GATE
from .logs import AccessLogger, flush_logs, setup_logging

log = logging.getLogger("tusd_py")

#: Seconds uploads stopped at the end of the grace period get to commit what they received.
COMMIT_WAIT = 1.0
#: Seconds aiohttp waits for a request still running after that, and again once it is cancelled.
CLOSE_WAIT = 0.25
#: SIGTERM to exit is at most ``server.shutdown_grace + SHUTDOWN_MARGIN`` seconds.
SHUTDOWN_MARGIN = 2.0
#: Exit status when the watchdog has to end an overrunning shutdown.
EXIT_OVERRUN = 1


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def start_watchdog(seconds: float) -> threading.Timer:
    """End the process with ``EXIT_OVERRUN`` if it is still alive after ``seconds``."""

    def overrun() -> None:
        try:
            log.error("shutdown did not finish within %.1fs; exiting now", seconds)
            flush_logs()
        finally:
            os._exit(EXIT_OVERRUN)

    timer = threading.Timer(seconds, overrun)
    timer.name = "tusd-shutdown-watchdog"
    timer.daemon = True
    timer.start()
    return timer


async def run(config: Config) -> None:
    app = create_app(config)
    gate = app[GATE]
    server = config.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("tusd_py.access") if server.access_log else None,
        handler_cancellation=False,
        shutdown_timeout=CLOSE_WAIT,
    )
    await runner.setup()
    # Everything imported and built so far lives as long as the process: keep it out of
    # the garbage collector's generations, so a full collection walks only what requests
    # allocate (measured: a full collection of the ~50,000 start-up objects paused the
    # loop for up to 70 ms on this machine; none happen after the freeze).
    gc.freeze()
    site = web.TCPSite(runner, server.host, server.port)
    await site.start()
    loop = asyncio.get_running_loop()
    log.info("tusd-py listening on %s:%d%s (storage: %s, loop: %s)", server.host, server.port,
             server.base_path, config.storage.driver, type(loop).__module__.split(".")[0])

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flusher = asyncio.create_task(_flush_logs_every(0.25))
    hard_deadline: float | None = None
    try:
        await stop.wait()
        hard_deadline = loop.time() + server.shutdown_grace + SHUTDOWN_MARGIN
        start_watchdog(server.shutdown_grace + SHUTDOWN_MARGIN)
        log.info("shutting down: no new requests; in-flight ones get %gs (exit within %gs)",
                 server.shutdown_grace, server.shutdown_grace + SHUTDOWN_MARGIN)
        gate.stopping = True
        await site.stop()
        await drain_uploads(app, COMMIT_WAIT, gate)
    finally:
        try:
            # Leave the watchdog a moment to spare; past this the store may not be closed.
            async with asyncio.timeout_at(None if hard_deadline is None else hard_deadline - 0.1):
                await runner.cleanup()
        except TimeoutError:
            log.error("shutdown: connections and store did not close in time")
        flusher.cancel()
        log.info("stopped")
        flush_logs()


async def _flush_logs_every(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        flush_logs()


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """Keep glibc from handing request-body buffers back to the kernel after each use.

    Bodies arrive in 64-256 KiB buffers. With glibc's defaults freed buffers at the top
    of the heap are trimmed (or were mmapped and are unmapped) and the next ones
    page-fault fresh zeroed pages in: ~55,000 minor faults per ``parallel`` run (512 MiB
    in 1 MiB PATCHes). A 64 MiB trim threshold, 16 MiB top pad and a fixed 4 MiB mmap
    threshold keep those pages in the heap: ~5,700 faults, CPU per upload -10 to -25 %
    in ``parallel`` and ``big`` (ABBA runs, same sitting), peak RSS unchanged (58 / 78 MB).
    Not applied where the operator set any ``MALLOC_*`` variable, or without glibc.
    """
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
                    and libc.mallopt(_M_TOP_PAD, 16 << 20)
                    and libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20))
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator be
        return False


def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT; returns after in-flight uploads are committed."""
    setup_logging(config.server.log_level, config.server.log_format)
    tune_malloc()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(config))
    finally:
        # Connections still lingering (aiohttp reads the rest of a body that a refused or
        # interrupted request left unread) end here, instead of being destroyed pending.
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        flush_logs()
