"""The ``tusd-py`` command line: ``serve``, ``check-config``, ``healthcheck`` and the client commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config
from .config.report import describe_config


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="YAML config file (default: $TUSD_CONFIG, config/tusd.yaml, "
                             "/etc/tusd-py/tusd.yaml, else built-in defaults)")
    parser.add_argument("--host", help="address to listen on (server.host, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (server.port, default 8080)")
    parser.add_argument("--base-path", help="URL path of the tus endpoint (server.base_path, "
                                            "default /files/)")
    parser.add_argument("--data-dir", help="local driver directory (storage.data_dir)")


def _config_from(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "server.host": args.host,
        "server.port": args.port,
        "server.base_path": args.base_path,
        "storage.data_dir": args.data_dir,
    }
    return load_config(args.config, overrides=overrides)


# The server stack is imported by the commands that use it: the client commands start
# without it.


def _serve(args: argparse.Namespace) -> int:
    from .http.server import serve

    return serve(_config_from(args))


def _check_config(args: argparse.Namespace) -> int:
    from .http.server import build

    config = _config_from(args)
    build(config)  # what serve builds before it listens: the driver, the hooks, TLS
    sys.stdout.write(describe_config(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tusd-py", description="A tus 1.0.0 upload server.")
    parser.add_argument("--version", action="version", version=f"tusd-py {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the tus server")
    _add_config_flags(serve)
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check-config",
                                help="validate the config and print it (secrets masked)")
    _add_config_flags(check)
    check.set_defaults(func=_check_config)

    from .healthcheck import add_command as add_healthcheck
    add_healthcheck(commands, _add_config_flags, _config_from)

    try:
        from .client.cli import add_commands
    except ImportError:
        pass
    else:
        add_commands(commands)
    return parser


def _exit_now(status: int) -> None:
    """Exit at once after a failed command: neither a thread it started nor the
    interpreter's finalisation of what it left (seen to hang in the garbage collector
    after a start-up cut short under heavy load) may delay the exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        _exit_now(2)
        return 2  # not reached
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
