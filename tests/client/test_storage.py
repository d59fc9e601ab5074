"""URL storages: the shared interface, tuspy's aliases, and several processes writing at once."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tusd_py.client import (
    FileURLStorage,
    InMemoryURLStorage,
    SQLiteURLStorage,
    TusClientError,
    URLStorage,
)
from tusd_py.client.storage import as_url_storage, default_storage_path

PROCESSES = 4
PER_PROCESS = 40


def make_file(tmp_path: Path) -> URLStorage:
    return FileURLStorage(tmp_path / "urls.json")


def make_sqlite(tmp_path: Path) -> URLStorage:
    return SQLiteURLStorage(tmp_path / "urls.db")


def make_memory(tmp_path: Path) -> URLStorage:
    return InMemoryURLStorage()


ALL = [make_file, make_sqlite, make_memory]


@pytest.mark.parametrize("make", ALL)
def test_interface(tmp_path: Path, make: Callable[[Path], URLStorage]) -> None:
    with make(tmp_path) as storage:
        assert storage.get_url("a") is None
        storage.set_url("a", "http://x/files/1")
        storage.set_url("b", "http://x/files/2")
        storage.set_url("a", "http://x/files/3")  # replaces
        assert storage.get_url("a") == "http://x/files/3"
        storage.remove_url("a")
        storage.remove_url("a")  # absent: no error
        assert storage.get_url("a") is None
        # tuspy's names
        storage.set_item("c", "http://x/files/4")
        assert storage.get_item("c") == "http://x/files/4"
        storage.remove_item("c")
        assert storage.get_item("c") is None
        storage.set_item("d", "http://x/files/5")
        storage.set_item("d", None)  # tuspy does this before it creates an upload
        assert storage.get_item("d") is None
        assert storage.items() == {"b": "http://x/files/2"}


@pytest.mark.parametrize("make", [make_file, make_sqlite])
def test_persists_across_instances(tmp_path: Path, make: Callable[[Path], URLStorage]) -> None:
    with make(tmp_path) as first:
        first.set_url("size:1--md5:00", "http://x/files/1")
    with make(tmp_path) as second:
        assert second.get_url("size:1--md5:00") == "http://x/files/1"


def test_file_storage_writes_valid_json_and_uses_lock_file(tmp_path: Path) -> None:
    storage = FileURLStorage(tmp_path / "sub" / "urls.json")
    storage.set_url("k", "v")
    assert json.loads((tmp_path / "sub" / "urls.json").read_text()) == {"k": "v"}
    assert (tmp_path / "sub" / "urls.json.lock").exists()
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")] == []


def test_a_damaged_file_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "urls.json"
    path.write_text('{"size:1--md5:00": "http://x/files/1", ')  # cut short
    storage = FileURLStorage(path)
    with caplog.at_level(logging.WARNING, logger="tusd_py.client"):
        assert storage.get_url("size:1--md5:00") is None
    (aside,) = tmp_path.glob("urls.json.corrupt-*")
    assert re.fullmatch(r"urls\.json\.corrupt-\d{8}T\d{6}Z", aside.name)
    assert aside.read_text() == '{"size:1--md5:00": "http://x/files/1", '  # kept as it was
    assert [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    storage.set_url("k", "v")
    assert json.loads(path.read_text()) == {"k": "v"}
    path.write_bytes(b"\xff\xfe not utf-8")  # damaged again: a second copy, not overwritten
    assert storage.items() == {}
    assert len(list(tmp_path.glob("urls.json.corrupt-*"))) == 2


def test_someone_elses_json_file_is_not_overwritten(tmp_path: Path) -> None:
    """tuspy's FileStorage (TinyDB) is JSON too, but not ours: refuse, touch nothing."""
    from tusclient.storage.filestorage import FileStorage

    path = tmp_path / "tuspy.json"
    theirs = FileStorage(str(path))
    theirs.set_item("size:1--md5:00", "http://x/files/1")
    theirs.close()
    before = path.read_bytes()
    storage = FileURLStorage(path)
    for op in (lambda: storage.get_url("k"), lambda: storage.set_url("k", "v"), storage.items):
        with pytest.raises(TusClientError, match="not a FileURLStorage file"):
            op()
    assert path.read_bytes() == before
    assert list(tmp_path.glob("tuspy.json.corrupt-*")) == []


def test_file_storage_fsyncs_the_directory_after_replace(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename is made durable: the file, then its directory, are fsynced (the real
    os.fsync runs; the test only records what it was given)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    storage = FileURLStorage(tmp_path / "urls.json")
    storage.set_url("k", "v")
    storage.remove_url("k")
    assert synced == ["file", "dir", "file", "dir"]


def test_sqlite_storage_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = SQLiteURLStorage()
    storage.set_url("k", "v")
    assert storage.path == Path("tus_urls.db") and storage.timeout == 5.0
    busy = storage._conn.execute("PRAGMA busy_timeout").fetchone()[0]
    assert busy == 5000
    storage.close()
    with sqlite3.connect(tmp_path / "tus_urls.db") as conn:
        assert conn.execute("SELECT url FROM tus_urls WHERE fingerprint='k'").fetchone() == ("v",)


def test_default_storage_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_storage_path() == tmp_path / "tusd-py" / "urls.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_storage_path() == tmp_path / "home" / ".local" / "share" / "tusd-py" / "urls.db"


def test_tuspy_storage_is_accepted(tmp_path: Path) -> None:
    from tusclient.storage.filestorage import FileStorage

    theirs = FileStorage(str(tmp_path / "tuspy.db"))
    try:
        adapted = as_url_storage(theirs)
        assert adapted is not None
        adapted.set_url("fp", "http://x/files/1")
        assert theirs.get_item("fp") == "http://x/files/1"
        adapted.remove_url("fp")
        assert theirs.get_item("fp") is None
    finally:
        theirs.close()
    with pytest.raises(TypeError):
        as_url_storage(object())  # type: ignore[arg-type]


# -- several processes at once ---------------------------------------------------------

def _worker(kind: str, path: str, worker: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    storage: URLStorage = FileURLStorage(path) if kind == "file" else SQLiteURLStorage(path)
    barrier.wait()  # every process starts writing at the same moment
    for i in range(PER_PROCESS):
        storage.set_url(f"w{worker}-{i}", f"http://x/files/{worker}/{i}")
        if i % 4 == 3:  # and some removals, interleaved with the other processes' writes
            storage.remove_url(f"w{worker}-{i - 1}")
        assert storage.get_url(f"w{worker}-{i}") == f"http://x/files/{worker}/{i}"
    storage.close()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_concurrent_processes_lose_nothing(tmp_path: Path, kind: str) -> None:
    path = str(tmp_path / ("urls.json" if kind == "file" else "urls.db"))
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_worker, args=(kind, path, w, barrier)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    expected = {
        f"w{w}-{i}": f"http://x/files/{w}/{i}"
        for w in range(PROCESSES) for i in range(PER_PROCESS) if i % 4 != 2
    }
    storage = FileURLStorage(path) if kind == "file" else SQLiteURLStorage(path)
    assert storage.items() == expected
    if kind == "file":
        assert json.loads(Path(path).read_text()) == expected
    storage.close()


def test_threads_share_one_file_storage(tmp_path: Path) -> None:
    import threading

    storage = FileURLStorage(tmp_path / "urls.json")

    def write(t: int) -> None:
        for i in range(25):
            storage.set_url(f"t{t}-{i}", str(i))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(storage.items()) == 100


def test_file_storage_without_fcntl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fcntl is missing (Windows) the storage still works, locking in-process only."""
    import tusd_py.client.storage as storage_module

    monkeypatch.setattr(storage_module, "fcntl", None)
    storage = FileURLStorage(tmp_path / "urls.json")
    storage.set_url("k", "v")
    assert storage.get_url("k") == "v"
    storage.remove_url("k")
    assert storage.items() == {}
    assert not (tmp_path / "urls.json.lock").exists()
