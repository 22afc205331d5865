"""``crdt-sync`` command line: ``crdt-sync serve [options]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .auth.token_command import add_token_command
from .settings import SettingsError, add_arguments, from_sources


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdt-sync",
        description="A Yjs-compatible collaboration server with a SyncFrame delta feed.",
        epilog="Run 'crdt-sync serve --help' for the server options.",
    )
    parser.add_argument("--version", action="version", version=f"crdt-sync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server (SQLite, 127.0.0.1:1234 by default)",
        description="Serve Yjs WebSocket rooms at ws://HOST:PORT/yjs/<doc> and the HTTP API. "
        "Every option can also be set with the environment variable shown.",
    )
    add_arguments(serve)
    add_token_command(commands)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "token":
        return args.run(args)
    try:
        settings = from_sources(vars(args))
    except SettingsError as exc:
        parser.exit(2, f"crdt-sync: error: {exc}\n")
    configure_logging(settings.log_level)
    from .server import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
