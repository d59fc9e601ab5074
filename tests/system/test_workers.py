"""``server.workers: 2``: two worker processes behind one port, over one local store."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp

from tests.plugins.tcp import wait_delivered
from tusd_py.http.workers import SharedSlots, merge_samples

from .tusreq import OCTET, TUS, create, get, offset_of, patch

TWO = {"TUSD_SERVER__WORKERS": "2"}


def workers_of(pid: int) -> list[int]:
    """The supervisor's children (its workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until(condition, limit: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def fresh_session() -> aiohttp.ClientSession:
    """A connection per request: the kernel spreads new connections over the workers."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def test_both_workers_serve_and_metrics_add_up(daemon_factory):
    daemon = daemon_factory(env=TWO)
    assert len(workers_of(daemon.pid)) == 2
    wait_until(lambda: status_of(daemon.root + "/readyz") == 200)
    count = 40
    async with fresh_session() as session:
        for _ in range(count):
            await create(session, daemon.url, 1)
        # Each scrape reaches either worker; either sums both (the other's figures are at
        # most a publication interval old: a scrape may be retried while it catches up,
        # but one worker alone never reaches the total). Had one worker taken all 40
        # connections, a 2**-39 chance, this would prove less, never fail.
        for _ in range(20):
            deadline = time.monotonic() + 5
            while True:
                async with session.get(daemon.root + "/metrics") as r:
                    text = await r.text()
                if (f'tusd_requests_total{{method="POST",status="201"}} {count}.0' in text
                        and f"tusd_uploads_created_total {count}.0" in text):
                    break
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.1)


async def test_patch_storm_across_workers_one_writer_wins(daemon_factory):
    daemon = daemon_factory(env={**TWO, "TUSD_SERVER__LOCK_WAIT": "0.2"})
    size = 1 << 20
    async with fresh_session() as session:
        for _round in range(3):
            url = await create(session, daemon.url, size)
            payloads = [os.urandom(size) for _ in range(8)]

            async def body(data: bytes):  # type: ignore[no-untyped-def]
                for i in range(0, len(data), 64 * 1024):
                    yield data[i:i + 64 * 1024]
                    await asyncio.sleep(0.001)

            async def send(data: bytes, url: str = url) -> int:
                async with session.patch(url, data=body(data), headers={
                        **TUS, "Upload-Offset": "0", "Content-Type": OCTET}) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(send(p) for p in payloads))
            assert statuses.count(204) == 1, statuses
            assert set(statuses) <= {204, 409, 423}, statuses
            assert await offset_of(session, url) == size
            assert await get(session, url) == payloads[statuses.index(204)]


async def test_a_killed_worker_is_restarted_and_loses_nothing(daemon_factory, tmp_path):
    daemon = daemon_factory(env=TWO)
    wait_until(lambda: status_of(daemon.root + "/readyz") == 200)
    data = os.urandom(4 << 20)
    async with fresh_session() as session:
        url = await create(session, daemon.url, len(data))
        half = len(data) // 2
        assert (await patch(session, url, 0, data[:half])).status == 204
        victim = workers_of(daemon.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(workers_of(daemon.pid)) == 2 and victim not in
                   workers_of(daemon.pid) and status_of(daemon.root + "/readyz") == 200)
        assert await offset_of(session, url) == half
        assert (await patch(session, url, half, data[half:])).status == 204
        assert hashlib.sha256(await get(session, url)).digest() == hashlib.sha256(data).digest()
    assert "died (killed by SIGKILL)" in daemon.log() and "restarting in 0.5s" in daemon.log()


def test_readyz_is_503_while_a_worker_does_not_serve(daemon_factory):
    daemon = daemon_factory(env=TWO)
    wait_until(lambda: status_of(daemon.root + "/readyz") == 200)
    stalled = workers_of(daemon.pid)[1]
    os.kill(stalled, signal.SIGSTOP)  # alive, but it answers nothing and publishes nothing
    try:
        # The other worker's /readyz finds the stalled one's slot stale (connections the
        # kernel gives the stalled one time out here).
        wait_until(lambda: _status_or_none(daemon.root + "/readyz") == 503, 20)
    finally:
        os.kill(stalled, signal.SIGCONT)
    wait_until(lambda: status_of(daemon.root + "/readyz") == 200)


def _status_or_none(url: str) -> int | None:
    try:
        return status_of(url)
    except OSError:  # timed out on the stopped worker's socket
        return None


async def test_sigterm_drains_both_workers(daemon_factory):
    daemon = daemon_factory(env={**TWO, "TUSD_SERVER__SHUTDOWN_GRACE": "1"})
    wait_until(lambda: status_of(daemon.root + "/readyz") == 200)
    sent = 300_000
    uploads = []
    for _ in range(6):  # stalled bodies on six connections: both workers get some
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        async with fresh_session() as session:
            url = await create(session, daemon.url, 1 << 20)
        path = "/" + url.split("/", 3)[3]
        writer.write((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                      f"Upload-Offset: 0\r\nContent-Type: {OCTET}\r\nContent-Length: {1 << 20}"
                      "\r\n\r\n").encode() + b"x" * sent)
        await wait_delivered(writer)  # the worker has read it: the body is in flight
        uploads.append((url, reader, writer))
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    for _url, reader, _writer in uploads:
        answer = await asyncio.wait_for(reader.read(2000), 10)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert f"Upload-Offset: {sent}".encode() in answer
    code = await asyncio.get_running_loop().run_in_executor(None, daemon.proc.wait, 10)
    assert code == 0
    # Documented: SIGTERM to exit within shutdown_grace + 2 s; the rest is this
    # machine's scheduling of five processes (as in test_shutdown: OBSERVED).
    assert time.monotonic() - started < 1 + 2.0 + 2.0
    for _url, _reader, writer in uploads:
        writer.close()


async def test_kill_9_of_the_supervisor_takes_the_workers(daemon_factory, tmp_path):
    data_dir = tmp_path / "data"
    daemon = daemon_factory(env=TWO, data_dir=data_dir)
    workers = workers_of(daemon.pid)
    async with fresh_session() as session:
        url = await create(session, daemon.url, 10)
        assert (await patch(session, url, 0, b"01234")).status == 204
    daemon.kill()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 5)
    again = daemon_factory(env=TWO, data_dir=data_dir, port=daemon.port)  # the port is free
    async with fresh_session() as session:
        assert await offset_of(session, url) == 5
    again.terminate()


def test_a_start_up_failure_of_the_workers_stops_the_daemon(tmp_path):
    """Every worker failing its start (storage that cannot open) is exit 2, not a
    restart loop."""
    import subprocess
    import sys

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    proc = subprocess.run([sys.executable, "-m", "tusd_py", "serve", "--host", "127.0.0.1",
                           "--port", "0", "--data-dir", str(not_a_dir)],
                          env={**env, **TWO}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "failed to start" in proc.stderr


def test_shared_slots_sum_counters_and_keep_the_dead_ones():
    slots = SharedSlots(2)
    counter = ["counter", "tusd_uploads_created", "uploads", "tusd_uploads_created_total", {}, 3]
    gauge = ["gauge", "tusd_connections_open", "open", "tusd_connections_open", {}, 2]
    created = ["counter", "tusd_uploads_created", "uploads", "tusd_uploads_created_created",
               {}, 100.0]
    slots.write(0, True, [counter, gauge, created])
    slots.write(1, True, [[*counter[:5], 4], [*gauge[:5], 1], [*created[:5], 50.0]])
    merged = {row[3]: row[5] for row in merge_samples(slots.read(i)[2] for i in range(3))}
    assert merged == {"tusd_uploads_created_total": 7, "tusd_connections_open": 3,
                      "tusd_uploads_created_created": 50.0}
    slots.retire(1)  # worker 1 died: its counters stay, its gauges go
    merged = {row[3]: row[5] for row in merge_samples(slots.read(i)[2] for i in range(3))}
    assert merged == {"tusd_uploads_created_total": 7, "tusd_connections_open": 2,
                      "tusd_uploads_created_created": 50.0}
    _when, serving, samples = slots.read(1)
    assert not serving and samples == []


async def test_two_workers_on_one_unix_socket(tmp_path):
    import shutil
    import subprocess
    import sys
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="tusd-sock-"))  # socket paths are short
    sock = directory / "tusd.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSD_")}
    env.update({**TWO, "TUSD_SERVER__UNIX_SOCKET": str(sock)})
    proc = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "tusd_py", "serve", "--data-dir",
                           str(tmp_path / "data")], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists)
        connector = aiohttp.UnixConnector(path=str(sock), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            urls = [await create(session, "http://local/files/", 3) for _ in range(10)]
            for url in urls:
                assert (await patch(session, url, 0, b"abc")).status == 204
            assert await get(session, urls[-1]) == b"abc"
        assert len(workers_of(proc.pid)) == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert not sock.exists()  # removed by the supervisor at the end
    finally:
        proc.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_sigterm_while_a_worker_waits_for_its_restart_exits_0(daemon_factory):
    daemon = daemon_factory(env=TWO)
    wait_until(lambda: status_of(daemon.root + "/readyz") == 200)
    victim = workers_of(daemon.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in workers_of(daemon.pid), 5)
    assert daemon.terminate(10) == 0  # within the 0.5 s backoff: nothing left to drain
