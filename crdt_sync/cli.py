"""``crdt-sync`` command line: ``crdt-sync serve [options]``, ``token``, and the client
commands ``get DOC``, ``put DOC FILE`` and ``tail`` (:mod:`crdt_sync.client.commands`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, log_redaction
from .auth.token_command import add_token_command
from .client.commands import add_client_commands
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
    add_client_commands(commands)
    return parser


def escape_text(text: str) -> str:
    """``text`` with every non-printable character escaped as Python would (``\\x1b``,
    ``\\u202e``, ``\\n``): nothing a client sent reaches a terminal raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class EscapingFormatter(logging.Formatter):
    """The one boundary between log records and the terminal (or a log collector).

    A message is escaped whole, line breaks included, so one event stays one line and
    a value from a client can neither paint the terminal (ANSI escapes), reorder it
    (bidi controls) nor forge a line. A traceback keeps its line breaks, each line
    escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        # A traceback another handler (or a test's log capture) formatted first is
        # cached raw on the record as exc_text: escape that too. Escaping is idempotent.
        if record.exc_text:
            record.exc_text = _escape_lines(record.exc_text)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(super().formatStack(stack_info))


def _escape_lines(text: str) -> str:
    return "\n".join(escape_text(line) for line in text.split("\n"))


def configure_logging(level: str, tag: str = "") -> None:
    """Log to stderr through :class:`EscapingFormatter` (the ASGI servers' loggers too).

    Args:
        tag: Put before each line's logger name (``w2``: worker 2 of ``--workers``), so
            the interleaved lines of several processes on one stderr can be told apart.
    """
    log_redaction.install()  # no token in any line, the ASGI server's included
    handler = logging.StreamHandler(sys.stderr)
    who = f"[{tag}] " if tag else ""
    handler.setFormatter(EscapingFormatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "token":
        return args.run(args)
    if args.command in ("get", "put", "tail"):
        configure_logging("error")  # their errors are one line each on stderr, not two
        return args.run(args)
    try:
        settings = from_sources(vars(args))
    except SettingsError as exc:
        parser.exit(2, f"crdt-sync: error: {exc}\n")
    configure_logging(settings.log_level)
    from .front_door import authenticator_from, check_open
    from .server import check_database, run

    try:
        auth = authenticator_from(settings)
        warning = check_open(settings, auth)
        if not settings.database_url:  # PostgreSQL is checked when the store starts
            check_database(settings.db)
    except SettingsError as exc:
        parser.exit(2, f"crdt-sync: error: {escape_text(str(exc))}\n")
    if warning is not None:
        logging.getLogger("crdt_sync.auth").warning("%s", warning)
    return run(settings, auth)


if __name__ == "__main__":
    sys.exit(main())
