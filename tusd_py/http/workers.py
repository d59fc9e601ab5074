"""``server.workers``: a supervisor and pre-forked workers over one listening address
and one store.

The supervisor binds the sockets (one ``SO_REUSEPORT`` socket per worker for TCP, one
shared unix socket), forks the workers, restarts one that dies and passes SIGTERM,
SIGINT and SIGHUP on to all. Workers share an anonymous memory (``SharedSlots``) where
each publishes its metric samples and whether it serves: /metrics sums them, /readyz
needs all. docs/operations/workers.md says what an operator sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import mmap
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from ..config import Config, ServerConfig, StartupError
from .listen import listen_address, reason
from .logs import flush_logs

log = logging.getLogger("tusd_py")

#: Seconds between two publications of a worker's slot.
PUBLISH_INTERVAL = 0.5
#: A slot older than this says its worker does not serve (it stalls or died).
STALE_AFTER = 3.0
#: Bytes of one slot (a header and the JSON of the worker's samples).
SLOT_SIZE = 1 << 18
_HEADER = struct.Struct("<QdII")  # sequence (odd while written), time, serving, length
#: Restart backoff of a worker that died: first delay, longest, and how long one must
#: have run for the next death to start from the first delay again.
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 0.5, 30.0, 60.0
_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


# -- shared slots -----------------------------------------------------------------------


class SharedSlots:
    """One slot per worker and one for retired workers' counters, in shared memory made
    before the fork (children inherit the mapping). One writer per slot; readers retry
    while a write is in progress (a sequence number, odd meanwhile)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._memory = mmap.mmap(-1, SLOT_SIZE * (count + 1))

    def write(self, index: int, serving: bool, samples: list[Any]) -> bool:
        """Publish slot ``index`` (``count`` is the retired slot); False if too big."""
        data = json.dumps(samples, separators=(",", ":")).encode()
        if _HEADER.size + len(data) > SLOT_SIZE:
            return False
        start = index * SLOT_SIZE
        sequence = _HEADER.unpack_from(self._memory, start)[0]
        _HEADER.pack_into(self._memory, start, sequence + 1, time.time(), serving, len(data))
        self._memory[start + _HEADER.size:start + _HEADER.size + len(data)] = data
        _HEADER.pack_into(self._memory, start, sequence + 2, time.time(), serving, len(data))
        return True

    def read(self, index: int) -> tuple[float, bool, list[Any]]:
        """(publication time, serving, samples) of slot ``index``; time 0 if never written."""
        start = index * SLOT_SIZE
        for _ in range(100):
            sequence, when, serving, length = _HEADER.unpack_from(self._memory, start)
            if sequence % 2 == 0:
                data = self._memory[start + _HEADER.size:start + _HEADER.size + length]
                if _HEADER.unpack_from(self._memory, start)[0] == sequence:
                    return when, bool(serving), json.loads(data) if length else []
            time.sleep(0.0001)
        return 0.0, False, []

    def retire(self, index: int) -> None:
        """Supervisor: add the counters of dead worker ``index`` to the retired slot (its
        gauges went with it) and clear its slot."""
        _, _, samples = self.read(index)
        _, _, retired = self.read(self.count)
        kept = [sample for sample in samples if sample[0] != "gauge"]
        self.write(self.count, False, merge_samples([retired, kept]))
        self.write(index, False, [])


def registry_samples(registry: CollectorRegistry) -> list[Any]:
    """The registry's samples as ``[type, family, help, sample name, labels, value]``."""
    rows = []
    for family in registry.collect():
        for sample in family.samples:
            rows.append([family.type, family.name, family.documentation, sample.name,
                         sample.labels, sample.value])
    return rows


def merge_samples(sources: Iterable[list[Any]]) -> list[Any]:
    """Samples of several processes, summed by name and labels (``*_created``: the
    earliest)."""
    merged: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
    for samples in sources:
        for kind, family, documentation, name, labels, value in samples:
            key = (name, tuple(sorted(labels.items())))
            row = merged.get(key)
            if row is None:
                merged[key] = [kind, family, documentation, name, labels, value]
            elif name.endswith("_created"):
                row[5] = min(row[5], value)
            else:
                row[5] += value
    return list(merged.values())


class _Families:
    """A ``collect()``-able view of merged samples, for ``generate_latest``."""

    def __init__(self, samples: list[Any]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for kind, name, documentation, sample, labels, value in self.samples:
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(name, documentation, kind)
            family.add_sample(sample, labels, value)
        yield from families.values()


@dataclass
class WorkerSlot:
    """A worker's view of the shared slots: publishes its own, reads the others'."""

    slots: SharedSlots
    index: int
    serving: bool = False
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def not_serving(self) -> str:
        """The workers that do not serve now (stale or not started), e.g. ``"1, 3"``."""
        now = time.time()
        idle = []
        for index in range(self.slots.count):
            if index == self.index:
                if not self.serving:
                    idle.append(index)
                continue
            when, serving, _ = self.slots.read(index)
            if not serving or now - when > STALE_AFTER:
                idle.append(index)
        return ", ".join(map(str, idle))

    def all_metrics(self, registry: CollectorRegistry) -> _Families:
        """This worker's live samples plus every other's last ones, summed."""
        sources = [registry_samples(registry)]
        for index in range(self.slots.count + 1):
            if index != self.index:
                sources.append(self.slots.read(index)[2])
        return _Families(merge_samples(sources))

    def start(self, registry: CollectorRegistry) -> None:
        self.serving = True
        self._task = asyncio.create_task(self._publish_every(registry), name="tusd-worker-slot")

    async def stop(self, registry: CollectorRegistry) -> None:
        self.serving = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.publish(registry)  # the final counts, for the retired slot

    def publish(self, registry: CollectorRegistry) -> None:
        if not self.slots.write(self.index, self.serving, registry_samples(registry)):
            log.warning("worker %d: metrics larger than the shared slot; not published",
                        self.index)

    async def _publish_every(self, registry: CollectorRegistry) -> None:
        while True:
            self.publish(registry)
            await asyncio.sleep(PUBLISH_INTERVAL)


# -- the supervisor ---------------------------------------------------------------------


def bind_sockets(server: ServerConfig, count: int) -> list[socket.socket]:
    """The listening sockets: one per worker (``SO_REUSEPORT``) for TCP, one shared for
    a unix socket; ``StartupError`` naming the address when binding fails."""
    from .listen import _clear_stale_socket

    where = listen_address(server)
    sockets: list[socket.socket] = []
    try:
        if server.unix_socket:
            _clear_stale_socket(server.unix_socket)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(server.unix_socket)
            os.chmod(server.unix_socket, server.unix_socket_mode)
            sock.listen(128)
            return sockets * count
        infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        port = server.port
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]  # port 0: the others join the one it got
            sock.listen(128)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {where}: {reason(exc)}") from None
    return sockets


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    started_at: float = 0.0  # wall clock, against the slot's publication time
    failures: int = 0
    restart_at: float | None = None
    status: int | None = None


def supervise(config: Config, serve_worker: Callable[[Config, socket.socket, WorkerSlot], int],
              build: Callable[[Config], object], stop_within: float, overrun: int) -> int:
    """Run ``server.workers`` workers until SIGTERM/SIGINT; the exit status.

    ``serve_worker`` is a worker's life (in the child), ``build`` what refuses a bad
    configuration (driver, hooks, TLS) before any fork; after SIGTERM the workers get
    ``stop_within`` seconds, then the ones left are killed and the status is ``overrun``."""
    server = config.server
    count = server.workers
    build(config)
    sockets = bind_sockets(server, count)
    slots = SharedSlots(count)
    workers = [_Worker(index) for index in range(count)]
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    log.info("supervisor %d: starting %d workers on %s", os.getpid(), count,
             listen_address(server))
    for worker in workers:
        _spawn(worker, sockets, slots, config, serve_worker)
    stopping = False
    deadline = 0.0
    while True:
        now = time.monotonic()
        pending = [w.restart_at for w in workers if w.restart_at is not None]
        timeout = max(0.0, min(pending) - now) if pending else 1.0
        if stopping:
            timeout = min(timeout, max(0.0, deadline - now))
        flush_logs()  # the supervisor has no loop to flush its log lines on a timer
        received = signal.sigtimedwait(_SIGNALS, timeout)
        if received is not None and received.si_signo in (signal.SIGTERM, signal.SIGINT):
            if not stopping:
                stopping = True
                deadline = time.monotonic() + stop_within
                for worker in workers:  # one waiting for its restart has nothing to drain
                    if worker.restart_at is not None:
                        worker.restart_at, worker.status = None, 0
                log.info("supervisor: %s; stopping the workers", signal.Signals(
                    received.si_signo).name)
                _signal_all(workers, signal.SIGTERM)
        elif received is not None and received.si_signo == signal.SIGHUP:
            _signal_all(workers, signal.SIGHUP)
        fatal = _reap(workers, slots, stopping)
        if fatal is not None and not stopping:
            log.error("worker %d failed to start (exit %d); stopping", fatal.index,
                      fatal.status)
            stopping = True
            deadline = time.monotonic() + stop_within
            _signal_all(workers, signal.SIGTERM)
        if stopping:
            if not any(w.pid for w in workers):
                break
            if time.monotonic() >= deadline:
                log.error("workers did not stop within %gs; killing them", stop_within)
                _signal_all(workers, signal.SIGKILL)
                _reap(workers, slots, True, block=True)
                return overrun
            continue
        for worker in workers:
            if worker.restart_at is not None and time.monotonic() >= worker.restart_at:
                _spawn(worker, sockets, slots, config, serve_worker)
    for sock in {id(s): s for s in sockets}.values():
        sock.close()
    if server.unix_socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(server.unix_socket)
    statuses = [w.status for w in workers]
    if fatal_status := next((s for s in statuses if s == 2), None):
        return fatal_status
    return 0 if all(status == 0 for status in statuses) else overrun


def _signal_all(workers: list[_Worker], signum: int) -> None:
    for worker in workers:
        if worker.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)


def _reap(workers: list[_Worker], slots: SharedSlots, stopping: bool,
          block: bool = False) -> _Worker | None:
    """Collect the workers that exited; schedule restarts (unless ``stopping``). Returns
    one that failed before it ever served (its start-up failed), if any."""
    fatal = None
    while any(w.pid for w in workers):
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        worker = next((w for w in workers if w.pid == pid), None)
        if worker is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        worker.pid, worker.status = 0, code
        served = slots.read(worker.index)[0] >= worker.started_at  # published since it began
        slots.retire(worker.index)
        if stopping:
            log.info("worker %d (pid %d) stopped (exit %d)", worker.index, pid, code)
            continue
        if code == 2 and not served:
            fatal = worker
            continue
        ran = time.monotonic() - worker.started
        worker.failures = 0 if ran >= BACKOFF_RESET else worker.failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, worker.failures - 1))
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        log.error("worker %d (pid %d) died (%s) after %.1fs; restarting in %gs",
                  worker.index, pid, how, ran, delay)
        worker.restart_at = time.monotonic() + delay
    return fatal


def _spawn(worker: _Worker, sockets: list[socket.socket], slots: SharedSlots,
           config: Config, serve_worker: Callable[[Config, socket.socket, WorkerSlot], int]
           ) -> None:
    flush_logs()  # the child must not write the parent's buffered lines again
    pid = os.fork()
    if pid == 0:  # the worker
        status = 1
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            _die_with_parent()
            own = sockets[worker.index]
            for sock in sockets:
                if sock is not own:
                    sock.close()
            status = serve_worker(config, own, WorkerSlot(slots, worker.index))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", worker.index)
        finally:
            flush_logs()
            os._exit(status)
    worker.pid, worker.restart_at, worker.status = pid, None, None
    worker.started, worker.started_at = time.monotonic(), time.time()
    log.info("worker %d started (pid %d)", worker.index, pid)


def _die_with_parent() -> None:
    """SIGKILL this process when the supervisor dies (Linux ``prctl``)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before prctl: do not linger
        os._exit(1)
