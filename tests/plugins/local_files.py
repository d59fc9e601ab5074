"""Where the local driver keeps an upload's file, for tests that look at it or break it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tusd_py.storage.local.layout import SHARDED, Layout


def layout_of(data_dir: str | Path) -> Layout:
    """The layout ``data_dir``'s database records (sharded if it has none yet)."""
    db = Path(data_dir) / "uploads.db"
    version = SHARDED
    if db.exists():
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    return Layout(str(Path(data_dir) / "uploads"), sharded=version == SHARDED)


def upload_file(data_dir: str | Path, upload_id: str) -> Path:
    """The file of ``upload_id`` under ``data_dir``."""
    return Path(layout_of(data_dir).path(upload_id))


def upload_files(data_dir: str | Path) -> list[str]:
    """The ids of every upload file under ``data_dir``, sorted."""
    return sorted(layout_of(data_dir).files(float("inf")))
