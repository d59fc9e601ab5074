"""Run the daemon: event loop (uvloop when installed), signals, graceful shutdown.

SIGTERM/SIGINT stop it within ``server.shutdown_grace + SHUTDOWN_MARGIN`` seconds: no new
requests, the grace period for those in flight, then the uploads still running commit
what they received and answer 503; a watchdog exits with ``EXIT_OVERRUN`` past the mark.
SIGHUP reloads the TLS certificate (``server.tls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..config import Config, ConfigError, ServerConfig, StartupError
from ..config.report import env_notes, origin_summary, storage_location
from .app import create_app, drain_uploads
from .connections import ConnectionGuard, GuardedRunner, raise_open_files_limit
from .keys import CONFIG, GATE, HANDLER, HOOKS, REGISTRY, STORE, WORKER
from .listen import listen, listen_url, reason, reload_tls, remove_socket, tls_context
from .logs import AccessLogger, flush_logs, setup_logging
from .workers import WorkerSlot, supervise

if TYPE_CHECKING:
    from ..storage.base import Store

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


#: Seconds the clean-up after a failed start may take (the store, the hooks).
STARTUP_CLEANUP_WAIT = 5.0


def build(config: Config, background: bool = True) -> tuple[web.Application, ssl.SSLContext | None]:
    """What ``serve`` builds before it starts anything: the app (driver, hooks) and the
    TLS context; ``check-config`` builds the same, so it refuses what serve would."""
    context = tls_context(config.server.tls)
    return create_app(config, background=background), context


async def run(config: Config, sock: socket.socket | None = None,
              worker: WorkerSlot | None = None) -> None:
    """Build the app, start its store and hooks, listen, serve until SIGTERM/SIGINT.

    One guarded sequence: whatever fails on the way (a port in use, storage that does
    not open) stops what was started before the error propagates as ``StartupError``
    (or ``ConfigError``), so the process exits at once instead of waiting on threads.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = config.server
    # server.workers: this is one of them, on the socket the supervisor bound
    app, context = build(config, background=worker is None or worker.index == 0)
    if worker is not None:
        app[WORKER] = worker
    if context is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_tls, context, server)
    gate = app[GATE]
    guard = ConnectionGuard(server)
    loop.set_exception_handler(guard.loop_exception)
    runner = GuardedRunner(
        app, guard, server.keepalive_timeout,
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("tusd_py.access") if server.access_log else None,
        handler_cancellation=False,
        shutdown_timeout=CLOSE_WAIT,
    )
    wait = server.require_storage_timeout if server.require_storage else None
    deadline = None if wait is None else loop.time() + wait
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await _start(runner)
        except TimeoutError:
            raise StartupError(f"the {_storage_text(config)} did not answer within "
                               f"{wait:g}s (server.require_storage)") from None
        if deadline is not None:
            await _wait_for_storage(app[STORE], config, deadline, stop)
        # Everything imported and built so far lives as long as the process: keep it out of
        # the garbage collector's generations, so a full collection walks only what requests
        # allocate (measured: a full collection of the ~50,000 start-up objects paused the
        # loop for up to 70 ms on this machine; none happen after the freeze).
        gc.freeze()
        if sock is None:
            site = await listen(runner, server, context)
        else:
            site = web.SockSite(runner, sock, ssl_context=context)
            await site.start()
    except BaseException:
        await _clean_up_failed_start(runner)
        raise
    log.info("%s%s", "" if worker is None else f"worker {worker.index}: ",
             describe_daemon(app, type(loop).__module__.split(".")[0]))
    if worker is not None:
        worker.start(app[REGISTRY])

    flusher = asyncio.create_task(_flush_logs_every(0.25))
    hard_deadline: float | None = None
    try:
        await stop.wait()
        hard_deadline = loop.time() + server.shutdown_grace + SHUTDOWN_MARGIN
        start_watchdog(server.shutdown_grace + SHUTDOWN_MARGIN)
        log.info("shutting down: no new requests; in-flight ones get %gs (exit within %gs)",
                 server.shutdown_grace, server.shutdown_grace + SHUTDOWN_MARGIN)
        gate.stopping = True
        if worker is not None:
            worker.serving = False
            worker.publish(app[REGISTRY])
        await site.stop()
        await drain_uploads(app, COMMIT_WAIT, gate)
    finally:
        try:
            # Leave the watchdog a moment to spare; past this the store may not be closed.
            async with asyncio.timeout_at(None if hard_deadline is None else hard_deadline - 0.1):
                await runner.cleanup()
        except TimeoutError:
            log.error("shutdown: connections and store did not close in time")
        if worker is None:
            remove_socket(server)
        else:
            await worker.stop(app[REGISTRY])
        flusher.cancel()
        log.info("stopped")
        flush_logs()


def describe_daemon(app: web.Application, loop_name: str) -> str:
    """The start-up line saying what this daemon is: version, URL, storage, extensions,
    hooks."""
    config = app[CONFIG]
    listener = app.get(HOOKS)
    hooks = "none"
    if listener is not None:
        hooks = (", ".join(backend.describe() for backend in listener.backends)
                 + f" for {','.join(sorted(listener.enabled))}")
    extensions = ",".join(app[HANDLER].extensions)
    return (f"tusd-py {__version__} listening on {listen_url(config.server)} "
            f"(storage: {config.storage.driver} {storage_location(config.storage)}; "
            f"extensions: {extensions}; hooks: {hooks}; loop: {loop_name})")


def _reload_tls(context: ssl.SSLContext, server: ServerConfig) -> None:
    """SIGHUP: read the certificate and key again; on an error keep the old ones."""
    try:
        reload_tls(context, server.tls)
    except StartupError as exc:
        log.error("SIGHUP: %s; still serving the previous certificate", exc)
    else:
        log.info("SIGHUP: TLS certificate %s reloaded (new connections get it)",
                 server.tls.cert_file)


def _storage_text(config: Config) -> str:
    return f"{config.storage.driver} storage ({storage_location(config.storage)})"


#: Seconds between the storage checks of ``server.require_storage``.
STORAGE_RETRY = 0.5


async def _wait_for_storage(store: Store, config: Config, deadline: float,
                            stop: asyncio.Event) -> None:
    """``server.require_storage``: ping the store until it answers or ``deadline``
    passes (``StartupError``); SIGTERM meanwhile ends the wait (and the start)."""
    loop = asyncio.get_running_loop()
    why = ""
    while not stop.is_set():
        try:
            async with asyncio.timeout_at(deadline):
                await store.ping()
            return
        except TimeoutError:
            why = why or "no answer"
        except Exception as exc:
            if not why:
                log.warning("the %s does not answer yet (%s); waiting up to %gs "
                            "(server.require_storage)", _storage_text(config), reason(exc),
                            config.server.require_storage_timeout)
            why = reason(exc)
        if loop.time() + STORAGE_RETRY >= deadline:
            raise StartupError(f"the {_storage_text(config)} did not answer within "
                               f"{config.server.require_storage_timeout:g}s "
                               f"(server.require_storage): {why}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STORAGE_RETRY)


async def _start(runner: web.AppRunner) -> None:
    """Start the app's contexts (store, sweeper, hooks); a failure says what failed."""
    try:
        await runner.setup()
    except ConfigError:
        raise
    except Exception as exc:
        raise StartupError(f"cannot start: {reason(exc)}") from exc


async def _clean_up_failed_start(runner: web.AppRunner) -> None:
    """Stop whatever a failed start had started (bounded: a failing start must not hang)."""
    try:
        async with asyncio.timeout(STARTUP_CLEANUP_WAIT):
            await runner.cleanup()
    except Exception as exc:  # the start-up error is the one to report
        log.warning("clean-up after the failed start: %s", reason(exc))
    flush_logs()


async def _flush_logs_every(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        flush_logs()


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """Keep glibc from handing request-body buffers back to the kernel after each use
    (64 MiB trim threshold, 16 MiB top pad, 4 MiB mmap threshold); True if applied.
    Not applied where the operator set any ``MALLOC_*`` variable, or without glibc."""
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


def serve(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; returns (the exit status) after in-flight uploads are
    committed. With ``server.workers`` above 1 this process supervises that many."""
    setup_logging(config.server.log_level, config.server.log_format)
    log.info("config: %s", origin_summary(config))
    for note in env_notes(config):
        log.warning("%s", note)
    if config.provenance.ignored_env:
        log.debug("not settings, ignored: %s", ", ".join(config.provenance.ignored_env))
    faulthandler.enable()  # a fatal signal (SIGBUS from a mapped file) leaves a traceback
    before, after = raise_open_files_limit()
    if after != before:
        log.debug("open-file limit raised from %d to %d", before, after)
    tune_malloc()
    if config.server.workers > 1:
        return supervise(config, serve_worker, build,
                         config.server.shutdown_grace + SHUTDOWN_MARGIN, EXIT_OVERRUN)
    _serve_loop(run(config))
    return 0


def serve_worker(config: Config, sock: socket.socket, worker: WorkerSlot) -> int:
    """One worker of ``server.workers`` (in the forked child): serve on ``sock``."""
    try:
        _serve_loop(run(config, sock, worker))
    except ConfigError as exc:  # StartupError too: the supervisor stops them all
        log.error("worker %d: %s", worker.index, exc)
        return 2
    return 0


def _serve_loop(main: Coroutine[Any, Any, None]) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
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
