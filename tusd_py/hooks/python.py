"""In-process hooks: Python callables named ``package.module:function`` in the config.

The module is imported from the Python path, else from the config file's directory (the
working directory when there is no config file), so a hook module next to the config
file needs no ``PYTHONPATH``.

A hook callable takes the hook request (the same dict an HTTP hook receives as JSON) and
returns a hook response dict in the same format, or None to carry on unchanged. It may be
a plain function (run in a thread, so it cannot stall the event loop) or a coroutine
function (awaited on the loop: it must not block). In a blocking hook (pre-create,
pre-finish, pre-access) it may also raise ``TusError`` to refuse the request with that
status and message.

Timeouts (``hooks.http.timeout``): a coroutine hook is cancelled. A plain function cannot
be stopped from outside: its thread runs on until the function returns, and whatever it
returns then is dropped (logged; the request it was called for has already been answered
with 500, or the post-* event counted as dropped). Each callable gets at most
``THREADS`` threads at once (started on demand, then reused), so hung calls cannot pile up
threads without bound; further calls wait for one (within their timeout). The threads are
daemon threads outside the loop's default executor: a hung hook neither starves the
storage drivers' executor work (fsync, concatenation) nor keeps the daemon from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import inspect
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError
from .http import HookError

log = logging.getLogger("tusd_py.hooks")

#: Threads one plain-function hook may occupy at once (running or hung after a timeout).
THREADS = 32


class _DaemonThreads:
    """A minimal thread pool of daemon threads, started on demand and reused.

    Unlike ``concurrent.futures`` (and so ``asyncio.to_thread``), its threads are daemon
    threads the interpreter does not wait for at exit, and they belong to one hook only.
    The caller bounds the jobs outstanding (running or hung); a new thread is started
    only when no thread is free, so there are never more threads than that bound.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any], None]]] = (
            queue.SimpleQueue())
        self.lock = threading.Lock()
        self.free = 0  # threads done with their job, waiting for the next one
        self.started = 0

    def submit(self, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run ``job()`` on a thread, then ``done(its result)`` once that thread counts
        as free again (so a caller woken by ``done`` can reuse it at once)."""
        with self.lock:
            if self.free:
                self.free -= 1
            else:
                self.started += 1
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
        self.jobs.put((job, done))

    def _work(self) -> None:
        while True:
            job, done = self.jobs.get()
            outcome = job()  # a job catches its own exceptions
            with self.lock:
                self.free += 1
            done(outcome)


class HookLoadError(ConfigError):
    """A configured ``module:function`` cannot be imported or is not callable."""


def load_callable(spec: str, search_dir: str | None = None) -> Callable[[dict[str, Any]], Any]:
    """The callable ``package.module:function`` names. The module is looked for on the
    Python path, then in ``search_dir`` (the config file's directory), which stays on
    the path so the hook module can import its neighbours."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise HookLoadError(f"hooks.python: {spec!r} is not of the form package.module:function")
    if search_dir and search_dir not in sys.path:
        sys.path.append(search_dir)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while importing
        where = f" (looked on the Python path and in {search_dir})" if search_dir else ""
        raise HookLoadError(f"hooks.python: cannot import {module_name!r}{where}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookLoadError(f"hooks.python: {module_name!r} has no {attr_path!r}") from None
    if not callable(target):
        raise HookLoadError(f"hooks.python: {spec!r} is not callable")
    return target


class PythonHook:
    name = "python"

    def __init__(self, spec: str, timeout: float, search_dir: str | None = None) -> None:
        self.spec = spec
        self.fn = load_callable(spec, search_dir)
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.timeout = timeout or None
        self.slots = asyncio.Semaphore(THREADS)
        self.threads = _DaemonThreads(f"tusd-hook {spec}")
        #: Calls that returned after their timeout (their answers were dropped).
        self.late = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"Python hook {self.spec}"

    async def invoke(self, payload: Mapping[str, Any], *, forward: Mapping[str, str],
                     key: str) -> Any:
        arg = copy.deepcopy(dict(payload))  # a hook must not change what others see
        try:
            if self.is_async:
                return await asyncio.wait_for(self.fn(arg), self.timeout)
            result = await asyncio.wait_for(self._in_thread(arg), self.timeout)
            if inspect.isawaitable(result):  # a sync wrapper returning a coroutine
                return await asyncio.wait_for(result, self.timeout)
            return result
        except TimeoutError:
            raise HookError(f"no answer within {self.timeout:g}s", "hook timed out") from None

    async def _in_thread(self, arg: dict[str, Any]) -> Any:
        """``fn(arg)`` on a daemon thread; if the caller stops waiting (timeout), the
        thread's late result is dropped and only logged."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        started = time.monotonic()
        what = f"{arg.get('Type')} of upload {arg['Event']['Upload'].get('ID') or '(new)'}"

        def settle(result: Any, error: BaseException | None) -> None:
            self.slots.release()
            if future.cancelled():  # the call timed out: nobody uses this answer
                self.late += 1
                log.warning("%s for %s returned after %.1fs, past its timeout; its answer "
                            "is ignored", self.describe(), what, time.monotonic() - started)
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> tuple[Any, BaseException | None]:
            try:
                return self.fn(arg), None
            except Exception as exc:
                return None, exc
            except BaseException as exc:  # SystemExit & co. must not end the daemon
                return None, RuntimeError(f"{type(exc).__name__} raised")

        def done(outcome: tuple[Any, BaseException | None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, *outcome)

        await self.slots.acquire()
        self.threads.submit(run, done)
        return await future
