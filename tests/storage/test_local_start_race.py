"""Processes starting on one data directory at once (``server.workers``) each clean up
the files left with no record, and none of them fails because another one removed a
file first."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.plugins.local_files import upload_file, upload_files
from tusd_py.storage.local.store import ORPHAN_GRACE

START = """
import asyncio, os, sys, traceback
from tusd_py.storage.local.store import LocalStore

async def main() -> None:
    store = LocalStore(sys.argv[1])
    try:
        await store.start()
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # aiosqlite's thread of a half-started store would keep the process
    await store.stop()

asyncio.run(main())
"""


def test_processes_starting_together_share_the_orphan_clean_up(tmp_path):
    subprocess.run([sys.executable, "-c", START, str(tmp_path)], check=True)  # the schema
    for round_ in range(2):
        for i in range(3000):
            upload_file(tmp_path, f"{round_:02x}{i:030x}").write_bytes(b"x")
        time.sleep(ORPHAN_GRACE + 0.2)  # every file old enough to be an orphan
        procs = [subprocess.Popen([sys.executable, "-c", START, str(tmp_path)],
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
        assert upload_files(tmp_path) == []
