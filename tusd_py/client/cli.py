"""Client commands of the ``tusd-py`` CLI: ``upload``, ``info``, ``download``, ``delete``."""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import re
import sys
from collections.abc import Coroutine
from typing import Any

from .client import TusClient
from .errors import TusClientError
from .fingerprint import Fingerprinter, FullSHA256Fingerprint, MD5Fingerprint, SHA256Fingerprint
from .storage import FileURLStorage, SQLiteURLStorage, URLStorage, default_storage_path

__all__ = ["add_commands", "parse_size"]

FINGERPRINTS: dict[str, type[Fingerprinter]] = {
    "md5": MD5Fingerprint, "sha256": SHA256Fingerprint, "full": FullSHA256Fingerprint}

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_size(value: str) -> int:
    """``8MiB``, ``512KiB``, ``5MB``, ``1048576`` -> bytes (argparse type)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (try 8MiB or 8388608)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), val.strip()


def _metadata(value: str) -> tuple[str, str | None]:
    key, sep, val = value.partition("=")
    if not key or " " in key or "," in key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {value!r}")
    return key, (val if sep else None)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--header", "-H", action="append", type=_header, default=[],
                        metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    parser.add_argument("--retries", type=int, default=5, help="retries per request (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="connect/read timeout in seconds (default 30)")


def add_commands(commands: Any) -> None:
    """Register the client subcommands on the ``tusd-py`` subparsers object."""
    up = commands.add_parser(
        "upload", help="upload files to a tus server (resumable)",
        description="Upload files to a tus server. An interrupted upload (Ctrl-C, a killed "
                    "process, a dropped network) resumes when the same command runs again.")
    up.add_argument("files", nargs="+", metavar="FILE", help="file to upload; '-' reads stdin "
                    "(uploaded with a deferred length)")
    up.add_argument("--url", "-u", required=True, help="the tus creation URL, e.g. http://host:8080/files/")
    up.add_argument("--parallel", "-p", type=int, default=1, metavar="N",
                    help="split each file into N partial uploads sent at once (concatenation)")
    up.add_argument("--chunk-size", type=parse_size, default=8 << 20, metavar="SIZE",
                    help="bytes per PATCH request (default 8MiB)")
    up.add_argument("--metadata", "-m", action="append", type=_metadata, default=[],
                    metavar="KEY=VALUE", help="Upload-Metadata pair (repeatable); filename and "
                    "filetype are set from the file unless given")
    up.add_argument("--resume-db", metavar="PATH",
                    help=f"URL storage for resuming: SQLite file, or JSON if it ends in .json "
                         f"(default {default_storage_path()})")
    up.add_argument("--fingerprint", choices=sorted(FINGERPRINTS), default="md5",
                    help="how a file is recognised for resuming: md5 or sha256 of its size and "
                         "first 64 KiB (md5 is tuspy's), or full (sha256 of the whole file)")
    up.add_argument("--no-resume", action="store_true", help="neither resume nor remember uploads")
    up.add_argument("--checksum", default="sha1", metavar="ALG|none",
                    help="Upload-Checksum algorithm per chunk when the server offers it "
                         "(sha1, md5, sha256, sha512; default sha1)")
    up.add_argument("--limit-rate", type=parse_size, metavar="SIZE",
                    help="cap the upload rate (bytes per second, e.g. 1MiB)")
    up.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _common(up)
    up.set_defaults(func=_upload)

    info = commands.add_parser("info", help="show an upload's offset, length and metadata (HEAD)")
    info.add_argument("upload_url", metavar="URL")
    info.add_argument("--json", action="store_true", help="print JSON")
    _common(info)
    info.set_defaults(func=_info)

    down = commands.add_parser("download", help="download a finished upload (GET)")
    down.add_argument("upload_url", metavar="URL")
    down.add_argument("--output", "-o", required=True, metavar="FILE", help="output file, '-' for stdout")
    down.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _common(down)
    down.set_defaults(func=_download)

    delete = commands.add_parser("delete", help="terminate an upload (DELETE)")
    delete.add_argument("upload_url", metavar="URL")
    _common(delete)
    delete.set_defaults(func=_delete)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        print("tusd-py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except TusClientError as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 1


def _progress_bar(quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    # rich would send what is printed to stdout (the upload URLs) to the bar's console,
    # stderr: right for a terminal, wrong when stdout is a pipe or a file.
    try:
        stdout_is_tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        stdout_is_tty = False
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                    console=console, disable=quiet, transient=False,
                    redirect_stdout=stdout_is_tty)


def _storage(args: argparse.Namespace) -> URLStorage | None:
    if args.no_resume:
        return None
    path = args.resume_db or default_storage_path()
    if str(path).endswith(".json"):
        return FileURLStorage(path)
    return SQLiteURLStorage(path)


def _client(args: argparse.Namespace, **kwargs: Any) -> TusClient:
    return TusClient(args.url if hasattr(args, "url") else args.upload_url,
                     headers=dict(args.header), retries=args.retries, timeout=args.timeout, **kwargs)


def _upload(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        print("tusd-py: --parallel must be at least 1", file=sys.stderr)
        return 2
    checksum = None if args.checksum.lower() == "none" else args.checksum.lower()
    if checksum and checksum not in ("sha1", "md5", "sha256", "sha512"):
        print(f"tusd-py: unknown checksum algorithm {args.checksum!r}", file=sys.stderr)
        return 2
    return _run(_upload_async(args, checksum))


async def _upload_async(args: argparse.Namespace, checksum: str | None) -> int:
    storage = _storage(args)
    client = _client(args, chunk_size=args.chunk_size, checksum=checksum, url_storage=storage,
                     limit_rate=args.limit_rate, fingerprinter=FINGERPRINTS[args.fingerprint]())
    failed = 0
    try:
        with _progress_bar(args.quiet) as bar:
            for name in args.files:
                metadata: dict[str, str | bytes | None] = dict(args.metadata)
                source: Any
                if name == "-":
                    source = sys.stdin.buffer
                    label = "stdin"
                else:
                    source = name
                    label = os.path.basename(name)
                    kind = mimetypes.guess_type(name)[0]
                    if kind and "filetype" not in metadata:
                        metadata["filetype"] = kind
                task = bar.add_task(label, total=None)
                first = [True]

                def progress(done: int, total: int | None, task: Any = task,
                             first: list[bool] = first) -> None:
                    if first[0]:  # a resumed upload starts part-way: no fake rate spike
                        first[0] = False
                        bar.reset(task, total=total, completed=done)
                    else:
                        bar.update(task, completed=done, total=total)

                def resumed(offset: int, total: int | None) -> None:
                    bar.console.print(f"Resuming upload from offset {offset} of {total}")

                try:
                    url = await client.upload(source, metadata=metadata, progress=progress,
                                              parallel=args.parallel, on_resume=resumed)
                except (TusClientError, OSError) as exc:
                    if len(args.files) == 1:
                        raise
                    bar.console.print(f"tusd-py: {name}: {exc}")  # go on with the others
                    failed += 1
                    continue
                finally:
                    bar.stop_task(task)
                print(url, flush=True)
    finally:
        await client.close()
        if storage is not None:
            storage.close()
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with _client(args) as client:
            info = await client.info(args.upload_url)
        meta = info.metadata_text()
        if args.json:
            print(json.dumps({"url": info.url, "offset": info.offset, "length": info.length,
                              "deferred": info.deferred, "complete": info.is_complete,
                              "expires": info.expires, "concat": info.concat, "metadata": meta},
                             indent=2))
            return 0
        print(f"URL:       {info.url}")
        print(f"Offset:    {info.offset if info.offset is not None else '-'}")
        print(f"Length:    {'deferred' if info.deferred else info.length}")
        print(f"Complete:  {'yes' if info.is_complete else 'no'}")
        if info.expires:
            print(f"Expires:   {info.expires}")
        if info.concat:
            print(f"Concat:    {info.concat}")
        for key, value in meta.items():
            print(f"Metadata:  {key} = {value if value is not None else ''}")
        return 0
    return _run(run())


def _download(args: argparse.Namespace) -> int:
    async def run() -> int:
        to_stdout = args.output == "-"
        async with _client(args) as client:
            with _progress_bar(args.quiet or to_stdout) as bar:
                task = bar.add_task(os.path.basename(args.output), total=None)

                def progress(done: int, total: int | None) -> None:
                    bar.update(task, completed=done, total=total)
                dest: Any = sys.stdout.buffer if to_stdout else args.output
                size = await client.download(args.upload_url, dest, progress=progress)
        if not to_stdout:
            print(f"Saved {size} bytes to {args.output}", file=sys.stderr)
        return 0
    return _run(run())


def _delete(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with _client(args) as client:
            await client.delete(args.upload_url)
        print(f"Deleted {args.upload_url}", file=sys.stderr)
        return 0
    return _run(run())
