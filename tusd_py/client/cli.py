"""Client commands of the ``tusd-py`` CLI: ``upload``, ``info``, ``download``, ``delete``."""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import re
import stat
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .client import TusClient
from .errors import TusClientError, describe
from .fingerprint import Fingerprinter, FullSHA256Fingerprint, MD5Fingerprint, SHA256Fingerprint
from .storage import FileURLStorage, SQLiteURLStorage, URLStorage, default_storage_path
from .uploader import NETWORK_ERRORS

__all__ = ["add_commands", "binary_size", "parse_size"]

#: The creation URL when ``--url`` is not given.
URL_ENV = "TUSD_URL"

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


def binary_size(n: float) -> str:
    """Bytes in the binary units the size flags take: ``512 bytes``, ``1.5 MiB``."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


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
    up.add_argument("--url", "-u", default=os.environ.get(URL_ENV),
                    help=f"the tus creation URL, e.g. http://host:8080/files/ (default: ${URL_ENV})")
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


def _run(coro: Coroutine[Any, Any, int], retries: int) -> int:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        print("tusd-py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except TusClientError as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return 1
    except NETWORK_ERRORS as exc:  # the retries did not help
        print(f"tusd-py: {_failure(exc, retries)}", file=sys.stderr)
        return 1


def _failure(exc: BaseException, retries: int) -> str:
    """The last line of a command that failed for good (a network error after retries)."""
    why = describe(exc)
    retried = isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError)
    return f"{why} (gave up after {retries} retries)" if retried and retries else why


def _check_url(url: str | None, what: str) -> str | None:
    """Why ``url`` cannot be requested (no http/https scheme, no host), or None."""
    if not url:
        return f"no {what}: give --url or set {URL_ENV}"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"{what} {url!r} is not an http:// or https:// URL (e.g. http://host:8080/files/)"
    return None


def _retry_printer(bar: Any = None) -> Callable[[int, int, float, BaseException], None]:
    """``on_retry`` for the CLI: ``retrying (n/N) in Xs: <reason>`` on stderr (above the
    progress bar, when one is drawn)."""

    def show(attempt: int, retries: int, delay: float, error: BaseException) -> None:
        line = f"retrying ({attempt}/{retries}) in {delay:.1f}s: {describe(error)}"
        if bar is not None and bar.live.is_started:
            bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    return show


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
    from rich.text import Text

    console = Console(stderr=True)
    # rich would send what is printed to stdout (the upload URLs) to the bar's console,
    # stderr: right for a terminal, wrong when stdout is a pipe or a file.
    try:
        stdout_is_tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        stdout_is_tty = False
    class BinarySpeedColumn(TransferSpeedColumn):
        """The rate in the binary units the size flags take (rich's is decimal)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{binary_size(speed)}/s",
                        style="progress.data.speed")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    DownloadColumn(binary_units=True), BinarySpeedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet, transient=False,
                    redirect_stdout=stdout_is_tty)


def _storage(args: argparse.Namespace) -> URLStorage | None:
    if args.no_resume:
        return None
    path = args.resume_db or default_storage_path()
    if str(path).endswith(".json"):
        return FileURLStorage(path)
    return SQLiteURLStorage(path)


def _client(args: argparse.Namespace, **kwargs: Any) -> TusClient:
    kwargs.setdefault("on_retry", _retry_printer())
    return TusClient(args.url if hasattr(args, "url") else args.upload_url,
                     headers=dict(args.header), retries=args.retries, timeout=args.timeout, **kwargs)


def _refuse(message: str) -> int:
    print(f"tusd-py: {message}", file=sys.stderr)
    return 2


def _unreadable(name: str) -> str | None:
    """Why the file ``name`` cannot be uploaded, or None ('-' is stdin)."""
    if name == "-":
        return None
    try:
        mode = os.stat(name).st_mode
    except OSError as exc:
        return f"{name}: {os.strerror(exc.errno or 0).lower()}"
    if stat.S_ISDIR(mode):
        return f"{name}: is a directory"
    if not os.access(name, os.R_OK):
        return f"{name}: permission denied"
    return None


def _upload(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        return _refuse("--parallel must be at least 1")
    checksum = None if args.checksum.lower() == "none" else args.checksum.lower()
    if checksum and checksum not in ("sha1", "md5", "sha256", "sha512"):
        return _refuse(f"unknown checksum algorithm {args.checksum!r}")
    bad_url = _check_url(args.url, "creation URL")
    if bad_url:
        return _refuse(bad_url)
    unreadable = [why for why in map(_unreadable, args.files) if why]
    if unreadable:  # before anything is drawn or sent
        for why in unreadable:
            print(f"tusd-py: {why}", file=sys.stderr)
        print("tusd-py: nothing uploaded", file=sys.stderr)
        return 2
    return _run(_upload_async(args, checksum), args.retries)


async def _upload_async(args: argparse.Namespace, checksum: str | None) -> int:
    storage = _storage(args)
    client = _client(args, chunk_size=args.chunk_size, checksum=checksum, url_storage=storage,
                     limit_rate=args.limit_rate, fingerprinter=FINGERPRINTS[args.fingerprint]())
    failed = 0
    try:
        with _progress_bar(args.quiet) as bar:
            client.on_retry = _retry_printer(bar)
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
                tasks: list[Any] = []  # the bar's task, added once the upload exists

                def progress(done: int, total: int | None, label: str = label,
                             tasks: list[Any] = tasks) -> None:
                    if not tasks:  # starts where a resumed upload is: no fake rate spike
                        tasks.append(bar.add_task(label, total=total, completed=done))
                    else:
                        bar.update(tasks[0], completed=done, total=total)

                def resumed(offset: int, total: int | None) -> None:
                    sizes = binary_size(offset) + (f" of {binary_size(total)}" if total else "")
                    bar.console.print(f"Resuming upload from offset {offset} of {total} ({sizes})",
                                      markup=False, highlight=False)

                try:
                    url = await client.upload(source, metadata=metadata, progress=progress,
                                              parallel=args.parallel, on_resume=resumed)
                except (TusClientError, OSError) as exc:
                    if len(args.files) == 1:
                        raise
                    # Go on with the others.
                    bar.console.print(f"tusd-py: {name}: {_failure(exc, args.retries)}",
                                      markup=False, highlight=False)
                    failed += 1
                    continue
                finally:
                    if tasks:
                        bar.stop_task(tasks[0])
                print(url, flush=True)
    finally:
        await client.close()
        if storage is not None:
            storage.close()
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    bad_url = _check_url(args.upload_url, "upload URL")
    if bad_url:
        return _refuse(bad_url)

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
        length = "deferred" if info.deferred else info.length
        if isinstance(length, int):
            length = f"{length} ({binary_size(length)})"
        print(f"Length:    {length}")
        print(f"Complete:  {'yes' if info.is_complete else 'no'}")
        if info.expires:
            print(f"Expires:   {info.expires}")
        if info.concat:
            print(f"Concat:    {info.concat}")
        for key, value in meta.items():
            print(f"Metadata:  {key} = {value if value is not None else ''}")
        return 0
    return _run(run(), args.retries)


def _download(args: argparse.Namespace) -> int:
    bad_url = _check_url(args.upload_url, "upload URL")
    if bad_url:
        return _refuse(bad_url)

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
            print(f"Saved {size} bytes ({binary_size(size)}) to {args.output}", file=sys.stderr)
        return 0
    return _run(run(), args.retries)


def _delete(args: argparse.Namespace) -> int:
    bad_url = _check_url(args.upload_url, "upload URL")
    if bad_url:
        return _refuse(bad_url)

    async def run() -> int:
        async with _client(args) as client:
            await client.delete(args.upload_url)
        print(f"Deleted {args.upload_url}", file=sys.stderr)
        return 0
    return _run(run(), args.retries)
