"""URL storages: remember which upload URL belongs to which file fingerprint, so an
interrupted upload can be resumed by a later process.

All storages share one small, synchronous interface (``get_url``/``set_url``/
``remove_url``) and also answer tuspy's ``get_item``/``set_item``/``remove_item``, so a
storage written for tuspy can be handed to :class:`~tusd_py.client.TusClient` and ours to
tuspy. Every operation is short; the async client calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from .errors import TusClientError

try:  # POSIX only; FileURLStorage degrades to in-process locking without it.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FileURLStorage",
    "InMemoryURLStorage",
    "SQLiteURLStorage",
    "TuspyStorage",
    "URLStorage",
    "as_url_storage",
    "default_storage_path",
]

log = logging.getLogger("tusd_py.client")


class URLStorage(ABC):
    """fingerprint -> upload URL. Implementations must be safe to share between threads."""

    @abstractmethod
    def get_url(self, fingerprint: str) -> str | None:
        """The stored URL, or None."""

    @abstractmethod
    def set_url(self, fingerprint: str, url: str) -> None:
        """Store (or replace) the URL for ``fingerprint``."""

    @abstractmethod
    def remove_url(self, fingerprint: str) -> None:
        """Forget ``fingerprint`` (no error if it is not stored)."""

    def items(self) -> dict[str, str]:
        """Every stored entry (for listing and tests)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files or connections. The storage must not be used afterwards."""

    # tuspy's Storage interface
    def get_item(self, key: str) -> str | None:
        return self.get_url(key)

    def set_item(self, key: str, value: str | None) -> None:
        # tuspy stores whatever it looked up before creating an upload, None included
        if value is None:
            self.remove_url(key)
        else:
            self.set_url(key, value)

    def remove_item(self, key: str) -> None:
        self.remove_url(key)

    def __enter__(self) -> URLStorage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class InMemoryURLStorage(URLStorage):
    """Process-local and forgotten on exit: for tests and short-lived sessions."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    def get_url(self, fingerprint: str) -> str | None:
        with self._lock:
            return self._urls.get(fingerprint)

    def set_url(self, fingerprint: str, url: str) -> None:
        with self._lock:
            self._urls[fingerprint] = url

    def remove_url(self, fingerprint: str) -> None:
        with self._lock:
            self._urls.pop(fingerprint, None)

    def items(self) -> dict[str, str]:
        with self._lock:
            return dict(self._urls)


class FileURLStorage(URLStorage):
    """A JSON object in one file, safe across threads and processes.

    - threads: a ``threading.Lock`` serialises every read and write;
    - processes: ``fcntl.flock`` on the companion ``<path>.lock`` file, shared for
      reads and exclusive for read-modify-write (without fcntl, in-process only);
    - every write goes to a temporary file in the same directory, is flushed and
      fsynced, then ``os.replace``d over the old one (and the directory fsynced, where
      the OS allows it), so a reader never sees a torn file and a crash leaves either
      the old or the new content.

    A file that is not valid JSON (damaged by hand or by a disk) is moved aside to
    ``<path>.corrupt-<UTC timestamp>`` with a warning, and the storage starts empty. A
    valid JSON file that is not a flat object of strings (say, tuspy's TinyDB file) is
    someone else's: every operation raises :class:`TusClientError` and the file is left
    alone.
    """

    def __init__(self, storage_path: str | os.PathLike[str] = ".tus_urls.json") -> None:
        self.path = Path(storage_path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        with self._lock:
            if fcntl is None:
                yield
                return
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                yield
            finally:
                os.close(fd)  # closing drops the flock

    def _read(self) -> dict[str, str]:
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._set_aside(inode, exc)
            return {}
        if not isinstance(data, dict) or not all(v is None or isinstance(v, str)
                                                 for v in data.values()):
            raise TusClientError(f"{self.path} is not a FileURLStorage file (a JSON object of "
                                 "URLs); refusing to overwrite it")
        return {k: v for k, v in data.items() if v is not None}  # null: tuspy's "no URL"

    def _set_aside(self, inode: int, error: Exception) -> None:
        """Keep a damaged file for inspection instead of overwriting it with the next write."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            if os.stat(self.path).st_ino != inode:
                return  # replaced since it was read (no cross-process lock without fcntl)
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another reader moved it first
        log.warning("URL storage %s is damaged (%s); moved it to %s and starting empty",
                    self.path, error, aside)

    def _write(self, data: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_directory(self.path.parent)

    def get_url(self, fingerprint: str) -> str | None:
        with self._locked(exclusive=False):
            return self._read().get(fingerprint)

    def set_url(self, fingerprint: str, url: str) -> None:
        with self._locked(exclusive=True):
            data = self._read()
            data[fingerprint] = url
            self._write(data)

    def remove_url(self, fingerprint: str) -> None:
        with self._locked(exclusive=True):
            data = self._read()
            if data.pop(fingerprint, None) is not None:
                self._write(data)

    def items(self) -> dict[str, str]:
        with self._locked(exclusive=False):
            return self._read()


class SQLiteURLStorage(URLStorage):
    """A SQLite table; SQLite's own locking serialises writers across processes (the
    connection waits up to ``timeout`` seconds for a busy database)."""

    def __init__(self, db_path: str | os.PathLike[str] = "tus_urls.db", timeout: float = 5.0) -> None:
        self.path = Path(db_path)
        self.timeout = timeout
        if str(db_path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(db_path), timeout=timeout, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._retry(lambda: self._conn.execute(
            "CREATE TABLE IF NOT EXISTS tus_urls ("
            " fingerprint TEXT PRIMARY KEY, url TEXT NOT NULL, updated_at REAL NOT NULL)"))

    def _retry(self, op: Any) -> Any:
        # The busy handler covers ordinary contention; schema creation racing in several
        # fresh processes can still report "locked" once, so retry within the timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with self._lock:
                    return op()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def get_url(self, fingerprint: str) -> str | None:
        row = self._retry(lambda: self._conn.execute(
            "SELECT url FROM tus_urls WHERE fingerprint = ?", (fingerprint,)).fetchone())
        return None if row is None else str(row[0])

    def set_url(self, fingerprint: str, url: str) -> None:
        self._retry(lambda: self._conn.execute(
            "INSERT INTO tus_urls (fingerprint, url, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(fingerprint) DO UPDATE SET url = excluded.url,"
            " updated_at = excluded.updated_at", (fingerprint, url, time.time())))

    def remove_url(self, fingerprint: str) -> None:
        self._retry(lambda: self._conn.execute(
            "DELETE FROM tus_urls WHERE fingerprint = ?", (fingerprint,)))

    def items(self) -> dict[str, str]:
        rows = self._retry(lambda: self._conn.execute(
            "SELECT fingerprint, url FROM tus_urls").fetchall())
        return {str(k): str(v) for k, v in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort (not possible everywhere, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@runtime_checkable
class TuspyStorage(Protocol):
    """tuspy's ``Storage`` interface."""

    def get_item(self, key: str) -> str | None: ...
    def set_item(self, key: str, value: str) -> Any: ...
    def remove_item(self, key: str) -> Any: ...


class _TuspyAdapter(URLStorage):
    def __init__(self, inner: TuspyStorage) -> None:
        self.inner = inner

    def get_url(self, fingerprint: str) -> str | None:
        return self.inner.get_item(fingerprint)

    def set_url(self, fingerprint: str, url: str) -> None:
        self.inner.set_item(fingerprint, url)

    def remove_url(self, fingerprint: str) -> None:
        self.inner.remove_item(fingerprint)


def as_url_storage(storage: URLStorage | TuspyStorage | None) -> URLStorage | None:
    """Accept one of ours or any object with tuspy's get_item/set_item/remove_item."""
    if storage is None or isinstance(storage, URLStorage):
        return storage
    if isinstance(storage, TuspyStorage):
        return _TuspyAdapter(storage)
    raise TypeError(f"not a URL storage: {storage!r}")


def default_storage_path() -> Path:
    """The per-user resume database of the CLI: ``$XDG_DATA_HOME/tusd-py/urls.db``
    (``~/.local/share/tusd-py/urls.db`` when XDG_DATA_HOME is unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "tusd-py" / "urls.db"
